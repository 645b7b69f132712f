"""Normalized scores: 0 at random, 100 at the reference, scalars and arrays."""

import numpy as np
import pytest

from more3s.envs import SCORE_REFS, TASKS, normalized_score


@pytest.mark.parametrize("task", list(TASKS))
def test_normalized_score(task):
    ref = SCORE_REFS[task]
    assert normalized_score(task, ref.random) == pytest.approx(0.0)
    assert normalized_score(task, ref.reference) == pytest.approx(100.0)
    mid = (ref.random + ref.reference) / 2
    out = normalized_score(task, np.array([ref.random, mid]))
    np.testing.assert_allclose(out, [0.0, 50.0])
    assert isinstance(normalized_score(task, mid), float)


def test_known_reference_values():
    # DT's table: Breakout gamer 30.5 / random 1.7; D4RL halfcheetah -280.18 / 12135.
    assert normalized_score("breakout", 30.5) == pytest.approx(100.0)
    assert normalized_score("halfcheetah", 12135.0) == pytest.approx(100.0)
    assert normalized_score("pong", 14.6) == pytest.approx(100.0)
