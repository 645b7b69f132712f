"""The fused Triton attention kernel (more3s.kernels.more_attention) against the reference path.

On this CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py): few,
large tiles keep each launch cheap, and the small-tile config forces multi-tile loops, diagonal
splits and memory-tile skipping with sizes that are not multiples of the tile. The GPU tests run the
compiled kernels with their default (per-device) tiles in fp32/fp16/bf16 on long windows.

Tolerance (as flash-attention's tests): for every output and gradient, the kernel's
max error against the float64 oracle must be <= 2x the error of the same math done by PyTorch
entirely in the kernel's precision (``lowprec_attention``: no upcast, as a fp16/bf16 kernel rounds
P and dS), plus a small floor relative to the tensor's scale (for fp32 reduction-order noise, where
the same-precision run can be almost exact).
"""

import pytest
import torch

from more3s.kernels import more_attention as kmod
from more3s.kernels.more_attention import AttentionKernelConfig, more_attention_fwd, more_attention_triton
from more3s.model import attention as attn
from more3s.model.attention import more_attention, more_attention_reference

__all__: list[str] = []

SMALL_TILES = AttentionKernelConfig(block_m=32, block_n=16, block=32, block_inner=16)
LEAVES = ("q", "k", "v", "w_k", "w_v")
NAMES = ("out", "k_inj", "v_inj", "dq", "dk", "dv", "dw_k", "dw_v")
# Floor: one unit of the dtype's epsilon at the tensor's scale for fp16/bf16 (output rounding alone
# reaches half of that), ~40 for fp32 (summation order over up to ~2k keys).
FLOOR = {torch.float32: 5e-6, torch.float16: torch.finfo(torch.float16).eps,
         torch.bfloat16: torch.finfo(torch.bfloat16).eps}


def lowprec_attention(q, k, v, rtg, w_k, w_v, k_mem=None, v_mem=None, mem_len=None, key_padding_mask=None):
    """The contract with every op in q's dtype (the same-precision baseline for the tolerance)."""
    dt = q.dtype
    B, H, T, D = q.shape
    k_inj = k + torch.einsum("btf,hfd->bhtd", rtg.detach().to(dt), w_k.to(dt))
    v_inj = v + torch.einsum("btf,hfd->bhtd", rtg.detach().to(dt), w_v.to(dt))
    M = 0 if k_mem is None else k_mem.shape[2]
    keys = k_inj if M == 0 else torch.cat([k_mem.detach(), k_inj], 2)  # [B, H, M+T, D]
    vals = v_inj if M == 0 else torch.cat([v_mem.detach(), v_inj], 2)
    allowed = attn.attention_mask(T, M, mem_len, key_padding_mask, B, q.device, include_self=True)  # [B, T, M+T]
    s = (q @ keys.transpose(-1, -2)) * D ** -0.5  # [B, H, T, M+T]
    p = torch.softmax(s.masked_fill(~allowed[:, None], float("-inf")), -1)
    out = p @ vals
    if key_padding_mask is not None:
        out = out.masked_fill(~key_padding_mask[:, None, :, None], 0)
    return out, k_inj, v_inj


def make_inputs(B, H, T, D, F, M, *, dtype, mem="partial", pad=True, strided=False, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    if strided:  # q, k, v as head-split views of a [B, T, 3, H, D] projection, as a model makes them
        qkv = rnd(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D], non-contiguous
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        q, k, v = rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, D)
    rtg = rnd(B, T, F)
    if strided:
        rtg = rnd(B, F, T).transpose(1, 2)  # [B, T, F] with a non-unit last stride
    w_k, w_v = rnd(H, F, D, scale=0.5), rnd(H, F, D, scale=0.5)
    k_mem = v_mem = mem_len = None
    if M:
        k_mem, v_mem = rnd(B, H, M, D), rnd(B, H, M, D)
        if strided:
            k_mem = rnd(B, M, H, D).transpose(1, 2)
        if mem == "partial":
            mem_len = torch.randint(0, M + 1, (B,), generator=g)
            mem_len[0] = 0
            if B > 1:
                mem_len[1] = M
            if B > 2:
                mem_len[2] = max(1, M // 3)
            mem_len = mem_len.to(device)
        elif mem == "zero":
            mem_len = torch.zeros(B, dtype=torch.int32, device=device)
    kpm = None
    if pad:
        n_pad = torch.randint(0, T, (B,), generator=g)
        n_pad[-1] = T  # a fully padded row: every key of its queries is masked
        kpm = (torch.arange(T)[None, :] >= n_pad[:, None]).to(device)
    return dict(q=q, k=k, v=v, rtg=rtg, w_k=w_k, w_v=w_v, k_mem=k_mem, v_mem=v_mem, mem_len=mem_len,
                key_padding_mask=kpm)


def run(fn, inp, cast=None, loss="all"):
    """Outputs and the five gradients of a fixed random loss over (out, k_inj, v_inj)."""
    x = {}
    for key, val in inp.items():
        if torch.is_tensor(val) and val.is_floating_point() and cast is not None:
            val = val.to(cast)
        if key in LEAVES:
            val = val.detach().clone().requires_grad_(True)
        x[key] = val
    out, k_inj, v_inj = fn(**x)
    if loss == "sum":  # out.sum(): autograd hands the kernel a stride-0 (expanded) dout
        total = out.float().sum()
    else:
        g = torch.Generator().manual_seed(7)
        w = torch.randn(out.shape, generator=g).to(out.device)
        total = (out.double() * w).sum() + 0.3 * (k_inj.double() ** 2).sum() + 0.2 * (v_inj.double() * w).sum()
    total.backward()
    return [out, k_inj, v_inj] + [x[key].grad for key in LEAVES]


def check_against_oracle(inp, triton_fn, loss="all"):
    dtype = inp["q"].dtype
    oracle = run(more_attention_reference, inp, cast=torch.float64, loss=loss)
    same = run(lowprec_attention, inp, loss=loss)
    got = run(triton_fn, inp, loss=loss)
    for name, o, s, t in zip(NAMES, oracle, same, got):
        assert t is not None, f"{name}: no gradient"
        assert t.dtype == s.dtype, f"{name}: dtype {t.dtype} != {s.dtype}"
        assert torch.isfinite(t).all(), f"{name}: non-finite values"
        err_t = (t.double() - o).abs().max().item()
        err_s = (s.double() - o).abs().max().item()
        tol = 2 * err_s + FLOOR[dtype] * (1.0 + o.abs().max().item())
        assert err_t <= tol, f"{name}: kernel error {err_t:.3g} > {tol:.3g} (same-precision reference {err_s:.3g})"
    kpm = inp["key_padding_mask"]
    if kpm is not None:  # padding queries return exactly 0
        assert (got[0].permute(0, 2, 1, 3)[~kpm] == 0).all()
        assert (got[3].permute(0, 2, 1, 3)[~kpm] == 0).all()  # and get no gradient


def triton_direct(config=None):
    def fn(**kw):
        return more_attention_triton(**kw, config=config)

    return fn


CPU_CASES = [  # id, (B, H, T, D, F, M), options
    ("one-tile-mem-partial", (3, 2, 37, 24, 3, 29), dict(mem="partial", pad=True)),
    ("tiles-no-mem-F1", (2, 1, 45, 16, 1, 0), dict(pad=True, config=SMALL_TILES)),
    ("tiles-mem-partial-D40", (3, 2, 70, 40, 2, 45), dict(mem="partial", pad=True, config=SMALL_TILES)),
    ("mem-full-F16-D64", (1, 2, 19, 64, 16, 7), dict(mem="full", pad=False)),
    ("mem-zero-sum-loss", (2, 1, 23, 32, 2, 11), dict(mem="zero", pad=True, loss="sum")),
    ("strided-inputs", (2, 2, 17, 16, 2, 9), dict(mem="partial", pad=True, strided=True)),
]


@pytest.mark.parametrize("shape,opts", [c[1:] for c in CPU_CASES], ids=[c[0] for c in CPU_CASES])
def test_kernel_matches_reference_fp32(shape, opts):
    opts = dict(opts)
    config = opts.pop("config", None)
    loss = opts.pop("loss", "all")
    inp = make_inputs(*shape, dtype=torch.float32, **opts)
    check_against_oracle(inp, triton_direct(config), loss=loss)


@pytest.mark.parametrize("seed", range(8))
def test_kernel_random_sizes(seed):
    """Random odd sizes (T, M rarely a multiple of a tile; T=1 and M=0 included), mem / padding modes
    and tile configs."""
    g = torch.Generator().manual_seed(1000 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    T = 1 if seed == 0 else int(torch.randint(2, 80, (1,), generator=g))
    M = 0 if seed == 1 else int(torch.randint(0, 70, (1,), generator=g))
    shape = (pick([1, 2, 3]), pick([1, 2, 3]), T, pick([16, 24, 40, 64, 80, 128]),
             int(torch.randint(1, 17, (1,), generator=g)), M)
    mem = pick(["partial", "full", "zero"])
    pad = bool(torch.randint(0, 2, (1,), generator=g)) or seed == 0
    config = pick([None, SMALL_TILES, AttentionKernelConfig(block_m=64, block_n=32, block=32, block_inner=16)])
    inp = make_inputs(*shape, dtype=torch.float32, mem=mem, pad=pad, seed=seed)
    check_against_oracle(inp, triton_direct(config))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_matches_reference_half(dtype):
    inp = make_inputs(2, 2, 21, 32, 2, 13, dtype=dtype, mem="partial", pad=True)
    check_against_oracle(inp, triton_direct())


def test_rtg_and_weights_in_other_dtype():
    """fp16 activations with fp32 RTG features and weights (what autocast produces)."""
    inp = make_inputs(2, 2, 15, 16, 3, 6, dtype=torch.float16)
    inp["rtg"], inp["w_k"], inp["w_v"] = inp["rtg"].float(), inp["w_k"].float(), inp["w_v"].float()
    got = run(triton_direct(), inp)
    same = run(more_attention_reference, inp)
    assert got[6].dtype == torch.float32 and got[7].dtype == torch.float32
    for name, s, t in zip(NAMES, same, got):
        torch.testing.assert_close(t.float(), s.float(), rtol=2e-2, atol=2e-2, msg=lambda m, n=name: f"{n}: {m}")


def test_whole_row_masked_gives_zeros_not_nan():
    """Every query padded and no memory: all keys masked on every row."""
    inp = make_inputs(1, 2, 20, 16, 1, 0, dtype=torch.float32, pad=True)
    assert not inp["key_padding_mask"].any()
    out, k_inj, v_inj = run(triton_direct(), inp)[:3]
    assert (out == 0).all()
    grads = run(triton_direct(), inp)[3:]
    for name, gr in zip(NAMES[3:], grads):
        assert torch.isfinite(gr).all(), name
    assert (grads[0] == 0).all()  # dq of padded queries


def test_no_gradient_to_memory_or_rtg_and_dispatch(monkeypatch):
    inp = make_inputs(2, 1, 12, 16, 2, 5, dtype=torch.float32)
    for key in ("rtg", "k_mem", "v_mem", "q"):
        inp[key].requires_grad_(True)
    calls = []
    real = kmod.more_attention_triton

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(kmod, "more_attention_triton", spy)
    out, k_inj, v_inj = more_attention(**inp, backend="triton")
    assert calls == [1]
    (out.sum() + k_inj.sum() + v_inj.sum()).backward()
    assert inp["q"].grad is not None
    for key in ("rtg", "k_mem", "v_mem"):
        assert inp[key].grad is None, key


def test_gradient_through_injected_kv_only():
    """A loss on k_inj / v_inj alone (out unused): dk = dL/dK', dw_k = rtg^T dL/dK', dq = 0."""
    inp = make_inputs(2, 2, 9, 16, 3, 4, dtype=torch.float32)
    x = {key: (val.detach().clone().requires_grad_(True) if key in LEAVES else val) for key, val in inp.items()}
    _, k_inj, v_inj = more_attention_triton(**x)
    (k_inj ** 2).sum().add(v_inj.sum()).backward()
    torch.testing.assert_close(x["k"].grad, 2 * k_inj.detach())
    torch.testing.assert_close(x["w_k"].grad, torch.einsum("bhtd,btf->hfd", 2 * k_inj.detach(), inp["rtg"]))
    torch.testing.assert_close(x["v"].grad, torch.ones_like(v_inj))
    assert (x["q"].grad == 0).all()


def test_unsupported_falls_back_once(caplog, monkeypatch):
    """F > 16 is outside the kernel: the reference answers, with one log line."""
    monkeypatch.setattr(attn, "_logged_reasons", set())
    inp = make_inputs(1, 1, 6, 16, 17, 0, dtype=torch.float32, pad=False)
    with caplog.at_level("WARNING", logger="more3s.model.attention"):
        a = more_attention(**inp, backend="triton")
        more_attention(**inp, backend="triton")
    assert sum("falling back" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(a[0], more_attention_reference(**inp)[0], rtol=0, atol=0)


def test_launcher_validates():
    inp = make_inputs(1, 1, 6, 16, 2, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        more_attention_fwd(**dict(inp, q=torch.randn(1, 1, 6, 130), k=torch.randn(1, 1, 6, 130),
                                  v=torch.randn(1, 1, 6, 130)))
    with pytest.raises(TypeError, match="q"):
        more_attention_fwd(**dict(inp, q=inp["q"].double()))
    with pytest.raises(ValueError, match="rtg"):
        more_attention_fwd(**dict(inp, rtg=torch.randn(1, 6, 17)))
    with pytest.raises(ValueError, match="k_mem"):
        more_attention_fwd(**dict(inp, k_mem=torch.randn(1, 1, 3, 8)))
    with pytest.raises(TypeError, match="mem_len"):
        more_attention_fwd(**dict(inp, mem_len=torch.ones(1)))
    with pytest.raises(ValueError, match="power of two"):
        AttentionKernelConfig(block_m=24)
    with pytest.raises(ValueError, match="multiple"):
        AttentionKernelConfig(block_m=32, block_n=64)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compilation for real GPUs (no GPU needed: Triton's bundled ptxas)

AOT_SCRIPT = """
import json, sys, torch
from more3s.kernels.more_attention import aot_compile
cases = [
    (90, dict(dtype=torch.float16, head_dim=64, features=1, window=512)),
    (90, dict(dtype=torch.bfloat16, head_dim=128, features=16, window=60, has_mem=False, has_memlen=False,
              has_kpm=False)),
    (90, dict(dtype=torch.float32, head_dim=40, features=3, window=100, has_kpm=False, w_dtype=torch.float16)),
    (80, dict(dtype=torch.float16, head_dim=64, features=1, window=60)),
]
out = []
for arch, kw in cases:
    fwd, bwd = aot_compile(arch, **kw)
    out.append([arch, fwd.metadata.shared, bwd.metadata.shared, len(fwd.asm["cubin"]), len(bwd.asm["cubin"])])
print(json.dumps(out))
"""
SHARED_LIMIT = {80: 166912, 90: 232448}  # max shared memory per block (bytes), A100 / H100


def test_kernels_compile_for_gpus():
    """The interpreter accepts programs the GPU compiler rejects (dot sizes, layouts, dtypes): compile
    forward and backward for sm_90 (fp16 / bf16 / fp32, F = 1 / 3 / 16, with and without memory and
    padding) and sm_80, in a subprocess without TRITON_INTERPRET."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for arch, shared_fwd, shared_bwd, cubin_fwd, cubin_bwd in json.loads(res.stdout.strip().splitlines()[-1]):
        assert cubin_fwd > 0 and cubin_bwd > 0
        assert shared_fwd <= SHARED_LIMIT[arch] and shared_bwd <= SHARED_LIMIT[arch]


# ----------------------------------------------------------------------------------------------
# GPU: the compiled kernels, default tiles, all dtypes, long windows

GPU_CASES = [  # B, H, T, D, F, M, mem, pad
    (4, 3, 60, 64, 1, 60, "partial", True),
    (2, 2, 97, 40, 3, 33, "partial", True),
    (2, 2, 512, 128, 4, 512, "partial", True),
    (1, 2, 1024, 16, 16, 1024, "full", False),
    (3, 1, 300, 64, 2, 0, "none", True),
    (2, 2, 200, 64, 2, 77, "zero", True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}H{}T{}D{}F{}M{}-{}-pad{}".format(*c))
def test_gpu_kernel_matches_reference(case, dtype):
    B, H, T, D, F, M, mem, pad = case
    inp = make_inputs(B, H, T, D, F, M, dtype=dtype, mem=mem if mem != "none" else "partial", pad=pad,
                      device="cuda")
    check_against_oracle(inp, triton_direct())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_small_tiles_and_strides(dtype):
    inp = make_inputs(3, 2, 150, 64, 2, 70, dtype=dtype, strided=True, device="cuda")
    check_against_oracle(inp, triton_direct(SMALL_TILES))


@pytest.mark.gpu
def test_gpu_auto_uses_triton(monkeypatch):
    calls = []
    real = kmod.more_attention_triton
    monkeypatch.setattr(kmod, "more_attention_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    inp = make_inputs(2, 2, 33, 64, 1, 10, dtype=torch.float16, device="cuda")
    more_attention(**inp, backend="auto")
    assert calls == [1]


def test_unsupported_reason_names_the_limit():
    """The kernel's limits, in one place (kmod.MAX_*): ``supports`` is True inside them, a reason names each one."""
    def q_rtg_w(B=1, H=1, T=4, D=16, F=1, dtype=torch.float32):
        q = torch.zeros(1, 1, 1, 1, dtype=dtype).expand(B, H, T, D)  # shapes only: no memory for large B*H
        return q, torch.zeros(B, T, F, dtype=dtype), torch.zeros(H, F, D, dtype=dtype)

    assert kmod.supports(*q_rtg_w()) and kmod.unsupported_reason(*q_rtg_w(D=kmod.MAX_HEAD_DIM)) is None
    assert f"head dim 1..{kmod.MAX_HEAD_DIM}" in kmod.unsupported_reason(*q_rtg_w(D=kmod.MAX_HEAD_DIM + 1))
    assert f"1..{kmod.MAX_FEATURES} RTG features" in kmod.unsupported_reason(*q_rtg_w(F=kmod.MAX_FEATURES + 1))
    assert str(kmod.MAX_GRID_Y) in kmod.unsupported_reason(*q_rtg_w(B=kmod.MAX_GRID_Y + 1))
    assert "float64" in kmod.unsupported_reason(*q_rtg_w(dtype=torch.float64))
    assert "empty input" in kmod.unsupported_reason(*q_rtg_w(T=0))
