// CPU ring-buffer KV cache: append and decode attention, parallel over batch x head (heads of a
// supported size go to the AVX-512 body in ring_attention_avx512.cpp when the CPU has it).
//
// Semantics (shared with the CUDA kernels and the PyTorch reference in
// more3s/model/ring_ops.py): the token with absolute index a (tokens since the environment's
// last reset) lives in slot a % C. After appending n tokens to an environment that had
// L = lengths[b] tokens, the ring holds absolute indices [max(0, L + n - C), L + n - 1], and
// new query j (absolute index L + j) attends to the held tokens with index <= L + j.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "dispatch_utils.h"
#include "ops.h"
#include "ring_kv_cache.h"
#include "ring_attention_cpu.h"

namespace more3s {
namespace {

// Work below this many multiply-adds per task is not worth a thread hand-off.
constexpr int64_t kMinWorkPerTask = 32768;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(1, work_per_item));
}

// The attention body is compiled twice per dtype (AVX2+FMA and baseline x86-64) and the
// right clone is picked when the library loads, so the extension runs vectorized without
// -march=native. `omp simd` (enabled by -fopenmp-simd, no OpenMP runtime) allows the
// reassociation a vectorized dot product needs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__NVCC__)
#define MORE3S_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MORE3S_CPU_CLONES
#endif
#define MORE3S_INLINE inline __attribute__((always_inline))

// Keys handled together: four independent dot products / axpys keep the FMA units busy
// instead of waiting on one accumulator.
constexpr int64_t kKeyBlock = 4;

// IEEE half -> float with integer masks instead of branches (F. Giesen's method), so the
// conversion loop vectorizes; exact for all 65536 inputs (checked against F16C's vcvtph2ps).
MORE3S_INLINE float half_bits_to_float(uint16_t h) {
  constexpr uint32_t kShiftedExp = 0x7c00u << 13;  // half exponent mask, in float position
  uint32_t o = (uint32_t{h} & 0x7fffu) << 13;      // exponent and mantissa, unbiased
  const uint32_t exp = kShiftedExp & o;
  const uint32_t inf_nan = 0u - static_cast<uint32_t>(exp == kShiftedExp);  // all-ones mask
  const uint32_t subnormal = 0u - static_cast<uint32_t>(exp == 0u);        // all-ones mask
  o += (127u - 15u) << 23;                  // rebias the exponent
  o += inf_nan & ((128u - 16u) << 23);      // Inf/NaN keep an all-ones exponent
  // Subnormal halves (and zero): renormalize through a float subtraction of 2^-14.
  const uint32_t renorm = std::bit_cast<uint32_t>(std::bit_cast<float>(o + (1u << 23)) -
                                                  std::bit_cast<float>(113u << 23));
  const uint32_t mag = (renorm & subnormal) | (o & ~subnormal);
  return std::bit_cast<float>(mag | ((uint32_t{h} & 0x8000u) << 16));
}

MORE3S_INLINE void to_float(const c10::Half* __restrict__ src, float* __restrict__ dst,
                            int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(bits[i]);
}

MORE3S_INLINE void to_float(const c10::BFloat16* __restrict__ src, float* __restrict__ dst,
                            int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(uint32_t{bits[i]} << 16);
}

// logits[j, t] = q[j] . row(t) for the n queries and the `held` tokens. Each block of keys is
// read once from memory and reused from L1 by every query.
MORE3S_INLINE void dot_rows(const float* __restrict__ q,  // [n, D]
                            const float* rows, int64_t first_slot, int64_t C, int64_t D,
                            int64_t n, int64_t held,
                            float* __restrict__ logits) {  // [n, C]
  int64_t t = 0;
  for (; t + kKeyBlock <= held; t += kKeyBlock) {
    const float* __restrict__ r0 = held_row(rows, first_slot, t, C, D);
    const float* __restrict__ r1 = held_row(rows, first_slot, t + 1, C, D);
    const float* __restrict__ r2 = held_row(rows, first_slot, t + 2, C, D);
    const float* __restrict__ r3 = held_row(rows, first_slot, t + 3, C, D);
    for (int64_t j = 0; j < n; ++j) {
      const float* __restrict__ qj = q + j * D;
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t d = 0; d < D; ++d) {
        s0 += qj[d] * r0[d];
        s1 += qj[d] * r1[d];
        s2 += qj[d] * r2[d];
        s3 += qj[d] * r3[d];
      }
      float* out = logits + j * C + t;
      out[0] = s0;
      out[1] = s1;
      out[2] = s2;
      out[3] = s3;
    }
  }
  for (; t < held; ++t) {
    const float* __restrict__ r = held_row(rows, first_slot, t, C, D);
    for (int64_t j = 0; j < n; ++j) {
      const float* __restrict__ qj = q + j * D;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += qj[d] * r[d];
      logits[j * C + t] = s;
    }
  }
}

// acc[j] = sum_t p[j, t] * row(t) over the `held` tokens (p is 0 where j must not look).
MORE3S_INLINE void weighted_rows(const float* __restrict__ p,  // [n, C]
                                 const float* rows, int64_t first_slot, int64_t C, int64_t D,
                                 int64_t n, int64_t held,
                                 float* __restrict__ acc) {  // [n, D]
  std::fill(acc, acc + n * D, 0.f);
  int64_t t = 0;
  for (; t + kKeyBlock <= held; t += kKeyBlock) {
    const float* __restrict__ r0 = held_row(rows, first_slot, t, C, D);
    const float* __restrict__ r1 = held_row(rows, first_slot, t + 1, C, D);
    const float* __restrict__ r2 = held_row(rows, first_slot, t + 2, C, D);
    const float* __restrict__ r3 = held_row(rows, first_slot, t + 3, C, D);
    for (int64_t j = 0; j < n; ++j) {
      const float* pj = p + j * C + t;
      const float p0 = pj[0], p1 = pj[1], p2 = pj[2], p3 = pj[3];
      float* __restrict__ aj = acc + j * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) aj[d] += (p0 * r0[d] + p1 * r1[d]) + (p2 * r2[d] + p3 * r3[d]);
    }
  }
  for (; t < held; ++t) {
    const float* __restrict__ r = held_row(rows, first_slot, t, C, D);
    for (int64_t j = 0; j < n; ++j) {
      const float pt = p[j * C + t];
      float* __restrict__ aj = acc + j * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) aj[d] += pt * r[d];
    }
  }
}

// Per-task scratch, allocated once per parallel_for chunk.
struct AttentionScratch {
  float* q_rows;  // [n, D] scaled queries in float
  float* acc;     // [n, D] sums of p * v
  float* probs;   // [n, C] logits, then unnormalized probabilities
  float* k_head;  // [C, D] one head's keys in float (half/bfloat16 caches only)
  float* v_head;  // [C, D] one head's values in float (half/bfloat16 caches only)
};

// One head's held rows as float [C, D] in slot order: float caches are read in place,
// half/bfloat16 ones are converted once per head (only the slots that hold tokens).
template <typename scalar_t>
MORE3S_INLINE const float* head_as_float(const scalar_t* head, float* scratch, int64_t first_slot,
                                         int64_t count, int64_t C, int64_t D) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return head;
  } else {
    const int64_t tail = std::min(count, C - first_slot);  // slots first_slot .. C-1
    to_float(head + first_slot * D, scratch + first_slot * D, tail * D);
    to_float(head, scratch, (count - tail) * D);            // wrapped slots 0 ..
    return scratch;
  }
}

// Attention of the n new queries of heads [begin, end) of the flattened B x H.
template <typename scalar_t>
MORE3S_INLINE void attend_heads(const AttentionArgs<scalar_t>& a, const AttentionScratch& w,
                                int64_t begin, int64_t end) {
  const int64_t H = a.H, n = a.n, C = a.C, D = a.D;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H;
    const int64_t h = bh % H;
    const auto [before, first, first_slot, held] = held_tokens(a, b);
    const float* k_head = head_as_float(a.kc + bh * C * D, w.k_head, first_slot, held, C, D);
    const float* v_head = head_as_float(a.vc + bh * C * D, w.v_head, first_slot, held, C, D);
    scaled_queries(a, b, h, w.q_rows);
    dot_rows(w.q_rows, k_head, first_slot, C, D, n, held, w.probs);
    for (int64_t j = 0; j < n; ++j) {
      // Query j sees held tokens first .. before + j (its own included); the newer ones get
      // probability 0.
      const int64_t count = before + j - first + 1;
      float* p = w.probs + j * C;
      float max_logit = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < count; ++t) max_logit = std::max(max_logit, p[t]);
      float sum = 0.f;
      for (int64_t t = 0; t < count; ++t) {
        p[t] = std::exp(p[t] - max_logit);
        sum += p[t];
      }
      const float inv_sum = 1.f / sum;
      for (int64_t t = 0; t < count; ++t) p[t] *= inv_sum;
      std::fill(p + count, p + held, 0.f);
    }
    weighted_rows(w.probs, v_head, first_slot, C, D, n, held, w.acc);
    for (int64_t j = 0; j < n; ++j) {
      scalar_t* o_row = a.out + (bh * n + j) * D;
      for (int64_t d = 0; d < D; ++d) o_row[d] = static_cast<scalar_t>(w.acc[j * D + d]);
    }
  }
}

MORE3S_CPU_CLONES void attend_heads_float(const AttentionArgs<float>& a,
                                          const AttentionScratch& w, int64_t begin,
                                          int64_t end) {
  attend_heads(a, w, begin, end);
}
MORE3S_CPU_CLONES void attend_heads_half(const AttentionArgs<c10::Half>& a,
                                         const AttentionScratch& w, int64_t begin,
                                         int64_t end) {
  attend_heads(a, w, begin, end);
}
MORE3S_CPU_CLONES void attend_heads_bfloat16(const AttentionArgs<c10::BFloat16>& a,
                                             const AttentionScratch& w, int64_t begin,
                                             int64_t end) {
  attend_heads(a, w, begin, end);
}

template <typename scalar_t>
void attend_heads_dispatch(const AttentionArgs<scalar_t>& a, const AttentionScratch& w,
                           int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    attend_heads_float(a, w, begin, end);
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    attend_heads_half(a, w, begin, end);
  } else {
    static_assert(std::is_same_v<scalar_t, c10::BFloat16>, "unsupported dtype");
    attend_heads_bfloat16(a, w, begin, end);
  }
}

void check_lengths_nonnegative(const char* op, const at::Tensor& lengths) {
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t stride = lengths.stride(0);
  for (int64_t b = 0; b < lengths.size(0); ++b) {
    TORCH_CHECK_VALUE(len[b * stride] >= 0, op, ": lengths must be >= 0, got lengths[", b,
                      "] = ", len[b * stride]);
  }
}

template <typename scalar_t>
void ring_append_impl(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key,
                      const at::Tensor& value, const at::Tensor& lengths) {
  const int64_t H = k_cache.size(1), C = k_cache.size(2), D = k_cache.size(3);
  const int64_t n = key.size(2);
  const int64_t B = k_cache.size(0);
  scalar_t* __restrict__ kc = k_cache.data_ptr<scalar_t>();  // [B, H, C, D]
  scalar_t* __restrict__ vc = v_cache.data_ptr<scalar_t>();  // [B, H, C, D]
  const scalar_t* __restrict__ kn = key.data_ptr<scalar_t>();    // [B, H, n, D] strided
  const scalar_t* __restrict__ vn = value.data_ptr<scalar_t>();  // [B, H, n, D] strided
  const int64_t* __restrict__ len = lengths.data_ptr<int64_t>();  // [B]
  const int64_t len_stride = lengths.stride(0);
  const auto ks = key.strides();
  const auto vs = value.strides();

  // One task = one new token of one (b, h): copy its D values into the slot.
  at::parallel_for(0, B * H * n, grain_for(2 * D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t j = row % n;
      const int64_t bh = row / n;
      const int64_t h = bh % H;
      const int64_t b = bh / H;
      const int64_t slot = (len[b * len_stride] + j) % C;
      scalar_t* kd = kc + (bh * C + slot) * D;
      scalar_t* vd = vc + (bh * C + slot) * D;
      const scalar_t* ksrc = kn + b * ks[0] + h * ks[1] + j * ks[2];
      const scalar_t* vsrc = vn + b * vs[0] + h * vs[1] + j * vs[2];
      for (int64_t d = 0; d < D; ++d) {
        kd[d] = ksrc[d * ks[3]];
        vd[d] = vsrc[d * vs[3]];
      }
    }
  });
}

template <typename scalar_t>
void ring_attention_impl(const at::Tensor& query, const at::Tensor& k_cache,
                         const at::Tensor& v_cache, const at::Tensor& lengths, at::Tensor& out,
                         float scale) {
  AttentionArgs<scalar_t> a;
  a.q = query.data_ptr<scalar_t>();
  a.kc = k_cache.data_ptr<scalar_t>();
  a.vc = v_cache.data_ptr<scalar_t>();
  a.len = lengths.data_ptr<int64_t>();
  a.out = out.data_ptr<scalar_t>();
  a.H = k_cache.size(1);
  a.C = k_cache.size(2);
  a.D = k_cache.size(3);
  a.n = query.size(2);
  a.len_stride = lengths.stride(0);
  for (int i = 0; i < 4; ++i) a.q_stride[i] = query.stride(i);
  a.scale = scale;
  const int64_t B = k_cache.size(0), n = a.n, C = a.C, D = a.D;

  if (ring_attention_avx512_supports(D)) {
    at::parallel_for(0, B * a.H, grain_for(2 * n * C * D), [&](int64_t begin, int64_t end) {
      ring_attention_avx512(a, begin, end);
    });
    return;
  }
  at::parallel_for(0, B * a.H, grain_for(2 * n * C * D), [&](int64_t begin, int64_t end) {
    const bool convert = !std::is_same_v<scalar_t, float>;
    std::vector<float> buf(2 * n * D + n * C + (convert ? 2 * C * D : 0));
    AttentionScratch w;
    w.q_rows = buf.data();
    w.acc = w.q_rows + n * D;
    w.probs = w.acc + n * D;
    w.k_head = convert ? w.probs + n * C : nullptr;
    w.v_head = convert ? w.k_head + C * D : nullptr;
    attend_heads_dispatch(a, w, begin, end);
  });
}

}  // namespace

void ring_append_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key,
                     const at::Tensor& value, const at::Tensor& lengths) {
  constexpr const char* op = "more3s::ring_append";
  check_ring_append_args(op, k_cache, v_cache, key, value, lengths);
  TORCH_CHECK_VALUE(k_cache.device().is_cpu(), op, ": expected CPU tensors, got ",
                    k_cache.device());
  check_lengths_nonnegative(op, lengths);
  MORE3S_DISPATCH_FLOATING_TYPES(k_cache.scalar_type(), "ring_append_cpu", [&] {
    ring_append_impl<scalar_t>(k_cache, v_cache, key, value, lengths);
  });
}

at::Tensor ring_attention_cpu(const at::Tensor& query, const at::Tensor& k_cache,
                              const at::Tensor& v_cache, const at::Tensor& lengths,
                              double scale) {
  constexpr const char* op = "more3s::ring_attention";
  check_ring_attention_args(op, query, k_cache, v_cache, lengths, scale);
  TORCH_CHECK_VALUE(k_cache.device().is_cpu(), op, ": expected CPU tensors, got ",
                    k_cache.device());
  check_lengths_nonnegative(op, lengths);
  at::Tensor out = at::empty(query.sizes(), query.options());  // [B, H, n, D] contiguous
  MORE3S_DISPATCH_FLOATING_TYPES(query.scalar_type(), "ring_attention_cpu", [&] {
    ring_attention_impl<scalar_t>(query, k_cache, v_cache, lengths, out,
                                  static_cast<float>(scale));
  });
  return out;
}

}  // namespace more3s
