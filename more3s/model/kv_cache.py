"""Ring-buffer KV cache for batched rollouts: append a step's tokens, attend once.

Why: a rollout step of the sequence model adds one block of tokens ``[a_{t-1}, s_t]`` per
environment. Recomputing the whole window every step costs O(window) per layer; the ring keeps
every layer's RTG-injected K/V of the last ``capacity`` tokens, so a step only appends n tokens
and runs a decode attention of the n new queries over the ring (the rollout semantics,
the README's 'Rollouts'). The kernels are torch ops in csrc/ (C++ on CPU, CUDA on GPU), reached
through `more3s.model.ring_ops`, whose plain-PyTorch reference has the same semantics and is the
oracle. ``attend`` validates its inputs once (the Python boundary of a ring step) and calls the ops
unchecked; the C++ host checks remain the last line of defence.

Layout and counters. Per layer the ring stores ``K, V [B, H, C, D]``; the token with absolute
index ``a`` (tokens since the environment's last reset) lives in slot ``a % C``. One set of
per-environment counters (``[B]`` int64, tokens since reset) is shared by all layers: within a
step, layers are attended in order 0..L-1 with the same n, and the counters advance by n after
the last layer. The order is enforced, so layers cannot drift apart. After an append an
environment's ring holds its most recent ``min(tokens since reset, C)`` tokens, and new query j
sees the held tokens up to and including its own. Counters live on the cache's device and are
updated in place, so a step never syncs with the host (CUDA-graph friendly).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from more3s.model import ring_ops

__all__ = ["BACKENDS", "CacheBackend", "RingKVCache", "RingKVCacheConfig", "RingTensors", "resolve_backend"]

log = logging.getLogger(__name__)

CacheBackend = Literal["auto", "cpp", "cuda", "reference"]
BACKENDS: tuple[CacheBackend, ...] = get_args(CacheBackend)

# Device types whose missing-extension fallback has already been announced (once per process).
_FALLBACK_WARNED: set[str] = set()


def resolve_backend(backend: str, device: torch.device | str) -> Literal["cpp", "cuda", "reference"]:
    """Maps a requested backend to the one that runs: "cpp", "cuda" or "reference".

    "auto" picks the compiled kernels for the device and falls back to the reference with a
    one-time warning when the extension is missing; asking for "cpp"/"cuda" explicitly raises
    instead of falling back.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "reference":
        return "reference"
    if backend in ("cpp", "cuda"):
        want = "cpu" if backend == "cpp" else "cuda"
        if device.type != want:
            raise ValueError(
                f"backend {backend!r} runs on {want} tensors, but device is {device} "
                f"(use backend='auto' or the matching device)"
            )
        if not ring_ops.has_kernel(want):
            raise RuntimeError(
                f"backend {backend!r} needs the compiled extension more3s._C with {want} kernels: "
                f"{ring_ops.extension_error() or 'it was built without them'}. Build it with "
                "`pip install --no-build-isolation -c constraints.txt -e .` (CUDA kernels need a "
                "CUDA build of torch), or use backend='reference'."
            )
        return backend
    # auto
    if device.type in ("cpu", "cuda") and ring_ops.has_kernel(device.type):
        return "cpp" if device.type == "cpu" else "cuda"
    if device.type in ("cpu", "cuda") and device.type not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(device.type)
        log.warning(
            "more3s.model.RingKVCache: no compiled %s kernels (%s); using the slower PyTorch "
            "reference. Build them with `pip install --no-build-isolation -c constraints.txt -e .`.",
            device.type,
            ring_ops.extension_error() or "more3s._C was built without them",
        )
    return "reference"


@dataclass(frozen=True)
class RingKVCacheConfig:
    """Sizes of a ring cache (all >= 1)."""

    num_layers: int  # L: one ring per transformer layer
    batch_size: int  # B: environments
    num_heads: int  # H
    capacity: int  # C: tokens held per environment; tokens_per_step (2 or 3) x (window + memory steps) for a model
    head_dim: int  # D

    def __post_init__(self) -> None:
        for name in ("num_layers", "batch_size", "num_heads", "capacity", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"RingKVCache: {name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"RingKVCache: {name} must be >= 1, got {value}")


@dataclass(frozen=True)
class RingTensors:
    """A ring's tensors with the two ops over them and nothing else: no checks, no layer bookkeeping, no Python
    state, so that ``torch.compile`` can trace a whole model step through it (``MoreModel.compile_step``). The
    caller validates each step's inputs and calls ``reset`` before and ``advance`` after the layers;
    ``RingKVCache`` does all of that around the same calls."""

    k: tuple[torch.Tensor, ...]  # per layer [B, H, C, D] (views of RingKVCache.k)
    v: tuple[torch.Tensor, ...]
    tokens: torch.Tensor  # [B] int64: tokens appended since each environment's reset, as of the step's start
    scale: float
    impl: ring_ops.RingImpl

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ring_ops.ring_append(self.k[layer], self.v[layer], k.detach(), v.detach(), self.tokens, impl=self.impl,
                             check=False)
        return ring_ops.ring_attention(q, self.k[layer], self.v[layer], self.tokens, self.scale, impl=self.impl,
                                       check=False)

    def reset(self, mask: torch.Tensor) -> None:
        # Stale slots need no clearing: a zero counter makes every older slot invisible.
        self.tokens.masked_fill_(mask, 0)

    def advance(self, n: int) -> None:
        self.tokens.add_(n)  # in place: no host sync, stable address for CUDA graphs and compiled steps


class RingKVCache:
    """Per-layer ring buffers of RTG-injected K/V for B environments, with decode attention.

    Usage per step (n new tokens per environment, the same n for every layer)::

        for layer in range(num_layers):
            out = cache.attend(layer, q, k, v)  # q, k, v [B, H, n, D] -> out [B, H, n, D]
        cache.reset(done)  # [B] bool: empty the finished environments

    Inference only: the compiled ops have no autograd.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        backend: CacheBackend = "auto",
    ) -> None:
        self.config = RingKVCacheConfig(num_layers, batch_size, num_heads, capacity, head_dim)
        if dtype not in ring_ops.RING_DTYPES:
            raise TypeError(f"RingKVCache: dtype must be float32, float16 or bfloat16, got {dtype}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.backend = resolve_backend(backend, self.device)
        self.scale = 1.0 / math.sqrt(head_dim)
        L, B, H, C, D = num_layers, batch_size, num_heads, capacity, head_dim
        self.k = torch.zeros(L, B, H, C, D, dtype=dtype, device=self.device)  # [L, B, H, C, D]
        self.v = torch.zeros(L, B, H, C, D, dtype=dtype, device=self.device)  # [L, B, H, C, D]
        # Tokens appended per environment since its last reset, as of the start of the step.
        self._tokens = torch.zeros(B, dtype=torch.int64, device=self.device)  # [B]
        self._next_layer = 0  # the layer the current step expects next
        self._step_n: int | None = None  # n of the step in progress (set after layer 0)
        impl: ring_ops.RingImpl = "reference" if self.backend == "reference" else "compiled"
        self.unchecked = RingTensors(self.k.unbind(0), self.v.unbind(0), self._tokens, self.scale, impl)
        """The same ring without checks or bookkeeping (see ``RingTensors``), for a traced step."""

    # --- sizes (the rest: self.config) -------------------------------------------------------
    @property
    def capacity(self) -> int:
        """C: tokens held per environment."""
        return self.config.capacity

    @property
    def tokens_seen(self) -> torch.Tensor:  # [B] int64
        """Tokens appended per environment since its last reset (completed steps only)."""
        return self._tokens.clone()

    @property
    def lengths(self) -> torch.Tensor:  # [B] int64
        """Tokens each environment's ring holds (completed steps only): min(tokens_seen, C)."""
        return self._tokens.clamp(max=self.capacity)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"RingKVCache(num_layers={c.num_layers}, batch_size={c.batch_size}, "
            f"num_heads={c.num_heads}, capacity={c.capacity}, head_dim={c.head_dim}, "
            f"dtype={self.dtype}, device={self.device}, backend={self.backend!r})"
        )

    # --- step ------------------------------------------------------------------------------
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Appends k, v to `layer`'s ring, then attends the new queries over what it holds.

        q, k, v: [B, H, n, D] in the cache's dtype and device, k/v already RTG-injected,
        1 <= n <= capacity. Returns out [B, H, n, D] (scale 1/sqrt(D)); new query j sees the
        held tokens up to and including its own, i.e. causal among the n new tokens.
        """
        self._check_layer(layer)
        self._check_tokens("q", q)
        for name, t in (("k", k), ("v", v)):  # full checks only when k / v differ from the valid q
            if not isinstance(t, torch.Tensor) or t.dtype != q.dtype or t.device != q.device:
                self._check_tokens(name, t)
        if not (q.shape == k.shape == v.shape):
            raise ValueError(
                f"RingKVCache.attend: q, k, v must have the same shape [B, H, n, D], got "
                f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}"
            )
        n = q.shape[2]
        if self._step_n is not None and n != self._step_n:
            raise ValueError(
                f"RingKVCache.attend: layer {layer} got n={n} new tokens but this step's earlier "
                f"layers got n={self._step_n}; every layer of a step appends the same tokens"
            )
        # Validated above; the ring's own tensors are valid by construction. K/V are detached: the ring never
        # carries autograd history (it would grow with every step).
        out = self.unchecked.attend(layer, q, k, v)
        if layer == self.config.num_layers - 1:
            self.unchecked.advance(n)
            self._next_layer, self._step_n = 0, None
        else:
            self._next_layer, self._step_n = layer + 1, n
        return out

    def reset(self, mask: torch.Tensor | np.ndarray) -> None:
        """Empties the environments where mask [B] bool is True (between steps only)."""
        if self._next_layer != 0:
            raise RuntimeError(
                f"RingKVCache.reset: a step is in progress (layers 0..{self._next_layer - 1} of "
                f"{self.config.num_layers} attended); reset between steps"
            )
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask))
        if mask.dtype != torch.bool:
            raise TypeError(f"RingKVCache.reset: mask must be bool, got {mask.dtype}")
        if tuple(mask.shape) != (self.config.batch_size,):
            raise ValueError(
                f"RingKVCache.reset: mask must have shape [B] = [{self.config.batch_size}], "
                f"got {list(mask.shape)}"
            )
        self.unchecked.reset(mask.to(self.device, non_blocking=True))

    # --- validation ------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"RingKVCache.attend: layer must be an int, got {type(layer).__name__}")
        if not 0 <= layer < self.config.num_layers:
            raise ValueError(
                f"RingKVCache.attend: layer {layer} is out of range [0, {self.config.num_layers})"
            )
        if layer != self._next_layer:
            raise ValueError(
                f"RingKVCache.attend: expected layer {self._next_layer}, got layer {layer} "
                f"(each step attends layers 0..{self.config.num_layers - 1} in order, once each)"
            )

    def _check_tokens(self, name: str, t: object) -> None:
        c = self.config
        ring_ops.check_tokens("RingKVCache.attend", name, t, c.batch_size, c.num_heads, c.capacity, c.head_dim,
                              self.dtype, self.device)
