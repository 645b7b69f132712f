"""The episode record: one trajectory with its return-to-go, the unit every other data module shares.

Minari's convention is kept (T actions and rewards, T+1 observations including the final one), and
terminations and truncations stay separate (a time-limit truncation is not a terminal state). The RTG
is computed once here so that the loader, the samplers and the trainer agree on it: the protocol says it
is the undiscounted sum of rewards from t to the episode end, with rewards clipped to [-1, 1] first
for Atari (the task's ``clip_rewards``), while the raw return is kept for reporting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Episode", "EPISODE_FIELDS", "compute_rtg", "make_episode"]

# The per-step arrays of an episode, named as Minari names them (and as make_episode takes them).
EPISODE_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


def compute_rtg(rewards: np.ndarray, clip: bool = False) -> np.ndarray:
    """Undiscounted reward-to-go: ``rtg[t] = sum(r[t:])``, with r clipped to [-1, 1] when ``clip``.

    Accumulated in float64 (long Atari episodes would drift in float32), returned as float32 [T].
    """
    r = np.asarray(rewards, dtype=np.float64)  # [T]
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D, got shape {r.shape}")
    if clip:
        r = np.clip(r, -1.0, 1.0)
    return np.cumsum(r[::-1])[::-1].astype(np.float32)  # [T]


@dataclass(frozen=True)
class Episode:
    """One episode. Arrays are not copied; treat them as read-only."""

    observations: np.ndarray  # [T+1, *obs_shape] includes the final observation (or a frames.H5Frames)
    actions: np.ndarray  # [T] int64 (discrete) or [T, A] float32 (continuous)
    rewards: np.ndarray  # [T] float32, raw rewards
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool
    rtg: np.ndarray  # [T] float32, sum of (clipped when the task clips) rewards from t to the end
    raw_return: float  # sum of raw rewards
    task: str | None = None  # short task name when known

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def train_return(self) -> float:
        """The return in RTG units (``rtg[0]``; 0 for an empty episode)."""
        return float(self.rtg[0]) if len(self) else 0.0


def best_episode_indices(episodes: Sequence[Episode], percent: float) -> list[int]:
    """Indices (in dataset order) of the best episodes by raw return that together hold at least ``percent`` % of
    the steps.

    Decision Transformer's %BC baseline (Chen et al. 2021: "does DT perform behaviour cloning on a subset of the
    data?") clones only the top X % of the data's timesteps ordered by episode return: whole episodes, the best
    first, until X % of the steps are in. Ties keep the dataset's order, so the choice is deterministic.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percent={percent!r}: expected 0 < percent <= 100")
    order = sorted(range(len(episodes)), key=lambda i: (-episodes[i].raw_return, i))
    need = percent / 100.0 * sum(len(ep) for ep in episodes)
    keep: list[int] = []
    held = 0
    for i in order:
        if held >= need and keep:
            break
        keep.append(i)
        held += len(episodes[i])
    return sorted(keep)


def training_episode_indices(episodes: Sequence[Episode], top_percent: float = 100.0) -> list[int]:
    """Indices of the episodes a run trains on: the non-empty ones, and of those only the best that hold
    ``top_percent`` % of the steps (``best_episode_indices``). Training and every tool that replays a run's
    training episodes (``more3s.agreement``) pick them here, so they cannot disagree."""
    kept = [i for i, ep in enumerate(episodes) if len(ep) > 0]
    if top_percent < 100 and kept:
        kept = [kept[i] for i in best_episode_indices([episodes[i] for i in kept], top_percent)]
    return kept


def make_episode(observations: Any, actions: npt.ArrayLike, rewards: npt.ArrayLike, terminations: npt.ArrayLike,
                 truncations: npt.ArrayLike, *,
                 task: str | None = None, clip_rewards: bool | None = None,
                 source: str = "episode") -> Episode:
    """Validate arrays, normalise dtypes and compute the RTG; ``source`` names the input in errors.

    ``clip_rewards`` defaults to the task's setting (False when the task is unknown).
    """
    if clip_rewards is None:
        clip_rewards = False
        if task is not None:
            from more3s.envs import get_task

            clip_rewards = get_task(task).clip_rewards
    # Lazily loaded frames (frames.H5Frames) stay on disk; they are uint8, so no NaN check applies.
    obs = observations if getattr(observations, "is_lazy_array", False) else np.asarray(observations)
    act = np.asarray(actions)
    rew = np.asarray(rewards)
    term = np.asarray(terminations)
    trunc = np.asarray(truncations)
    T = rew.shape[0] if rew.ndim >= 1 else -1
    if rew.ndim != 1:
        raise ValueError(f"{source}: field 'rewards' must be 1-D [T], got shape {rew.shape}")
    for name, arr in (("terminations", term), ("truncations", trunc)):
        if arr.shape != (T,):
            raise ValueError(f"{source}: field '{name}' has shape {arr.shape}, expected ({T},) "
                             f"to match 'rewards'")
    if act.ndim == 0 or act.shape[0] != T:
        raise ValueError(f"{source}: field 'actions' has {act.shape[0] if act.ndim else 0} steps, "
                         f"expected {T} to match 'rewards' (shape {act.shape})")
    if obs.ndim == 0 or obs.shape[0] != T + 1:
        raise ValueError(f"{source}: field 'observations' has {obs.shape[0] if obs.ndim else 0} "
                         f"rows, expected T+1 = {T + 1} (Minari convention: the final observation "
                         f"is included)")
    if not np.issubdtype(rew.dtype, np.number) or not np.all(np.isfinite(rew)):
        bad = np.flatnonzero(~np.isfinite(rew.astype(np.float64)))[:5].tolist() \
            if np.issubdtype(rew.dtype, np.number) else "non-numeric"
        raise ValueError(f"{source}: field 'rewards' has NaN/inf values (at steps {bad})")
    if np.issubdtype(obs.dtype, np.floating) and not np.all(np.isfinite(obs)):
        bad = np.unique(np.nonzero(~np.isfinite(obs))[0])[:5].tolist()
        raise ValueError(f"{source}: field 'observations' has NaN/inf values (at rows {bad})")
    if np.issubdtype(act.dtype, np.floating):
        if not np.all(np.isfinite(act)):
            raise ValueError(f"{source}: field 'actions' has NaN/inf values")
        if act.ndim == 1:  # scalar continuous actions keep a trailing dim of 1
            act = act[:, None]
        act = act.astype(np.float32, copy=False)
    elif np.issubdtype(act.dtype, np.integer):
        if act.ndim == 2 and act.shape[1] == 1:
            act = act[:, 0]
        if act.ndim != 1:
            raise ValueError(f"{source}: discrete field 'actions' must be [T], got shape {act.shape}")
        act = act.astype(np.int64, copy=False)
    else:
        raise ValueError(f"{source}: field 'actions' has unsupported dtype {act.dtype}")
    rew = rew.astype(np.float32, copy=False)
    return Episode(
        observations=obs, actions=act, rewards=rew,
        terminations=term.astype(bool, copy=False), truncations=trunc.astype(bool, copy=False),
        rtg=compute_rtg(rew, clip=clip_rewards), raw_return=float(rew.astype(np.float64).sum()),
        task=task,
    )
