// Decode attention over the ring with AVX-512 intrinsics, for the rollout's shape: a few new
// queries per environment against up to C held tokens of head size D = 16 * DV. K/V rows are read
// in the cache's dtype (float32, float16 or bfloat16) and widened to float32 in registers.
//
// Why beside the portable body: at dt-small's D = 128 the compiler's vectorization of that body
// spends most of its time in per-key horizontal sums, scalar expf and re-loading accumulators,
// ~4 multiply-adds per cycle. Here a query's D-wide accumulators stay in zmm registers (DV of
// them per query, two queries per pass over V), the softmax uses a vectorized exp, and the
// normalization is folded into the output, so one head costs about a pass over its K and V.
// Numerics: float32 throughout, the same math as the portable body in another summation order
// (the tests hold both to the PyTorch reference: 1e-5 in float32, the reference's own error in
// half precision); half/bfloat16 outputs are rounded to nearest even once, at the end.
#include "ring_attention_cpu.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__NVCC__)
#include <immintrin.h>
#define MORE3S_AVX512_PATH 1
#endif

namespace more3s {

#ifdef MORE3S_AVX512_PATH
namespace {

#define MORE3S_AVX512 __attribute__((target("avx512f"), always_inline)) inline

// exp(x) for x <= 0 (logits minus their max), Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by a degree-6 polynomial, scaled by 2^n; ~1 ulp. Below -87.3 the result is 0.
MORE3S_AVX512 __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(y, n));
}

// 16 values of a K/V row as float32.
MORE3S_AVX512 __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
MORE3S_AVX512 __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
MORE3S_AVX512 __m512 load16(const c10::BFloat16* p) {  // bfloat16 is float32's upper half
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// logits[j, t] = q[j] . row(t). Four keys per pass give four independent FMA chains; the
// four horizontal sums are what is left of the per-key cost.
template <int DV, typename scalar_t>
MORE3S_AVX512 void logits_of(const float* q, const scalar_t* k, int64_t first_slot, int64_t C,
                             int64_t n, int64_t held, float* logits, int64_t ld) {
  constexpr int64_t D = 16 * DV;
  int64_t t = 0;
  for (; t + 4 <= held; t += 4) {
    const scalar_t* r0 = held_row(k, first_slot, t, C, D);
    const scalar_t* r1 = held_row(k, first_slot, t + 1, C, D);
    const scalar_t* r2 = held_row(k, first_slot, t + 2, C, D);
    const scalar_t* r3 = held_row(k, first_slot, t + 3, C, D);
    for (int64_t j = 0; j < n; ++j) {
      const float* qj = q + j * D;
      __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
#pragma GCC unroll 16
      for (int v = 0; v < DV; ++v) {
        const __m512 qv = _mm512_loadu_ps(qj + 16 * v);
        s0 = _mm512_fmadd_ps(qv, load16(r0 + 16 * v), s0);
        s1 = _mm512_fmadd_ps(qv, load16(r1 + 16 * v), s1);
        s2 = _mm512_fmadd_ps(qv, load16(r2 + 16 * v), s2);
        s3 = _mm512_fmadd_ps(qv, load16(r3 + 16 * v), s3);
      }
      float* out = logits + j * ld + t;
      out[0] = _mm512_reduce_add_ps(s0);
      out[1] = _mm512_reduce_add_ps(s1);
      out[2] = _mm512_reduce_add_ps(s2);
      out[3] = _mm512_reduce_add_ps(s3);
    }
  }
  for (; t < held; ++t) {
    const scalar_t* r = held_row(k, first_slot, t, C, D);
    for (int64_t j = 0; j < n; ++j) {
      __m512 s = _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int v = 0; v < DV; ++v) {
        s = _mm512_fmadd_ps(_mm512_loadu_ps(q + j * D + 16 * v), load16(r + 16 * v), s);
      }
      logits[j * ld + t] = _mm512_reduce_add_ps(s);
    }
  }
}

// In place over p[0, held): exp(p - max) on the first `count` entries, 0 after; returns the sum.
// p has room up to the next multiple of 16.
MORE3S_AVX512 float softmax_numerators(float* p, int64_t count, int64_t held) {
  __m512 m = _mm512_set1_ps(-__builtin_inff());
  for (int64_t t = 0; t < count; t += 16) {
    const __mmask16 valid = static_cast<__mmask16>(count - t >= 16 ? 0xffff : (1u << (count - t)) - 1);
    m = _mm512_mask_max_ps(m, valid, m, _mm512_maskz_loadu_ps(valid, p + t));
  }
  const __m512 max_logit = _mm512_set1_ps(_mm512_reduce_max_ps(m));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t t = 0; t < held; t += 16) {
    const __mmask16 valid =
        static_cast<__mmask16>(count - t >= 16 ? 0xffff : count <= t ? 0 : (1u << (count - t)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(
        valid, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p + t), max_logit)));
    _mm512_storeu_ps(p + t, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// out[j] = (sum_t p[j, t] row(t)) / denom[j] for queries j0 .. j0 + Q - 1: their D-wide
// accumulators live in registers while V is read once.
// 16 float32 results into the output's dtype (round to nearest even).
MORE3S_AVX512 void store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
MORE3S_AVX512 void store16(c10::Half* p, __m512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
MORE3S_AVX512 void store16(c10::BFloat16* p, __m512 x) {
  alignas(64) float tmp[16];
  _mm512_store_ps(tmp, x);
  for (int i = 0; i < 16; ++i) p[i] = c10::BFloat16(tmp[i]);  // c10's rounding, as the reference
}

template <int DV, int Q, typename scalar_t>
MORE3S_AVX512 void weighted_sum_of(const float* p, int64_t ld, const scalar_t* v,
                                   int64_t first_slot, int64_t C, int64_t held,
                                   const float* denom, scalar_t* out) {
  constexpr int64_t D = 16 * DV;
  __m512 acc[Q][DV];
#pragma GCC unroll 16
  for (int i = 0; i < Q; ++i)
#pragma GCC unroll 16
    for (int d = 0; d < DV; ++d) acc[i][d] = _mm512_setzero_ps();
  for (int64_t t = 0; t < held; ++t) {
    const scalar_t* r = held_row(v, first_slot, t, C, D);
    __m512 w[Q];
#pragma GCC unroll 16
    for (int i = 0; i < Q; ++i) w[i] = _mm512_set1_ps(p[i * ld + t]);
#pragma GCC unroll 16
    for (int d = 0; d < DV; ++d) {
      const __m512 rv = load16(r + 16 * d);
#pragma GCC unroll 16
      for (int i = 0; i < Q; ++i) acc[i][d] = _mm512_fmadd_ps(w[i], rv, acc[i][d]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < Q; ++i) {
    const __m512 inv = _mm512_set1_ps(1.f / denom[i]);
#pragma GCC unroll 16
    for (int d = 0; d < DV; ++d) store16(out + i * D + 16 * d, _mm512_mul_ps(acc[i][d], inv));
  }
}

template <int DV, typename scalar_t>
__attribute__((target("avx512f"))) void attend_heads(const AttentionArgs<scalar_t>& a,
                                                     int64_t begin, int64_t end) {
  constexpr int64_t D = 16 * DV;
  constexpr int Q = DV <= 8 ? 2 : 1;  // 2 x 8 accumulators + loads fit the 32 zmm registers
  const int64_t H = a.H, n = a.n, C = a.C;
  const int64_t ld = (C + 15) / 16 * 16;  // logits row stride: whole 16-float vectors
  std::vector<float> buf(n * D + n * ld + n);
  float* q_rows = buf.data();         // [n, D] scaled queries
  float* probs = q_rows + n * D;      // [n, ld] logits, then softmax numerators
  float* denom = probs + n * ld;      // [n] softmax denominators
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H;
    const int64_t h = bh % H;
    const auto [before, first, first_slot, held] = held_tokens(a, b);
    const scalar_t* k = a.kc + bh * C * D;
    const scalar_t* v = a.vc + bh * C * D;
    scaled_queries(a, b, h, q_rows);
    logits_of<DV>(q_rows, k, first_slot, C, n, held, probs, ld);
    for (int64_t j = 0; j < n; ++j) {
      // Query j sees held tokens first .. before + j (its own included).
      denom[j] = softmax_numerators(probs + j * ld, before + j - first + 1, held);
    }
    scalar_t* o = a.out + bh * n * D;
    int64_t j = 0;
    for (; j + Q <= n; j += Q) {
      weighted_sum_of<DV, Q>(probs + j * ld, ld, v, first_slot, C, held, denom + j, o + j * D);
    }
    for (; j < n; ++j) {
      weighted_sum_of<DV, 1>(probs + j * ld, ld, v, first_slot, C, held, denom + j, o + j * D);
    }
  }
}

}  // namespace

bool ring_attention_avx512_supports(int64_t head_dim) {
  static const bool cpu_has_avx512 = __builtin_cpu_supports("avx512f");
  return cpu_has_avx512 && (head_dim == 16 || head_dim == 32 || head_dim == 64 ||
                            head_dim == 128 || head_dim == 256);
}

template <typename scalar_t>
void ring_attention_avx512(const AttentionArgs<scalar_t>& a, int64_t begin, int64_t end) {
  switch (a.D) {
    case 16: return attend_heads<1>(a, begin, end);
    case 32: return attend_heads<2>(a, begin, end);
    case 64: return attend_heads<4>(a, begin, end);
    case 128: return attend_heads<8>(a, begin, end);
    case 256: return attend_heads<16>(a, begin, end);
    default: break;  // ring_attention_avx512_supports said no
  }
}

#else  // not x86-64 with GCC/Clang: the portable body serves every head

bool ring_attention_avx512_supports(int64_t) { return false; }
template <typename scalar_t>
void ring_attention_avx512(const AttentionArgs<scalar_t>&, int64_t, int64_t) {}

#endif

template void ring_attention_avx512(const AttentionArgs<float>&, int64_t, int64_t);
template void ring_attention_avx512(const AttentionArgs<c10::Half>&, int64_t, int64_t);
template void ring_attention_avx512(const AttentionArgs<c10::BFloat16>&, int64_t, int64_t);

}  // namespace more3s
