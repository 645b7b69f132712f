"""Training batches: a sampler's windows gathered from the episodes and their cached state embeddings.

The frozen encoder never runs during training: :class:`TrainData` holds every step's action and RTG and the
whole embedding cache on the training device, and turns a sampler's WindowBatch into model inputs by indexing.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .episode import Episode
from .sampler import WindowBatch

__all__ = ["TrainData"]


class TrainData:
    """Flat per-step arrays of all episodes + the cached state embeddings, gathered by index.

    states: [N_obs, d_enc] (the cache, as a tensor on ``device``); actions / rtg: flat over all
    steps with ``step_off`` [E+1]; observation rows use the cache's own ``offsets`` [E+1].
    ``cache``: anything with ``offsets`` [E+1] and ``states`` [N_obs, d_enc] (an EmbeddingCache).
    """

    def __init__(self, episodes: Sequence[Episode], cache: Any, device: torch.device, frame_stack: int = 1):
        lengths = np.asarray([len(ep) for ep in episodes], dtype=np.int64)  # [E]
        offsets = np.asarray(cache.offsets, dtype=np.int64)  # [E+1]
        if offsets.shape[0] != len(episodes) + 1:
            raise ValueError(f"embedding cache has {offsets.shape[0] - 1} episodes, dataset has "
                             f"{len(episodes)} (stale cache?)")
        obs_counts = np.diff(offsets)
        if not np.array_equal(obs_counts, lengths + 1):
            bad = int(np.flatnonzero(obs_counts != lengths + 1)[0])
            raise ValueError(f"embedding cache episode {bad} has {obs_counts[bad]} rows, expected "
                             f"{lengths[bad] + 1} (T+1 observations); rebuild the cache")
        self.lengths = lengths
        self.step_off = np.concatenate([[0], np.cumsum(lengths)])  # [E+1]
        self.obs_off = offsets
        self.device = device
        self.frame_stack = frame_stack  # > 1: each state input is the last k observations' rows (DT's Atari frames)
        # The whole cache goes to the device once (fp16): it is small next to the model's activations.
        self.states = torch.from_numpy(np.ascontiguousarray(cache.states[:])).to(device)  # [N_obs, d]
        acts = np.concatenate([ep.actions for ep in episodes])  # [N] or [N, A]
        self.actions = torch.from_numpy(acts).to(device)
        self.rtg = torch.from_numpy(np.concatenate([ep.rtg for ep in episodes]).astype(np.float32)).to(device)

    def state_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of every cached state ([d_enc] float32 each).

        The std is floored at its median over dimensions: the cache is fp16, and dimensions that barely
        vary would otherwise blow fp16 rounding noise up into the model's inputs.
        """
        x = self.states.double()  # [N_obs, d]
        mean, std = x.mean(0), x.std(0, correction=0)
        std = std.clamp(min=max(float(std.median()), 1e-6))
        return mean.float(), std.float()

    def _states(self, ep: np.ndarray, steps: np.ndarray, obs_idx: np.ndarray,
                to: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """Cache rows of the windows' states; with frame stacking the k rows ending at each step, repeating an
        episode's first row before its start (as the rollout engine's stacks do)."""
        if self.frame_stack == 1:
            return self.states[to(obs_idx)]  # [B, K, d]
        back = np.arange(self.frame_stack - 1, -1, -1)  # [k]: k-1 .. 0 steps back
        rows = self.obs_off[ep][..., None] + np.maximum(steps[..., None] - back, 0)  # [B, K, k]
        return self.states[to(rows)].flatten(2)  # [B, K, k * d]

    def gather(self, batch: WindowBatch) -> dict[str, torch.Tensor]:
        """A sampler's WindowBatch -> model inputs (all [B, K, ...] on device)."""
        ep = batch.episode[:, None]  # [B, 1]
        steps = batch.steps  # [B, K]
        mask_np = batch.mask  # [B, K]
        step_idx = self.step_off[ep] + steps  # [B, K] rows of actions / rtg
        prev_idx = np.maximum(step_idx - 1, 0)  # a_{t-1}; ignored by the model where first
        obs_idx = self.obs_off[ep] + steps  # [B, K] rows of the cache
        dev = self.device

        def to(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        first = (steps == 0) & mask_np  # [B, K]
        return {
            "states": self._states(ep, steps, obs_idx, to),  # [B, K, d_enc]
            "prev_actions": self.actions[to(prev_idx)],  # [B, K] or [B, K, A]
            "actions": self.actions[to(step_idx)],
            "rtg": self.rtg[to(step_idx)],  # [B, K]
            "timesteps": to(steps),  # [B, K]
            "first": to(first),
            "mask": to(mask_np),
        }
