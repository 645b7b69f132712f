// CUDA ring-buffer KV cache: an append kernel and a flash-decoding style decode attention
// that reads the ring in place.
//
// Semantics are those of ring_kv_cache_cpu.cpp: the token with absolute index a (tokens since
// the environment's last reset) lives in slot a % C; after appending n tokens to an
// environment with L = lengths[b] earlier tokens, new query j sees the held tokens with
// absolute index in [max(0, L + n - C), L + j].
//
// Decode attention splits each query's visible keys into partitions of kPartitionSize
// (grid axis y); every partition writes a softmax-normalized partial output with its max
// logit and exp-sum, and a combine kernel merges them (split-K). When the capacity fits one
// partition (the rollout case, C = 2 or 3 tokens x steps) the split kernel writes the output directly.
// No kernel reads `lengths` on the host, so a step can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "dispatch_utils.h"
#include "ops.h"
#include "ring_kv_cache.h"

namespace more3s {
namespace {

constexpr int kWarpSize = 32;
constexpr int kNumThreads = 128;  // 4 warps: one key per warp in the logit loop
constexpr int kNumWarps = kNumThreads / kWarpSize;
constexpr int64_t kPartitionSize = 256;  // keys per split-K partition (logits kept in smem)
// Partitions per query: gridDim.y allows 65535, the combine kernel keeps one weight per
// partition in smem (32 KiB here), i.e. capacities up to 2M tokens.
constexpr int64_t kMaxSplits = 8192;
// Shared memory holds the query and the partition's logits in float; stay below the 48 KiB
// a kernel gets without opting in.
constexpr int64_t kMaxHeadDim = 8192;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

// Block-wide sum or max, broadcast to every thread. `red` is kNumWarps floats of smem.
template <bool kIsMax>
__device__ __forceinline__ float block_reduce(float x, float* red) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  x = kIsMax ? warp_max(x) : warp_sum(x);
  if (lane == 0) red[warp] = x;
  __syncthreads();
  const float neutral = kIsMax ? -INFINITY : 0.f;
  x = lane < kNumWarps ? red[lane] : neutral;
  x = kIsMax ? warp_max(x) : warp_sum(x);
  __syncthreads();  // `red` may be reused right after
  return x;
}

// grid: (B * H * n) blocks, one per new token; threads stride over D.
template <typename scalar_t>
__global__ void ring_append_kernel(
    scalar_t* __restrict__ k_cache,        // [B, H, C, D] contiguous
    scalar_t* __restrict__ v_cache,        // [B, H, C, D] contiguous
    const scalar_t* __restrict__ key,      // [B, H, n, D] strided
    const scalar_t* __restrict__ value,    // [B, H, n, D] strided
    const int64_t* __restrict__ lengths,   // [B]
    const int64_t num_heads, const int64_t num_new, const int64_t capacity,
    const int64_t head_dim, const int64_t len_stride, const int64_t k_stride_b,
    const int64_t k_stride_h, const int64_t k_stride_n, const int64_t k_stride_d,
    const int64_t v_stride_b, const int64_t v_stride_h, const int64_t v_stride_n,
    const int64_t v_stride_d) {
  const int64_t row = blockIdx.x;  // (b * H + h) * n + j
  const int64_t j = row % num_new;
  const int64_t bh = row / num_new;
  const int64_t h = bh % num_heads;
  const int64_t b = bh / num_heads;
  const int64_t slot = (lengths[b * len_stride] + j) % capacity;
  const int64_t dst = (bh * capacity + slot) * head_dim;
  const scalar_t* k_src = key + b * k_stride_b + h * k_stride_h + j * k_stride_n;
  const scalar_t* v_src = value + b * v_stride_b + h * v_stride_h + j * v_stride_n;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    k_cache[dst + d] = k_src[d * k_stride_d];
    v_cache[dst + d] = v_src[d * v_stride_d];
  }
}

// grid: (B * H * n, num_splits); kNumThreads threads.
// dynamic smem: (D + kPartitionSize + kNumWarps) floats.
template <typename scalar_t>
__global__ void ring_attention_split_kernel(
    scalar_t* __restrict__ out,            // [B, H, n, D] contiguous (num_splits == 1)
    float* __restrict__ partial_out,       // [B, H, n, S, D] normalized partials (S > 1)
    float* __restrict__ partial_max,       // [B, H, n, S] max logit per partition
    float* __restrict__ partial_sum,       // [B, H, n, S] sum of exp(logit - max)
    const scalar_t* __restrict__ query,    // [B, H, n, D] strided
    const scalar_t* __restrict__ k_cache,  // [B, H, C, D] contiguous
    const scalar_t* __restrict__ v_cache,  // [B, H, C, D] contiguous
    const int64_t* __restrict__ lengths,   // [B]
    const int64_t num_heads, const int64_t num_new, const int64_t capacity,
    const int64_t head_dim, const int64_t len_stride, const int64_t q_stride_b,
    const int64_t q_stride_h, const int64_t q_stride_n, const int64_t q_stride_d,
    const float scale) {
  extern __shared__ float smem[];
  float* q_s = smem;                         // [D] scaled query
  float* probs = smem + head_dim;            // [kPartitionSize] logits, then exp
  float* red = probs + kPartitionSize;       // [kNumWarps] reduction scratch

  const int64_t row = blockIdx.x;  // (b * H + h) * n + j
  const int64_t split = blockIdx.y;
  const int64_t num_splits = gridDim.y;
  const int64_t j = row % num_new;
  const int64_t bh = row / num_new;
  const int64_t h = bh % num_heads;
  const int64_t b = bh / num_heads;

  const int64_t before = lengths[b * len_stride];
  const int64_t first = max(before + num_new - capacity, int64_t{0});  // oldest held token
  const int64_t start = first + split * kPartitionSize;
  const int64_t stop = min(before + j + 1, start + kPartitionSize);
  // Split 0 always holds the query's own token; later splits may be empty (count 0), which
  // the combine step weighs by exp_sum = 0.
  const int count = stop > start ? static_cast<int>(stop - start) : 0;
  const int64_t start_slot = start % capacity;  // count <= C, so one wrap at most

  const scalar_t* q_src = query + b * q_stride_b + h * q_stride_h + j * q_stride_n;
  for (int64_t d = threadIdx.x; d < head_dim; d += kNumThreads) {
    q_s[d] = static_cast<float>(q_src[d * q_stride_d]) * scale;
  }
  __syncthreads();

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const scalar_t* k_head = k_cache + bh * capacity * head_dim;
  const scalar_t* v_head = v_cache + bh * capacity * head_dim;
  for (int t = warp; t < count; t += kNumWarps) {
    int64_t slot = start_slot + t;
    if (slot >= capacity) slot -= capacity;
    const scalar_t* k_row = k_head + slot * head_dim;
    float s = 0.f;
    for (int64_t d = lane; d < head_dim; d += kWarpSize) {
      s += q_s[d] * static_cast<float>(k_row[d]);
    }
    s = warp_sum(s);
    if (lane == 0) probs[t] = s;
  }
  __syncthreads();

  float m = -INFINITY;
  for (int t = threadIdx.x; t < count; t += kNumThreads) m = fmaxf(m, probs[t]);
  m = block_reduce<true>(m, red);
  float l = 0.f;
  for (int t = threadIdx.x; t < count; t += kNumThreads) {
    const float e = __expf(probs[t] - m);
    probs[t] = e;
    l += e;
  }
  l = block_reduce<false>(l, red);  // its barrier also publishes `probs`
  const float inv_l = count > 0 ? 1.f / l : 0.f;

  for (int64_t d = threadIdx.x; d < head_dim; d += kNumThreads) {
    float acc = 0.f;
    int64_t slot = start_slot;
    for (int t = 0; t < count; ++t) {
      acc += probs[t] * static_cast<float>(v_head[slot * head_dim + d]);
      if (++slot == capacity) slot = 0;
    }
    if (num_splits == 1) {
      out[row * head_dim + d] = static_cast<scalar_t>(acc * inv_l);
    } else {
      partial_out[(row * num_splits + split) * head_dim + d] = acc * inv_l;
    }
  }
  if (num_splits > 1 && threadIdx.x == 0) {
    partial_max[row * num_splits + split] = m;
    partial_sum[row * num_splits + split] = l;
  }
}

// grid: (B * H * n); kNumThreads threads; dynamic smem: num_splits floats.
template <typename scalar_t>
__global__ void ring_attention_combine_kernel(
    scalar_t* __restrict__ out,                // [B, H, n, D] contiguous
    const float* __restrict__ partial_out,     // [B, H, n, S, D]
    const float* __restrict__ partial_max,     // [B, H, n, S]
    const float* __restrict__ partial_sum,     // [B, H, n, S]
    const int64_t num_splits, const int64_t head_dim) {
  extern __shared__ float weights[];  // [S] exp_sum * exp(max - global max)
  const int64_t row = blockIdx.x;
  const float* row_max = partial_max + row * num_splits;
  const float* row_sum = partial_sum + row * num_splits;
  float global_max = -INFINITY;
  for (int64_t s = 0; s < num_splits; ++s) global_max = fmaxf(global_max, row_max[s]);
  for (int64_t s = threadIdx.x; s < num_splits; s += blockDim.x) {
    weights[s] = row_sum[s] > 0.f ? row_sum[s] * __expf(row_max[s] - global_max) : 0.f;
  }
  __syncthreads();
  float total = 0.f;
  for (int64_t s = 0; s < num_splits; ++s) total += weights[s];
  const float inv_total = 1.f / total;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t s = 0; s < num_splits; ++s) {
      acc += weights[s] * partial_out[(row * num_splits + s) * head_dim + d];
    }
    out[row * head_dim + d] = static_cast<scalar_t>(acc * inv_total);
  }
}

inline void check_cuda(const char* op, const at::Tensor& k_cache) {
  TORCH_CHECK_VALUE(k_cache.device().is_cuda(), op, ": expected CUDA tensors, got ",
                    k_cache.device());
}

}  // namespace

void ring_append_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& key,
                      const at::Tensor& value, const at::Tensor& lengths) {
  constexpr const char* op = "more3s::ring_append";
  check_ring_append_args(op, k_cache, v_cache, key, value, lengths);
  check_cuda(op, k_cache);
  const int64_t B = k_cache.size(0), H = k_cache.size(1), C = k_cache.size(2),
                D = k_cache.size(3);
  const int64_t n = key.size(2);
  const int64_t rows = B * H * n;
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), op,
                    ": B * H * n = ", rows, " exceeds the CUDA grid limit");

  const c10::cuda::OptionalCUDAGuard device_guard(k_cache.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = static_cast<int>(
      std::min<int64_t>(kNumThreads, (D + kWarpSize - 1) / kWarpSize * kWarpSize));
  MORE3S_DISPATCH_FLOATING_TYPES(k_cache.scalar_type(), "ring_append_cuda", [&] {
    ring_append_kernel<scalar_t><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
        k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(), key.data_ptr<scalar_t>(),
        value.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(), H, n, C, D, lengths.stride(0),
        key.stride(0), key.stride(1), key.stride(2), key.stride(3), value.stride(0),
        value.stride(1), value.stride(2), value.stride(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor ring_attention_cuda(const at::Tensor& query, const at::Tensor& k_cache,
                               const at::Tensor& v_cache, const at::Tensor& lengths,
                               double scale) {
  constexpr const char* op = "more3s::ring_attention";
  check_ring_attention_args(op, query, k_cache, v_cache, lengths, scale);
  check_cuda(op, k_cache);
  const int64_t B = k_cache.size(0), H = k_cache.size(1), C = k_cache.size(2),
                D = k_cache.size(3);
  const int64_t n = query.size(2);
  const int64_t rows = B * H * n;
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), op,
                    ": B * H * n = ", rows, " exceeds the CUDA grid limit");
  TORCH_CHECK_VALUE(D <= kMaxHeadDim, op, ": head_dim ", D, " exceeds the supported maximum ",
                    kMaxHeadDim);
  // Splits depend on the capacity only (never on `lengths`), so no host sync is needed.
  const int64_t num_splits = (C + kPartitionSize - 1) / kPartitionSize;
  TORCH_CHECK_VALUE(num_splits <= kMaxSplits, op, ": capacity ", C, " exceeds the supported ",
                    "maximum ", kMaxSplits * kPartitionSize);

  const c10::cuda::OptionalCUDAGuard device_guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor out = at::empty(query.sizes(), query.options());  // [B, H, n, D] contiguous
  at::Tensor partial_out, partial_max, partial_sum;
  float* partial_out_ptr = nullptr;
  float* partial_max_ptr = nullptr;
  float* partial_sum_ptr = nullptr;
  if (num_splits > 1) {
    const auto f32 = query.options().dtype(at::kFloat);
    partial_out = at::empty({B, H, n, num_splits, D}, f32);
    partial_max = at::empty({B, H, n, num_splits}, f32);
    partial_sum = at::empty({B, H, n, num_splits}, f32);
    partial_out_ptr = partial_out.data_ptr<float>();
    partial_max_ptr = partial_max.data_ptr<float>();
    partial_sum_ptr = partial_sum.data_ptr<float>();
  }
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(num_splits));
  const size_t smem = static_cast<size_t>(D + kPartitionSize + kNumWarps) * sizeof(float);
  MORE3S_DISPATCH_FLOATING_TYPES(query.scalar_type(), "ring_attention_cuda", [&] {
    ring_attention_split_kernel<scalar_t><<<grid, kNumThreads, smem, stream>>>(
        out.data_ptr<scalar_t>(), partial_out_ptr, partial_max_ptr, partial_sum_ptr,
        query.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
        lengths.data_ptr<int64_t>(), H, n, C, D, lengths.stride(0), query.stride(0),
        query.stride(1), query.stride(2), query.stride(3), static_cast<float>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (num_splits > 1) {
      const size_t combine_smem = static_cast<size_t>(num_splits) * sizeof(float);
      ring_attention_combine_kernel<scalar_t>
          <<<static_cast<unsigned>(rows), kNumThreads, combine_smem, stream>>>(
              out.data_ptr<scalar_t>(), partial_out_ptr, partial_max_ptr, partial_sum_ptr,
              num_splits, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace more3s
