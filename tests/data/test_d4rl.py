"""D4RL hdf5 files: the round trip (episodes split at terminals | timeouts, the task from the file name) and a
clear error naming the file and the field for every kind of bad input."""

import numpy as np
import pytest

from more3s.data import load_episodes

from .conftest import d4rl_file


def test_d4rl_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "halfcheetah-medium-v2.hdf5"
    data, ends = d4rl_file(path, rng)
    eps = load_episodes(path)
    assert [len(e) for e in eps] == [7, 12, 5]
    start = 0
    for e, end in zip(eps, ends):
        assert e.task == "halfcheetah"  # inferred from the file name
        np.testing.assert_array_equal(e.observations[:-1], data["observations"][start:end + 1])
        np.testing.assert_array_equal(e.observations[-1], data["next_observations"][end])
        np.testing.assert_array_equal(e.actions, data["actions"][start:end + 1])
        np.testing.assert_allclose(e.rtg, np.cumsum(data["rewards"][start:end + 1][::-1])[::-1],
                                   rtol=1e-5, atol=1e-5)  # MuJoCo: no clipping
        start = end + 1
    assert eps[0].terminations[-1] and not eps[0].truncations[-1]
    assert eps[1].truncations[-1] and not eps[1].terminations[-1]
    assert len(load_episodes(path, max_episodes=1)) == 1


def _bad_d4rl(tmp_path, **override):
    path = tmp_path / "halfcheetah-bad.hdf5"
    d4rl_file(path, np.random.default_rng(2), **override)
    return path


@pytest.mark.parametrize("override,field", [
    ({"rewards": None}, "rewards"),
    ({"timeouts": None}, "timeouts"),
    ({"actions": np.zeros((23, 6), np.float32)}, "actions"),
    ({"terminals": np.zeros(25, bool)}, "terminals"),
    ({"rewards": np.r_[np.ones(10), np.nan, np.ones(13)].astype(np.float32)}, "rewards"),
    ({"observations": np.r_[np.zeros((3, 17)), np.full((1, 17), np.inf),
                            np.zeros((20, 17))].astype(np.float32)}, "observations"),
    ({"actions": np.zeros((24, 3), np.float32)}, "actions"),  # hopper-sized actions, cheetah task
    ({"observations": np.zeros((24, 11), np.float32)}, "observations"),
])
def test_d4rl_bad_fields(tmp_path, override, field):
    path = _bad_d4rl(tmp_path, **override)
    with pytest.raises(ValueError) as e:
        load_episodes(path)
    msg = str(e.value)
    assert str(path) in msg and field in msg, msg


def test_truncated_and_corrupt_hdf5(tmp_path):
    path = tmp_path / "hopper-x.hdf5"
    d4rl_file(path, np.random.default_rng(3), lengths=(400, 600), obs_dim=11, act_dim=3)
    raw = path.read_bytes()
    trunc = tmp_path / "hopper-trunc.hdf5"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_episodes(trunc)
    assert str(trunc) in str(e.value)
    junk = tmp_path / "hopper-junk.hdf5"
    junk.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(ValueError, match=str(junk)):
        load_episodes(junk)
