"""Shared fixtures: real ALE frames, real MuJoCo states, one tiny encoder per worker."""

from __future__ import annotations

import types

import numpy as np
import pytest


@pytest.fixture(scope="session")
def breakout_frames() -> np.ndarray:
    """[41, 210, 160, 3] uint8: a real Breakout episode start with the ball served (FIRE) and moving."""
    from more3s.envs import make_env

    env = make_env("breakout", noop_max=0)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    frames = [obs]
    for t in range(40):
        obs, *_ = env.step(1 if t % 10 == 0 else int(rng.integers(4)))
        frames.append(obs)
    env.close()
    return np.stack(frames)


@pytest.fixture(scope="session")
def pong_frames() -> np.ndarray:
    """[121, 210, 160, 3] uint8: a real Pong start, the agent's paddle driven up into the top wall (clipped there)
    and back down; the ball is served after ~15 steps, and the enemy scores at steps 63 and 98."""
    from more3s.envs import make_env

    env = make_env("pong", noop_max=0)
    obs, _ = env.reset(seed=0)
    frames = [obs]
    for t in range(120):
        obs, *_ = env.step(2 if t < 30 else 3)  # RIGHT (up), then LEFT (down)
        frames.append(obs)
    env.close()
    return np.stack(frames)


@pytest.fixture(scope="session")
def cheetah_run():
    """(observations [13, 17], env) of a real HalfCheetah-v5 run; the env stays open for kinematics checks."""
    from more3s.envs import make_env

    env = make_env("halfcheetah")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    out = [obs]
    for _ in range(12):
        obs, *_ = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
        out.append(obs)
    yield np.stack(out), env
    env.close()


def make_episodes(observations: np.ndarray, task: str, splits: list[int]) -> list:
    """Episodes (observations + task only: all the cache reads) cut from one run at ``splits``."""
    return [types.SimpleNamespace(observations=o, task=task) for o in np.split(observations, splits)]
