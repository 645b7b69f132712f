"""The ring ops (more3s.model.ring_ops): the compiled ops against their PyTorch twins, the registered ops through
opcheck, and the errors of both the Python boundary checks and the C++ host checks (the last line of defence)."""

from __future__ import annotations

import pytest
import torch

from more3s.model import ring_ops
from more3s.model.ring_ops import compiled_op, ring_append, ring_attention


def _require_ext() -> None:
    err = ring_ops.extension_error()
    if err is not None:
        pytest.fail(f"more3s._C did not load ({err}); build it with pip install -e .")


def test_opcheck_cpu_ops():
    _require_ext()
    B, H, C, D, n = 2, 3, 5, 7, 2
    kc, vc = torch.randn(B, H, C, D), torch.randn(B, H, C, D)
    key, value, query = (torch.randn(B, H, n, D) for _ in range(3))
    lengths = torch.tensor([0, 9])
    torch.library.opcheck(compiled_op("ring_append"), (kc, vc, key, value, lengths))
    torch.library.opcheck(compiled_op("ring_attention"), (query, kc, vc, lengths, 0.25))


def test_compiled_matches_reference_twins():
    _require_ext()
    B, H, C, D, n = 3, 2, 4, 9, 2
    kc, vc = torch.randn(B, H, C, D), torch.randn(B, H, C, D)
    kr, vr = kc.clone(), vc.clone()
    key, value, query = (torch.randn(B, H, n, D) for _ in range(3))
    lengths = torch.tensor([0, 3, 10])
    ring_append(kc, vc, key, value, lengths)
    ring_append(kr, vr, key, value, lengths, impl="reference")
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    torch.testing.assert_close(
        ring_attention(query, kc, vc, lengths, 0.3),
        ring_attention(query, kr, vr, lengths, 0.3, impl="reference"),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("D", [16, 64, 128, 256])
def test_compiled_matches_reference_avx512_head_sizes(D, n, dtype):
    """Heads of size 16..256 take the AVX-512 body on CPUs that have it (the portable one elsewhere; odd sizes
    such as 9 above always take the portable one): empty, partly filled and wrapped rings, one or several queries
    (the weighted sum runs two queries per pass, then the odd one), logits far apart (the vectorized exp's
    underflow to 0), K/V widened from half precision in registers. Tolerance: 1e-5 in float32; in half precision
    two units in the last place, as the reference itself rounds its output once."""
    _require_ext()
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    B, H, C = 5, 2, 21  # C not a multiple of 16: the logits rows' padded tails
    g = torch.Generator().manual_seed(D + n)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    kc, vc = randn(B, H, C, D), randn(B, H, C, D)
    kc[1, :, 3] *= 40.0  # one key dominates, the others' weights underflow
    query = randn(B, H, n, D)
    lengths = torch.tensor([0, 5, C - n, C + 3, 10 * C + 7])
    for _ in range(2):  # append, then attend over the result; twice so the second step sees the first's tokens
        ring_append(kc, vc, randn(B, H, n, D), randn(B, H, n, D), lengths)
        got = ring_attention(query, kc, vc, lengths, D ** -0.5)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ring_attention(query, kc, vc, lengths, D ** -0.5, impl="reference"),
                                   atol=tol, rtol=tol)
        lengths = lengths + n
    strided = randn(B, n, H, D).transpose(1, 2)  # a non-contiguous query
    torch.testing.assert_close(ring_attention(strided, kc, vc, lengths, 0.1),
                               ring_attention(strided, kc, vc, lengths, 0.1, impl="reference"), atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", ["op", "reference"])
def test_op_errors(impl):
    """The C++ host checks (the compiled ops called unchecked) and the Python boundary checks raise the same
    error types and messages."""
    if impl == "op":
        _require_ext()

        def append(*args):
            return ring_append(*args, check=False)

        def attention(*args):
            return ring_attention(*args, check=False)
    else:
        def append(*args):
            return ring_append(*args, impl="reference")

        def attention(*args):
            return ring_attention(*args, impl="reference")
    B, H, C, D = 2, 2, 3, 4
    kc, vc = torch.zeros(B, H, C, D), torch.zeros(B, H, C, D)
    x = torch.zeros(B, H, 2, D)
    lengths = torch.zeros(B, dtype=torch.int64)
    with pytest.raises(ValueError, match="n > capacity"):
        append(kc, vc, torch.zeros(B, H, 4, D), torch.zeros(B, H, 4, D), lengths)
    with pytest.raises(ValueError, match="query shape"):
        attention(torch.zeros(B, H + 1, 2, D), kc, vc, lengths, 0.5)
    with pytest.raises(ValueError, match="k_cache must be 4-D"):
        attention(x, kc[0], vc[0], lengths, 0.5)
    with pytest.raises(TypeError, match="query dtype"):
        attention(x.half(), kc, vc, lengths, 0.5)
    with pytest.raises(TypeError, match="k_cache dtype must be"):
        attention(x.double(), kc.double(), vc.double(), lengths, 0.5)
    with pytest.raises(TypeError, match="lengths must be int64"):
        append(kc, vc, x, x, lengths.int())
    with pytest.raises(ValueError, match="lengths must have shape"):
        append(kc, vc, x, x, lengths[:1])
    with pytest.raises(ValueError, match="value shape"):
        append(kc, vc, x, x[:, :, :1], lengths)
    with pytest.raises(ValueError, match="scale must be"):
        attention(x, kc, vc, lengths, 0.0)
    with pytest.raises(ValueError, match="is on meta"):
        attention(x.to("meta"), kc, vc, lengths, 0.5) if impl == "reference" else attention(
            x, kc, vc, lengths.to("meta"), 0.5
        )


def test_op_rejects_negative_lengths():
    _require_ext()
    kc = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        ring_attention(torch.zeros(1, 1, 1, 2), kc, kc.clone(), torch.tensor([-1]), 1.0)


def test_compiled_op_without_the_extension(monkeypatch):
    monkeypatch.setattr(ring_ops, "_EXT_ERROR", "ImportError: No module named 'more3s._C'")
    with pytest.raises(RuntimeError, match="more3s._C is not loaded"):
        compiled_op("ring_append")


@pytest.mark.gpu
def test_cuda_op_errors_and_opcheck():
    _require_ext()
    kc = torch.randn(2, 2, 5, 8, device="cuda")
    vc, x = torch.randn_like(kc), torch.randn(2, 2, 2, 8, device="cuda")
    lengths = torch.tensor([0, 7], device="cuda")
    with pytest.raises(ValueError, match="lengths is on cpu"):
        ring_attention(x, kc, vc, lengths.cpu(), 0.5, check=False)
    torch.library.opcheck(compiled_op("ring_append"), (kc, vc, x, x, lengths))
    torch.library.opcheck(compiled_op("ring_attention"), (x, kc, vc, lengths, 0.5))
