"""Ring-buffer KV cache for batched rollouts: append a step's tokens, attend once.

Why: a rollout step of the sequence model adds one block of tokens ``[a_{t-1}, s_t]`` per
environment. Recomputing the whole window every step costs O(window) per layer; the ring keeps
every layer's RTG-injected K/V of the last ``capacity`` tokens, so a step only appends n tokens
and runs a decode attention of the n new queries over the ring (the rollout semantics,
§5). The kernels are torch ops in csrc/ (C++ on CPU, CUDA on GPU); the plain-PyTorch reference
in `more3s.rollout._ops` has the same semantics and is the oracle.

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

import numpy as np
import torch

from more3s.rollout import _ops

__all__ = ["BACKENDS", "RingKVCache", "RingKVCacheConfig", "resolve_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpp", "cuda", "reference")

# Device types whose missing-extension fallback has already been announced (once per process).
_FALLBACK_WARNED: set[str] = set()


def resolve_backend(backend: str, device: torch.device | str) -> str:
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
        if not _ops.has_kernel(want):
            raise RuntimeError(
                f"backend {backend!r} needs the compiled extension more3s._C with {want} kernels: "
                f"{_ops.extension_error() or 'it was built without them'}. Build it with "
                "`pip install --no-build-isolation -c constraints.txt -e .` (CUDA kernels need a "
                "CUDA build of torch), or use backend='reference'."
            )
        return backend
    # auto
    if device.type in ("cpu", "cuda") and _ops.has_kernel(device.type):
        return "cpp" if device.type == "cpu" else "cuda"
    if device.type in ("cpu", "cuda") and device.type not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(device.type)
        log.warning(
            "more3s.rollout.RingKVCache: no compiled %s kernels (%s); using the slower PyTorch "
            "reference. Build them with `pip install --no-build-isolation -c constraints.txt -e .`.",
            device.type,
            _ops.extension_error() or "more3s._C was built without them",
        )
    return "reference"


@dataclass(frozen=True)
class RingKVCacheConfig:
    """Sizes of a ring cache (all >= 1)."""

    num_layers: int  # L: one ring per transformer layer
    batch_size: int  # B: environments
    num_heads: int  # H
    capacity: int  # C: tokens held per environment; 2 x (window + memory steps) in the engine
    head_dim: int  # D

    def __post_init__(self) -> None:
        for name in ("num_layers", "batch_size", "num_heads", "capacity", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"RingKVCache: {name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"RingKVCache: {name} must be >= 1, got {value}")


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
        backend: str = "auto",
    ) -> None:
        self.config = RingKVCacheConfig(num_layers, batch_size, num_heads, capacity, head_dim)
        if dtype not in _ops.SUPPORTED_DTYPES:
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
        self._k_layers, self._v_layers = self.k.unbind(0), self.v.unbind(0)  # per-layer [B, H, C, D] views
        # Tokens appended per environment since its last reset, as of the start of the step.
        self._tokens = torch.zeros(B, dtype=torch.int64, device=self.device)  # [B]
        self._next_layer = 0  # the layer the current step expects next
        self._step_n: int | None = None  # n of the step in progress (set after layer 0)
        if self.backend == "reference":
            self._append, self._attention = _ops.ring_append_reference, _ops.ring_attention_reference
        else:
            # The C++ host functions repeat the checks below; attend() validates first so every
            # backend raises the same Python errors.
            self._append = torch.ops.more3s.ring_append
            self._attention = torch.ops.more3s.ring_attention

    # --- sizes -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

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
        # The ring never carries autograd history (it would grow with every step).
        k_ring, v_ring = self._k_layers[layer], self._v_layers[layer]
        self._append(k_ring, v_ring, k.detach(), v.detach(), self._tokens)
        out = self._attention(q, k_ring, v_ring, self._tokens, self.scale)
        if layer == self.num_layers - 1:
            self._tokens += n  # in place: no host sync, stable address for CUDA graphs
            self._next_layer, self._step_n = 0, None
        else:
            self._next_layer, self._step_n = layer + 1, n
        return out

    def reset(self, mask: torch.Tensor | np.ndarray) -> None:
        """Empties the environments where mask [B] bool is True (between steps only)."""
        if self._next_layer != 0:
            raise RuntimeError(
                f"RingKVCache.reset: a step is in progress (layers 0..{self._next_layer - 1} of "
                f"{self.num_layers} attended); reset between steps"
            )
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask))
        if mask.dtype != torch.bool:
            raise TypeError(f"RingKVCache.reset: mask must be bool, got {mask.dtype}")
        if tuple(mask.shape) != (self.batch_size,):
            raise ValueError(
                f"RingKVCache.reset: mask must have shape [B] = [{self.batch_size}], "
                f"got {list(mask.shape)}"
            )
        # Stale slots need no clearing: a zero counter makes every older slot invisible.
        self._tokens.masked_fill_(mask.to(self.device, non_blocking=True), 0)

    def clear(self) -> None:
        """Empties every environment and abandons a step in progress."""
        self._tokens.zero_()
        self._next_layer, self._step_n = 0, None

    # --- validation ------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"RingKVCache.attend: layer must be an int, got {type(layer).__name__}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(
                f"RingKVCache.attend: layer {layer} is out of range [0, {self.num_layers})"
            )
        if layer != self._next_layer:
            raise ValueError(
                f"RingKVCache.attend: expected layer {self._next_layer}, got layer {layer} "
                f"(each step attends layers 0..{self.num_layers - 1} in order, once each)"
            )

    def _check_tokens(self, name: str, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"RingKVCache.attend: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"RingKVCache.attend: {name} must be 4-D [B, H, n, D], got shape {list(t.shape)}"
            )
        B, H, D = self.batch_size, self.num_heads, self.head_dim
        if (t.shape[0], t.shape[1], t.shape[3]) != (B, H, D):
            raise ValueError(
                f"RingKVCache.attend: {name} shape {list(t.shape)} does not match [B, H, n, D] with "
                f"B={B}, H={H}, D={D}"
            )
        n = t.shape[2]
        if not 1 <= n <= self.capacity:
            raise ValueError(
                f"RingKVCache.attend: {name} has n={n} new tokens; need 1 <= n <= capacity="
                f"{self.capacity}" + (" (n > capacity)" if n > self.capacity else "")
            )
        if t.dtype != self.dtype:
            raise TypeError(
                f"RingKVCache.attend: {name} dtype {t.dtype} differs from the cache dtype {self.dtype}"
            )
        if t.device != self.device:
            raise ValueError(f"RingKVCache.attend: {name} is on {t.device} but the cache is on {self.device}")
