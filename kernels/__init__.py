"""Triton kernels, installed as ``more3s.kernels``.

* ``more_attention``: fused RTG-in-K/V causal attention over (episode memory, window), forward and
  backward, with the injected K'/V' as side outputs (semantics in ``more3s.model.attention``); its limits
  (``MAX_HEAD_DIM``, ``MAX_FEATURES``, ``MAX_GRID_Y``, ``KERNEL_DTYPES``) and ``supports`` / ``unsupported_reason``.

Names are resolved lazily so that importing the package does not import Triton (and compile
nothing) until a kernel is actually used.
"""

from __future__ import annotations

import importlib

__all__ = [
    "KERNEL_DTYPES",
    "MAX_FEATURES",
    "MAX_GRID_Y",
    "MAX_HEAD_DIM",
    "AttentionKernelConfig",
    "MoreAttentionFunction",
    "more_attention_triton",
    "more_attention_fwd",
    "more_attention_bwd",
    "aot_compile",
    "interpreting",
    "supports",
    "unsupported_reason",
]

_HOME = {name: "more_attention" for name in __all__}


def __getattr__(name: str) -> object:
    if name in _HOME:
        module = importlib.import_module(f"{__name__}.{_HOME[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
