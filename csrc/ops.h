// Host declarations of the more3s ops (schemas live in torch_bindings.cpp).
//
// Ring-buffer KV cache of a batch of environments (one ring per layer, owned by the
// Python class more3s.rollout.RingKVCache):
//   k_cache, v_cache: [B, H, C, D] contiguous, C = capacity
//   lengths:          [B] int64, tokens appended to each environment since its last reset,
//                     counted BEFORE the current step's append
// The token with absolute index a (0 = first token after the reset) lives in slot a % C.
#pragma once

#include <ATen/core/Tensor.h>

namespace more3s {

// Writes the n new tokens key/value [B, H, n, D] into slots (lengths[b] + j) % C.
void ring_append_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key,
                     const at::Tensor& value, const at::Tensor& lengths);

// Attention of the n new queries [B, H, n, D] over the ring after the append: query j of
// environment b sees the held tokens with absolute index in
// [max(0, lengths[b] + n - C), lengths[b] + j]. Returns [B, H, n, D] (contiguous).
at::Tensor ring_attention_cpu(const at::Tensor& query, const at::Tensor& k_cache,
                              const at::Tensor& v_cache, const at::Tensor& lengths,
                              double scale);

#ifdef MORE3S_WITH_CUDA
void ring_append_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key,
                      const at::Tensor& value, const at::Tensor& lengths);

at::Tensor ring_attention_cuda(const at::Tensor& query, const at::Tensor& k_cache,
                               const at::Tensor& v_cache, const at::Tensor& lengths,
                               double scale);
#endif

}  // namespace more3s
