"""Helpers shared by the data tests: small Minari datasets and D4RL files written on the spot."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np

from more3s.data import MinariWriter, dataset_path


def write_minari(dataset_id, episodes, obs_space, act_space, env_spec=None, metadata=None):
    """Write ``episodes`` [(obs [T+1], act [T], rew, term, trunc)] as Minari dataset ``dataset_id``; its directory."""
    with MinariWriter(dataset_id, obs_space, act_space, env_spec=env_spec, metadata=metadata) as w:
        for obs, act, rew, term, trunc in episodes:
            w.begin_episode(obs[0], seed=7)
            for t in range(len(act)):
                w.add_step(act[t], obs[t + 1], rew[t], term[t], trunc[t])
            w.end_episode({"policy": "test"})
    return dataset_path(dataset_id)


def image_episodes(rng, lengths, shape=(210, 160, 3), n_actions=4):
    """Random uint8 image episodes of the given lengths, each ending in a termination."""
    eps = []
    for T in lengths:
        obs = rng.integers(0, 256, size=(T + 1, *shape), dtype=np.uint8)
        act = rng.integers(0, n_actions, size=T)
        rew = rng.choice([0.0, 1.0, 4.0, 7.0, -1.0], size=T)
        term = np.zeros(T, bool)
        term[-1] = True
        eps.append((obs, act, rew, term, np.zeros(T, bool)))
    return eps


def frames_dataset(dataset_id="tst/frames-v0"):
    """A Breakout-like dataset of three 210x160 RGB episodes (3, 300 and 17 steps: 300 > the writer's 256-step
    flush block), recorded with task breakout; returns (episodes, directory)."""
    eps = image_episodes(np.random.default_rng(0), [3, 300, 17])
    obs_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    path = write_minari(dataset_id, eps, obs_space, gym.spaces.Discrete(4),
                        env_spec=gym.spec("ALE/Breakout-v5") if "ALE/Breakout-v5" in gym.registry else None,
                        metadata={"more3s": {"task": "breakout"}})
    return eps, path


def small_minari(dataset_id, rng, n_actions=4, task="breakout", lengths=(5, 6)):
    """A tiny dataset of 8x8 uint8 observations; returns its directory."""
    eps = image_episodes(rng, lengths, shape=(8, 8), n_actions=n_actions)
    return write_minari(dataset_id, eps, gym.spaces.Box(0, 255, (8, 8), np.uint8),
                        gym.spaces.Discrete(n_actions), metadata={"more3s": {"task": task}})


def d4rl_file(path, rng, lengths=(7, 12, 5), obs_dim=17, act_dim=6, next_obs=True, **override):
    """Write a D4RL-style hdf5 file (``override`` replaces fields; None drops one); returns (data, episode ends)."""
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
