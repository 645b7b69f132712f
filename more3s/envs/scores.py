"""Normalized scores: 100 * (score - random) / (reference - random), one table with sources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tasks import get_task

__all__ = ["ScoreRef", "SCORE_REFS", "normalized_score"]


@dataclass(frozen=True)
class ScoreRef:
    random: float
    reference: float
    source: str


_DT_ATARI = "Atari human-gamer scores as used by Decision Transformer (Chen et al. 2021; Agarwal et al. 2020)"
_D4RL = "D4RL infos.REF_MIN_SCORE / REF_MAX_SCORE (Fu et al. 2020)"

SCORE_REFS: dict[str, ScoreRef] = {
    "breakout": ScoreRef(1.7, 30.5, _DT_ATARI),
    "qbert": ScoreRef(163.9, 13455.0, _DT_ATARI),
    "pong": ScoreRef(-20.7, 14.6, _DT_ATARI),
    "seaquest": ScoreRef(68.4, 42054.7, _DT_ATARI),
    "halfcheetah": ScoreRef(-280.178953, 12135.0, _D4RL),
    "hopper": ScoreRef(-20.272305, 3234.3, _D4RL),
    "walker2d": ScoreRef(1.629008, 4592.3, _D4RL),
}


def normalized_score(task: str, raw_return):
    """Normalized score of a raw (unclipped) episode return; accepts scalars or arrays."""
    ref = SCORE_REFS[get_task(task).name]
    out = 100.0 * (np.asarray(raw_return, dtype=np.float64) - ref.random) / (ref.reference - ref.random)
    return float(out) if np.ndim(out) == 0 else out
