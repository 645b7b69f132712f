"""CUDA-graph capture, once for the package: the rollout engine's model step and the encoder's state path.

``capture(fn)`` warms ``fn`` up on a side stream (lazy initialisation, cuBLAS handles and workspaces, allocator
pools), then records one call in a ``torch.cuda.CUDAGraph`` and returns ``(replay, static output)``: after the
caller copies new inputs into the static buffers ``fn`` reads, ``replay()`` refreshes the static output in place.

``try_capture(build, what)`` is the failure policy: a capture that fails falls back to eager execution with a
``RuntimeWarning`` (None is returned), or raises where ``strict`` (default: the environment variable
``MORE3S_STRICT_CUDA_GRAPH=1``, which the test suite sets, so that no GPU test can pass on the fallback).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["STRICT_ENV", "capture", "strict_default", "try_capture"]

STRICT_ENV = "MORE3S_STRICT_CUDA_GRAPH"

T = TypeVar("T")


def strict_default() -> bool:
    """Whether a failed capture is an error by default (``MORE3S_STRICT_CUDA_GRAPH=1``)."""
    return os.environ.get(STRICT_ENV, "0") == "1"


def capture(fn: Callable[[], T], warmup: int = 2) -> tuple[Callable[[], None], T]:
    """Run ``fn`` ``warmup`` times on a side stream, then capture one call -> (replay(), its static output).
    Everything runs under ``torch.inference_mode`` (graphs replay inference only)."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = fn()
    return graph.replay, out


def try_capture(build: Callable[[], T], what: str, strict: bool | None = None) -> T | None:
    """``build()`` (which captures), or None with a warning when it fails; ``strict`` (default: ``strict_default()``)
    raises instead. ``what`` names the captured computation in the messages."""
    try:
        return build()
    except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager execution
        if strict_default() if strict is None else strict:
            raise RuntimeError(f"CUDA graph capture of {what} failed ({type(e).__name__}: {e}); "
                               f"strict_graph / {STRICT_ENV}=1 makes that an error") from e
        warnings.warn(f"CUDA graph capture of {what} failed ({e}); running eager steps", RuntimeWarning,
                      stacklevel=3)
        return None
