"""Reading Minari datasets: the task from the metadata, clipped RTG beside the raw return, and a clear error
naming file, episode and field for every kind of bad input."""

import json

import h5py
import numpy as np
import pytest

from more3s.data import collect_dataset, dataset_path, dataset_provenance, load_episodes

from .conftest import frames_dataset, small_minari


def test_minari_round_trip_through_the_loader():
    eps, path = frames_dataset()
    loaded = load_episodes("tst/frames-v0")  # the task comes from the metadata: clipped RTG, raw return
    assert [len(e) for e in loaded] == [3, 300, 17]
    for (obs, act, rew, *_), e in zip(eps, loaded):
        assert e.task == "breakout"
        np.testing.assert_array_equal(e.observations, obs)
        assert e.raw_return == pytest.approx(rew.sum())
        assert e.rtg[0] == pytest.approx(np.clip(rew, -1, 1).sum())
    # by path, and max_episodes
    assert len(load_episodes(path, max_episodes=2)) == 2
    assert len(load_episodes(path / "data", task="breakout")) == 3


def test_minari_bad_inputs():
    rng = np.random.default_rng(4)
    # action space that does not match the task
    small_minari("tst/six-v0", rng, n_actions=6)
    with pytest.raises(ValueError, match="action_space") as e:
        load_episodes("tst/six-v0", task="breakout")
    assert "metadata.json" in str(e.value)
    # missing field in an episode
    path = small_minari("tst/miss-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/rewards"]
    with pytest.raises(ValueError, match="episode_1 is missing field 'rewards'") as e:
        load_episodes("tst/miss-v0")
    assert "main_data.hdf5" in str(e.value)
    # length mismatch
    path = small_minari("tst/len-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f["episode_0/terminations"]
        f["episode_0/terminations"] = np.zeros(3, bool)
    with pytest.raises(ValueError, match="episode_0: field 'terminations'"):
        load_episodes("tst/len-v0")
    # NaN reward
    path = small_minari("tst/nan-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_1/rewards"][2] = np.nan
    with pytest.raises(ValueError, match="episode_1: field 'rewards' has NaN"):
        load_episodes("tst/nan-v0")
    # out-of-range discrete actions
    path = small_minari("tst/act-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_0/actions"][1] = 9
    with pytest.raises(ValueError, match="episode_0: field 'actions' has values outside"):
        load_episodes("tst/act-v0")
    # truncated main_data.hdf5
    path = small_minari("tst/cut-v0", rng, lengths=(200, 200))
    h5 = path / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 3])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_episodes("tst/cut-v0")
    assert "main_data.hdf5" in str(e.value)
    # metadata without a required field
    path = small_minari("tst/meta-v0", rng)
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["data_format"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing field 'data_format'"):
        load_episodes("tst/meta-v0")


def test_collections_record_their_provenance():
    collect_dataset("breakout", "random", 1, "mine/breakout-random-v0", seed=5, max_episode_steps=7,
                    progress=False)
    prov = dataset_provenance("mine/breakout-random-v0")
    from more3s import __version__

    assert prov["collected_by"] == "more3s" and prov["version"] == __version__
    assert prov["policy"] == "random" and prov["seed"] == 5 and prov["max_episode_steps"] == 7
    assert dataset_provenance(str(dataset_path("mine/breakout-random-v0"))) == prov  # by path alike
