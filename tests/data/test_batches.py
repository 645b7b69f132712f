"""Training batches (more3s.data.batches): a sampler's windows gathered from the episodes and the cache."""

import numpy as np
import pytest
import torch

from more3s.data import WindowSampler, make_episode
from more3s.data.batches import TrainData


class _Cache:
    """Two episodes of 3 and 2 steps: 4 + 3 observation rows, row r = [r, r]."""

    offsets = np.array([0, 4, 7])
    states = np.repeat(np.arange(7, dtype=np.float16)[:, None], 2, axis=1)


def _episodes():
    def ep(actions, rewards):
        T = len(actions)
        done = np.arange(T) == T - 1
        return make_episode(np.zeros((T + 1, 1), np.float32), np.asarray(actions), np.asarray(rewards), done,
                            np.zeros(T, bool))

    return [ep([1, 2, 3], [1.0, 0.0, 1.0]), ep([0, 1], [0.0, 2.0])]


def test_gather_reads_the_rows_of_each_window():
    data = TrainData(_episodes(), _Cache(), torch.device("cpu"))
    assert data.lengths.tolist() == [3, 2] and data.step_off.tolist() == [0, 3, 5]
    batch = WindowSampler(data.lengths.tolist(), 2, 4, seed=0).sample()
    out = data.gather(batch)
    assert set(out) == {"states", "prev_actions", "actions", "rtg", "timesteps", "first", "mask"}
    for b in range(len(batch.episode)):
        e = int(batch.episode[b])
        for k in range(2):
            if not batch.mask[b, k]:
                continue
            t = int(batch.steps[b, k])
            assert float(out["states"][b, k, 0]) == _Cache.offsets[e] + t
            assert int(out["actions"][b, k]) == _episodes()[e].actions[t]
            assert bool(out["first"][b, k]) == (t == 0)
    mean, std = data.state_stats()
    assert mean.shape == std.shape == (2,) and float(mean[0]) == pytest.approx(3.0)


def test_a_stale_cache_is_refused():
    class _Short(_Cache):
        offsets = np.array([0, 4])

    with pytest.raises(ValueError, match="stale cache"):
        TrainData(_episodes(), _Short(), torch.device("cpu"))
