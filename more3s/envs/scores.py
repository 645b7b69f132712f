"""Normalized scores: 100 * (score - random) / (reference - random), one table with sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

from .tasks import TaskSpec, get_task

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


@overload
def normalized_score(task: str | TaskSpec, raw_return: float) -> float: ...
@overload
def normalized_score(task: str | TaskSpec, raw_return: npt.ArrayLike) -> float | np.ndarray: ...


def normalized_score(task: str | TaskSpec, raw_return: npt.ArrayLike) -> float | np.ndarray:
    """Normalized score of a raw (unclipped) episode return; accepts scalars or arrays (float64)."""
    ref = SCORE_REFS[get_task(task).name]
    out = 100.0 * (np.asarray(raw_return, dtype=np.float64) - ref.random) / (ref.reference - ref.random)
    return float(out) if np.ndim(out) == 0 else out
