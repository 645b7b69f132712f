"""MinariWriter: plain minari reads what it writes (frames byte-exact, compressed, raw rewards); it refuses an
existing id and never leaves a partial dataset behind."""

import os

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from more3s.data import MinariWriter, dataset_path

from .conftest import frames_dataset, small_minari


def test_plain_minari_reads_frames_byte_exact():
    eps, path = frames_dataset()
    ds = minari.load_dataset("tst/frames-v0")  # plain minari, no more3s help
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


def test_writer_refuses_existing_and_cleans_up_on_error():
    rng = np.random.default_rng(5)
    path = small_minari("tst/once-v0", rng)
    with pytest.raises(FileExistsError, match="already exists"):
        small_minari("tst/once-v0", rng)
    space = gym.spaces.Box(0, 255, (8, 8), np.uint8)
    with pytest.raises(RuntimeError, match="boom"):
        with MinariWriter("tst/fail-v0", space, gym.spaces.Discrete(4)) as w:
            w.begin_episode(np.zeros((8, 8), np.uint8))
            raise RuntimeError("boom")
    root = path.parent
    assert sorted(os.listdir(root)) == ["once-v0"]  # no partial directory left behind
    assert list(minari.list_local_datasets()) == ["tst/once-v0"]


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


def test_minari_writer_open_failure_removes_its_partial_directory(monkeypatch):
    """A failure inside MinariWriter.open() after the temp directory exists must remove it at once,
    not whenever the writer happens to be garbage-collected (``with`` never calls __exit__ when
    __enter__ raises)."""
    from minari.dataset.minari_storage import MinariStorage

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(MinariStorage, "new", staticmethod(boom))
    dest = dataset_path("tst/openfail-v0")
    writer = MinariWriter("tst/openfail-v0", gym.spaces.Box(0, 1, (3,)), gym.spaces.Discrete(2))
    with pytest.raises(OSError, match="disk full"):
        writer.open()
    leftovers = [p.name for p in dest.parent.iterdir()] if dest.parent.exists() else []
    assert leftovers == [], f"partial directories left behind: {leftovers}"
    assert writer._stack is None and writer._file is None  # noqa: SLF001 - the writer is reset
