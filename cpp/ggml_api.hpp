// The few ggml functions the steering core calls, declared by us and resolved at run time from the
// libggml-base shared library that llama_cpp has already loaded. Tensors stay opaque pointers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace austeer {

struct GgmlApi {
    const char *(*get_name)(const void *tensor) = nullptr;
    int64_t (*nelements)(const void *tensor) = nullptr;
    int64_t (*nrows)(const void *tensor) = nullptr;
    size_t (*nbytes)(const void *tensor) = nullptr;
    size_t (*element_size)(const void *tensor) = nullptr;
    size_t (*type_size)(int type) = nullptr;
    bool (*is_contiguous)(const void *tensor) = nullptr;
    void *(*get_data)(const void *tensor) = nullptr;
    void (*tensor_get)(const void *tensor, void *data, size_t offset, size_t size) = nullptr;
    void (*tensor_set)(void *tensor, const void *data, size_t offset, size_t size) = nullptr;
    bool (*buffer_is_host)(const void *buffer) = nullptr;

    // Resolves every function from the already loaded library at `path`; throws std::runtime_error
    // naming what is missing.
    static GgmlApi load(const std::string &path);
};

// The leading fields of ggml's tensor struct (type, buffer, ne[4], nb[4]). They have kept this order for a
// long time, but we never trust it blindly: every read is checked against the accessor functions above,
// and a tensor whose fields do not agree is left alone and counted (skipped_unknown_layout).
struct TensorHead {
    int32_t type;
    const void *buffer;
    int64_t ne[4];
    size_t nb[4];
};

constexpr int kGgmlTypeF32 = 0;
constexpr int kGgmlTypeCount = 64;  // an upper bound on ggml's type enum, used as a sanity check

}  // namespace austeer
