// Steering state and the ggml eval callback that scales atomic units in place.
//
// The callback is installed once, at context creation, and reads this state on every call, so steering can
// change (on/off, a new unit table) without a model reload. The state knows its sites only as graph tensor
// prefixes handed in at construction ("<prefix>-<layer>"); site code i is the i-th prefix. It can also
// capture chosen rows of site tensors into buffers (used by localization). It knows nothing of profiles,
// scores or strengths: a unit arrives with its final factor.
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

struct Counters {
    std::atomic<uint64_t> steered{0};           // tensors scaled
    std::atomic<uint64_t> captured{0};          // tensors captured
    std::atomic<uint64_t> via_backend_api{0};   // tensors reached through ggml_backend_tensor_get/set
    std::atomic<uint64_t> skipped_not_f32{0};
    std::atomic<uint64_t> skipped_not_contiguous{0};
    std::atomic<uint64_t> skipped_width{0};     // a unit dim beyond the tensor's row width
    std::atomic<uint64_t> skipped_no_data{0};   // no buffer and no memory attached to the tensor
    std::atomic<uint64_t> skipped_unknown_layout{0};  // tensor fields we could not verify
    std::atomic<uint64_t> capture_row_mismatch{0};
    std::atomic<uint64_t> errors{0};            // exceptions caught in the callback
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

    void set_units(std::unique_ptr<UnitTable> table);  // nullptr clears
    size_t n_units() const;
    std::atomic<bool> enabled{false};

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

    // Unit tables are swapped atomically; a replaced table is freed only when no callback is running.
    std::atomic<const UnitTable *> table_{nullptr};
    std::atomic<int> readers_{0};
    std::mutex retired_mutex_;
    std::vector<std::unique_ptr<const UnitTable>> owned_tables_;
    void release_unused_tables();

    std::atomic<EvalCallback> chained_{nullptr};
    std::atomic<void *> chained_user_data_{nullptr};

    std::atomic<uint32_t> capture_mask_{0};
    mutable std::mutex capture_mutex_;
    CaptureSpec capture_;
    std::vector<std::vector<float>> capture_buffers_;
    std::vector<std::vector<uint8_t>> capture_filled_;

    mutable std::mutex skipped_mutex_;
    std::vector<std::string> skipped_names_;

    // Per-graph bookkeeping, touched only by the thread that runs the graph.
    std::vector<uint8_t> first_seen_;  // [site * kMaxLayers + layer]: a first_in_layer site was seen
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
