"""The task table: one row per game/robot, the single source of truth for its constants.

Atari follows DT's protocol: ALE v5, frameskip 4, no sticky actions (repeat_action_probability=0),
the minimal action set, up to 30 no-op starts, full games (not life loss) of at most 108k frames
(27k agent steps). Rewards are clipped to [-1, 1] for RTG in training; raw rewards are kept and reported.
MuJoCo uses gymnasium's v5 robots with 1000-step episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TaskSpec", "TASKS", "ATARI_MAX_FRAMES", "ATARI_FRAMESKIP", "ATARI_NOOP_MAX", "get_task"]

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


def get_task(name: str) -> TaskSpec:
    """Look a task up by short name ('breakout') or gym id ('ALE/Breakout-v5')."""
    key = name.strip().lower()
    if key in TASKS:
        return TASKS[key]
    for task in TASKS.values():
        if task.gym_id.lower() == key:
            return task
    raise ValueError(f"unknown env {name!r}; known tasks: {', '.join(sorted(TASKS))}")
