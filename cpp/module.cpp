// Python bindings of the steering core: plain values in, numpy arrays out. No policy lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "steering.hpp"

namespace py = pybind11;
using austeer::CaptureSpec;
using austeer::SteeringSpec;
using austeer::SteeringState;
using austeer::UnitTable;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
std::vector<T> to_vector(const Array<T> &array, const char *what) {
    if (array.ndim() != 1) throw std::invalid_argument(std::string(what) + " must be one-dimensional");
    return std::vector<T>(array.data(), array.data() + array.size());
}

std::unique_ptr<SteeringState> make_state(const std::string &ggml_base_path,
                                          const std::vector<std::pair<std::string, bool>> &sites) {
    std::vector<austeer::SiteName> names;
    for (const auto &[prefix, first_in_layer] : sites) names.push_back({prefix, first_in_layer});
    return std::make_unique<SteeringState>(austeer::GgmlApi::load(ggml_base_path), std::move(names));
}

using TableArrays = std::tuple<Array<int32_t>, Array<int32_t>, Array<int32_t>, Array<float>>;

void set_spec(SteeringState &state, int n_layers, const std::vector<TableArrays> &tables,
              const std::optional<Array<int32_t>> &row_tables, const std::optional<Array<int64_t>> &output_rows) {
    std::vector<UnitTable> built;
    built.reserve(tables.size());
    for (const auto &[layers, sites, dims, factors] : tables) {
        built.emplace_back(state.sites().size(), n_layers, to_vector(layers, "layers"), to_vector(sites, "sites"),
                           to_vector(dims, "dims"), to_vector(factors, "factors"));
    }
    std::vector<int32_t> rows = row_tables ? to_vector(*row_tables, "row_tables") : std::vector<int32_t>{};
    std::vector<int64_t> outputs = output_rows ? to_vector(*output_rows, "output_rows") : std::vector<int64_t>{};
    state.set_spec(std::make_unique<const SteeringSpec>(state.sites().size(), n_layers, std::move(built),
                                                        std::move(rows), std::move(outputs)));
}

void begin_capture(SteeringState &state, const std::vector<int> &sites, int n_layers,
                   const std::vector<int64_t> &widths, const std::vector<int64_t> &rows, int64_t n_batch_tokens) {
    CaptureSpec spec;
    for (int site : sites) {
        if (site < 0 || site >= state.sites().size()) throw std::invalid_argument("bad site code");
        spec.site_mask |= 1u << site;
    }
    spec.n_layers = n_layers;
    spec.n_batch_tokens = n_batch_tokens;
    spec.rows = rows;
    spec.widths = widths;
    state.begin_capture(std::move(spec));
}

py::tuple captured(const SteeringState &state, int site) {
    const austeer::Captured got = state.captured(site);
    const auto n_layers = py::ssize_t(got.filled.size());
    py::array_t<float> values({n_layers, py::ssize_t(got.n_rows), py::ssize_t(got.width)});
    std::copy(got.values.begin(), got.values.end(), values.mutable_data());
    py::array_t<bool> filled(n_layers);
    std::copy(got.filled.begin(), got.filled.end(), filled.mutable_data());
    return py::make_tuple(values, filled);
}

py::dict counters(const SteeringState &state) {
    py::dict out;
#define AUSTEER_COUNTER_ITEM(name, what) out[#name] = state.counters.name.load();
    AUSTEER_COUNTERS(AUSTEER_COUNTER_ITEM)
#undef AUSTEER_COUNTER_ITEM
    return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "austeer-gguf native core: a ggml eval callback that scales atomic units";

    m.def("callback_address", [] { return reinterpret_cast<uintptr_t>(&SteeringState::eval_callback); },
          "Address of the C eval callback (bool (*)(ggml_tensor *, bool ask, void * user_data)).");

    py::class_<SteeringState>(m, "SteeringState")
        .def(py::init(&make_state), py::arg("ggml_base_path"), py::arg("sites"))
        .def_property_readonly("user_data", [](SteeringState &s) { return reinterpret_cast<uintptr_t>(&s); })
        .def("parse_site_name",
             [](const SteeringState &s, const std::string &name) {
                 int layer = -1;
                 const int site = s.sites().match(name.c_str(), &layer);
                 return site < 0 ? py::object(py::none()) : py::object(py::make_tuple(site, layer));
             },
             py::arg("name"))
        .def("set_spec", &set_spec, py::arg("n_layers"), py::arg("tables"), py::arg("row_tables") = py::none(),
             py::arg("output_rows") = py::none())
        .def("clear_spec", &SteeringState::clear_spec)
        .def_property_readonly("n_units", &SteeringState::n_units)
        .def_property_readonly("n_tables", &SteeringState::n_tables)
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
        .def("skipped_names", &SteeringState::skipped_names)
        .def("reset_counters", &SteeringState::reset_counters);
}
