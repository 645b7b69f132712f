"""The task table: one row per game/robot, the single source of truth for its constants.

Atari follows DT's protocol: ALE v5, frameskip 4, no sticky actions (repeat_action_probability=0),
the minimal action set, up to 30 no-op starts, full games (not life loss) of at most 108k frames
(27k agent steps). Rewards are clipped to [-1, 1] for RTG in training; raw rewards are kept and reported.
MuJoCo uses gymnasium's v5 robots with 1000-step episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

__all__ = ["TaskSpec", "TASKS", "ATARI_MAX_FRAMES", "ATARI_FRAMESKIP", "ATARI_NOOP_MAX", "get_task", "guess_task",
           "check_action_space", "check_actions"]

ATARI_FRAMESKIP = 4
ATARI_MAX_FRAMES = 108_000  # DT / Machado et al.: 30 minutes of play at 60 Hz
ATARI_NOOP_MAX = 30


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: Literal["atari", "mujoco"]
    gym_id: str
    action_kind: Literal["discrete", "continuous"]
    action_dim: int  # number of actions (discrete) or action dimensions (continuous)
    # ALE action meanings (minimal set) or MuJoCo actuated joints, in env order.
    action_names: tuple[str, ...]
    rtg_scale: float  # RTG feature phi(R) = R / rtg_scale
    rtg_targets: tuple[float, ...]  # DT's published targets, in raw (clipped for Atari) return units
    max_episode_steps: int
    obs_dim: int | None = None  # MuJoCo observation size (None: image)
    clip_rewards: bool = False  # Atari: RTG uses rewards clipped to [-1, 1]


_DIRS = ("UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT")
_FULL_ACTIONS = ("NOOP", "FIRE", *_DIRS, *(d + "FIRE" for d in _DIRS))


def _atari(name: str, gym_id: str, actions: tuple[str, ...], target: float) -> TaskSpec:
    return TaskSpec(
        name=name, family="atari", gym_id=gym_id, action_kind="discrete", action_dim=len(actions),
        action_names=actions, rtg_scale=1.0, rtg_targets=(target,),
        max_episode_steps=ATARI_MAX_FRAMES // ATARI_FRAMESKIP, clip_rewards=True,
    )


def _mujoco(name: str, gym_id: str, joints: tuple[str, ...], obs_dim: int,
            targets: tuple[float, float]) -> TaskSpec:
    return TaskSpec(
        name=name, family="mujoco", gym_id=gym_id, action_kind="continuous", action_dim=len(joints),
        action_names=joints, rtg_scale=1000.0, rtg_targets=targets, max_episode_steps=1000,
        obs_dim=obs_dim,
    )


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        # Minimal action sets as ale-py reports them (checked in tests against the live env).
        _atari("breakout", "ALE/Breakout-v5", ("NOOP", "FIRE", "RIGHT", "LEFT"), 90),
        _atari("pong", "ALE/Pong-v5", ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"), 20),
        _atari("qbert", "ALE/Qbert-v5", ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN"), 14000),
        _atari("seaquest", "ALE/Seaquest-v5", _FULL_ACTIONS, 1150),
        # Actuator order of gymnasium's v5 XML models.
        _mujoco("halfcheetah", "HalfCheetah-v5",
                ("bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"), 17, (12000, 6000)),
        _mujoco("hopper", "Hopper-v5", ("thigh", "leg", "foot"), 11, (3600, 1800)),
        _mujoco("walker2d", "Walker2d-v5",
                ("thigh", "leg", "foot", "thigh_left", "leg_left", "foot_left"), 17, (5000, 2500)),
    )
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The task itself, or a task looked up by short name ('breakout') or gym id ('ALE/Breakout-v5')."""
    if isinstance(task, TaskSpec):
        return task
    key = task.strip().lower()
    if key in TASKS:
        return TASKS[key]
    for spec in TASKS.values():
        if spec.gym_id.lower() == key:
            return spec
    raise ValueError(f"unknown env {task!r}; known tasks: {', '.join(sorted(TASKS))}")


def guess_task(name: str | None) -> TaskSpec | None:
    """The task a dataset id, env id or file name refers to: an exact name or gym id, else the first task whose
    short name appears in it ('halfcheetah-medium-v2' -> halfcheetah); None when no task fits."""
    if not name:
        return None
    try:
        return get_task(name)
    except ValueError:
        pass
    low = name.lower().replace("-", "").replace("_", "")
    for spec in TASKS.values():
        if spec.name in low:
            return spec
    return None


def check_action_space(spec: TaskSpec, space: gym.Space[Any], source: str) -> None:
    """Raise ValueError unless ``space`` is ``spec``'s action space; ``source`` (an env, a dataset file) leads
    the message, which says what the task expects."""
    if spec.action_kind == "discrete":
        ok = isinstance(space, gym.spaces.Discrete) and int(space.n) == spec.action_dim
        want = f"Discrete({spec.action_dim})"
    else:
        ok = isinstance(space, gym.spaces.Box) and tuple(space.shape) == (spec.action_dim,)
        want = f"a Box of shape ({spec.action_dim},)"
    if not ok:
        raise ValueError(f"{source}: field 'action_space' is {space}, which does not match task {spec.name!r} "
                         f"({spec.action_kind}, {spec.action_dim} actions: expected {want})")


def check_actions(spec: TaskSpec, actions: np.ndarray, source: str) -> None:
    """Raise ValueError unless ``actions`` ([T] ints in range, or [T, action_dim]) fit ``spec``'s action space."""
    a = actions
    if spec.action_kind == "discrete":
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{source}: field 'actions' has shape {a.shape} dtype {a.dtype}, but "
                             f"task {spec.name!r} has discrete actions")
        if a.size and (a.min() < 0 or a.max() >= spec.action_dim):
            raise ValueError(f"{source}: field 'actions' has values outside [0, {spec.action_dim}) "
                             f"for task {spec.name!r}")
    elif a.ndim != 2 or a.shape[1] != spec.action_dim:
        raise ValueError(f"{source}: field 'actions' has shape {a.shape}, but task {spec.name!r} "
                         f"has {spec.action_dim}-dimensional continuous actions")
