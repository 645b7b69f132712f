"""H5Frames: lazily loaded frames are the same bytes, read on demand, under any index a sampler uses."""

import numpy as np

from more3s.data import H5Frames, load_episodes

from .conftest import frames_dataset


def test_lazy_frames_read_the_same_bytes():
    eps, _ = frames_dataset()
    loaded = load_episodes("tst/frames-v0")
    lazy = load_episodes("tst/frames-v0", lazy=True)
    for (obs, *_), e, full in zip(eps, lazy, loaded):
        assert isinstance(e.observations, H5Frames) and e.observations.shape == obs.shape
        np.testing.assert_array_equal(np.asarray(e.observations), obs)
        idx = np.array([2, 0, 2, 1])  # unsorted, repeated: what a sampler's window gather does
        np.testing.assert_array_equal(e.observations[idx], obs[idx])
        np.testing.assert_array_equal(e.observations[1:3], obs[1:3])
        np.testing.assert_array_equal(e.rtg, full.rtg)
