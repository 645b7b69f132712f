"""Triton kernels, installed as ``more3s.kernels``.

* ``more_attention``: fused RTG-in-K/V causal attention over (episode memory, window), forward and
  backward, with the injected K'/V' as side outputs (issue 5; semantics in ``more3s.model.attention``).

Names are resolved lazily so that importing the package does not import Triton (and compile
nothing) until a kernel is actually used.
"""

from __future__ import annotations

import importlib

__all__ = [
    "AttentionKernelConfig",
    "MoreAttentionFunction",
    "more_attention_triton",
    "more_attention_fwd",
    "more_attention_bwd",
    "aot_compile",
]

_HOME = {name: "more_attention" for name in __all__}


def __getattr__(name: str):
    if name in _HOME:
        module = importlib.import_module(f"{__name__}.{_HOME[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
