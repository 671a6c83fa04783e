#include "steering.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <tuple>

namespace austeer {

namespace {

template <typename Fn>
void resolve(void *library, const char *symbol, Fn *out) {
    void *address = dlsym(library, symbol);
    if (address == nullptr) {
        throw std::runtime_error(std::string("libggml-base has no symbol ") + symbol +
                                 ": this llama_cpp build is not the one austeer-gguf supports");
    }
    *out = reinterpret_cast<Fn>(address);
}

// Parses a non-negative decimal that must run to the end of the string.
bool parse_layer(const char *text, int *layer) {
    if (*text < '0' || *text > '9') return false;
    int value = 0;
    for (; *text >= '0' && *text <= '9'; ++text) {
        value = value * 10 + (*text - '0');
        if (value >= kMaxLayers) return false;
    }
    if (*text != '\0') return false;
    *layer = value;
    return true;
}

}  // namespace

GgmlApi GgmlApi::load(const std::string &path) {
    // RTLD_NOLOAD: we want the very library llama_cpp loaded (it holds the backends), never a second copy.
    // The handle is kept for the life of the process.
    void *library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (library == nullptr) {
        const char *why = dlerror();
        throw std::runtime_error("libggml-base is not loaded from " + path +
                                 " (import llama_cpp before creating a steering state): " +
                                 (why ? why : "unknown dlopen error"));
    }
    GgmlApi api;
    resolve(library, "ggml_get_name", &api.get_name);
    resolve(library, "ggml_nelements", &api.nelements);
    resolve(library, "ggml_nrows", &api.nrows);
    resolve(library, "ggml_nbytes", &api.nbytes);
    resolve(library, "ggml_element_size", &api.element_size);
    resolve(library, "ggml_type_size", &api.type_size);
    resolve(library, "ggml_is_contiguous", &api.is_contiguous);
    resolve(library, "ggml_get_data", &api.get_data);
    resolve(library, "ggml_backend_tensor_get", &api.tensor_get);
    resolve(library, "ggml_backend_tensor_set", &api.tensor_set);
    resolve(library, "ggml_backend_buffer_is_host", &api.buffer_is_host);
    return api;
}

SiteMatcher::SiteMatcher(std::vector<SiteName> sites) : sites_(std::move(sites)) {
    if (sites_.empty() || sites_.size() > size_t(kMaxSites)) {
        throw std::invalid_argument("between 1 and " + std::to_string(kMaxSites) + " sites are supported");
    }
    for (const SiteName &site : sites_) {
        if (site.prefix.empty() || site.prefix.find('-') != std::string::npos) {
            throw std::invalid_argument("a site tensor prefix must be a non-empty name without '-'");
        }
    }
}

int SiteMatcher::match(const char *name, int *layer) const {
    for (size_t code = 0; code < sites_.size(); ++code) {
        const std::string &prefix = sites_[code].prefix;
        if (name[0] != prefix[0] || std::strncmp(name, prefix.c_str(), prefix.size()) != 0) continue;
        const char *rest = name + prefix.size();
        if (rest[0] == '-' && parse_layer(rest + 1, layer)) return int(code);
    }
    return -1;
}

// ---------------------------------------------------------------------------------------------------------

UnitTable::UnitTable(int n_sites, int n_layers, const std::vector<int32_t> &layers,
                     const std::vector<int32_t> &sites, const std::vector<int32_t> &dims,
                     const std::vector<float> &factors)
    : n_layers_(n_layers) {
    if (n_layers <= 0 || n_layers > kMaxLayers) throw std::invalid_argument("n_layers out of range");
    if (n_sites <= 0 || n_sites > kMaxSites) throw std::invalid_argument("n_sites out of range");
    const size_t n = layers.size();
    if (sites.size() != n || dims.size() != n || factors.size() != n) {
        throw std::invalid_argument("layers, sites, dims and factors must have the same length");
    }
    struct Entry {
        int32_t site, layer, dim;
        float factor;
    };
    std::vector<Entry> entries(n);
    for (size_t i = 0; i < n; ++i) {
        const std::string unit = "unit " + std::to_string(i);
        if (sites[i] < 0 || sites[i] >= n_sites) throw std::invalid_argument(unit + ": bad site code");
        if (layers[i] < 0 || layers[i] >= n_layers) throw std::invalid_argument(unit + ": layer out of range");
        if (dims[i] < 0) throw std::invalid_argument(unit + ": negative dim");
        if (!std::isfinite(factors[i])) throw std::invalid_argument(unit + ": factor is not finite");
        entries[i] = {sites[i], layers[i], dims[i], factors[i]};
    }
    const auto key = [](const Entry &e) { return std::make_tuple(e.site, e.layer, e.dim); };
    std::sort(entries.begin(), entries.end(), [&](const Entry &a, const Entry &b) { return key(a) < key(b); });
    for (size_t i = 1; i < n; ++i) {
        if (key(entries[i]) == key(entries[i - 1])) throw std::invalid_argument("duplicate unit");
    }
    units_.reserve(n);
    offsets_.assign(size_t(n_sites) * n_layers + 1, 0);
    for (const Entry &e : entries) {
        units_.push_back({e.dim, e.factor});
        ++offsets_[size_t(e.site) * n_layers + e.layer + 1];
    }
    for (size_t i = 1; i < offsets_.size(); ++i) offsets_[i] += offsets_[i - 1];
}

const UnitFactor *UnitTable::begin(int site, int layer) const {
    return units_.data() + offsets_[size_t(site) * n_layers_ + layer];
}

const UnitFactor *UnitTable::end(int site, int layer) const {
    return units_.data() + offsets_[size_t(site) * n_layers_ + layer + 1];
}

void Counters::reset() {
#define AUSTEER_RESET_COUNTER(name, what) name.store(0);
    AUSTEER_COUNTERS(AUSTEER_RESET_COUNTER)
#undef AUSTEER_RESET_COUNTER
}

LayerAdditions::LayerAdditions(int n_layers, const std::vector<int32_t> &layers, const std::vector<float> &values,
                               int64_t width)
    : width_(width), index_(size_t(n_layers), -1), values_(values) {
    if (layers.empty()) {
        width_ = 0;
        values_.clear();
        return;
    }
    if (width <= 0 || values.size() != layers.size() * size_t(width)) {
        throw std::invalid_argument("additions: values must hold one row of `width` floats per layer");
    }
    for (size_t i = 0; i < layers.size(); ++i) {
        if (layers[i] < 0 || layers[i] >= n_layers) throw std::invalid_argument("additions: layer out of range");
        if (index_[size_t(layers[i])] >= 0) throw std::invalid_argument("additions: a layer appears twice");
        index_[size_t(layers[i])] = int32_t(i);
    }
    for (float value : values_) {
        if (!std::isfinite(value)) throw std::invalid_argument("additions: a value is not finite");
    }
}

SteeringSpec::SteeringSpec(int n_sites, int n_layers, std::vector<SteeringTable> tables, int addition_site,
                           const std::vector<int32_t> &row_tables, const std::vector<int64_t> &output_rows,
                           const std::vector<std::vector<int64_t>> &micro_batches)
    : n_layers_(n_layers),
      tables_(std::move(tables)),
      addition_site_(addition_site),
      claimed_(size_t(n_sites) * size_t(n_layers), 0) {
    if (n_layers <= 0 || n_layers > kMaxLayers) throw std::invalid_argument("n_layers out of range");
    if (n_sites <= 0 || n_sites > kMaxSites) throw std::invalid_argument("n_sites out of range");
    if (tables_.empty()) throw std::invalid_argument("a steering spec needs at least one table");
    if (addition_site < -1 || addition_site >= n_sites) throw std::invalid_argument("bad addition site code");
    const size_t n_rows = row_tables.size();
    if (n_rows == 0 && (!output_rows.empty() || !micro_batches.empty())) {
        throw std::invalid_argument("output rows and micro-batches need a row map");
    }
    std::vector<uint8_t> used(tables_.size() + 1, n_rows == 0 ? 1 : 0);
    for (int32_t table : row_tables) {
        if (table < 0 || size_t(table) > tables_.size()) throw std::invalid_argument("row table index out of range");
        used[size_t(table)] = 1;
    }
    std::vector<uint8_t> is_output(n_rows, 0);
    for (int64_t row : output_rows) {
        if (row < 0 || size_t(row) >= n_rows) throw std::invalid_argument("output row out of range");
        is_output[size_t(row)] = 1;
    }
    if (n_rows > 0) {
        std::vector<std::vector<int64_t>> rows_of = micro_batches;
        if (rows_of.empty()) {
            rows_of.emplace_back(n_rows);
            for (size_t row = 0; row < n_rows; ++row) rows_of[0][row] = int64_t(row);
        }
        std::vector<uint8_t> placed(n_rows, 0);
        for (const std::vector<int64_t> &rows : rows_of) {
            if (rows.empty()) throw std::invalid_argument("micro-batches must hold every batch row once, none empty");
            MicroBatch micro;
            for (int64_t row : rows) {
                if (row < 0 || size_t(row) >= n_rows || placed[size_t(row)]) {
                    throw std::invalid_argument("micro-batches must hold every batch row once");
                }
                placed[size_t(row)] = 1;
                micro.tables.push_back(row_tables[size_t(row)]);
                if (is_output[size_t(row)]) micro.output_tables.push_back(row_tables[size_t(row)]);
            }
            micro_batches_.push_back(std::move(micro));
        }
        if (std::find(placed.begin(), placed.end(), 0) != placed.end()) {
            throw std::invalid_argument("micro-batches must hold every batch row once");
        }
    }
    for (size_t index = 1; index <= tables_.size(); ++index) {
        const SteeringTable &table = tables_[index - 1];
        if (table.additions.size() > 0 && addition_site < 0) {
            throw std::invalid_argument("a table adds vectors but the spec names no addition site");
        }
        if (!used[index]) continue;
        for (int site = 0; site < n_sites; ++site) {
            for (int layer = 0; layer < n_layers; ++layer) {
                const bool adds = site == addition_site && table.additions.at(layer) != nullptr;
                if (table.units.has(site, layer) || adds) claimed_[size_t(site) * n_layers + layer] = 1;
            }
        }
    }
}

size_t SteeringSpec::n_units() const {
    size_t total = 0;
    for (const SteeringTable &table : tables_) total += table.units.size();
    return total;
}

// ---------------------------------------------------------------------------------------------------------

struct SteeringState::Access {
    float *data = nullptr;  // host memory of the tensor, or scratch_ holding a copy of it
    int64_t row_width = 0;
    int64_t n_rows = 0;
    size_t nbytes = 0;
    bool via_backend = false;  // the copy must be written back with ggml_backend_tensor_set
};

SteeringState::SteeringState(GgmlApi api, std::vector<SiteName> sites)
    : api_(api),
      sites_(std::move(sites)),
      capture_buffers_(size_t(sites_.size())),
      capture_filled_(size_t(sites_.size())),
      first_seen_(size_t(sites_.size()) * kMaxLayers, 0) {}

SteeringState::~SteeringState() = default;

// Nothing may escape into ggml's scheduler: an exception is counted and the graph runs on unsteered.
bool SteeringState::eval_callback(void *tensor, bool ask, void *user_data) noexcept {
    auto *state = static_cast<SteeringState *>(user_data);
    try {
        return ask ? state->ask(tensor) : state->compute(tensor);
    } catch (...) {
        state->counters.errors.fetch_add(1);
        state->pending_ = Pending{};
        return true;
    }
}

void SteeringState::set_spec(std::unique_ptr<const SteeringSpec> spec) {
    if (spec != nullptr && spec->n_layers() > kMaxLayers) throw std::invalid_argument("n_layers out of range");
    n_units_.store(spec ? spec->n_units() : 0);
    n_tables_.store(spec ? spec->n_tables() : 0);
    visits_.assign(spec ? size_t(sites_.size()) * size_t(spec->n_layers()) : 0, 0);
    spec_ = std::move(spec);
}

void SteeringState::set_chained(EvalCallback callback, void *user_data) {
    chained_ = callback;
    chained_user_data_ = user_data;
}

// The ask path runs for every node of every graph: a name check and a few loads, no allocation.
bool SteeringState::ask(void *tensor) {
    pending_ = Pending{};
    pending_.tensor = tensor;
    if (chained_ != nullptr) pending_.chained = chained_(tensor, true, chained_user_data_);
    const char *name = api_.get_name(tensor);
    int layer = -1;
    const int site = name != nullptr ? sites_.match(name, &layer) : -1;
    if (site < 0) return pending_.chained;

    // A control vector on layer L leaves the residual sum named ffn_out-L too: only the first ffn_out-L of
    // a layer is the FFN output. Any other site tensor of the layer (kqv_out-L before it, l_out-L after it)
    // re-arms the check for the next graph.
    if (sites_.site(site).first_in_layer) {
        uint8_t &seen = first_seen_[size_t(site) * kMaxLayers + layer];
        if (seen) return pending_.chained;
        seen = 1;
    } else {
        for (int other = 0; other < sites_.size(); ++other) first_seen_[size_t(other) * kMaxLayers + layer] = 0;
    }

    pending_.site = site;
    pending_.layer = layer;
    pending_.steer = spec_ != nullptr && layer < spec_->n_layers() && spec_->claims(site, layer);
    pending_.capture = (capture_mask_ >> site) & 1u;
    return pending_.steer || pending_.capture || pending_.chained;
}

bool SteeringState::compute(void *tensor) {
    const Pending pending = pending_;
    if (pending.tensor != tensor) return true;
    if (pending.steer) steer(tensor, pending.site, pending.layer);
    if (pending.capture) capture(tensor, pending.site, pending.layer);
    if (pending.chained && chained_ != nullptr) return chained_(tensor, false, chained_user_data_);
    return true;
}

void SteeringState::note_skip(void *tensor, const char *reason) {
    const char *name = api_.get_name(tensor);
    std::string entry = std::string(name ? name : "(unnamed)") + ": " + reason;
    std::lock_guard<std::mutex> lock(skipped_mutex_);
    if (skipped_names_.size() >= kMaxSkippedNames) return;
    if (std::find(skipped_names_.begin(), skipped_names_.end(), entry) == skipped_names_.end()) {
        skipped_names_.push_back(std::move(entry));
    }
}

std::vector<std::string> SteeringState::skipped_names() const {
    std::lock_guard<std::mutex> lock(skipped_mutex_);
    return skipped_names_;
}

void SteeringState::reset_counters() {
    counters.reset();
    std::lock_guard<std::mutex> lock(skipped_mutex_);
    skipped_names_.clear();
}

bool SteeringState::open(void *tensor, Access *access) {
    const int64_t n_elements = api_.nelements(tensor);
    const int64_t n_rows = api_.nrows(tensor);
    const size_t element_size = api_.element_size(tensor);
    const size_t nbytes = api_.nbytes(tensor);
    if (element_size != sizeof(float) || nbytes != size_t(n_elements) * sizeof(float)) {
        counters.skipped_not_f32.fetch_add(1);
        note_skip(tensor, "not F32");
        return false;
    }
    if (n_elements <= 0 || n_rows <= 0 || n_elements % n_rows != 0 || !api_.is_contiguous(tensor)) {
        counters.skipped_not_contiguous.fetch_add(1);
        note_skip(tensor, "not contiguous");
        return false;
    }
    const auto *head = static_cast<const TensorHead *>(tensor);
    const bool layout_known = head->ne[0] * head->ne[1] * head->ne[2] * head->ne[3] == n_elements &&
                              head->ne[1] * head->ne[2] * head->ne[3] == n_rows && head->nb[0] == element_size &&
                              head->type >= 0 && head->type < kGgmlTypeCount &&
                              api_.type_size(head->type) == element_size;
    if (!layout_known) {
        // Without the buffer field we cannot tell host from device memory, and the backend API aborts on a
        // tensor without a buffer: leave it alone.
        counters.skipped_unknown_layout.fetch_add(1);
        note_skip(tensor, "tensor fields not as expected (ggml changed?)");
        return false;
    }
    if (head->type != kGgmlTypeF32) {
        counters.skipped_not_f32.fetch_add(1);
        note_skip(tensor, "not F32");
        return false;
    }
    access->row_width = n_elements / n_rows;
    access->n_rows = n_rows;
    access->nbytes = nbytes;
    // A tensor without a buffer lives in a ggml context's own (host) memory, or has no memory at all.
    if (head->buffer == nullptr || api_.buffer_is_host(head->buffer)) {
        access->data = static_cast<float *>(api_.get_data(tensor));
        access->via_backend = false;
        if (access->data != nullptr) return true;
        counters.skipped_no_data.fetch_add(1);
        note_skip(tensor, "no data");
        return false;
    }
    // Device memory (CUDA, Metal, RPC, ...): copy through the backend API.
    scratch_.resize(size_t(n_elements));
    api_.tensor_get(tensor, scratch_.data(), 0, nbytes);
    access->data = scratch_.data();
    access->via_backend = true;
    counters.via_backend_api.fetch_add(1);
    return true;
}

void SteeringState::steer(void *tensor, int site, int layer) {
    const SteeringSpec &spec = *spec_;
    const MicroBatch *micro = nullptr;
    if (!spec.uniform()) {
        uint32_t &visits = visits_[size_t(site) * size_t(spec.n_layers()) + size_t(layer)];
        micro = &spec.micro_batch(visits++ % spec.n_micro_batches());
    }
    if (api_.nelements(tensor) == 0) return;  // a micro-batch without outputs, at the last layer
    Access access;
    if (!open(tensor, &access)) return;
    // Which table each tensor row takes: every row of the micro-batch, or (last layer) only its output rows.
    const std::vector<int32_t> *row_tables = nullptr;
    if (micro != nullptr) {
        if (access.n_rows == int64_t(micro->tables.size())) {
            row_tables = &micro->tables;
        } else if (access.n_rows == int64_t(micro->output_tables.size())) {
            row_tables = &micro->output_tables;
        } else {
            counters.skipped_rows.fetch_add(1);
            note_skip(tensor, "the row map does not fit its rows");
            return;
        }
    }
    const bool adds_here = site == spec.addition_site();
    for (size_t index = 1; index <= spec.n_tables(); ++index) {
        const SteeringTable &table = spec.table(int32_t(index));
        const bool units_too_wide =
            table.units.has(site, layer) && (table.units.end(site, layer) - 1)->dim >= access.row_width;
        const bool additions_misfit =
            adds_here && table.additions.at(layer) != nullptr && table.additions.width() != access.row_width;
        if (units_too_wide || additions_misfit) {
            counters.skipped_width.fetch_add(1);
            note_skip(tensor, units_too_wide ? "a unit dim is beyond the row width"
                                             : "an added vector does not have the row width");
            return;
        }
    }
    for (int64_t row = 0; row < access.n_rows; ++row) {
        const int32_t index = row_tables != nullptr ? (*row_tables)[size_t(row)] : 1;
        if (index == 0) continue;
        const SteeringTable &table = spec.table(index);
        float *values = access.data + row * access.row_width;
        // Added first, then scaled: llama.cpp adds a control vector before the tensor the units are read from.
        if (const float *added = adds_here ? table.additions.at(layer) : nullptr) {
            for (int64_t j = 0; j < access.row_width; ++j) values[j] += added[j];
        }
        if (!table.units.has(site, layer)) continue;
        for (const UnitFactor *unit = table.units.begin(site, layer); unit != table.units.end(site, layer); ++unit) {
            values[unit->dim] *= unit->factor;
        }
    }
    if (access.via_backend) api_.tensor_set(tensor, access.data, 0, access.nbytes);
    counters.steered.fetch_add(1);
}

void SteeringState::begin_capture(CaptureSpec spec) {
    if (spec.n_layers <= 0 || spec.n_layers > kMaxLayers) throw std::invalid_argument("n_layers out of range");
    if (spec.rows.empty()) throw std::invalid_argument("capture needs at least one row");
    if (spec.widths.size() != size_t(sites_.size())) throw std::invalid_argument("one width per site is needed");
    for (int64_t row : spec.rows) {
        if (row < 0 || row >= spec.n_batch_tokens) throw std::invalid_argument("capture row out of range");
    }
    std::lock_guard<std::mutex> lock(capture_mutex_);
    for (int site = 0; site < sites_.size(); ++site) {
        const bool wanted = (spec.site_mask >> site) & 1u;
        if (wanted && spec.widths[size_t(site)] <= 0) throw std::invalid_argument("capture width must be positive");
        const size_t size = wanted ? size_t(spec.n_layers) * spec.rows.size() * size_t(spec.widths[size_t(site)]) : 0;
        capture_buffers_[size_t(site)].assign(size, 0.0f);
        capture_filled_[size_t(site)].assign(wanted ? size_t(spec.n_layers) : 0, 0);
    }
    capture_ = std::move(spec);
    capture_mask_ = capture_.site_mask;
}

void SteeringState::end_capture() {
    capture_mask_ = 0;
}

Captured SteeringState::captured(int site) const {
    if (site < 0 || site >= sites_.size()) throw std::invalid_argument("bad site code");
    std::lock_guard<std::mutex> lock(capture_mutex_);
    Captured out;
    out.values = capture_buffers_[size_t(site)];
    out.filled = capture_filled_[size_t(site)];
    const bool wanted = !out.filled.empty();
    out.n_rows = wanted ? int64_t(capture_.rows.size()) : 0;
    out.width = wanted ? capture_.widths[size_t(site)] : 0;
    return out;
}

void SteeringState::capture(void *tensor, int site, int layer) {
    std::lock_guard<std::mutex> lock(capture_mutex_);
    if (!((capture_.site_mask >> site) & 1u) || layer >= capture_.n_layers) return;
    Access access;
    if (!open(tensor, &access)) return;
    const int64_t width = capture_.widths[size_t(site)];
    const size_t n_selected = capture_.rows.size();
    const bool all_tokens = access.n_rows == capture_.n_batch_tokens;
    const bool outputs_only = !all_tokens && access.n_rows == int64_t(n_selected);
    if (access.row_width != width || (!all_tokens && !outputs_only)) {
        counters.capture_row_mismatch.fetch_add(1);
        return;
    }
    float *destination = capture_buffers_[size_t(site)].data() + size_t(layer) * n_selected * size_t(width);
    for (size_t i = 0; i < n_selected; ++i) {
        const int64_t row = all_tokens ? capture_.rows[i] : int64_t(i);
        std::memcpy(destination + i * size_t(width), access.data + row * width, size_t(width) * sizeof(float));
    }
    capture_filled_[size_t(site)][size_t(layer)] = 1;
    counters.captured.fetch_add(1);
}

}  // namespace austeer
