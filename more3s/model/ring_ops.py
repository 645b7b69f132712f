"""The ring-buffer ops: the only door to ``torch.ops.more3s``, and their plain-PyTorch twins.

Why this module exists: the compiled extension (``more3s._C``, built from csrc/) may be missing
(a source checkout that was never built, or a CUDA torch whose extension was built for the CPU
only). Everything that touches the extension goes through here, so the rest of the package asks
one question (`has_kernel`) and gets one clear error (`extension_error`).

Two typed ops, each with two implementations (``impl``): ``"compiled"`` (the torch ops of csrc/,
C++ on CPU, CUDA on GPU) and ``"reference"`` (plain PyTorch, any device: the oracle, written
slot-first where the kernels walk absolute indices, so the two formulations check each other).
Validation happens once, here at the Python boundary (``check=True``, the default); a caller that
has validated the same inputs itself (``RingKVCache.attend``) passes ``check=False``. The C++
host checks (csrc/ring_kv_cache.h, same rules and wording) stay as the last line of defence.

Ring semantics (shared with csrc/ring_kv_cache_cpu.cpp and csrc/ring_kv_cache.cu):
``k_cache, v_cache [B, H, C, D]`` hold per environment the most recent tokens; ``lengths [B]``
int64 counts the tokens appended since the environment's last reset, *before* the current append.
The token with absolute index ``a`` lives in slot ``a % C``. After appending ``n`` tokens to an
environment with ``L`` earlier tokens, the ring holds absolute indices ``[max(0, L+n-C), L+n-1]``
and new query ``j`` attends to the held tokens with index ``<= L + j``.
"""

from __future__ import annotations

import importlib
import math
from typing import Literal, get_args

import torch

from more3s.model.attention import masked_attention

__all__ = [
    "RING_DTYPES",
    "RING_IMPLS",
    "RingImpl",
    "check_append_args",
    "check_attention_args",
    "check_tokens",
    "compiled_op",
    "extension_error",
    "has_kernel",
    "ring_append",
    "ring_attention",
]

RingImpl = Literal["compiled", "reference"]
RING_IMPLS: tuple[RingImpl, ...] = get_args(RingImpl)
RING_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OP_NAMES = ("ring_append", "ring_attention")

# Outcome of the one attempt to load more3s._C: None = not tried yet, "" = loaded, else the error.
_EXT_ERROR: str | None = None
_FAKES_REGISTERED = False


def extension_error() -> str | None:
    """Loads more3s._C once; returns None when its ops are registered, else why not."""
    global _EXT_ERROR
    if _EXT_ERROR is None:
        try:
            importlib.import_module("more3s._C")
            torch.ops.more3s.ring_attention  # noqa: B018  (raises if the schemas are absent)
            _register_fakes()
            _EXT_ERROR = ""
        except (ImportError, OSError, AttributeError, RuntimeError) as exc:
            _EXT_ERROR = f"{type(exc).__name__}: {exc}"
    return _EXT_ERROR or None


def has_kernel(device_type: str) -> bool:
    """Whether the compiled ops have a kernel for ``device_type`` ("cpu" or "cuda")."""
    if extension_error() is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"more3s::{name}", key) for name in _OP_NAMES)


def compiled_op(name: Literal["ring_append", "ring_attention"]) -> torch._ops.OpOverload:
    """The registered op itself (``torch.ops.more3s.<name>.default``), for ``torch.library.opcheck`` and for tests
    of the C++ host checks. Raises RuntimeError when the extension is not loaded."""
    err = extension_error()
    if err is not None:
        raise RuntimeError(f"more3s._C is not loaded ({err}); build it with "
                           "`pip install --no-build-isolation -c constraints.txt -e .`")
    op: torch._ops.OpOverload = getattr(torch.ops.more3s, name).default
    return op


def _register_fakes() -> None:
    """Fake (meta) implementations so torch.compile / FakeTensor can trace the ops."""
    global _FAKES_REGISTERED
    if _FAKES_REGISTERED or not hasattr(torch.ops.more3s, "ring_attention"):
        return

    @torch.library.register_fake("more3s::ring_append")  # type: ignore[untyped-decorator]
    def _ring_append_fake(k_cache: torch.Tensor, v_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          lengths: torch.Tensor) -> None:
        check_append_args(k_cache, v_cache, key, value, lengths, op="more3s::ring_append")

    @torch.library.register_fake("more3s::ring_attention")  # type: ignore[untyped-decorator]
    def _ring_attention_fake(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                             lengths: torch.Tensor, scale: float) -> torch.Tensor:
        check_attention_args(query, k_cache, v_cache, lengths, scale, op="more3s::ring_attention")
        return query.new_empty(query.shape)  # [B, H, n, D] contiguous, as the kernels return

    _FAKES_REGISTERED = True


# ---------------------------------------------------------------------------------------------
# Validation (same rules and wording as csrc/ring_kv_cache.h)
# ---------------------------------------------------------------------------------------------


def _check_cache(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4:
        raise ValueError(f"{op}: k_cache must be 4-D [B, H, C, D], got shape {list(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"{op}: v_cache shape {list(v_cache.shape)} differs from k_cache shape {list(k_cache.shape)}"
        )
    if k_cache.dtype not in RING_DTYPES:
        raise TypeError(f"{op}: k_cache dtype must be float32, float16 or bfloat16, got {k_cache.dtype}")
    if v_cache.dtype != k_cache.dtype:
        raise TypeError(f"{op}: v_cache dtype {v_cache.dtype} differs from k_cache dtype {k_cache.dtype}")
    if v_cache.device != k_cache.device:
        raise ValueError(f"{op}: v_cache is on {v_cache.device} but k_cache is on {k_cache.device}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError(f"{op}: k_cache and v_cache must be contiguous")
    if min(k_cache.shape) < 1:
        raise ValueError(f"{op}: every size of k_cache [B, H, C, D] must be >= 1, got {list(k_cache.shape)}")


def check_tokens(op: str, name: str, t: object, B: int, H: int, C: int, D: int, dtype: torch.dtype,
                 device: torch.device) -> None:
    """``t`` must be new tokens ``[B, H, n, D]`` with 1 <= n <= C in ``dtype`` on ``device`` (the ring's);
    raises TypeError / ValueError naming ``op`` and ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D [B, H, n, D], got shape {list(t.shape)}")
    if (t.shape[0], t.shape[1], t.shape[3]) != (B, H, D):
        raise ValueError(
            f"{op}: {name} shape {list(t.shape)} does not match the cache [B, H, C, D] = {[B, H, C, D]} in B, H or D"
        )
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} dtype {t.dtype} differs from the cache dtype {dtype}")
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the cache is on {device}")
    n = t.shape[2]
    if n < 1:
        raise ValueError(f"{op}: {name} has n=0 new tokens (need 1 <= n <= capacity)")
    if n > C:
        raise ValueError(f"{op}: {name} has n={n} new tokens but the ring capacity is {C} (n > capacity)")


def _check_tokens(op: str, name: str, t: torch.Tensor, k_cache: torch.Tensor) -> None:
    B, H, C, D = k_cache.shape
    check_tokens(op, name, t, B, H, C, D, k_cache.dtype, k_cache.device)


def _check_lengths(op: str, lengths: torch.Tensor, k_cache: torch.Tensor) -> None:
    B = k_cache.shape[0]
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"{op}: lengths must have shape [B] = [{B}], got {list(lengths.shape)}")
    if lengths.dtype != torch.int64:
        raise TypeError(f"{op}: lengths must be int64, got {lengths.dtype}")
    if lengths.device != k_cache.device:
        raise ValueError(f"{op}: lengths is on {lengths.device} but the cache is on {k_cache.device}")


def check_append_args(k_cache: torch.Tensor, v_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      lengths: torch.Tensor, *, op: str = "ring_append") -> None:
    """Raises ValueError/TypeError naming the bad input of a ring append."""
    _check_cache(op, k_cache, v_cache)
    _check_tokens(op, "key", key, k_cache)
    _check_tokens(op, "value", value, k_cache)
    if value.shape != key.shape:
        raise ValueError(f"{op}: value shape {list(value.shape)} differs from key shape {list(key.shape)}")
    _check_lengths(op, lengths, k_cache)


def check_attention_args(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor,
                         scale: float, *, op: str = "ring_attention") -> None:
    """Raises ValueError/TypeError naming the bad input of a ring attention."""
    _check_cache(op, k_cache, v_cache)
    _check_tokens(op, "query", query, k_cache)
    _check_lengths(op, lengths, k_cache)
    if not (0.0 < float(scale) < math.inf):
        raise ValueError(f"{op}: scale must be finite and > 0, got {scale}")


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------


def ring_append(
    k_cache: torch.Tensor,  # [B, H, C, D], mutated
    v_cache: torch.Tensor,  # [B, H, C, D], mutated
    key: torch.Tensor,  # [B, H, n, D]
    value: torch.Tensor,  # [B, H, n, D]
    lengths: torch.Tensor,  # [B] int64, tokens since reset before this append
    *,
    impl: RingImpl = "compiled",
    check: bool = True,
) -> None:
    """Writes the n new tokens into slots ``(lengths[b] + j) % C``."""
    if check:
        check_append_args(k_cache, v_cache, key, value, lengths)
    if impl == "compiled":
        torch.ops.more3s.ring_append(k_cache, v_cache, key, value, lengths)
        return
    B, H, C, D = k_cache.shape
    n = key.shape[2]
    device = k_cache.device
    slots = (lengths[:, None] + torch.arange(n, device=device)) % C  # [B, n]
    env = torch.arange(B, device=device)[:, None].expand(B, n)  # [B, n]
    # permute is a view: indexing [env, slot] on [B, C, H, D] writes [B, n, H, D] rows in place.
    k_cache.permute(0, 2, 1, 3)[env, slots] = key.permute(0, 2, 1, 3)
    v_cache.permute(0, 2, 1, 3)[env, slots] = value.permute(0, 2, 1, 3)


def ring_attention(
    query: torch.Tensor,  # [B, H, n, D]
    k_cache: torch.Tensor,  # [B, H, C, D]
    v_cache: torch.Tensor,  # [B, H, C, D]
    lengths: torch.Tensor,  # [B] int64, tokens since reset before the append
    scale: float,
    *,
    impl: RingImpl = "compiled",
    check: bool = True,
) -> torch.Tensor:  # [B, H, n, D], query's dtype
    """Decode attention of the n new queries over the ring after an append (float32 accumulation)."""
    if check:
        check_attention_args(query, k_cache, v_cache, lengths, scale)
    if impl == "compiled":
        out: torch.Tensor = torch.ops.more3s.ring_attention(query, k_cache, v_cache, lengths, float(scale))
        return out
    C = k_cache.shape[2]
    n = query.shape[2]
    device = k_cache.device
    total = (lengths + n)[:, None]  # [B, 1] tokens since reset after the append
    slot = torch.arange(C, device=device)  # [C]
    # Absolute index of the newest token written to each slot; < 0 = never written since reset.
    held = total - 1 - torch.remainder(total - 1 - slot, C)  # [B, C]
    pos = lengths[:, None] + torch.arange(n, device=device)  # [B, n] absolute index of query j
    visible = (held[:, None, :] >= 0) & (held[:, None, :] <= pos[:, :, None])  # [B, n, C]
    return masked_attention(query, k_cache, v_cache, visible[:, None], scale)
