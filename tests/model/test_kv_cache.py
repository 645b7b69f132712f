"""Ring-buffer KV cache (more3s.model.kv_cache): every backend against the PyTorch reference, the reference
against a naive per-environment history oracle, the errors and the backend selection. The ops themselves:
test_ring_ops.py."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from more3s.model import kv_cache, ring_ops
from more3s.model.kv_cache import RingKVCache

# Odd sizes on purpose (as vLLM's kernel tests): B, H, C, D.
SHAPES = [(3, 2, 5, 7), (4, 3, 7, 37), (2, 1, 2, 16)]  # C=2, n=2: full eviction every step
CPU_BACKENDS = ["cpp", "reference"]


def _require_ext() -> None:
    err = ring_ops.extension_error()
    if err is not None:
        pytest.fail(f"more3s._C did not load ({err}); build it with pip install -e .")


# ------------------------------------------------------------------------------------------------
# Naive oracle: keeps each environment's whole token history per layer and attends query j to the
# last min(total, C) tokens that are not newer than itself.
# ------------------------------------------------------------------------------------------------


class HistoryOracle:
    def __init__(self, num_layers: int, batch_size: int, capacity: int):
        self.C = capacity
        self.hist = [[[] for _ in range(batch_size)] for _ in range(num_layers)]  # [L][B] of (k, v)
        self.pending = 0

    def attend(self, layer, q, k, v):  # [B, H, n, D], float64 math
        B, H, n, D = q.shape
        out = torch.empty(B, H, n, D, dtype=torch.float64)
        for b in range(B):
            hist = self.hist[layer][b]
            before = len(hist)
            hist.extend((k[b, :, j].double(), v[b, :, j].double()) for j in range(n))
            first = max(0, before + n - self.C)
            for j in range(n):
                keys = torch.stack([hist[a][0] for a in range(first, before + j + 1)], 1)  # [H, T, D]
                vals = torch.stack([hist[a][1] for a in range(first, before + j + 1)], 1)  # [H, T, D]
                s = torch.einsum("hd,htd->ht", q[b, :, j].double(), keys) / math.sqrt(D)
                out[b, :, j] = torch.einsum("ht,htd->hd", torch.softmax(s, -1), vals)
        return out

    def reset(self, mask):
        for layer in self.hist:
            for b, m in enumerate(mask.tolist()):
                if m:
                    layer[b].clear()


def _run_steps(
    backends, shape, num_layers, dtype, n_choices, steps, seed, device="cpu", oracle=False, round_to=None
):
    """Drives one cache per backend (plus the history oracle) through the same random steps:
    n drawn per step from n_choices, random resets. Inputs are rounded through `round_to` first
    when given (an fp32 run on exactly the inputs of a low-precision one). Returns per-step
    outputs per backend, and the caches."""
    B, H, C, D = shape
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    caches = {
        be: RingKVCache(num_layers, B, H, C, D, dtype=dtype, device=device, backend=be) for be in backends
    }
    hist = HistoryOracle(num_layers, B, C) if oracle else None
    outs = {be: [] for be in backends}
    if hist is not None:
        outs["oracle"] = []
    for step in range(steps):
        n = int(rng.choice(n_choices))
        if step > 0:
            mask = torch.from_numpy(rng.random(B) < 0.15)
            for c in caches.values():
                c.reset(mask)
            if hist is not None:
                hist.reset(mask)
        for layer in range(num_layers):
            q, k, v = (
                torch.randn(B, H, n, D, generator=gen).to(round_to or dtype).to(dtype).to(device)
                for _ in range(3)
            )
            for be, c in caches.items():
                outs[be].append(c.attend(layer, q, k, v))
            if hist is not None:
                outs["oracle"].append(hist.attend(layer, q.cpu(), k.cpu(), v.cpu()))
    return outs, caches


# ------------------------------------------------------------------------------------------------
# Semantics
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_choices", [(1,), (2,), (1, 2)])
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_reference_matches_history_oracle(shape, n_choices):
    steps = 3 * shape[2]  # several wraps of the ring: eviction on every env
    outs, caches = _run_steps(["reference"], shape, 2, torch.float32, n_choices, steps, seed=1, oracle=True)
    for got, want in zip(outs["reference"], outs["oracle"]):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    held = caches["reference"].lengths
    assert held.max().item() == shape[2] and held.min().item() >= 0


def test_semantics_by_hand():
    """C=3, n=2: after 4 tokens the ring holds tokens 1..3; query 0 of the second step sees
    tokens 1, 2 (token 0 was evicted by token 3), query 1 sees 1, 2, 3."""
    cache = RingKVCache(1, 1, 1, 3, 1, backend="reference")
    q = torch.zeros(1, 1, 2, 1)  # uniform attention: the output is the mean of the visible values
    k = torch.zeros(1, 1, 2, 1)
    out = cache.attend(0, q, k, torch.tensor([0.0, 1.0]).view(1, 1, 2, 1))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.5]))
    out = cache.attend(0, q, k, torch.tensor([2.0, 3.0]).view(1, 1, 2, 1))
    torch.testing.assert_close(out.flatten(), torch.tensor([1.5, 2.0]))
    cache.reset(torch.tensor([True]))
    out = cache.attend(0, q, k, torch.tensor([7.0, 9.0]).view(1, 1, 2, 1))
    torch.testing.assert_close(out.flatten(), torch.tensor([7.0, 8.0]))


@pytest.mark.parametrize("n_choices", [(1,), (2,), (1, 2)])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_matches_reference_fp32(shape, n_choices):
    _require_ext()
    outs, caches = _run_steps(CPU_BACKENDS, shape, 3, torch.float32, n_choices, 2 * shape[2] + 3, seed=2)
    assert caches["cpp"].backend == "cpp"
    for got, want in zip(outs["cpp"], outs["reference"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(caches["cpp"].k, caches["reference"].k, atol=0, rtol=0)
    torch.testing.assert_close(caches["cpp"].v, caches["reference"].v, atol=0, rtol=0)
    assert torch.equal(caches["cpp"].tokens_seen, caches["reference"].tokens_seen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_matches_reference_low_precision(dtype):
    """Both accumulate in float32. Against an fp32 run on the same rounded inputs, the kernel's
    error must stay within twice the same-precision reference's error (as flash-attention's tests)."""
    _require_ext()
    shape = (3, 2, 6, 24)
    outs, _ = _run_steps(CPU_BACKENDS, shape, 2, dtype, (1, 2), 15, seed=3)
    exact, _ = _run_steps(["reference"], shape, 2, torch.float32, (1, 2), 15, seed=3, round_to=dtype)
    eps = torch.finfo(dtype).eps
    for got, ref, want in zip(outs["cpp"], outs["reference"], exact["reference"]):
        assert got.dtype == dtype
        err = (got.float() - want).abs().max().item()
        ref_err = (ref.float() - want).abs().max().item()
        assert err <= 2 * ref_err + 1e-6, (err, ref_err)
        torch.testing.assert_close(got.float(), ref.float(), atol=2 * eps, rtol=2 * eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_converts_every_low_precision_value_exactly(dtype):
    """With one held token the output is exactly its value: all 65536 bit patterns (subnormals,
    signed zeros, Inf, NaN) survive the kernel's vectorized half/bfloat16 -> float conversion."""
    _require_ext()
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)  # [65536]
    cache = RingKVCache(1, 1, 1, 1, values.numel(), dtype=dtype, backend="cpp")
    zeros = torch.zeros(1, 1, 1, values.numel(), dtype=dtype)
    out = cache.attend(0, zeros, zeros, values.view(1, 1, 1, -1))
    torch.testing.assert_close(out.flatten(), values, atol=0, rtol=0, equal_nan=True)


def test_lengths_and_reset_mask_types():
    cache = RingKVCache(2, 3, 1, 4, 2, backend="reference")
    x = torch.randn(3, 1, 2, 2)
    for _ in range(3):
        for layer in range(2):
            cache.attend(layer, x, x, x)
    assert cache.tokens_seen.tolist() == [6, 6, 6]
    assert cache.lengths.tolist() == [4, 4, 4]
    cache.reset(np.array([True, False, True]))  # numpy masks come straight from vector envs
    assert cache.tokens_seen.tolist() == [0, 6, 0]


def test_noncontiguous_inputs():
    _require_ext()
    B, H, C, D, n = 2, 3, 5, 8, 2
    caches = [RingKVCache(1, B, H, C, D, backend=be) for be in CPU_BACKENDS]
    for _ in range(4):
        base = torch.randn(3, B, n, H, D)
        q, k, v = (t.transpose(1, 2) for t in base)  # [B, H, n, D] views, not contiguous
        assert not q.is_contiguous()
        a, b = (c.attend(0, q, k, v) for c in caches)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# RingKVCache errors and backend selection
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attend_errors(backend):
    if backend == "cpp":
        _require_ext()
    B, H, C, D = 2, 3, 4, 5
    cache = RingKVCache(2, B, H, C, D, backend=backend)
    x = torch.zeros(B, H, 2, D)
    with pytest.raises(ValueError, match="does not match"):
        cache.attend(0, torch.zeros(B, H + 1, 2, D), x, x)
    with pytest.raises(ValueError, match="4-D"):
        cache.attend(0, x[0], x, x)
    with pytest.raises(ValueError, match="same shape"):
        cache.attend(0, x, x[:, :, :1], x)
    with pytest.raises(TypeError, match="dtype"):
        cache.attend(0, x.half(), x, x)
    with pytest.raises(ValueError, match="is on meta"):
        cache.attend(0, x, x.to("meta"), x)
    with pytest.raises(ValueError, match=r"n > capacity"):
        big = torch.zeros(B, H, C + 1, D)
        cache.attend(0, big, big, big)
    with pytest.raises(ValueError, match="n=0"):
        empty = torch.zeros(B, H, 0, D)
        cache.attend(0, empty, empty, empty)
    with pytest.raises(ValueError, match="out of range"):
        cache.attend(2, x, x, x)
    with pytest.raises(ValueError, match="out of range"):
        cache.attend(-1, x, x, x)
    with pytest.raises(TypeError, match="layer must be an int"):
        cache.attend(0.0, x, x, x)
    with pytest.raises(ValueError, match="expected layer 0"):
        cache.attend(1, x, x, x)
    # A failed call leaves the cache untouched: the step can proceed.
    assert cache.tokens_seen.tolist() == [0, 0]
    cache.attend(0, x, x, x)
    with pytest.raises(ValueError, match="same tokens"):
        one = torch.zeros(B, H, 1, D)
        cache.attend(1, one, one, one)
    with pytest.raises(RuntimeError, match="step is in progress"):
        cache.reset(torch.zeros(B, dtype=torch.bool))
    cache.attend(1, x, x, x)
    assert cache.tokens_seen.tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"mask must have shape \[B\] = \[2\]"):
        cache.reset(torch.zeros(B + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        cache.reset(torch.zeros(B, dtype=torch.int64))


def test_constructor_errors():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        RingKVCache(1, 2, 1, 0, 4, backend="reference")
    with pytest.raises(TypeError, match="num_heads must be an int"):
        RingKVCache(1, 2, 1.5, 3, 4, backend="reference")
    with pytest.raises(TypeError, match="dtype must be"):
        RingKVCache(1, 2, 1, 3, 4, dtype=torch.float64, backend="reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        RingKVCache(1, 2, 1, 3, 4, backend="triton")
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        RingKVCache(1, 2, 1, 3, 4, backend="cuda")
    with pytest.raises(ValueError, match="runs on cpu tensors"):
        RingKVCache(1, 2, 1, 3, 4, device="meta", backend="cpp")


def test_auto_backend_and_fallback_notice(monkeypatch, caplog):
    _require_ext()
    assert RingKVCache(1, 1, 1, 2, 2).backend == "cpp"
    # Simulate a checkout whose extension failed to build.
    monkeypatch.setattr(ring_ops, "_EXT_ERROR", "ImportError: No module named 'more3s._C'")
    monkeypatch.setattr(kv_cache, "_FALLBACK_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="more3s.model.kv_cache"):
        a = RingKVCache(1, 1, 1, 2, 2)
        b = RingKVCache(1, 1, 1, 2, 2)
    assert a.backend == b.backend == "reference"
    notices = [r for r in caplog.records if "no compiled cpu kernels" in r.getMessage()]
    assert len(notices) == 1, caplog.text
    assert "No module named 'more3s._C'" in notices[0].getMessage()
    with pytest.raises(RuntimeError, match="needs the compiled extension"):
        RingKVCache(1, 1, 1, 2, 2, backend="cpp")


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (4, 3, 120, 128), (2, 2, 300, 64)])  # 300: split-K
def test_cuda_matches_reference(shape, dtype):
    _require_ext()
    outs, caches = _run_steps(
        ["cuda", "reference"], shape, 2, dtype, (1, 2), min(2 * shape[2] + 3, 400), seed=5, device="cuda"
    )
    assert caches["cuda"].backend == "cuda"
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    for got, want in zip(outs["cuda"], outs["reference"]):
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert torch.equal(caches["cuda"].k, caches["reference"].k)


@pytest.mark.gpu
def test_cuda_split_k_long_history_and_cpp_agree():
    """A long cache (C > one 256-key partition) after many steps, checked against the CPU op."""
    _require_ext()
    B, H, C, D = 2, 2, 1100, 32
    gpu = RingKVCache(1, B, H, C, D, device="cuda", backend="cuda")
    cpu = RingKVCache(1, B, H, C, D, backend="cpp")
    gen = torch.Generator().manual_seed(0)
    for step in range(700):
        q, k, v = (torch.randn(B, H, 2, D, generator=gen) for _ in range(3))
        a = gpu.attend(0, q.cuda(), k.cuda(), v.cuda())
        b = cpu.attend(0, q, k, v)
        if step % 50 == 0 or step > 540:
            torch.testing.assert_close(a.cpu(), b, atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
def test_cuda_errors():
    _require_ext()
    cache = RingKVCache(1, 2, 2, 4, 8, device="cuda", backend="cuda")
    with pytest.raises(ValueError, match="is on cpu"):
        x = torch.zeros(2, 2, 1, 8, device="cuda")
        cache.attend(0, x.cpu(), x, x)


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_step():
    """A whole step (reset + every layer) replays from a CUDA graph: no host sync inside."""
    _require_ext()
    L, B, H, C, D = 2, 4, 2, 6, 16
    graph_cache = RingKVCache(L, B, H, C, D, device="cuda", backend="cuda")
    eager = RingKVCache(L, B, H, C, D, device="cuda", backend="cuda")
    qkv = torch.zeros(L, 3, B, H, 2, D, device="cuda")
    done = torch.zeros(B, dtype=torch.bool, device="cuda")

    def step(cache):
        cache.reset(done)
        return torch.stack([cache.attend(layer, *qkv[layer]) for layer in range(L)])

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(graph_cache)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(s)
    eager_first = step(eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(graph_cache)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for i in range(9):
        qkv.copy_(torch.randn(qkv.shape, device="cuda", generator=gen))
        done.copy_(torch.rand(B, device="cuda", generator=gen) < 0.3)
        graph.replay()
        want = step(eager)
        torch.testing.assert_close(static_out, want, atol=1e-5, rtol=1e-5)
    assert eager_first.shape == (L, B, H, 2, D)
