"""Loading: Minari round trips (plain minari reads what we write, frames byte-exact), D4RL hdf5
round trip, remote ids failing fast offline, and a clear error for every kind of bad input."""

import json
import os
import time

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from more3s.data import H5Frames, MinariWriter, dataset_path, load_episodes


def _write_minari(dataset_id, episodes, obs_space, act_space, env_spec=None, metadata=None):
    with MinariWriter(dataset_id, obs_space, act_space, env_spec=env_spec, metadata=metadata) as w:
        for obs, act, rew, term, trunc in episodes:
            w.begin_episode(obs[0], seed=7)
            for t in range(len(act)):
                w.add_step(act[t], obs[t + 1], rew[t], term[t], trunc[t])
            w.end_episode({"policy": "test"})
    return dataset_path(dataset_id)


def _image_episodes(rng, lengths, shape=(210, 160, 3), n_actions=4):
    eps = []
    for T in lengths:
        obs = rng.integers(0, 256, size=(T + 1, *shape), dtype=np.uint8)
        act = rng.integers(0, n_actions, size=T)
        rew = rng.choice([0.0, 1.0, 4.0, 7.0, -1.0], size=T)
        term = np.zeros(T, bool)
        term[-1] = True
        eps.append((obs, act, rew, term, np.zeros(T, bool)))
    return eps


def test_minari_round_trip_frames_byte_exact():
    rng = np.random.default_rng(0)
    eps = _image_episodes(rng, [3, 300, 17])  # 300 > the writer's 256-step flush block
    obs_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    path = _write_minari("tst/frames-v0", eps, obs_space, gym.spaces.Discrete(4),
                         env_spec=gym.spec("ALE/Breakout-v5") if "ALE/Breakout-v5" in gym.registry
                         else None, metadata={"more3s": {"task": "breakout"}})
    # plain minari, no more3s help
    ds = minari.load_dataset("tst/frames-v0")
    assert ds.total_episodes == 3 and ds.total_steps == 320
    for (obs, act, rew, term, trunc), ep in zip(eps, ds.iterate_episodes()):
        assert ep.observations.dtype == np.uint8
        np.testing.assert_array_equal(ep.observations, obs)  # lossless, not JPEG
        np.testing.assert_array_equal(ep.actions, act)
        np.testing.assert_array_equal(ep.rewards, rew)  # raw rewards
        np.testing.assert_array_equal(ep.terminations, term)
    with h5py.File(path / "data" / "main_data.hdf5") as f:
        assert f["episode_1/observations"].compression == "gzip"
        assert f["episode_1"].attrs["raw_return"] == pytest.approx(eps[1][2].sum())
    # and more3s' loader, with task from metadata: clipped RTG, raw return
    loaded = load_episodes("tst/frames-v0")
    assert [len(e) for e in loaded] == [3, 300, 17]
    for (obs, act, rew, *_), e in zip(eps, loaded):
        assert e.task == "breakout"
        np.testing.assert_array_equal(e.observations, obs)
        assert e.raw_return == pytest.approx(rew.sum())
        assert e.rtg[0] == pytest.approx(np.clip(rew, -1, 1).sum())
    # lazy frames: the same bytes, read on demand
    lazy = load_episodes("tst/frames-v0", lazy=True)
    for (obs, *_), e in zip(eps, lazy):
        assert isinstance(e.observations, H5Frames) and e.observations.shape == obs.shape
        np.testing.assert_array_equal(np.asarray(e.observations), obs)
        idx = np.array([2, 0, 2, 1])  # unsorted, repeated: what a sampler's window gather does
        np.testing.assert_array_equal(e.observations[idx], obs[idx])
        np.testing.assert_array_equal(e.observations[1:3], obs[1:3])
        np.testing.assert_array_equal(e.rtg, loaded[0].rtg if len(e) == 3 else e.rtg)
    # by path, and max_episodes
    assert len(load_episodes(path, max_episodes=2)) == 2
    assert len(load_episodes(path / "data", task="breakout")) == 3


def _d4rl_file(path, rng, lengths=(7, 12, 5), obs_dim=17, act_dim=6, next_obs=True, **override):
    n = sum(lengths)
    data = {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool),
    }
    if next_obs:
        data["next_observations"] = rng.normal(size=(n, obs_dim)).astype(np.float32)
    ends = np.cumsum(lengths) - 1
    data["terminals"][ends[0]] = True
    data["timeouts"][ends[1:]] = True
    data.update(override)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return data, ends


def test_d4rl_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "halfcheetah-medium-v2.hdf5"
    data, ends = _d4rl_file(path, rng)
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


def test_remote_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="offline") as e:
        load_episodes("mujoco/halfcheetah/medium-v0")
    assert time.perf_counter() - t0 < 5.0
    assert "minari download mujoco/halfcheetah/medium-v0" in str(e.value)
    assert "more3s.collect" in str(e.value)


# ---- bad input: each names the file and the field ------------------------------------------

def _bad_d4rl(tmp_path, **override):
    path = tmp_path / "halfcheetah-bad.hdf5"
    _d4rl_file(path, np.random.default_rng(2), **override)
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
    _d4rl_file(path, np.random.default_rng(3), lengths=(400, 600), obs_dim=11, act_dim=3)
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
    with pytest.raises(FileNotFoundError, match="no such"):
        load_episodes(tmp_path / "missing.hdf5")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_episodes(other)


def _small_minari(dataset_id, rng, n_actions=4, task="breakout", lengths=(5, 6)):
    eps = _image_episodes(rng, lengths, shape=(8, 8), n_actions=n_actions)
    return _write_minari(dataset_id, eps, gym.spaces.Box(0, 255, (8, 8), np.uint8),
                         gym.spaces.Discrete(n_actions), metadata={"more3s": {"task": task}})


def test_minari_bad_inputs(tmp_path):
    rng = np.random.default_rng(4)
    # action space that does not match the task
    _small_minari("tst/six-v0", rng, n_actions=6)
    with pytest.raises(ValueError, match="action_space") as e:
        load_episodes("tst/six-v0", task="breakout")
    assert "metadata.json" in str(e.value)
    # missing field in an episode
    path = _small_minari("tst/miss-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/rewards"]
    with pytest.raises(ValueError, match="episode_1 is missing field 'rewards'") as e:
        load_episodes("tst/miss-v0")
    assert "main_data.hdf5" in str(e.value)
    # length mismatch
    path = _small_minari("tst/len-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f["episode_0/terminations"]
        f["episode_0/terminations"] = np.zeros(3, bool)
    with pytest.raises(ValueError, match="episode_0: field 'terminations'"):
        load_episodes("tst/len-v0")
    # NaN reward
    path = _small_minari("tst/nan-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_1/rewards"][2] = np.nan
    with pytest.raises(ValueError, match="episode_1: field 'rewards' has NaN"):
        load_episodes("tst/nan-v0")
    # out-of-range discrete actions
    path = _small_minari("tst/act-v0", rng)
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_0/actions"][1] = 9
    with pytest.raises(ValueError, match="episode_0: field 'actions' has values outside"):
        load_episodes("tst/act-v0")
    # truncated main_data.hdf5
    path = _small_minari("tst/cut-v0", rng, lengths=(200, 200))
    h5 = path / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 3])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_episodes("tst/cut-v0")
    assert "main_data.hdf5" in str(e.value)
    # metadata without a required field
    path = _small_minari("tst/meta-v0", rng)
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["data_format"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing field 'data_format'"):
        load_episodes("tst/meta-v0")
    # not a dataset directory / malformed id
    with pytest.raises(ValueError, match="no Minari dataset"):
        load_episodes(tmp_path)
    with pytest.raises(ValueError, match="bad dataset id"):
        load_episodes("tst/no_version")
    with pytest.raises(ValueError, match="unknown env"):
        load_episodes("tst/six-v0", task="tetris")


def test_writer_refuses_existing_and_cleans_up_on_error():
    rng = np.random.default_rng(5)
    path = _small_minari("tst/once-v0", rng)
    with pytest.raises(FileExistsError, match="already exists"):
        _small_minari("tst/once-v0", rng)
    space = gym.spaces.Box(0, 255, (8, 8), np.uint8)
    with pytest.raises(RuntimeError, match="boom"):
        with MinariWriter("tst/fail-v0", space, gym.spaces.Discrete(4)) as w:
            w.begin_episode(np.zeros((8, 8), np.uint8))
            raise RuntimeError("boom")
    root = path.parent
    assert sorted(os.listdir(root)) == ["once-v0"]  # no partial directory left behind
    assert list(minari.list_local_datasets()) == ["tst/once-v0"]


def test_remote_download_failure_is_explained(monkeypatch):
    """Online but the download fails: the error still says how to get the data."""
    import more3s.data.io as io_mod

    monkeypatch.setattr(io_mod, "is_online", lambda *a, **k: True)

    def fail(dataset_id):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(minari, "download_dataset", fail)
    with pytest.raises(FileNotFoundError, match="download failed: hub unreachable"):
        load_episodes("mujoco/hopper/medium-v0")


def test_is_online_probe_is_quick(monkeypatch):
    from more3s.data import is_online

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_online() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.perf_counter()
    # a non-routable address (TCP may still connect through a transparent proxy): no HTTPS answer
    assert is_online("https://10.255.255.1", timeout=0.5) is False
    assert time.perf_counter() - t0 < 5.0


def test_writer_misuse_discards_partial_data():
    space = gym.spaces.Box(0, 255, (8, 8), np.uint8)
    w = MinariWriter("tst/misuse-v0", space, gym.spaces.Discrete(4)).open()
    with pytest.raises(RuntimeError, match="outside an episode"):
        w.add_step(0, np.zeros((8, 8), np.uint8), 0.0, False, False)
    w.begin_episode(np.zeros((8, 8), np.uint8))
    with pytest.raises(RuntimeError, match="discarded"):
        w.close()
    assert not dataset_path("tst/misuse-v0").exists()
    with pytest.raises(ValueError, match="no episodes"):
        MinariWriter("tst/empty-v0", space, gym.spaces.Discrete(4)).open().close()
    assert not dataset_path("tst/empty-v0").parent.exists() or \
        not any(dataset_path("tst/empty-v0").parent.iterdir())
    with pytest.raises(TypeError, match="Box/Discrete"):
        MinariWriter("tst/dict-v0", gym.spaces.Dict({"a": space}), gym.spaces.Discrete(4))
