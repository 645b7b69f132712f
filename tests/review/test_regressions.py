"""Regression tests for bugs found in the final review (each failed before its fix)."""

import gymnasium as gym
import numpy as np
import pytest

from more3s.data import MinariWriter, dataset_path


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


class _TrackedEnv:
    """Stands in for a gym env: enough for make_policy / MinariWriter, and records close()."""

    def __init__(self):
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Box(0, 255, (4,), dtype=np.uint8)
        self.spec = None
        self.closed = False

    def close(self):
        self.closed = True


@pytest.mark.parametrize("policy", ["no-such-policy", "sine"])  # unknown / wrong task for breakout
def test_collect_dataset_closes_env_when_policy_is_rejected(monkeypatch, policy):
    import more3s.data.collect as collect_mod

    env = _TrackedEnv()
    monkeypatch.setattr(collect_mod, "make_env", lambda *a, **k: env)
    with pytest.raises(ValueError):
        collect_mod.collect_dataset("breakout", policy, 1, "tst/badpolicy-v0", progress=False)
    assert env.closed, "the environment was left open after make_policy raised"


def test_collect_dataset_closes_env_when_writer_is_rejected(monkeypatch):
    import more3s.data.collect as collect_mod

    env = _TrackedEnv()
    env.observation_space = gym.spaces.Dict({"x": gym.spaces.Discrete(2)})  # MinariWriter: TypeError
    monkeypatch.setattr(collect_mod, "make_env", lambda *a, **k: env)
    with pytest.raises(TypeError):
        collect_mod.collect_dataset("breakout", "random", 1, "tst/badspace-v0", progress=False)
    assert env.closed, "the environment was left open after MinariWriter raised"
