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

// A table from Python: (layers, site codes, dims, factors) and, optionally, (addition layers, addition values
// [layers, width]).
austeer::SteeringTable table_of(const SteeringState &state, int n_layers, const py::tuple &arrays) {
    if (arrays.size() != 4 && arrays.size() != 6) {
        throw std::invalid_argument("a table is (layers, sites, dims, factors[, addition_layers, addition_values])");
    }
    austeer::SteeringTable table{
        UnitTable(state.sites().size(), n_layers, to_vector(arrays[0].cast<Array<int32_t>>(), "layers"),
                  to_vector(arrays[1].cast<Array<int32_t>>(), "sites"), to_vector(arrays[2].cast<Array<int32_t>>(), "dims"),
                  to_vector(arrays[3].cast<Array<float>>(), "factors")),
        austeer::LayerAdditions()};
    if (arrays.size() == 6) {
        auto layers = to_vector(arrays[4].cast<Array<int32_t>>(), "addition_layers");
        auto values = arrays[5].cast<Array<float>>();
        if (values.ndim() != 2 || size_t(values.shape(0)) != layers.size()) {
            throw std::invalid_argument("addition_values must be [len(addition_layers), width]");
        }
        std::vector<float> flat(values.data(), values.data() + values.size());
        table.additions = austeer::LayerAdditions(n_layers, layers, flat, values.shape(1));
    }
    return table;
}

void set_spec(SteeringState &state, int n_layers, const std::vector<py::tuple> &tables,
              const std::optional<Array<int32_t>> &row_tables, const std::optional<Array<int64_t>> &output_rows,
              int addition_site, const std::vector<std::vector<int64_t>> &micro_batches) {
    std::vector<austeer::SteeringTable> built;
    built.reserve(tables.size());
    for (const py::tuple &arrays : tables) built.push_back(table_of(state, n_layers, arrays));
    std::vector<int32_t> rows = row_tables ? to_vector(*row_tables, "row_tables") : std::vector<int32_t>{};
    std::vector<int64_t> outputs = output_rows ? to_vector(*output_rows, "output_rows") : std::vector<int64_t>{};
    state.set_spec(std::make_unique<const SteeringSpec>(state.sites().size(), n_layers, std::move(built),
                                                        addition_site, rows, outputs, micro_batches));
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
             py::arg("output_rows") = py::none(), py::arg("addition_site") = -1,
             py::arg("micro_batches") = std::vector<std::vector<int64_t>>{})
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
