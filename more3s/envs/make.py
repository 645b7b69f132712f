"""Environment factories that apply each task's protocol (see tasks.py)."""

from __future__ import annotations

import gymnasium as gym

from .tasks import ATARI_FRAMESKIP, ATARI_MAX_FRAMES, ATARI_NOOP_MAX, TaskSpec, get_task

__all__ = ["NoopStart", "make_env", "make_vector_env"]

_ALE_REGISTERED = False


def _register_ale() -> None:
    global _ALE_REGISTERED
    if not _ALE_REGISTERED:
        import ale_py

        gym.register_envs(ale_py)
        _ALE_REGISTERED = True


class NoopStart(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Up to ``noop_max`` no-op steps after reset (DT / DQN evaluation protocol).

    Records its constructor args so Minari's ``recover_environment`` can rebuild the wrapper.
    """

    def __init__(self, env: gym.Env, noop_max: int = ATARI_NOOP_MAX):
        gym.utils.RecordConstructorArgs.__init__(self, noop_max=noop_max)
        gym.Wrapper.__init__(self, env)
        self.noop_max = noop_max

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        n = int(self.np_random.integers(0, self.noop_max + 1)) if self.noop_max else 0
        for _ in range(n):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


def make_env(task: str | TaskSpec, *, noop_max: int | None = None,
             max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    """One environment under the task's protocol.

    Atari: RGB frames (210x160x3), frameskip 4, repeat_action_probability 0, minimal action set,
    up to 30 no-op starts, at most 108k frames. ``max_episode_steps`` shortens episodes (tests,
    quick collection); ``noop_max`` overrides the no-op start count.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
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
    _check_action_space(spec, env.action_space)
    return env


def _check_action_space(spec: TaskSpec, space: gym.Space) -> None:
    if spec.action_kind == "discrete":
        ok = isinstance(space, gym.spaces.Discrete) and int(space.n) == spec.action_dim
    else:
        ok = isinstance(space, gym.spaces.Box) and space.shape == (spec.action_dim,)
    if not ok:
        raise ValueError(f"env {spec.gym_id!r} has action space {space}, but task {spec.name!r} "
                         f"expects {spec.action_kind} with {spec.action_dim} actions")


def make_vector_env(task: str | TaskSpec, num_envs: int, *, seed: int | None = None,
                    asynchronous: bool = False, **kwargs) -> gym.vector.VectorEnv:
    """``num_envs`` independent copies with same-step autoreset per sub-env (a finished env's returned
    observation is already its next episode's first frame, as the rollout engine expects)."""
    fns = [lambda: make_env(task, **kwargs) for _ in range(num_envs)]
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    venv = cls(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if seed is not None:
        venv.reset(seed=[seed + i for i in range(num_envs)])
    return venv


