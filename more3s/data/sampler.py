"""Segment samplers over episode lengths: they return indices, never data.

Working on lengths alone lets the trainer gather raw observations or rows of the embedding cache
with the same batch. Two samplers:

* ``WindowSampler`` — Decision Transformer's random windows: a start step is drawn uniformly over
  all steps of all episodes (so an episode is picked with probability proportional to its length),
  the window runs ``window`` steps from there, is cut at the episode end, and is padded on the LEFT.
* ``StreamSampler`` — ``batch_size`` streams, each walking one episode in consecutive windows and
  moving to the next episode (drawn from a per-epoch shuffle) when it ends; a window whose first real
  step is 0 starts an episode, where the model must clear that stream's memory. Stream b enters its
  first episode at step ``b * length // batch_size`` (b counted over every process's streams under
  DDP), not at 0: with equal-length episodes (MuJoCo's 1,000-step ones) streams started together
  would stay in lockstep for the whole run, every batch
  holding one narrow band of timesteps and the bands cycling through the episode, so the last batches
  would fit the model to the episodes' ends.

Both are seeded, reproducible and resumable exactly through ``state_dict()/load_state_dict()``.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["WindowBatch", "WindowSampler", "StreamSampler"]


@dataclass(frozen=True)
class WindowBatch:
    episode: np.ndarray  # [B] int64: which episode
    steps: np.ndarray  # [B, K] int64: step t inside the episode (0 at padded slots)
    mask: np.ndarray  # [B, K] bool: True = real step; padding is on the LEFT


def _check_args(lengths: Sequence[int], window: int, batch_size: int, seed: int) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence of episode lengths, "
                         f"got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        raise ValueError(f"lengths must be >= 0, got {arr[arr < 0][:5].tolist()}")
    if arr.sum() == 0:
        raise ValueError("all episodes are empty (total length 0); nothing to sample")
    for name, v in (("window", window), ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return arr


def _fingerprint(lengths: np.ndarray) -> str:
    return hashlib.sha256(lengths.astype("<i8").tobytes()).hexdigest()[:16]


def _fill(steps: np.ndarray, mask: np.ndarray, b: int, start: int, n: int, K: int) -> None:
    """Place steps start..start+n-1 right-aligned in row b (left padding)."""
    steps[b, K - n:] = np.arange(start, start + n)
    mask[b, K - n:] = True


class _Base:
    kind = "base"

    def __init__(self, lengths: Sequence[int], window: int, batch_size: int, seed: int):
        self.lengths = _check_args(lengths, window, batch_size, seed)
        self.window, self.batch_size, self.seed = int(window), int(batch_size), int(seed)
        self._rng = np.random.default_rng(self.seed)
        self.num_batches = 0  # batches drawn so far

    def __iter__(self) -> Iterator[WindowBatch]:
        while True:
            yield self.sample()

    def sample(self) -> WindowBatch:  # pragma: no cover - overridden
        raise NotImplementedError

    def _base_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "window": self.window, "batch_size": self.batch_size,
                "seed": self.seed, "lengths_sha": _fingerprint(self.lengths),
                "num_batches": self.num_batches,
                "rng": copy.deepcopy(self._rng.bit_generator.state)}

    def _load_base(self, state: dict[str, Any]) -> None:
        for key, mine in (("kind", self.kind), ("window", self.window),
                          ("batch_size", self.batch_size),
                          ("lengths_sha", _fingerprint(self.lengths))):
            if state.get(key) != mine:
                raise ValueError(f"sampler state does not match this sampler: {key} is "
                                 f"{state.get(key)!r} in the state, {mine!r} here")
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.num_batches = int(state["num_batches"])


class WindowSampler(_Base):
    """DT-style random windows; see the module docstring."""

    kind = "window"

    def __init__(self, lengths: Sequence[int], window: int, batch_size: int, seed: int):
        super().__init__(lengths, window, batch_size, seed)
        self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # [E+1]
        self.total_steps = int(self._offsets[-1])

    def sample(self) -> WindowBatch:
        B, K = self.batch_size, self.window
        flat = self._rng.integers(0, self.total_steps, size=B)  # [B] uniform over all steps
        ep = np.searchsorted(self._offsets, flat, side="right") - 1  # [B]
        start = flat - self._offsets[ep]  # [B]
        n = np.minimum(K, self.lengths[ep] - start)  # [B] real steps, >= 1
        col = np.arange(K)[None, :]  # [1, K]
        mask = col >= (K - n)[:, None]  # [B, K]
        steps = np.where(mask, start[:, None] + col - (K - n)[:, None], 0).astype(np.int64)
        self.num_batches += 1
        return WindowBatch(episode=ep.astype(np.int64), steps=steps, mask=mask)

    def state_dict(self) -> dict[str, Any]:
        return self._base_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_base(state)


class StreamSampler(_Base):
    """``batch_size`` contiguous streams over episodes; see the module docstring.

    Every epoch visits each non-empty episode exactly once (shuffled); a stream that finishes its
    episode takes the next one from the epoch's queue. The streams' first episodes are entered at
    staggered steps (their earlier steps are skipped once; the stream's memory is empty there), so
    streams reach episode ends at different batches even when all episodes have one length.
    """

    kind = "stream"

    def __init__(self, lengths: Sequence[int], window: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        super().__init__(lengths, window, batch_size, seed)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank}, world_size {world_size}")
        # Under DDP each process holds batch_size of the world's streams: staggered over all of them, the
        # processes' streams interleave instead of repeating one another's offsets.
        self._first_stream, self._streams = rank * batch_size, world_size * batch_size
        self._nonempty = np.flatnonzero(self.lengths > 0)
        self._queue: list[int] = []
        self.epoch = 0
        self._ep = np.full(self.batch_size, -1, dtype=np.int64)  # [B] current episode per stream
        self._pos = np.zeros(self.batch_size, dtype=np.int64)  # [B] next step per stream

    def _next_episode(self) -> int:
        if not self._queue:
            self._queue = self._rng.permutation(self._nonempty).tolist()
            self.epoch += 1
        return int(self._queue.pop())

    def sample(self) -> WindowBatch:
        B, K = self.batch_size, self.window
        steps = np.zeros((B, K), dtype=np.int64)
        mask = np.zeros((B, K), dtype=bool)
        for b in range(B):
            if self._ep[b] < 0:  # the stream's first episode, entered at its stagger
                self._ep[b] = self._next_episode()
                self._pos[b] = (self._first_stream + b) * int(self.lengths[self._ep[b]]) // self._streams
            elif self._pos[b] >= self.lengths[self._ep[b]]:
                self._ep[b], self._pos[b] = self._next_episode(), 0
            start = int(self._pos[b])
            n = min(K, int(self.lengths[self._ep[b]]) - start)
            _fill(steps, mask, b, start, n, K)
            self._pos[b] = start + n
        self.num_batches += 1
        return WindowBatch(episode=self._ep.copy(), steps=steps, mask=mask)

    def state_dict(self) -> dict[str, Any]:
        state = self._base_state()
        state.update(queue=list(self._queue), epoch=self.epoch, ep=self._ep.tolist(),
                     pos=self._pos.tolist())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        self._queue = [int(i) for i in state["queue"]]
        self.epoch = int(state["epoch"])
        self._ep = np.asarray(state["ep"], dtype=np.int64)
        self._pos = np.asarray(state["pos"], dtype=np.int64)
