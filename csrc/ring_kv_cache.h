// Input validation shared by the CPU and CUDA ring-buffer ops, so both raise the same
// errors. Shape and value problems raise ValueError in Python (TORCH_CHECK_VALUE), dtype
// problems TypeError (TORCH_CHECK_TYPE); every message names the op and the input.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace more3s {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::ScalarType::Float || t == at::ScalarType::Half ||
         t == at::ScalarType::BFloat16;
}

// k_cache, v_cache: [B, H, C, D], same dtype/device, contiguous, every size >= 1.
inline void check_ring_cache(const char* op, const at::Tensor& k_cache,
                             const at::Tensor& v_cache) {
  TORCH_CHECK_VALUE(k_cache.dim() == 4, op, ": k_cache must be 4-D [B, H, C, D], got shape ",
                    k_cache.sizes());
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), op, ": v_cache shape ",
                    v_cache.sizes(), " differs from k_cache shape ", k_cache.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(k_cache.scalar_type()), op,
                   ": k_cache dtype must be float32, float16 or bfloat16, got ",
                   k_cache.scalar_type());
  TORCH_CHECK_TYPE(v_cache.scalar_type() == k_cache.scalar_type(), op, ": v_cache dtype ",
                   v_cache.scalar_type(), " differs from k_cache dtype ", k_cache.scalar_type());
  TORCH_CHECK_VALUE(v_cache.device() == k_cache.device(), op, ": v_cache is on ",
                    v_cache.device(), " but k_cache is on ", k_cache.device());
  TORCH_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous(), op,
                    ": k_cache and v_cache must be contiguous");
  for (int64_t i = 0; i < 4; ++i) {
    TORCH_CHECK_VALUE(k_cache.size(i) >= 1, op, ": every size of k_cache [B, H, C, D] must be "
                      ">= 1, got ", k_cache.sizes());
  }
}

// t: [B, H, n, D] new tokens matching the cache, 1 <= n <= C.
inline void check_ring_tokens(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& k_cache) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D [B, H, n, D], got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == k_cache.size(0) && t.size(1) == k_cache.size(1) &&
                        t.size(3) == k_cache.size(3),
                    op, ": ", name, " shape ", t.sizes(),
                    " does not match the cache [B, H, C, D] = ", k_cache.sizes(),
                    " in B, H or D");
  TORCH_CHECK_TYPE(t.scalar_type() == k_cache.scalar_type(), op, ": ", name, " dtype ",
                   t.scalar_type(), " differs from the cache dtype ", k_cache.scalar_type());
  TORCH_CHECK_VALUE(t.device() == k_cache.device(), op, ": ", name, " is on ", t.device(),
                    " but the cache is on ", k_cache.device());
  const int64_t n = t.size(2);
  TORCH_CHECK_VALUE(n >= 1, op, ": ", name, " has n=0 new tokens (need 1 <= n <= capacity)");
  TORCH_CHECK_VALUE(n <= k_cache.size(2), op, ": ", name, " has n=", n,
                    " new tokens but the ring capacity is ", k_cache.size(2),
                    " (n > capacity)");
}

// lengths: [B] int64 on the cache's device.
inline void check_ring_lengths(const char* op, const at::Tensor& lengths,
                               const at::Tensor& k_cache) {
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == k_cache.size(0), op,
                    ": lengths must have shape [B] = [", k_cache.size(0), "], got ",
                    lengths.sizes());
  TORCH_CHECK_TYPE(lengths.scalar_type() == at::ScalarType::Long, op,
                   ": lengths must be int64, got ", lengths.scalar_type());
  TORCH_CHECK_VALUE(lengths.device() == k_cache.device(), op, ": lengths is on ",
                    lengths.device(), " but the cache is on ", k_cache.device());
}

inline void check_ring_append_args(const char* op, const at::Tensor& k_cache,
                                   const at::Tensor& v_cache, const at::Tensor& key,
                                   const at::Tensor& value, const at::Tensor& lengths) {
  check_ring_cache(op, k_cache, v_cache);
  check_ring_tokens(op, "key", key, k_cache);
  check_ring_tokens(op, "value", value, k_cache);
  TORCH_CHECK_VALUE(value.sizes() == key.sizes(), op, ": value shape ", value.sizes(),
                    " differs from key shape ", key.sizes());
  check_ring_lengths(op, lengths, k_cache);
}

inline void check_ring_attention_args(const char* op, const at::Tensor& query,
                                      const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& lengths, double scale) {
  check_ring_cache(op, k_cache, v_cache);
  check_ring_tokens(op, "query", query, k_cache);
  check_ring_lengths(op, lengths, k_cache);
  TORCH_CHECK_VALUE(scale > 0.0 && scale < INFINITY, op, ": scale must be finite and > 0, got ",
                    scale);
}

}  // namespace more3s
