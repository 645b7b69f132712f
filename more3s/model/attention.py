"""RTG-in-K/V attention with episode memory: the contract, its reference path and the dispatcher.

The attention contract gives one semantics to the model, the Triton kernel and the tests; this module
is where it is written down in code. ``more_attention`` validates the inputs once, then runs either

* ``"reference"``: plain PyTorch (the oracle for every other implementation). Half-precision inputs
  are computed in float32 and rounded back, float64 stays float64; or
* ``"triton"``: the fused kernel in ``more3s.kernels.more_attention`` (RTG injection on the fly,
  online softmax over memory + current window, forward and backward). Cases the kernel does not
  cover (its limits and ``unsupported_reason`` live with the kernel) fall back to the reference with
  a one-time log line, never a wrong answer.

``"auto"`` picks Triton for CUDA tensors and the reference for CPU tensors.

It also holds the two pieces every attention path of the model shares: ``inject_rtg`` (K' = K + phi W,
the one RTG injection) and ``masked_attention`` (attention under an explicit visibility mask, the one
masked-attention reference: this contract's reference path, the model's banded oracle and the ring
cache's reference op all call it).

Contract (B batch, H heads, T window tokens, D head dim, F RTG features, M memory slots)::

    q, k, v      [B, H, T, D]   current window
    rtg          [B, T, F]      phi(R) features of each token's step (no gradient flows to it)
    w_k, w_v     [H, F, D]      per-head RTG projections
    k_mem, v_mem [B, H, M, D]   memory, already RTG-injected (no gradient flows to it)
    mem_len      [B] int        valid memory = the LAST mem_len[b] of the M slots (default: all M)
    key_padding_mask [B, T] bool  True = real token

    K' = K + rtg @ w_k (per head), V' = V + rtg @ w_v
    query i attends to the valid memory slots and to the real tokens j <= i, scale 1/sqrt(D);
    a padding query's output is 0 (and no NaN, even where its whole row is masked).
    returns out [B, H, T, D], k_inj = K' [B, H, T, D], v_inj = V' [B, H, T, D]

Gradients flow to q, k, v, w_k, w_v in every backend (also through k_inj / v_inj when the caller
uses them with gradient); never to rtg or the memory, which are treated as data.

Any strides are accepted (the kernel receives every stride explicitly). ``mem_len`` values are
checked to lie in [0, M] when it lives on the CPU; on a GPU that check would cost a host sync per
call, so there the values are clamped to [0, M] instead.
"""

from __future__ import annotations

import logging
import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS",
    "AttentionBackend",
    "more_attention",
    "more_attention_reference",
    "masked_attention",
    "inject_rtg",
    "attention_mask",
    "check_attention_inputs",
]

AttentionBackend = Literal["auto", "reference", "triton"]
BACKENDS: tuple[AttentionBackend, ...] = get_args(AttentionBackend)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_log = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


# ----------------------------------------------------------------------------------------------
# validation


def _need_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _need_shape(name: str, x: torch.Tensor, shape: tuple[int, ...], letters: str) -> None:
    if tuple(x.shape) != tuple(shape):
        want = "[" + ", ".join(f"{c}={n}" for c, n in zip(letters.split(","), shape)) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")


def _need_float(name: str, x: torch.Tensor) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")


def _need_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}; all inputs must share a device")


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rtg: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
    k_mem: torch.Tensor | None = None, v_mem: torch.Tensor | None = None, mem_len: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[int, int, int, int, int, int]:
    """Validates the contract's inputs; returns (B, H, T, D, F, M) with M = 0 without memory.

    Raises TypeError (wrong type / dtype) or ValueError (wrong shape / device / values) naming the
    offending argument.
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("rtg", rtg), ("w_k", w_k), ("w_v", w_v)):
        _need_tensor(name, x)
        _need_float(name, x)
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, H, T, D], got {list(q.shape)}")
    B, H, T, D = q.shape
    if D == 0:
        raise ValueError("q has head dim D=0")
    device = q.device
    for name, x in (("k", k), ("v", v)):
        _need_shape(name, x, (B, H, T, D), "B,H,T,D")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}; q, k, v must share a dtype")
        _need_device(name, x, device)
    if rtg.dim() != 3 or rtg.shape[0] != B or rtg.shape[1] != T:
        raise ValueError(f"rtg must have shape [B={B}, T={T}, F], got {list(rtg.shape)}")
    Fdim = rtg.shape[2]
    if Fdim == 0:
        raise ValueError("rtg has F=0 features; pass at least one RTG feature")
    _need_device("rtg", rtg, device)
    for name, w in (("w_k", w_k), ("w_v", w_v)):
        _need_shape(name, w, (H, Fdim, D), "H,F,D")
        _need_device(name, w, device)
    if w_k.dtype != w_v.dtype:
        raise TypeError(f"w_k ({w_k.dtype}) and w_v ({w_v.dtype}) must share a dtype")

    M = 0
    if (k_mem is None) != (v_mem is None):
        raise ValueError("k_mem and v_mem must be given together (or both None)")
    if k_mem is not None:
        k_mem = _need_tensor("k_mem", k_mem)
        v_mem = _need_tensor("v_mem", v_mem)
        if k_mem.dim() != 4:
            raise ValueError(f"k_mem must have shape [B={B}, H={H}, M, D={D}], got {list(k_mem.shape)}")
        M = k_mem.shape[2]
        for name, x in (("k_mem", k_mem), ("v_mem", v_mem)):
            _need_shape(name, x, (B, H, M, D), "B,H,M,D")
            if x.dtype != q.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}; memory must match q's dtype")
            _need_device(name, x, device)
    if mem_len is not None:
        _need_tensor("mem_len", mem_len)
        if k_mem is None:
            raise ValueError("mem_len was given without k_mem / v_mem")
        if mem_len.dtype == torch.bool or mem_len.dtype.is_floating_point or mem_len.is_complex():
            raise TypeError(f"mem_len must be an integer tensor, got {mem_len.dtype}")
        _need_shape("mem_len", mem_len, (B,), "B")
        _need_device("mem_len", mem_len, device)
        if mem_len.device.type == "cpu" and B > 0:
            lo, hi = int(mem_len.min()), int(mem_len.max())
            if lo < 0 or hi > M:
                raise ValueError(f"mem_len values must lie in [0, M={M}], got min {lo}, max {hi}")
    if key_padding_mask is not None:
        _need_tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool (True = real token), got {key_padding_mask.dtype}")
        _need_shape("key_padding_mask", key_padding_mask, (B, T), "B,T")
        _need_device("key_padding_mask", key_padding_mask, device)
    return B, H, T, D, Fdim, M


# ----------------------------------------------------------------------------------------------
# reference path (the oracle)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def inject_rtg(x: torch.Tensor, rtg: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x + rtg @ w per head, computed in float32 (float64 for float64 x), returned in x's dtype.

    x [B, H, T, D], rtg [B, T, F] (detached: no gradient to the RTG features), w [H, F, D].
    """
    acc = _acc_dtype(x.dtype)
    term = torch.einsum("btf,hfd->bhtd", rtg.detach().to(acc), w.to(acc))  # [B, H, T, D]
    return (x.to(acc) + term).to(x.dtype)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale where ``mask``) v, computed in float32 (float64 for float64 q), returned in q's dtype.

    q [..., Tq, D], k, v [..., Tk, D], mask bool broadcastable to [..., Tq, Tk] (True = visible), scale defaults
    to 1/sqrt(D). A query row that sees no key gives 0 (never NaN), with no gradient.
    """
    acc = _acc_dtype(q.dtype)
    seen = mask.any(dim=-1, keepdim=True)  # [..., Tq, 1]
    out = F.scaled_dot_product_attention(
        q.to(acc), k.to(acc), v.to(acc), attn_mask=mask | ~seen, scale=scale
    )  # an empty row attends everywhere, then is zeroed
    return torch.where(seen, out, torch.zeros((), dtype=acc, device=out.device)).to(q.dtype)


def attention_mask(T: int, M: int, mem_len: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                   batch: int, device: torch.device | str = "cpu", include_self: bool = False) -> torch.Tensor:
    """Which keys each query may see: bool [B, T, M + T] (a broadcast view), keys ordered
    (memory slots, window tokens).

    Memory slot m of batch b is visible iff m >= M - mem_len[b] (the last mem_len[b] slots);
    window token j is visible to query i iff j <= i and key_padding_mask[b, j]. include_self: also
    let every query see its own slot (padding queries included), so no row is empty.
    """
    j = torch.arange(M + T, device=device)  # key index over (memory, window)
    i = torch.arange(T, device=device)
    allowed = (j[None, :] <= i[:, None] + M).unsqueeze(0)  # [1, T, M+T]: all memory, causal window
    if M and mem_len is not None:
        start = M - mem_len.to(device=device, dtype=torch.int64).clamp(0, M)  # [B] first valid slot
        allowed = allowed & (j[None, None, :] >= start[:, None, None])
    if key_padding_mask is not None:
        real = key_padding_mask
        if M:
            real = torch.cat([key_padding_mask.new_ones(batch, M), key_padding_mask], 1)  # [B, M+T]
        allowed = allowed & real[:, None, :]
    if include_self:
        allowed = allowed | (j[None, :] == i[:, None] + M).unsqueeze(0)
    return allowed.expand(batch, T, M + T)


def more_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rtg: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
    k_mem: torch.Tensor | None = None, v_mem: torch.Tensor | None = None, mem_len: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract in plain PyTorch (no validation: call ``more_attention`` for that)."""
    B, H, T, D = q.shape
    acc = _acc_dtype(q.dtype)
    k_inj = inject_rtg(k, rtg, w_k)  # [B, H, T, D]
    v_inj = inject_rtg(v, rtg, w_v)  # [B, H, T, D]
    keys, values = k_inj.to(acc), v_inj.to(acc)
    M = 0
    if k_mem is not None and v_mem is not None:
        M = k_mem.shape[2]
        keys = torch.cat([k_mem.detach().to(acc), keys], dim=2)  # [B, H, M+T, D]
        values = torch.cat([v_mem.detach().to(acc), values], dim=2)  # [B, H, M+T, D]
    # A padding query may see no key at all (left padding, no memory). Letting every query see its own slot
    # keeps each row non-empty (real queries see it anyway); padding rows are zeroed below, which also zeroes
    # their gradient.
    allowed = attention_mask(T, M, mem_len, key_padding_mask, B, q.device, include_self=True)  # [B, T, M+T]
    out = masked_attention(q, keys, values, allowed[:, None], scale=1.0 / math.sqrt(D))  # [B, H, T, D], q's dtype
    if key_padding_mask is not None:
        out = torch.where(key_padding_mask[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=q.device))
    return out, k_inj, v_inj


# ----------------------------------------------------------------------------------------------
# dispatch


def _log_once(reason: str) -> None:
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        _log.warning("more_attention: falling back to the reference path: %s", reason)


def more_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rtg: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
    k_mem: torch.Tensor | None = None, v_mem: torch.Tensor | None = None, mem_len: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None, backend: AttentionBackend = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTG-in-K/V causal attention over (memory, window); see the module docstring for the contract.

    Returns (out [B, H, T, D], k_inj [B, H, T, D], v_inj [B, H, T, D]), all in q's dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    M = check_attention_inputs(q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask)[5]
    if M == 0:
        k_mem = v_mem = mem_len = None
    if backend == "auto":
        backend = "triton" if q.device.type == "cuda" else "reference"
    if backend == "triton":
        from more3s.kernels.more_attention import more_attention_triton, unsupported_reason  # imports Triton

        reason = unsupported_reason(q, rtg, w_k)
        if reason is None:
            out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = more_attention_triton(
                q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask)
            return out
        _log_once(reason)
    return more_attention_reference(q, k, v, rtg, w_k, w_v, k_mem, v_mem, mem_len, key_padding_mask)
