"""Collection (more3s.data.collect): frames replay byte-exact, a seed fixes the data, existing datasets and bad
counts are errors, an interrupted collection leaves nothing that looks like a dataset, and a rejected policy or
writer closes the env. The ``python -m more3s.collect`` command line is tested in tests/test_collect.py."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from more3s.data import collect_dataset, dataset_path, load_episodes

REPO = Path(__file__).resolve().parents[2]


def test_collected_frames_match_env_replay():
    """Frames are byte-exact: replaying the stored seed and actions reproduces every frame."""
    from more3s.envs import make_env

    collect_dataset("pong", "eps:0.5", 1, "pong/replay-v0", seed=3, max_episode_steps=60,
                    progress=False)
    ep = next(minari.load_dataset("pong/replay-v0").iterate_episodes())
    seed = int(next(iter(minari.load_dataset("pong/replay-v0").storage.get_episode_metadata([0])))["seed"])
    env = make_env("pong", max_episode_steps=60)
    obs, _ = env.reset(seed=seed)
    np.testing.assert_array_equal(ep.observations[0], obs)
    for t, a in enumerate(ep.actions):
        obs, r, *_ = env.step(int(a))
        np.testing.assert_array_equal(ep.observations[t + 1], obs)
        assert ep.rewards[t] == r


def test_same_seed_same_data():
    a = collect_dataset("breakout", "mixed", 2, "breakout/a-v0", seed=5, max_episode_steps=80,
                        progress=False)
    b = collect_dataset("breakout", "mixed", 2, "breakout/b-v0", seed=5, max_episode_steps=80,
                        progress=False)
    ea, eb = load_episodes(a), load_episodes(b)
    for x, y in zip(ea, eb):
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.observations, y.observations)


def test_existing_dataset_and_bad_counts():
    collect_dataset("halfcheetah", "random", 1, "hc/once-v0", max_episode_steps=5, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        collect_dataset("halfcheetah", "random", 1, "hc/once-v0", max_episode_steps=5, progress=False)
    collect_dataset("halfcheetah", "sine", 1, "hc/once-v0", max_episode_steps=7, progress=False,
                    overwrite=True)
    assert [len(e) for e in load_episodes("hc/once-v0")] == [7]
    with pytest.raises(ValueError, match="episodes"):
        collect_dataset("halfcheetah", "random", 0, "hc/zero-v0", progress=False)
    with pytest.raises(ValueError, match="bad dataset id"):
        collect_dataset("halfcheetah", "random", 1, "noversion", progress=False)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_collection_leaves_no_dataset(sig, _minari_root):
    env = dict(os.environ, MINARI_DATASETS_PATH=str(_minari_root))
    log = open(_minari_root / "collect.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "more3s.collect", "--env", "halfcheetah", "--policy", "random",
         "--episodes", "100000", "--dataset-id", "hc/interrupted-v0", "--no-progress"],
        # Output to a file, not a pipe: an unread pipe that fills up would block the child.
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
        # A parent that ignores SIGINT (pytest-xdist workers, background jobs of a script) passes SIG_IGN on, and
        # Python keeps an inherited SIG_IGN: restore the default so the child sees Ctrl-C as a user would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ns = _minari_root / "hc"
    deadline = time.time() + 60
    # wait until episodes are being written into the hidden partial directory
    while time.time() < deadline:
        parts = list(ns.glob(".interrupted-v0.*.partial/data/main_data.hdf5")) if ns.exists() else []
        if parts and parts[0].stat().st_size > 50_000:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("collection never started writing")
    proc.send_signal(sig)
    try:
        proc.wait(timeout=120)  # generous: CI shares two cores with other test workers
    finally:
        log.close()
    assert proc.returncode != 0, (_minari_root / "collect.log").read_text(errors="replace")[-2000:]
    assert not dataset_path("hc/interrupted-v0").exists()
    assert "hc/interrupted-v0" not in minari.list_local_datasets()
    with pytest.raises(FileNotFoundError):
        minari.load_dataset("hc/interrupted-v0")
    leftovers = list(ns.glob(".interrupted-v0.*"))
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert leftovers == []  # cleaned up: both stop the loop through KeyboardInterrupt
    else:
        assert all(p.name.startswith(".") for p in leftovers)  # only hidden, ignored debris


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
