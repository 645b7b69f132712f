// Shared by the CPU decode-attention bodies: the portable one (ring_kv_cache_cpu.cpp) and the
// AVX-512 one (ring_attention_avx512.cpp), which the op hands its heads to when the CPU and the
// head size allow.
#pragma once

#include <cstdint>

namespace more3s {

template <typename scalar_t>
struct AttentionArgs {
  const scalar_t* q;    // [B, H, n, D] strided (q_stride)
  const scalar_t* kc;   // [B, H, C, D]
  const scalar_t* vc;   // [B, H, C, D]
  const int64_t* len;   // [B] strided (len_stride), tokens before the append
  scalar_t* out;        // [B, H, n, D] contiguous
  int64_t H, n, C, D, len_stride;
  int64_t q_stride[4];
  float scale;
};

// Whether ring_attention_avx512 runs here for head size D: the CPU has AVX-512F (checked once)
// and D is 16, 32, 64, 128 or 256.
bool ring_attention_avx512_supports(int64_t head_dim);

// Decode attention (float32 math) of the flattened heads [begin, end) of B x H, the semantics of
// ring_attention_cpu; call only when ring_attention_avx512_supports(a.D). Instantiated for float,
// c10::Half and c10::BFloat16.
template <typename scalar_t>
void ring_attention_avx512(const AttentionArgs<scalar_t>& a, int64_t begin, int64_t end);

}  // namespace more3s
