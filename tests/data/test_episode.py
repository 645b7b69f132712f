"""Episode records: RTG against a brute-force sum, validation, state statistics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from more3s.data import best_episode_indices, compute_rtg, make_episode, training_episode_indices

rewards_st = st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=60)


def _brute_rtg(r, clip):
    r = [min(1.0, max(-1.0, x)) if clip else x for x in r]
    return np.array([sum(r[t:]) for t in range(len(r))])


@settings(max_examples=60, deadline=None)
@given(rewards_st, st.booleans())
def test_rtg_matches_brute_force(r, clip):
    got = compute_rtg(np.array(r, dtype=np.float32), clip=clip)
    want = _brute_rtg([float(np.float32(x)) for x in r], clip)
    assert got.dtype == np.float32 and got.shape == (len(r),)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(rewards_st, st.sampled_from(["breakout", "pong", "halfcheetah", None]))
def test_episode_rtg_uses_task_clipping(r, task):
    T = len(r)
    obs = np.zeros((T + 1, 3), np.float32)
    act = np.zeros((T, 6), np.float32) if task == "halfcheetah" else np.zeros(T, np.int64)
    ep = make_episode(obs, act, r, np.zeros(T, bool), np.zeros(T, bool), task=task)
    clip = task in ("breakout", "pong")
    np.testing.assert_allclose(ep.rtg, _brute_rtg([float(np.float32(x)) for x in r], clip),
                               rtol=1e-5, atol=1e-3)
    assert ep.raw_return == pytest.approx(float(np.sum(np.float32(r), dtype=np.float64)), abs=1e-3)
    assert len(ep) == T
    assert ep.train_return == pytest.approx(float(ep.rtg[0]))


def _arrays(T=5):
    return dict(observations=np.zeros((T + 1, 2), np.float32), actions=np.zeros(T, np.int64),
                rewards=np.ones(T, np.float32), terminations=np.zeros(T, bool),
                truncations=np.zeros(T, bool))


@pytest.mark.parametrize("field,value,msg", [
    ("observations", np.zeros((5, 2), np.float32), "'observations'"),
    ("actions", np.zeros(4, np.int64), "'actions'"),
    ("terminations", np.zeros(4, bool), "'terminations'"),
    ("truncations", np.zeros(6, bool), "'truncations'"),
    ("rewards", np.array([1, np.nan, 1, 1, 1], np.float32), "NaN/inf"),
    ("observations", np.full((6, 2), np.inf, np.float32), "NaN/inf"),
    ("actions", np.array(["a"] * 5), "dtype"),
])
def test_make_episode_rejects_bad_fields(field, value, msg):
    arrays = _arrays()
    arrays[field] = value
    with pytest.raises(ValueError, match=msg) as e:
        make_episode(**arrays, source="myfile.hdf5")
    assert "myfile.hdf5" in str(e.value) and field in str(e.value)


def _episode(T, ret):
    r = np.zeros(T, np.float32)
    r[0] = ret
    return make_episode(np.zeros((T + 1, 2), np.float32), np.zeros(T, np.int64), r, np.zeros(T, bool),
                        np.zeros(T, bool))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(-5, 20)), min_size=1, max_size=12),
       st.floats(0.5, 100))
def test_best_episodes_are_the_fewest_best_that_hold_the_percentage(spec, percent):
    eps = [_episode(T, ret) for T, ret in spec]
    ids = best_episode_indices(eps, percent)
    assert ids == sorted(set(ids))  # dataset order, each once
    need = percent / 100 * sum(len(e) for e in eps)
    held = sum(len(eps[i]) for i in ids)
    assert held >= need - 1e-9
    worst_kept = min(eps[i].raw_return for i in ids)
    assert all(e.raw_return <= worst_kept for i, e in enumerate(eps) if i not in ids)  # nothing better left out
    # the fewest: without the last one added (the worst-ranked kept), the selection would fall short
    last = max(ids, key=lambda i: (-eps[i].raw_return, i))
    assert len(ids) == 1 or held - len(eps[last]) < need


def test_best_episodes_at_100_percent_is_every_episode_and_rejects_bad_percentages():
    eps = [_episode(5, r) for r in (3, 1, 2)]
    assert best_episode_indices(eps, 100) == [0, 1, 2]
    assert best_episode_indices(eps, 30) == [0]  # 5 of 15 steps hold >= 30 %
    assert best_episode_indices(eps, 34) == [0, 2]
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match="percent"):
            best_episode_indices(eps, bad)


def test_a_runs_training_episodes_skip_empty_ones_before_the_best_are_chosen():
    eps = [_episode(5, 3), make_episode(np.zeros((1, 2), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                        np.zeros(0, bool), np.zeros(0, bool)), _episode(5, 1), _episode(5, 2)]
    assert training_episode_indices(eps) == [0, 2, 3]
    assert training_episode_indices(eps, 34) == [0, 3]  # the best of the non-empty ones, dataset indices
