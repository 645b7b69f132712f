"""Triton kernels, installed as ``more3s.kernels``.

* ``more_attention``: fused RTG-in-K/V causal attention over (episode memory, window), forward and
  backward, with the injected K'/V' as side outputs (semantics in ``more3s.model.attention``); its limits
  (``MAX_HEAD_DIM``, ``MAX_FEATURES``, ``MAX_GRID_Y``, ``KERNEL_DTYPES``) and ``supports`` / ``unsupported_reason``.

Installed as ``more3s.kernels`` only: imported as top-level ``kernels`` (the repository root on sys.path) it
hands that name to the installed distribution of that name (Hugging Face's, which transformers imports).

Names are resolved lazily so that importing the package does not import Triton (and compile
nothing) until a kernel is actually used.
"""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import PathFinder
from importlib.util import module_from_spec
from pathlib import Path

if __name__ == "kernels":
    # Imported by its folder name: the repository root is on sys.path (``python -m`` or pytest run from it). That
    # name belongs to Hugging Face's ``kernels`` distribution, which transformers imports when it is installed; this
    # folder must not shadow it, so the name goes to the first ``kernels`` found outside the repository.
    _repo_root = Path(__file__).resolve().parent.parent
    _elsewhere = [p for p in sys.path if Path(p or ".").resolve() != _repo_root]
    _spec = PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError(
            "No module named 'kernels' (the repository's kernels/ folder is imported as more3s.kernels)",
            name="kernels",
        )
    _installed = module_from_spec(_spec)
    sys.modules["kernels"] = _installed
    _spec.loader.exec_module(_installed)

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
