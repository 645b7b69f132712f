"""Behaviour policies for collection, chosen by a short spec string (``make_policy``).

Offline RL needs data whose returns spread from poor to good (a "medium-replay"-like set), and no
dataset can be downloaded here, so the behaviour is built from parts:

* ``random`` — uniform actions (every task);
* ``tracker`` — scripted RAM trackers for Breakout and Pong: they read ball and paddle positions
  from the console RAM and move the paddle under / level with the ball, leading it by one step of
  ball velocity. RAM addresses were found by regressing on-screen object positions on every RAM
  byte (tests/data/test_policies.py re-checks them against the frames): Breakout paddle x = ram[72]
  (centre pixel = ram - 36.6), ball x = ram[99] (pixel = ram - 48.5), ball y = ram[101] (0 when no
  ball is in play); Pong own paddle y = ram[51], opponent's paddle y = ram[50], ball y = ram[54],
  ball x = ram[49] (``more3s.data.facts`` decodes the same bytes as ground truth for probes);
* ``sine`` — an open-loop sine gait for MuJoCo robots (a cheap policy that really moves HalfCheetah
  forward: ~1,950 return per 1,000 steps vs. ~-200 for random), usable in CI (``SINE_GAITS``);
* ``mixed`` — an epsilon-mixture of the task's best cheap policy (tracker / sine) and random actions,
  with epsilon drawn per episode from U[0, 1]; ``eps:X`` fixes epsilon to X;
* ``sac:FILE.zip`` — a stable-baselines3 SAC snapshot; ``sac-medium:DIR``, ``sac-expert:DIR``,
  ``sac-medium-replay:DIR``, ``sac-medium-expert:DIR`` pick snapshots of a training run made by
  ``more3s.data.sac`` (see there) to build D4RL-like analogues (medium-replay samples its actions, as a
  replay buffer holds them; the others act deterministically).

Every policy gets a ``numpy.random.Generator`` at each episode start, so a collection is
reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np

from more3s.envs import TaskSpec, atari_ram, get_task

from .sac import QUALITY_LEVELS, load_sac, select_snapshots  # stable-baselines3 loads inside them only

__all__ = [
    "Policy", "RandomPolicy", "BreakoutTracker", "PongTracker", "SinePolicy", "EpsilonMixture",
    "SnapshotPolicy", "make_policy", "replay_tracker", "POLICY_HELP", "SINE_GAITS",
]


Env = gym.Env[Any, Any]


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def reset(self, env: Env, rng: np.random.Generator) -> dict[str, Any]:
        """Start an episode; returns attributes recorded with it (e.g. its epsilon)."""
        ...

    def act(self, obs: Any, env: Env) -> Any:
        ...


class RandomPolicy:
    """Uniform random actions from the env's action space, drawn from the episode's generator."""

    name = "random"

    def __init__(self, action_space: gym.Space[Any]):
        self.space = action_space
        self.rng = np.random.default_rng(0)

    def reset(self, env: Env, rng: np.random.Generator) -> dict[str, Any]:
        self.rng = rng
        return {}

    def act(self, obs: Any, env: Env) -> Any:
        if isinstance(self.space, gym.spaces.Discrete):
            return int(self.rng.integers(int(self.space.n)))
        if not isinstance(self.space, gym.spaces.Box):
            raise TypeError(f"RandomPolicy supports Box/Discrete action spaces, got {self.space}")
        lo, hi = self.space.low, self.space.high
        return self.rng.uniform(lo, hi).astype(self.space.dtype)


@dataclass
class _Track:
    """Shared 1-D tracking rule: move toward target with a dead zone, leading by velocity."""

    offset: float
    dead_zone: float
    lead: float

    def __post_init__(self) -> None:
        self.prev: int | None = None

    def error(self, ball: int, paddle: int) -> float:
        d = self.peek(ball, paddle)
        self.prev = ball
        return d

    def peek(self, ball: int, paddle: int) -> float:
        """The tracking error this step would see, without advancing the velocity memory."""
        v = 0 if self.prev is None else ball - self.prev
        return ball + self.lead * v + self.offset - paddle

    def steer(self, ball: int, paddle: int, towards_plus: int, towards_minus: int, hold: int) -> int:
        """The action that closes the tracking error, or ``hold`` inside the dead zone."""
        d = self.error(ball, paddle)
        if d > self.dead_zone:
            return towards_plus
        if d < -self.dead_zone:
            return towards_minus
        return hold


class _RamTracker:
    """A paddle game played from RAM positions with a _Track rule (state reset per episode)."""

    name = "tracker"

    def __init__(self, offset: float, dead_zone: float, lead: float):
        self.track = _Track(offset, dead_zone, lead)

    def reset(self, env: Env, rng: np.random.Generator) -> dict[str, Any]:
        self.track.prev = None
        return {}

    def act(self, obs: Any, env: Env) -> int:
        return self.act_on_ram(atari_ram(env))

    def positions(self, ram: np.ndarray) -> tuple[int, int] | None:
        """(ball, paddle) along the tracked axis from the console RAM [128]; None when no ball is in play."""
        raise NotImplementedError

    def act_on_ram(self, ram: np.ndarray) -> int:
        """The action for this step's console RAM [128] (steps of an episode in order: the rule leads by velocity)."""
        raise NotImplementedError


class BreakoutTracker(_RamTracker):
    """Keeps the paddle under the ball; FIRE when no ball is in play. Scores ~350 on full games."""

    NOOP, FIRE, RIGHT, LEFT = 0, 1, 2, 3
    PADDLE_X, BALL_X, BALL_Y = 72, 99, 101  # RAM addresses (module docstring)

    def __init__(self, offset: float = -10, dead_zone: float = 6, lead: float = 1):
        super().__init__(offset, dead_zone, lead)

    def positions(self, ram: np.ndarray) -> tuple[int, int] | None:
        return None if ram[self.BALL_Y] == 0 else (int(ram[self.BALL_X]), int(ram[self.PADDLE_X]))

    def act_on_ram(self, ram: np.ndarray) -> int:
        pos = self.positions(ram)
        if pos is None:
            self.track.prev = None
            return self.FIRE
        return self.track.steer(*pos, self.RIGHT, self.LEFT, self.NOOP)


class PongTracker(_RamTracker):
    """Keeps its paddle level with the ball (RIGHT = up, LEFT = down). Wins full games ~21-10."""

    NOOP, FIRE, UP, DOWN = 0, 1, 2, 3
    PADDLE_Y, BALL_Y = 51, 54  # RAM addresses (module docstring)
    ENEMY_Y, BALL_X = 50, 49  # not read by the tracker; decoded as facts (more3s.data.facts)

    def __init__(self, offset: float = -10, dead_zone: float = 3, lead: float = 1):
        super().__init__(offset, dead_zone, lead)

    def positions(self, ram: np.ndarray) -> tuple[int, int]:
        return int(ram[self.BALL_Y]), int(ram[self.PADDLE_Y])

    def act_on_ram(self, ram: np.ndarray) -> int:
        return self.track.steer(*self.positions(ram), self.DOWN, self.UP, self.NOOP)


# Open-loop gaits a(t) = amp * sin(omega * t + phase_i), each the best of a random search over
# (omega, phases, amp) on the v5 env (250-300 draws, 300-step episodes). HalfCheetah runs: ~1,950
# return per 1,000 steps (random: ~-200). Hopper and Walker2d have no stable open-loop gait: these
# fall after ~75 / ~55 steps (return ~62 / ~32 vs. random ~13 / ~-4); use SAC for real locomotion.
SINE_GAITS: dict[str, tuple[float, tuple[float, ...], float]] = {
    "halfcheetah": (1.2, (0.72, 3.02, 4.52, 5.82, 5.32, 6.1), 0.5),
    "hopper": (0.7, (5.04, 5.24, 4.8), 0.6),
    "walker2d": (0.5, (3.6, 4.86, 5.36, 5.41, 4.78, 2.18), 0.3),
}


class SinePolicy:
    """Open-loop sine gait for a MuJoCo robot (cheap, no learning; see ``SINE_GAITS``)."""

    name = "sine"

    def __init__(self, task: str, action_space: gym.Space[Any]):
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"policy 'sine' needs a Box action space, got {action_space}")
        self.omega, phase, self.amp = SINE_GAITS[task]
        self.phase = np.asarray(phase, dtype=np.float64)  # [A]
        self.low, self.high, self.dtype = action_space.low, action_space.high, action_space.dtype
        self.t = 0

    def reset(self, env: Env, rng: np.random.Generator) -> dict[str, Any]:
        self.t = 0
        return {}

    def act(self, obs: Any, env: Env) -> np.ndarray:
        a = self.amp * np.sin(self.omega * self.t + self.phase)  # [A]
        self.t += 1
        return np.clip(a, self.low, self.high).astype(self.dtype)


class EpsilonMixture:
    """With probability epsilon a random action, else the base policy's (which always runs, so
    stateful bases such as the trackers keep their velocity estimate). Epsilon is fixed, or drawn
    per episode from U[lo, hi]."""

    def __init__(self, base: Policy, action_space: gym.Space[Any], epsilon: float | tuple[float, float]):
        lo, hi = (epsilon, epsilon) if isinstance(epsilon, (int, float, np.number)) else epsilon
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.base, self.lo, self.hi = base, float(lo), float(hi)
        self.random = RandomPolicy(action_space)
        self.name = f"mixed({base.name})" if lo != hi else f"eps{lo:g}({base.name})"
        self.eps, self.rng = lo, np.random.default_rng(0)

    def reset(self, env: Env, rng: np.random.Generator) -> dict[str, Any]:
        self.rng = rng
        self.eps = float(rng.uniform(self.lo, self.hi)) if self.hi > self.lo else self.lo
        info = dict(self.base.reset(env, rng))
        self.random.reset(env, rng)
        info["epsilon"] = self.eps
        return info

    def act(self, obs: Any, env: Env) -> Any:
        a = self.base.act(obs, env)
        return self.random.act(obs, env) if self.rng.random() < self.eps else a


class SnapshotPolicy:
    """Actions of stable-baselines3 SAC snapshots; with several, one is drawn per episode (medium-replay /
    medium-expert analogues). ``deterministic=False`` samples from each snapshot's policy, as SAC acts while it
    trains (a replay buffer's actions), seeded from the episode's generator. ``explore=True`` adds uniform random
    actions as one more member, drawn like a snapshot: the exploration SAC does before it starts learning, which
    opens every replay buffer (D4RL's medium-replay included). Without it a run that passes the medium level by
    its first snapshot (Hopper: ~230 at 7,500 steps against a target of ~110) gives a "replay" of one policy."""

    EXPLORATION = "random-exploration"

    def __init__(self, paths: list[Path], name: str, weights: list[float] | None = None,
                 deterministic: bool = True, explore: bool = False, action_space: gym.Space[Any] | None = None):
        if not paths:
            raise ValueError(f"policy {name!r}: no SAC snapshots given")
        if explore and action_space is None:
            raise ValueError(f"policy {name!r}: explore=True needs the env's action space")
        self.paths = [Path(p) for p in paths]
        self.models = [load_sac(p) for p in self.paths]
        self.random = RandomPolicy(action_space) if action_space is not None and explore else None
        members = len(self.models) + int(explore)
        if weights is not None and len(weights) != members:
            raise ValueError(f"policy {name!r}: {len(weights)} weights for {members} members")
        self.weights = None if weights is None else np.asarray(weights, float) / np.sum(weights)
        self.name, self.current, self.deterministic = name, 0, deterministic

    def reset(self, env: Env, rng: np.random.Generator) -> dict[str, Any]:
        explore = int(self.random is not None)
        self.current = int(rng.choice(len(self.models) + explore, p=self.weights)) - explore  # -1: exploration
        if self.random is not None and self.current < 0:
            self.random.reset(env, rng)
            return {"snapshot": self.EXPLORATION}
        if not self.deterministic:
            import torch

            torch.manual_seed(int(rng.integers(2**31)))  # SAC samples its actions with torch's generator
        return {"snapshot": self.paths[self.current].name}

    def act(self, obs: Any, env: Env) -> Any:
        if self.random is not None and self.current < 0:
            return self.random.act(obs, env)
        action, _ = self.models[self.current].predict(obs, deterministic=self.deterministic)
        return action


# The scripted RAM trackers, by task.
TRACKERS: dict[str, Callable[[], _RamTracker]] = {"breakout": BreakoutTracker, "pong": PongTracker}


def replay_tracker(task: str, ram: np.ndarray) -> np.ndarray:
    """The scripted tracker's action at every step of one recorded episode (RAM rows [N, 128] in order): what the
    expert of a ``mixed`` dataset would have done, also where the data's action was a random one."""
    if task not in TRACKERS:
        raise ValueError(f"no scripted tracker for task {task!r}; trackers exist for {', '.join(TRACKERS)}")
    tracker = TRACKERS[task]()
    return np.array([tracker.act_on_ram(row) for row in np.asarray(ram)], dtype=np.int64)


POLICY_HELP = (f"random | tracker ({', '.join(TRACKERS)}) | sine (mujoco) | mixed | eps:X | sac:FILE.zip | "
               + " | ".join(f"sac-{level}:DIR" for level in QUALITY_LEVELS if level != "file"))


def _default_base(spec: TaskSpec, env: Env) -> Policy:
    if spec.name in TRACKERS:
        return TRACKERS[spec.name]()
    if spec.family == "mujoco":
        return SinePolicy(spec.name, env.action_space)
    raise ValueError(f"no scripted policy for task {spec.name!r} (trackers exist for {' and '.join(TRACKERS)}, "
                     f"sine gaits for mujoco tasks); use --policy random")


def make_policy(task: str | TaskSpec, policy: str, env: Env) -> Policy:
    """Build a behaviour policy from its spec string (``POLICY_HELP``) for ``task``."""
    spec = get_task(task)
    kind, _, arg = policy.strip().partition(":")
    kind = kind.lower()
    space = env.action_space
    if kind == "random":
        return RandomPolicy(space)
    if kind == "tracker":
        if spec.name not in TRACKERS:
            raise ValueError(f"policy 'tracker' exists for {' and '.join(TRACKERS)}, not {spec.name!r}")
        return _default_base(spec, env)
    if kind == "sine":
        if spec.family != "mujoco":
            raise ValueError(f"policy 'sine' is for mujoco tasks, not {spec.name!r}")
        return SinePolicy(spec.name, space)
    if kind == "mixed":
        return EpsilonMixture(_default_base(spec, env), space, (0.0, 1.0))
    if kind == "eps":
        try:
            eps = float(arg)
        except ValueError:
            raise ValueError(f"policy {policy!r}: write eps:X with X a number in [0, 1]") from None
        return EpsilonMixture(_default_base(spec, env), space, eps)
    if kind.startswith("sac"):
        if spec.family != "mujoco":
            raise ValueError(f"SAC policies are for mujoco tasks, not {spec.name!r}")
        if not arg:
            raise ValueError(f"policy {policy!r}: give a path, e.g. sac:runs/sac/step_0100000.zip "
                             f"or sac-medium:runs/sac")
        level = kind.removeprefix("sac").lstrip("-") or "file"
        paths, weights = select_snapshots(Path(arg), level)
        replay = level == "medium-replay"  # a replay buffer: sampled actions, from SAC's exploration on
        return SnapshotPolicy(paths, policy, weights, deterministic=not replay, explore=replay, action_space=space)
    raise ValueError(f"unknown policy {policy!r}; choose one of: {POLICY_HELP}")
