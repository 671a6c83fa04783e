// Python bindings of the steering core: plain values in, numpy arrays out. No policy lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>

#include "steering.hpp"

namespace py = pybind11;
using austeer::CaptureSpec;
using austeer::SteeringState;
using austeer::UnitTable;

namespace {

template <typename T>
std::vector<T> to_vector(const py::array_t<T, py::array::c_style | py::array::forcecast> &array, const char *what) {
    if (array.ndim() != 1) throw std::invalid_argument(std::string(what) + " must be one-dimensional");
    return std::vector<T>(array.data(), array.data() + array.size());
}

void set_units(SteeringState &state, int n_layers, const py::array_t<int32_t, py::array::c_style | py::array::forcecast> &layers,
               const py::array_t<int32_t, py::array::c_style | py::array::forcecast> &sites,
               const py::array_t<int32_t, py::array::c_style | py::array::forcecast> &dims,
               const py::array_t<float, py::array::c_style | py::array::forcecast> &gains) {
    state.set_units(std::make_unique<UnitTable>(n_layers, to_vector(layers, "layers"), to_vector(sites, "sites"),
                                                to_vector(dims, "dims"), to_vector(gains, "gains")));
}

void begin_capture(SteeringState &state, const std::vector<int> &sites, int n_layers,
                   const std::vector<int64_t> &widths, const std::vector<int64_t> &rows, int64_t n_batch_tokens) {
    if (widths.size() != austeer::kNumSites) throw std::invalid_argument("widths needs one entry per site code");
    CaptureSpec spec;
    for (int site : sites) {
        if (site < 0 || site >= austeer::kNumSites) throw std::invalid_argument("bad site code");
        spec.site_mask |= 1u << site;
    }
    spec.n_layers = n_layers;
    spec.n_batch_tokens = n_batch_tokens;
    spec.rows = rows;
    for (int site = 0; site < austeer::kNumSites; ++site) spec.widths[site] = widths[site];
    state.begin_capture(std::move(spec));
}

py::tuple captured(const SteeringState &state, int site) {
    std::vector<uint8_t> filled;
    std::vector<float> values = state.captured(site, &filled);
    const CaptureSpec spec = state.capture_spec();
    const auto n_layers = py::ssize_t(filled.size());
    const auto n_rows = py::ssize_t(spec.rows.size());
    const auto width = n_layers > 0 ? py::ssize_t(spec.widths[site]) : 0;
    py::array_t<float> out({n_layers, n_layers > 0 ? n_rows : 0, width});
    std::copy(values.begin(), values.end(), out.mutable_data());
    py::array_t<bool> layers_filled(n_layers);
    std::copy(filled.begin(), filled.end(), layers_filled.mutable_data());
    return py::make_tuple(out, layers_filled);
}

py::dict counters(const SteeringState &state) {
    const auto &c = state.counters;
    py::dict out;
    out["steered"] = c.steered.load();
    out["captured"] = c.captured.load();
    out["via_backend_api"] = c.via_backend_api.load();
    out["skipped_not_f32"] = c.skipped_not_f32.load();
    out["skipped_not_contiguous"] = c.skipped_not_contiguous.load();
    out["skipped_width"] = c.skipped_width.load();
    out["skipped_no_data"] = c.skipped_no_data.load();
    out["capture_row_mismatch"] = c.capture_row_mismatch.load();
    return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "austeer-gguf native core: a ggml eval callback that scales atomic units";

    m.def("callback_address", [] { return reinterpret_cast<uintptr_t>(&SteeringState::eval_callback); },
          "Address of the C eval callback (bool (*)(ggml_tensor *, bool ask, void * user_data)).");
    m.def("parse_site_name", [](const std::string &name) {
        int layer = -1;
        const int site = austeer::parse_site_name(name.c_str(), &layer);
        return site < 0 ? py::object(py::none()) : py::object(py::make_tuple(site, layer));
    });

    py::class_<SteeringState>(m, "SteeringState")
        .def(py::init([](const std::string &ggml_base_path) {
                 return std::make_unique<SteeringState>(austeer::GgmlApi::load(ggml_base_path));
             }),
             py::arg("ggml_base_path"))
        .def_property_readonly("user_data", [](SteeringState &s) { return reinterpret_cast<uintptr_t>(&s); })
        .def("set_units", &set_units, py::arg("n_layers"), py::arg("layers"), py::arg("sites"), py::arg("dims"),
             py::arg("gains"))
        .def("clear_units", [](SteeringState &s) { s.set_units(nullptr); })
        .def_property_readonly("n_units", &SteeringState::n_units)
        .def_property(
            "enabled", [](const SteeringState &s) { return s.enabled.load(); },
            [](SteeringState &s, bool on) { s.enabled.store(on); })
        .def_property(
            "strength", [](const SteeringState &s) { return s.strength.load(); },
            [](SteeringState &s, float value) { s.strength.store(value); })
        .def("set_chained",
             [](SteeringState &s, uintptr_t callback, uintptr_t user_data) {
                 s.set_chained(reinterpret_cast<austeer::EvalCallback>(callback), reinterpret_cast<void *>(user_data));
             },
             py::arg("callback"), py::arg("user_data"))
        .def("begin_capture", &begin_capture, py::arg("sites"), py::arg("n_layers"), py::arg("widths"),
             py::arg("rows"), py::arg("n_batch_tokens"))
        .def("end_capture", &SteeringState::end_capture)
        .def("captured", &captured, py::arg("site"))
        .def("counters", &counters)
        .def("reset_counters", [](SteeringState &s) { s.counters.reset(); });
}
