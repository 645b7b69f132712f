"""Speed of the fused RTG-in-K/V memory attention (more3s.kernels.more_attention) against baselines.

Providers, for forward and forward+backward:

* ``triton``: the fused kernel (RTG injection, memory, causal window, k_inj/v_inj side outputs);
* ``reference``: ``more_attention(..., backend="reference")``, the plain PyTorch oracle (it injects,
  concatenates, builds the mask and calls SDPA in fp32);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on K/V that are already injected and
  concatenated with the memory (a lower bound for any unfused pipeline: it skips that work), with the
  boolean (memory | causal) mask;
* ``flash_attn``: ``flash_attn_func(causal=True)`` on the same pre-concatenated K/V (its bottom-right
  causal alignment is exactly "all memory + causal window"), when flash-attn is installed.

GPU shapes (fp16): B=64, H=8, D=64, F=1 at T=M=60 (a DT-sized window) and T=M=512. These run only on
CUDA: interpreter timings of a Triton kernel mean nothing. A small CPU case times the reference
path (and SDPA) so ``pytest bench --benchmark-only`` shows something on a CPU machine.

extra_info, per test:
* ``tflops``: attention FLOPs / median time, FLOPs = 4 * B * H * D * P with P = T*M + T*(T+1)/2 the
  visible (query, key) pairs (two matmuls, 2 FLOPs per multiply-add, full memory, causal window);
  forward+backward counts 3.5x that (backward = 2.5x forward: five matmuls against two). The RTG
  injection (4 * B * H * T * F * D) is left out (< 0.1 % here).
* ``gbps``: effective bandwidth against the minimum HBM traffic of the fused kernel, in elements of
  B * H * D: forward reads q, k, v, k_mem, v_mem and writes out, k_inj, v_inj = 6T + 2M; the backward
  adds reads of q, k_inj, v_inj, out, dout, k_mem, v_mem and writes of dq, dk, dv = 8T + 2M.
* ``speedup_vs_sdpa``: the SDPA baseline's median over this provider's, both timed in this test.

With ``MORE3S_RESULTS_DIR`` set, every result is also written (atomically) to
``$MORE3S_RESULTS_DIR/bench_attention.json`` and ``.md`` at the end of the module.

Run: ``pytest bench/test_attention.py --benchmark-only``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from more3s.atomic import atomic_write_text
from more3s.model.attention import more_attention

__all__: list[str] = []

GPU_SHAPES = {
    "B64-H8-D64-T60-M60": dict(B=64, H=8, D=64, T=60, M=60, F=1),
    "B64-H8-D64-T512-M512": dict(B=64, H=8, D=64, T=512, M=512, F=1),
}
CPU_SHAPES = {"B8-H2-D32-T30-M30": dict(B=8, H=2, D=32, T=30, M=30, F=1)}
GPU_PROVIDERS = ("triton", "reference", "sdpa", "flash_attn")
CPU_PROVIDERS = ("reference", "sdpa")
MODES = ("fwd", "fwd_bwd")
GPU_ROUNDS, CPU_ROUNDS = 30, 5

_RECORDS: list[dict] = []
HAS_CUDA = torch.cuda.is_available()


def attention_flops(B, H, T, M, D, mode) -> float:
    pairs = T * M + T * (T + 1) / 2
    fwd = 4.0 * B * H * D * pairs
    return fwd * (3.5 if mode == "fwd_bwd" else 1.0)


def min_bytes(B, H, T, M, D, mode, elem) -> float:
    n = 6 * T + 2 * M + (8 * T + 2 * M if mode == "fwd_bwd" else 0)
    return float(n) * B * H * D * elem


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, n) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _inputs(B, H, T, M, D, F, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    return dict(q=rnd(B, H, T, D), k=rnd(B, H, T, D), v=rnd(B, H, T, D), rtg=rnd(B, T, F),
                w_k=rnd(H, F, D, scale=0.1), w_v=rnd(H, F, D, scale=0.1), k_mem=rnd(B, H, M, D),
                v_mem=rnd(B, H, M, D), mem_len=torch.full((B,), M, dtype=torch.int32, device=device))


def make_step(provider, mode, shape, dtype, device):
    """A zero-argument callable running one forward (or forward+backward) of the provider."""
    B, H, T, M, D, Fdim = (shape[x] for x in ("B", "H", "T", "M", "D", "F"))
    inp = _inputs(B, H, T, M, D, Fdim, dtype, device)
    backward = mode == "fwd_bwd"
    dout = torch.randn(B, H, T, D, device=device, dtype=dtype)

    if provider in ("triton", "reference"):
        leaves = [inp[x].requires_grad_(backward) for x in ("q", "k", "v", "w_k", "w_v")]

        def step():
            out, _, _ = more_attention(**inp, backend=provider)
            if backward:
                torch.autograd.backward([out], [dout])
                for x in leaves:
                    x.grad = None

        return step

    # baselines on pre-injected, pre-concatenated K/V
    k_inj = inp["k"] + torch.einsum("btf,hfd->bhtd", inp["rtg"], inp["w_k"])
    v_inj = inp["v"] + torch.einsum("btf,hfd->bhtd", inp["rtg"], inp["w_v"])
    kc = torch.cat([inp["k_mem"], k_inj], 2).contiguous()  # [B, H, M+T, D]
    vc = torch.cat([inp["v_mem"], v_inj], 2).contiguous()
    q = inp["q"]
    if provider == "sdpa":
        mask = torch.ones(T, M + T, dtype=torch.bool, device=device).tril(M)  # all memory + causal window
        tensors = [x.requires_grad_(backward) for x in (q, kc, vc)]

        def fwd():
            return F.scaled_dot_product_attention(tensors[0], tensors[1], tensors[2], attn_mask=mask)
    elif provider == "flash_attn":
        flash = pytest.importorskip("flash_attn", reason="flash-attn is not installed (optional GPU extra)")
        tensors = [x.transpose(1, 2).contiguous().requires_grad_(backward) for x in (q, kc, vc)]  # [B, T, H, D]
        dout = dout.transpose(1, 2).contiguous()

        def fwd():
            return flash.flash_attn_func(tensors[0], tensors[1], tensors[2], causal=True)
    else:
        raise ValueError(f"unknown provider {provider!r}")

    def step():
        out = fwd()
        if backward:
            torch.autograd.backward([out], [dout])
            for x in tensors:
                x.grad = None

    return step


def _run(benchmark, provider, mode, shape_id, shape, dtype, device, rounds):
    step = make_step(provider, mode, shape, dtype, device)
    baseline = make_step("sdpa", mode, shape, dtype, device)

    def timed():
        step()
        _sync(device)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=2)
    t = _median_seconds(step, device, rounds)
    t_base = _median_seconds(baseline, device, rounds)
    B, H, T, M, D = (shape[x] for x in ("B", "H", "T", "M", "D"))
    elem = torch.finfo(dtype).bits // 8
    info = dict(
        provider=provider, mode=mode, shape=shape_id, dtype=str(dtype).replace("torch.", ""),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        median_ms=t * 1e3, sdpa_median_ms=t_base * 1e3,
        tflops=attention_flops(B, H, T, M, D, mode) / t / 1e12,
        gbps=min_bytes(B, H, T, M, D, mode, elem) / t / 1e9,
        speedup_vs_sdpa=t_base / t,
        flop_formula="4*B*H*D*(T*M + T*(T+1)/2) * (3.5 if fwd_bwd else 1)",
    )
    benchmark.extra_info.update(info)
    _RECORDS.append(info)


@pytest.fixture(scope="module", autouse=True)
def _write_results():
    yield
    out_dir = os.environ.get("MORE3S_RESULTS_DIR")
    if not out_dir or not _RECORDS:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_attention.json", json.dumps(_RECORDS, indent=2) + "\n")
    lines = ["| shape | dtype | mode | provider | median ms | TFLOPS | GB/s | speedup vs SDPA | device |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in _RECORDS:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['provider']} | {r['median_ms']:.3f} | "
                     f"{r['tflops']:.2f} | {r['gbps']:.1f} | {r['speedup_vs_sdpa']:.2f} | {r['device']} |")
    lines.append("")
    lines.append("FLOPs = 4*B*H*D*(T*M + T*(T+1)/2), x3.5 for forward+backward; SDPA runs on pre-injected, "
                 "pre-concatenated K/V.")
    atomic_write_text(out / "bench_attention.md", "\n".join(lines) + "\n")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA: the Triton kernel is benchmarked compiled "
                    "(interpreter timings are meaningless)")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
@pytest.mark.parametrize("shape_id", list(GPU_SHAPES))
def test_attention_gpu(benchmark, shape_id, provider, mode):
    benchmark.group = f"attention-{shape_id}-{mode}"
    _run(benchmark, provider, mode, shape_id, GPU_SHAPES[shape_id], torch.float16, torch.device("cuda"),
         GPU_ROUNDS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", CPU_PROVIDERS)
@pytest.mark.parametrize("shape_id", list(CPU_SHAPES))
def test_attention_cpu(benchmark, shape_id, provider, mode):
    benchmark.group = f"attention-cpu-{shape_id}-{mode}"
    _run(benchmark, provider, mode, shape_id, CPU_SHAPES[shape_id], torch.float32, torch.device("cpu"),
         CPU_ROUNDS)
