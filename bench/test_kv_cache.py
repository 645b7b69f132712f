"""Ring-buffer KV cache: latency of one `attend` (append n=2 tokens + decode attention).

Rollout shape: B=16 environments, D=128, capacity 120 tokens (60 steps of
[a_{t-1}, s_t]), H = 1..8. Each compiled backend is timed by pytest-benchmark; the PyTorch
reference is timed in the same test on the same state, and the ratio goes into extra_info
(`speedup_vs_reference`), with the bytes of K/V read per call and the achieved GB/s.
The ring is filled before timing, so every call attends over all 120 held tokens.
"""

from __future__ import annotations

import time

import pytest
import torch

from more3s.model import ring_ops
from more3s.model.kv_cache import RingKVCache

__all__: list[str] = []

B, D, CAPACITY, N_NEW = 16, 128, 120, 2
HEADS = [1, 2, 4, 8]


def _filled_cache(backend: str, H: int, dtype: torch.dtype, device: str) -> RingKVCache:
    cache = RingKVCache(1, B, H, CAPACITY, D, dtype=dtype, device=device, backend=backend)
    x = torch.randn(B, H, N_NEW, D, dtype=dtype, device=device)
    for _ in range(CAPACITY // N_NEW + 1):
        cache.attend(0, x, x, x)
    return cache


def _seconds_per_call(fn, sync, calls: int = 20, repeats: int = 7) -> float:
    """Best-of-repeats mean seconds per call (the baseline, timed like pytest-benchmark's min)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _run(benchmark, backend: str, H: int, dtype: torch.dtype, device: str) -> None:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    q, k, v = (torch.randn(B, H, N_NEW, D, dtype=dtype, device=device) for _ in range(3))
    ref = _filled_cache("reference", H, dtype, device)
    ref_s = _seconds_per_call(lambda: ref.attend(0, q, k, v), sync)
    fast = _filled_cache(backend, H, dtype, device)
    assert fast.backend == backend

    def step():
        out = fast.attend(0, q, k, v)
        sync()
        return out

    benchmark.pedantic(step, rounds=30, iterations=5, warmup_rounds=2)
    if benchmark.stats is None:  # --benchmark-disable: the step ran once, nothing to report
        return
    kv_bytes = 2 * B * H * CAPACITY * D * torch.finfo(dtype).bits // 8
    ours = benchmark.stats.stats.min
    benchmark.extra_info.update(
        {
            "backend": backend,
            "B": B,
            "H": H,
            "D": D,
            "capacity": CAPACITY,
            "n": N_NEW,
            "dtype": str(dtype),
            "reference_us": ref_s * 1e6,
            "speedup_vs_reference": ref_s / ours,
            "kv_bytes": kv_bytes,
            "kv_GBps": kv_bytes / ours / 1e9,
        }
    )


@pytest.mark.parametrize("H", HEADS)
def test_attend_cpp_vs_reference(benchmark, H):
    if ring_ops.extension_error() is not None:
        pytest.skip(f"more3s._C not built: {ring_ops.extension_error()}")
    _run(benchmark, "cpp", H, torch.float32, "cpu")


@pytest.mark.parametrize("H", [8])
def test_attend_cpp_vs_reference_bf16(benchmark, H):
    if ring_ops.extension_error() is not None:
        pytest.skip(f"more3s._C not built: {ring_ops.extension_error()}")
    _run(benchmark, "cpp", H, torch.bfloat16, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("H", HEADS)
def test_attend_cuda_vs_reference(benchmark, H, dtype):
    if not ring_ops.has_kernel("cuda"):
        pytest.skip("more3s._C was built without CUDA kernels")
    _run(benchmark, "cuda", H, dtype, "cuda")
