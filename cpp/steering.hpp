// Steering state and the ggml eval callback that scales atomic units in place.
//
// The callback is installed once, at context creation, and reads this state on every call, so steering can
// change (enabled, strength, a new unit table) without a model reload. It knows three sites by tensor name:
//   site 0 "attn"  = kqv_out-L   (attention output before the output projection)
//   site 1 "ffn"   = ffn_out-L   (the first one of layer L: the FFN block output before the residual add)
//   site 2 "layer" = l_out-L     (the residual stream after layer L)
// and it can also capture chosen rows of site tensors into buffers (used by localization).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "ggml_api.hpp"

namespace austeer {

constexpr int kNumSites = 3;
constexpr int kMaxLayers = 4096;

// Returns the site code of an exact "kqv_out-L", "ffn_out-L" or "l_out-L" name and sets *layer, else -1.
int parse_site_name(const char *name, int *layer);

using EvalCallback = bool (*)(void *tensor, bool ask, void *user_data);

struct UnitGain {
    int32_t dim;
    float gain;  // alpha * score; the factor applied is 1 + strength * gain
};

// An immutable table of units grouped by (site, layer), dims ascending within a group.
class UnitTable {
public:
    UnitTable(int n_layers, const std::vector<int32_t> &layers, const std::vector<int32_t> &sites,
              const std::vector<int32_t> &dims, const std::vector<float> &gains);
    const UnitGain *begin(int site, int layer) const;
    const UnitGain *end(int site, int layer) const;
    bool has(int site, int layer) const { return layer < n_layers_ && begin(site, layer) != end(site, layer); }
    int n_layers() const { return n_layers_; }
    size_t size() const { return units_.size(); }

private:
    int n_layers_;
    std::vector<UnitGain> units_;
    std::vector<uint32_t> offsets_;  // kNumSites * n_layers + 1 entries
};

struct Counters {
    std::atomic<uint64_t> steered{0};           // tensors scaled
    std::atomic<uint64_t> captured{0};          // tensors captured
    std::atomic<uint64_t> via_backend_api{0};   // tensors reached through ggml_backend_tensor_get/set
    std::atomic<uint64_t> skipped_not_f32{0};
    std::atomic<uint64_t> skipped_not_contiguous{0};
    std::atomic<uint64_t> skipped_width{0};     // a unit dim beyond the tensor's row width
    std::atomic<uint64_t> skipped_no_data{0};   // no memory attached to the tensor
    std::atomic<uint64_t> capture_row_mismatch{0};
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
    int64_t widths[kNumSites] = {0, 0, 0};
};

class SteeringState {
public:
    explicit SteeringState(GgmlApi api);
    ~SteeringState();

    // The C callback to put in llama_context_params.cb_eval, with this object as its user data.
    static bool eval_callback(void *tensor, bool ask, void *user_data);

    void set_units(std::unique_ptr<UnitTable> table);  // nullptr clears
    size_t n_units() const;
    std::atomic<bool> enabled{false};
    std::atomic<float> strength{1.0f};

    void set_chained(EvalCallback callback, void *user_data);

    void begin_capture(CaptureSpec spec);
    void end_capture();
    // Copies out [n_layers, rows, width] for one site and which layers were filled.
    std::vector<float> captured(int site, std::vector<uint8_t> *filled_layers) const;
    CaptureSpec capture_spec() const;

    Counters counters;

private:
    bool ask(void *tensor);
    bool compute(void *tensor);

    struct Access;  // how one tensor's floats are reached
    bool open(void *tensor, Access *access);
    void steer(void *tensor, int site, int layer);
    void capture(void *tensor, int site, int layer);

    const GgmlApi api_;

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
    std::vector<float> capture_buffers_[kNumSites];
    std::vector<uint8_t> capture_filled_[kNumSites];

    // Per-graph bookkeeping, touched only by the thread that runs the graph.
    std::vector<uint8_t> ffn_out_seen_;  // the first ffn_out-L of a layer is the FFN output
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
