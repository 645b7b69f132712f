"""The attention contract's reference path against a direct, loop-per-query float64 transcription of
the attention contract, plus input validation and dispatch.

The direct version builds each query's visible key set by hand (valid memory slots, then real
window tokens j <= i), so it shares no masking code with ``more_attention_reference``.
"""

import logging
import math

import pytest
import torch

from more3s.model import attention as attn
from more3s.model.attention import more_attention

__all__: list[str] = []


def direct_attention(q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask):
    """The attention contract written out literally, one query at a time (differentiable, any float dtype)."""
    B, H, T, D = q.shape
    M = 0 if k_mem is None else k_mem.shape[2]
    k_inj = k + torch.einsum("btf,hfd->bhtd", rtg.detach(), w_k)
    v_inj = v + torch.einsum("btf,hfd->bhtd", rtg.detach(), w_v)
    rows = []
    for b in range(B):
        n_mem = M if mem_len is None else int(mem_len[b])
        per_t = []
        for i in range(T):
            real_i = key_padding_mask is None or bool(key_padding_mask[b, i])
            keys = [k_mem[b, :, m].detach() for m in range(M - n_mem, M)]
            vals = [v_mem[b, :, m].detach() for m in range(M - n_mem, M)]
            for j in range(i + 1):
                if key_padding_mask is None or bool(key_padding_mask[b, j]):
                    keys.append(k_inj[b, :, j])
                    vals.append(v_inj[b, :, j])
            if not real_i or not keys:
                per_t.append(torch.zeros(H, D, dtype=q.dtype))
                continue
            kk = torch.stack(keys, 1)  # [H, n, D]
            vv = torch.stack(vals, 1)  # [H, n, D]
            s = (kk @ q[b, :, i, :, None])[..., 0] / math.sqrt(D)  # [H, n]
            per_t.append((torch.softmax(s, -1)[:, None, :] @ vv)[:, 0])  # [H, D]
        rows.append(torch.stack(per_t, 1))  # [H, T, D]
    return torch.stack(rows), k_inj, v_inj


def make_inputs(B, H, T, D, F, M, *, dtype=torch.float64, mem="partial", pad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=dtype) for _ in range(3))
    rtg = torch.randn(B, T, F, generator=g, dtype=dtype)
    w_k, w_v = (torch.randn(H, F, D, generator=g, dtype=dtype) * 0.5 for _ in range(2))
    k_mem = v_mem = mem_len = None
    if M:
        k_mem, v_mem = (torch.randn(B, H, M, D, generator=g, dtype=dtype) for _ in range(2))
        if mem == "partial":
            mem_len = torch.randint(0, M + 1, (B,), generator=g)
            mem_len[0] = 0  # always cover an empty memory
            if B > 1:
                mem_len[1] = M  # and a full one
        elif mem == "zero":
            mem_len = torch.zeros(B, dtype=torch.int64)
    kpm = None
    if pad:
        n_pad = torch.randint(0, T, (B,), generator=g)  # DT-style left padding
        n_pad[-1] = T  # one fully padded row
        kpm = torch.arange(T)[None, :] >= n_pad[:, None]
    return dict(q=q, k=k, v=v, rtg=rtg, w_k=w_k, w_v=w_v, k_mem=k_mem, v_mem=v_mem, mem_len=mem_len,
                key_padding_mask=kpm)


CASES = [  # B, H, T, D, F, M, mem mode, padding
    (3, 2, 7, 5, 1, 4, "partial", True),
    (2, 3, 9, 8, 3, 0, "none", True),
    (3, 1, 6, 4, 2, 5, "full", False),
    (2, 2, 5, 3, 4, 3, "zero", True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}T{}D{}F{}M{}-{}-pad{}".format(*c))
def test_reference_matches_direct_float64(case):
    B, H, T, D, F, M, mem, pad = case
    inp = make_inputs(B, H, T, D, F, M, mem=mem, pad=pad)
    if mem == "full":
        inp["mem_len"] = None
    leaves = ("q", "k", "v", "w_k", "w_v")
    res = {}
    for name, fn in (("ref", lambda **kw: more_attention(**kw, backend="reference")), ("direct", direct_attention)):
        x = {key: (val.clone().requires_grad_(True) if key in leaves else val) for key, val in inp.items()}
        out, k_inj, v_inj = fn(**x)
        g = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + 0.3 * (k_inj ** 2).sum() \
            + 0.2 * v_inj.sum()
        loss.backward()
        res[name] = [out, k_inj, v_inj] + [x[key].grad for key in leaves]
    for name, a, b in zip(["out", "k_inj", "v_inj"] + ["d" + key for key in leaves], res["ref"], res["direct"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
        assert torch.isfinite(a).all(), name


def test_padding_query_is_zero_and_nothing_is_nan():
    inp = make_inputs(2, 2, 6, 4, 2, 0, dtype=torch.float32)
    for key in ("q", "k", "v", "w_k", "w_v"):
        inp[key].requires_grad_(True)
    out, _, _ = more_attention(**inp, backend="reference")
    kpm = inp["key_padding_mask"]
    assert not kpm[-1].any()  # a row with every key masked
    assert (out[~kpm[:, None, :].expand(-1, 2, -1)] == 0).all()
    out.sum().backward()
    for key in ("q", "k", "v", "w_k", "w_v"):
        assert torch.isfinite(inp[key].grad).all(), key
    # padded queries get no gradient
    assert (inp["q"].grad.permute(0, 2, 1, 3)[~kpm] == 0).all()


def test_dtypes_and_injection():
    inp = make_inputs(2, 2, 5, 8, 2, 3, dtype=torch.float16)
    inp["w_k"] = inp["w_k"].float()
    inp["w_v"] = inp["w_v"].float()
    inp["rtg"] = inp["rtg"].float()
    out, k_inj, v_inj = more_attention(**inp, backend="auto")
    assert out.dtype == k_inj.dtype == v_inj.dtype == torch.float16
    want = inp["k"].float() + torch.einsum("btf,hfd->bhtd", inp["rtg"], inp["w_k"])
    torch.testing.assert_close(k_inj.float(), want, rtol=1e-3, atol=1e-2)
    d64 = {key: (val.double() if torch.is_tensor(val) and val.is_floating_point() else val) for key, val in inp.items()}
    ref64, _, _ = direct_attention(**d64)
    torch.testing.assert_close(out.double(), ref64, rtol=1e-2, atol=1e-2)


def test_no_gradient_to_memory_or_rtg():
    inp = make_inputs(2, 2, 5, 4, 2, 3, dtype=torch.float32)
    for key in ("rtg", "k_mem", "v_mem", "q"):
        inp[key].requires_grad_(True)
    out, k_inj, _ = more_attention(**inp, backend="reference")
    (out.sum() + k_inj.sum()).backward()
    assert inp["q"].grad is not None
    for key in ("rtg", "k_mem", "v_mem"):
        assert inp[key].grad is None, key


def test_empty_memory_equals_no_memory():
    inp = make_inputs(2, 2, 6, 4, 1, 0, dtype=torch.float64)
    base = more_attention(**inp, backend="reference")
    with_mem = dict(inp, k_mem=torch.randn(2, 2, 4, 4, dtype=torch.float64),
                    v_mem=torch.randn(2, 2, 4, 4, dtype=torch.float64), mem_len=torch.zeros(2, dtype=torch.int32))
    zero_m = dict(inp, k_mem=torch.zeros(2, 2, 0, 4, dtype=torch.float64), v_mem=torch.zeros(2, 2, 0, 4, dtype=torch.float64))
    for other in (with_mem, zero_m):
        for a, b in zip(base, more_attention(**other, backend="reference")):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _bad(**changes):
    inp = make_inputs(2, 2, 5, 4, 2, 3, dtype=torch.float32)
    inp.update(changes)
    return inp


BAD = [
    ("q", dict(q=torch.randn(2, 2, 5)), ValueError),
    ("q", dict(q=torch.randn(2, 2, 5, 4).int()), TypeError),
    ("k", dict(k=torch.randn(2, 2, 6, 4)), ValueError),
    ("v", dict(v=torch.randn(2, 2, 5, 4, dtype=torch.float64)), TypeError),
    ("rtg", dict(rtg=torch.randn(2, 4, 2)), ValueError),
    ("rtg", dict(rtg=torch.randn(2, 5, 0)), ValueError),
    ("w_k", dict(w_k=torch.randn(2, 3, 4)), ValueError),
    ("w_v", dict(w_v=torch.randn(2, 2, 4, dtype=torch.float64)), TypeError),
    ("k_mem", dict(v_mem=None, mem_len=None), ValueError),
    ("k_mem", dict(k_mem=torch.randn(2, 2, 3, 5)), ValueError),
    ("v_mem", dict(v_mem=torch.randn(2, 2, 3, 4).half()), TypeError),
    ("mem_len", dict(mem_len=torch.tensor([1.0, 2.0])), TypeError),
    ("mem_len", dict(mem_len=torch.tensor([1, 2, 3])), ValueError),
    ("mem_len", dict(mem_len=torch.tensor([1, 4])), ValueError),
    ("mem_len", dict(mem_len=torch.tensor([-1, 0])), ValueError),
    ("mem_len", dict(k_mem=None, v_mem=None), ValueError),
    ("key_padding_mask", dict(key_padding_mask=torch.ones(2, 5, dtype=torch.int64)), TypeError),
    ("key_padding_mask", dict(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError),
    ("q", dict(q=[[1.0]]), TypeError),
]


@pytest.mark.parametrize("name,changes,exc", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_raise_naming_the_argument(name, changes, exc):
    with pytest.raises(exc, match=name):
        more_attention(**_bad(**changes), backend="reference")


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        more_attention(**_bad(), backend="cuda")


def test_auto_is_reference_on_cpu(monkeypatch):
    calls = []
    real = attn.more_attention_reference
    monkeypatch.setattr(attn, "more_attention_reference", lambda *a: calls.append(1) or real(*a))
    more_attention(**_bad(), backend="auto")
    assert calls == [1]


def test_triton_fallback_logs_once(caplog, monkeypatch):
    """float64 is outside the kernel's dtypes: the reference answers, with one log line."""
    monkeypatch.setattr(attn, "_logged_reasons", set())
    inp = make_inputs(2, 2, 5, 4, 2, 3, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="more3s.model.attention"):
        a = more_attention(**inp, backend="triton")
        b = more_attention(**inp, backend="triton")
    lines = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(lines) == 1 and "float64" in lines[0].getMessage()
    ref = more_attention(**inp, backend="reference")
    for x, y, z in zip(a, b, ref):
        torch.testing.assert_close(x, z, rtol=0, atol=0)
        torch.testing.assert_close(y, z, rtol=0, atol=0)


def test_masked_attention_is_the_softmax_of_the_visible_keys():
    """The one masked-attention reference: explicit softmax over the visible keys in float64; a row that sees no
    key gives 0 (no NaN, no gradient); half inputs come back in their dtype, computed in float32."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) < 0.6
    mask[0, 0, 2] = False  # one empty row
    out = attn.masked_attention(q, k, v, mask, scale=0.5)
    s = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~mask, float("-inf"))
    want = torch.nan_to_num(torch.softmax(s, -1), nan=0.0) @ v
    torch.testing.assert_close(out, want)
    assert out[0, :, 2].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[0, :, 2].abs().max() == 0
    half = attn.masked_attention(q.detach().half(), k.detach().half(), v.detach().half(), mask)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), attn.masked_attention(q.detach(), k.detach(), v.detach(), mask),
                               atol=2e-3, rtol=2e-3)
