"""Environment factories that apply each task's protocol (see tasks.py)."""

from __future__ import annotations

from typing import Any, Callable, cast

import gymnasium as gym
import numpy as np

from .tasks import ATARI_FRAMESKIP, ATARI_MAX_FRAMES, ATARI_NOOP_MAX, TaskSpec, check_action_space, get_task

__all__ = ["NoopStart", "make_env", "make_vector_env", "atari_ram"]

_ALE_REGISTERED = False


def _register_ale() -> None:
    global _ALE_REGISTERED
    if not _ALE_REGISTERED:
        import ale_py

        gym.register_envs(ale_py)
        _ALE_REGISTERED = True


class NoopStart(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Up to ``noop_max`` no-op steps after reset (DT / DQN evaluation protocol).

    Records its constructor args so Minari's ``recover_environment`` can rebuild the wrapper.
    """

    def __init__(self, env: gym.Env[Any, Any], noop_max: int = ATARI_NOOP_MAX):
        gym.utils.RecordConstructorArgs.__init__(self, noop_max=noop_max)
        gym.Wrapper.__init__(self, env)
        self.noop_max = noop_max

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        n = int(self.np_random.integers(0, self.noop_max + 1)) if self.noop_max else 0
        for _ in range(n):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


def make_env(task: str | TaskSpec, *, noop_max: int | None = None,
             max_episode_steps: int | None = None, **kwargs: Any) -> gym.Env[Any, Any]:
    """One environment under the task's protocol.

    Atari: RGB frames (210x160x3), frameskip 4, repeat_action_probability 0, minimal action set,
    up to 30 no-op starts, at most 108k frames. ``max_episode_steps`` shortens episodes (tests,
    quick collection); ``noop_max`` overrides the no-op start count.
    """
    spec = get_task(task)
    env: gym.Env[Any, Any]
    if spec.family == "atari":
        _register_ale()
        env = gym.make(
            spec.gym_id, obs_type="rgb", frameskip=ATARI_FRAMESKIP, repeat_action_probability=0.0,
            full_action_space=False, max_num_frames_per_episode=ATARI_MAX_FRAMES,
            max_episode_steps=None, **kwargs,
        )
        # No-op starts sit inside the time limit: they do not count as agent steps.
        env = NoopStart(env, ATARI_NOOP_MAX if noop_max is None else noop_max)
        env = gym.wrappers.TimeLimit(env, max_episode_steps or spec.max_episode_steps)
    else:
        env = gym.make(spec.gym_id, max_episode_steps=max_episode_steps or spec.max_episode_steps,
                       **kwargs)
    check_action_space(spec, env.action_space, f"env {spec.gym_id!r}")
    return env


def make_vector_env(task: str | TaskSpec, num_envs: int, *, seed: int | None = None,
                    asynchronous: bool = False, **kwargs: Any) -> gym.vector.VectorEnv[Any, Any, Any]:
    """``num_envs`` independent copies with same-step autoreset per sub-env (a finished env's returned
    observation is already its next episode's first frame, as the rollout engine expects)."""
    fns: list[Callable[[], gym.Env[Any, Any]]] = [lambda: make_env(task, **kwargs) for _ in range(num_envs)]
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    venv: gym.vector.VectorEnv[Any, Any, Any] = cls(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if seed is not None:
        # gymnasium annotates seed as int | None; its vector envs take one seed per sub-env as well
        venv.reset(seed=[seed + i for i in range(num_envs)])  # type: ignore[arg-type]
    return venv


def atari_ram(env: gym.Env[Any, Any]) -> np.ndarray:
    """The console RAM [128] uint8 of an Atari env (made by ``make_env``, wrappers and all)."""
    ram: np.ndarray = cast(Any, env.unwrapped).ale.getRAM()
    return ram
