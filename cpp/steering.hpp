// Steering state and the ggml eval callback that scales atomic units in place.
//
// The callback is installed once, at context creation, and reads this state on every call, so steering can
// change (on/off, other units, other rows) between two decodes without a model reload. The state knows its
// sites only as graph tensor prefixes handed in at construction ("<prefix>-<layer>"); site code i is the i-th
// prefix. It can also capture chosen rows of site tensors into buffers (used by localization). It knows
// nothing of profiles, scores or strengths: a unit arrives with its final factor.
//
// What one decode applies is a steering spec: a few tables (units to scale, vectors to add at one site) and a
// map from batch rows to tables (and, when llama.cpp computes the batch as several micro-batches in an order
// of its own, which batch rows each holds). Table 0 is "unsteered": a row that maps to it is never touched. A
// spec without a row map steers every row with table 1.
//
// Threading contract (the one statement of it; austeer_gguf.engine follows it):
// - ggml's scheduler calls the eval callback on the thread that called llama_decode, one node at a time.
// - set_spec, clear_spec, begin_capture, end_capture and set_chained change what the next decode does: call
//   them only from the thread that decodes, between two decodes, never while llama_decode runs. Nothing
//   else synchronizes them with the callback.
// - counters, skipped_names, reset_counters, captured, n_units and n_tables may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ggml_api.hpp"

namespace austeer {

constexpr int kMaxSites = 16;
constexpr int kMaxLayers = 4096;
constexpr size_t kMaxSkippedNames = 32;

struct SiteName {
    std::string prefix;           // graph tensor prefix, e.g. "kqv_out"
    bool first_in_layer = false;  // only the first tensor of that name in a layer is the site
};

// Exact "<prefix>-<layer>" names, for a fixed list of prefixes.
class SiteMatcher {
public:
    explicit SiteMatcher(std::vector<SiteName> sites);
    // The site code of `name` and its layer in *layer, or -1.
    int match(const char *name, int *layer) const;
    int size() const { return int(sites_.size()); }
    const SiteName &site(int code) const { return sites_[size_t(code)]; }

private:
    std::vector<SiteName> sites_;
};

using EvalCallback = bool (*)(void *tensor, bool ask, void *user_data);

struct UnitFactor {
    int32_t dim;
    float factor;  // the value is multiplied by this
};

// An immutable table of units grouped by (site, layer), dims ascending within a group.
class UnitTable {
public:
    UnitTable(int n_sites, int n_layers, const std::vector<int32_t> &layers, const std::vector<int32_t> &sites,
              const std::vector<int32_t> &dims, const std::vector<float> &factors);
    const UnitFactor *begin(int site, int layer) const;
    const UnitFactor *end(int site, int layer) const;
    bool has(int site, int layer) const { return layer < n_layers_ && begin(site, layer) != end(site, layer); }
    size_t size() const { return units_.size(); }

private:
    int n_layers_;
    std::vector<UnitFactor> units_;
    std::vector<uint32_t> offsets_;  // n_sites * n_layers + 1 entries
};

// Vectors added to every row of one site's tensor, one per layer: a control vector, which llama.cpp adds to the
// residual just before the tensor is named l_out-L, added here by the callback at that tensor, per row.
class LayerAdditions {
public:
    LayerAdditions() = default;
    // `values` holds layers.size() rows of `width` floats, row i for layer layers[i].
    LayerAdditions(int n_layers, const std::vector<int32_t> &layers, const std::vector<float> &values, int64_t width);
    const float *at(int layer) const {  // nullptr when the layer has none
        return layer < int(index_.size()) && index_[size_t(layer)] >= 0
                   ? values_.data() + size_t(index_[size_t(layer)]) * size_t(width_)
                   : nullptr;
    }
    int64_t width() const { return width_; }
    size_t size() const { return width_ > 0 ? values_.size() / size_t(width_) : 0; }

private:
    int64_t width_ = 0;
    std::vector<int32_t> index_;  // per layer: its row in values_, or -1
    std::vector<float> values_;
};

// What one table of a spec does to the rows that take it: scale units, and (at the additions' site) add vectors.
struct SteeringTable {
    UnitTable units;
    LayerAdditions additions;
};

// The rows of one micro-batch as its tensors hold them: the table of each row, and of each output row.
struct MicroBatch {
    std::vector<int32_t> tables;
    std::vector<int32_t> output_tables;
};

// What one decode applies: tables 1..n and the table of every batch row (see the file comment).
// `row_tables` has one entry per batch row (0..n); empty means every row takes table 1. `output_rows` lists
// the batch rows that produce output, in batch order: a tensor that holds only those rows (the last layer
// keeps only them from the attention projection on) is mapped through them. llama.cpp may compute a batch as
// several micro-batches, in an order of its own: `micro_batches` lists the batch rows of each, in the order
// its tensors hold them (empty: one micro-batch, the batch in order). Additions go to the tensors of site code
// `addition_site` (-1: none).
class SteeringSpec {
public:
    SteeringSpec(int n_sites, int n_layers, std::vector<SteeringTable> tables, int addition_site,
                 const std::vector<int32_t> &row_tables, const std::vector<int64_t> &output_rows,
                 const std::vector<std::vector<int64_t>> &micro_batches);
    // Whether any table a row may take has units, or additions, at (site, layer).
    bool claims(int site, int layer) const { return claimed_[size_t(site) * n_layers_ + size_t(layer)] != 0; }
    bool uniform() const { return micro_batches_.empty(); }
    const SteeringTable &table(int32_t index) const { return tables_[size_t(index - 1)]; }  // index 1..n
    const MicroBatch &micro_batch(size_t index) const { return micro_batches_[index]; }
    size_t n_micro_batches() const { return micro_batches_.size(); }
    int addition_site() const { return addition_site_; }
    int n_layers() const { return n_layers_; }
    size_t n_tables() const { return tables_.size(); }
    size_t n_units() const;

private:
    int n_layers_;
    std::vector<SteeringTable> tables_;
    int addition_site_;
    std::vector<MicroBatch> micro_batches_;  // empty: uniform
    std::vector<uint8_t> claimed_;           // [site * n_layers + layer]
};

// Every counter once: (name, what it counts). The bindings build their dict from this list.
#define AUSTEER_COUNTERS(X)                                                                   \
    X(steered, "tensors scaled")                                                              \
    X(captured, "tensors captured")                                                           \
    X(via_backend_api, "tensors reached through ggml_backend_tensor_get/set")                 \
    X(skipped_not_f32, "tensors left alone: not F32")                                         \
    X(skipped_not_contiguous, "tensors left alone: not contiguous")                           \
    X(skipped_width, "tensors left alone: a unit dim beyond the row width")                   \
    X(skipped_no_data, "tensors left alone: no buffer and no memory attached")                \
    X(skipped_unknown_layout, "tensors left alone: tensor fields we could not verify")        \
    X(skipped_rows, "tensors left alone: the row map does not fit their rows")                \
    X(capture_row_mismatch, "captures left out: rows neither the batch nor its outputs")      \
    X(errors, "exceptions caught in the callback")

struct Counters {
#define AUSTEER_DECLARE_COUNTER(name, what) std::atomic<uint64_t> name{0};
    AUSTEER_COUNTERS(AUSTEER_DECLARE_COUNTER)
#undef AUSTEER_DECLARE_COUNTER
    void reset();
};

// What capture mode records: for each selected site and every layer, the chosen rows of the site tensor.
// A tensor with `n_batch_tokens` rows is read at `rows`; a tensor that holds only the output rows (the last
// layer keeps just the tokens that produce logits) and has rows.size() rows is read in order.
struct CaptureSpec {
    uint32_t site_mask = 0;
    int n_layers = 0;
    int64_t n_batch_tokens = 0;
    std::vector<int64_t> rows;
    std::vector<int64_t> widths;  // one per site code; 0 for sites not captured
};

// One site's captured values: [n_layers, rows, width] and which layers were filled.
struct Captured {
    std::vector<float> values;
    std::vector<uint8_t> filled;
    int64_t n_rows = 0;
    int64_t width = 0;
};

class SteeringState {
public:
    SteeringState(GgmlApi api, std::vector<SiteName> sites);
    ~SteeringState();

    // The C callback to put in llama_context_params.cb_eval, with this object as its user data.
    static bool eval_callback(void *tensor, bool ask, void *user_data) noexcept;

    const SiteMatcher &sites() const { return sites_; }

    // What the next decodes apply (see the threading contract); nullptr or clear_spec: steer nothing.
    void set_spec(std::unique_ptr<const SteeringSpec> spec);
    void clear_spec() { set_spec(nullptr); }
    size_t n_units() const { return n_units_.load(); }
    size_t n_tables() const { return n_tables_.load(); }

    void set_chained(EvalCallback callback, void *user_data);

    void begin_capture(CaptureSpec spec);
    void end_capture();
    Captured captured(int site) const;  // read under one lock

    // "name: reason" of tensors that were claimed but left alone (at most kMaxSkippedNames, no repeats).
    std::vector<std::string> skipped_names() const;
    void reset_counters();

    Counters counters;

private:
    bool ask(void *tensor);
    bool compute(void *tensor);

    struct Access;  // how one tensor's floats are reached
    bool open(void *tensor, Access *access);
    void steer(void *tensor, int site, int layer);
    void capture(void *tensor, int site, int layer);
    void note_skip(void *tensor, const char *reason);

    const GgmlApi api_;
    const SiteMatcher sites_;

    // Changed only between decodes by the decoding thread (the threading contract): no locks.
    std::unique_ptr<const SteeringSpec> spec_;
    EvalCallback chained_ = nullptr;
    void *chained_user_data_ = nullptr;
    uint32_t capture_mask_ = 0;
    std::atomic<size_t> n_units_{0};  // of spec_, readable from any thread
    std::atomic<size_t> n_tables_{0};

    mutable std::mutex capture_mutex_;  // captured() may read from any thread
    CaptureSpec capture_;
    std::vector<std::vector<float>> capture_buffers_;
    std::vector<std::vector<uint8_t>> capture_filled_;

    mutable std::mutex skipped_mutex_;
    std::vector<std::string> skipped_names_;

    // Per-graph bookkeeping, touched only by the thread that runs the graph.
    std::vector<uint8_t> first_seen_;  // [site * kMaxLayers + layer]: a first_in_layer site was seen
    // Per decode: how many tensors of (site, layer) were steered [site * n_layers + layer]. llama.cpp computes
    // a decode's micro-batches one after the other, so the k-th is in the k-th micro-batch.
    std::vector<uint32_t> visits_;
    struct Pending {
        const void *tensor = nullptr;
        int site = -1;
        int layer = -1;
        bool steer = false;
        bool capture = false;
        bool chained = false;
    } pending_;
    std::vector<float> scratch_;  // host copy for tensors not in host memory
};

}  // namespace austeer
