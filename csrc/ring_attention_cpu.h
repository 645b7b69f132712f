// Shared by the CPU decode-attention bodies: the portable one (ring_kv_cache_cpu.cpp) and the
// AVX-512 one (ring_attention_avx512.cpp), which the op hands its heads to when the CPU and the
// head size allow.
#pragma once

#include <algorithm>
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

// The tokens environment b's ring holds after the append of n (the semantics in ops.h): absolute
// indices first .. before + n - 1, the oldest in slot first_slot; query j sees first .. before + j.
struct HeldTokens {
  int64_t before;      // tokens before the append
  int64_t first;       // oldest held token
  int64_t first_slot;  // its slot
  int64_t held;        // tokens in the ring
};

template <typename scalar_t>
inline HeldTokens held_tokens(const AttentionArgs<scalar_t>& a, int64_t b) {
  const int64_t before = a.len[b * a.len_stride];
  const int64_t first = std::max<int64_t>(0, before + a.n - a.C);
  return {before, first, first % a.C, before + a.n - first};
}

// Row of held token t (0 = oldest) in a head's [C, D] slot-ordered rows.
template <typename T>
inline const T* held_row(const T* rows, int64_t first_slot, int64_t t, int64_t C, int64_t D) {
  const int64_t slot = first_slot + t;  // t < C, so one wrap at most
  return rows + (slot >= C ? slot - C : slot) * D;
}

// Head (b, h)'s n queries (any strides) as float times the scale -> q_rows [n, D].
template <typename scalar_t>
inline void scaled_queries(const AttentionArgs<scalar_t>& a, int64_t b, int64_t h, float* q_rows) {
  for (int64_t j = 0; j < a.n; ++j) {
    const scalar_t* q_src = a.q + b * a.q_stride[0] + h * a.q_stride[1] + j * a.q_stride[2];
    for (int64_t d = 0; d < a.D; ++d) {
      q_rows[j * a.D + d] = static_cast<float>(q_src[d * a.q_stride[3]]) * a.scale;
    }
  }
}

// Whether ring_attention_avx512 runs here for head size D: the CPU has AVX-512F (checked once)
// and D is 16, 32, 64, 128 or 256.
bool ring_attention_avx512_supports(int64_t head_dim);

// Decode attention (float32 math) of the flattened heads [begin, end) of B x H, the semantics of
// ring_attention_cpu; call only when ring_attention_avx512_supports(a.D). Instantiated for float,
// c10::Half and c10::BFloat16.
template <typename scalar_t>
void ring_attention_avx512(const AttentionArgs<scalar_t>& a, int64_t begin, int64_t end);

}  // namespace more3s
