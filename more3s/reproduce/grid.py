"""What the reproduction grid is: arms, profiles (tasks, data, budgets) and the cells they span.

An *arm* is a named set of TrainConfig overrides (one method or ablation); a *profile* fixes the tasks, how
each task's data is made or found, and one training/evaluation budget per task that every arm of that task
shares. A *cell* is (profile, task, arm, seed): one ordinary run directory. Hyper-parameters here are fixed in
advance (the paper's lr 3e-4 with DT's other values, scaled-down budgets for CPU); none is chosen by looking
at the reported scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from more3s.config import preset_overrides
from more3s.encoder.lxmert import PRETRAINED_ID
from more3s.envs import get_task

__all__ = ["ARMS", "PROFILES", "DataSpec", "Budget", "Profile", "Cell", "build_cells", "check_names",
           "PRETRAINED_ENCODER"]

PRETRAINED_ENCODER = PRETRAINED_ID  # the paper's encoder

# arm -> TrainConfig overrides on top of the profile's budget. `more3s` is the method as the paper gives it
# (RTG in K/V + memory); every other arm changes one thing against it.
ARMS: dict[str, dict[str, Any]] = {
    "more3s": {},
    "more3s-nomem": {"memory_steps": 0, "sampler": "window"},
    "embed-rtg": {"rtg_mode": "embed"},
    "dt": {"preset": "dt"},
    "dt-published": {"preset": "dt-published"},
    "bc": {"preset": "bc"},
    "prompts-synonym": {"prompt_set": "synonym"},
    "prompts-contextual": {"prompt_set": "contextual"},
    "pretrained": {"encoder": PRETRAINED_ENCODER},
    "random": {"encoder": "lxmert-base-random"},
}
# Arms that only mean something when the pretrained encoder's weights are on disk (claim 5).
NEEDS_PRETRAINED = ("pretrained", "random")
# What every arm of a task shares whatever its preset sets: the budget (a preset's other values, e.g. DT's
# architecture, learning rate and context, are its published hyper-parameters and stay).
EQUAL_BUDGET = ("max_steps", "batch_size", "eval_episodes", "eval_max_episode_steps", "name")


@dataclass(frozen=True)
class DataSpec:
    """Where a task's data comes from: a dataset id or path, collected here when it is missing."""

    dataset: str  # local Minari id (collected if missing), remote Minari id or D4RL hdf5 path
    policy: str | None = None  # more3s.collect policy; None = a published dataset, never collected
    episodes: int = 0
    max_episode_steps: int | None = None
    sac_steps: int = 0  # > 0: train a SAC behaviour agent this long first (policy names its snapshots)

    @property
    def keep(self) -> bool:
        """Whether the grid keeps the collected episodes with its results: a SAC run cannot be re-trained exactly
        on another machine, so its data could not be collected again for later cells."""
        return self.sac_steps > 0


@dataclass(frozen=True)
class Budget:
    """One task's training and evaluation budget, equal for every arm of the task (TrainConfig fields)."""

    max_steps: int
    batch_size: int
    window: int
    memory_steps: int
    eval_episodes: int
    eval_max_episode_steps: int = 0  # 0 = the dataset's own cap (collected) or the full protocol
    encoder: str = "lxmert-tiny"
    memory_drop: float = 0.0  # for the arms that keep a memory (memory_steps > 0 after the arm's change)
    extra: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        out = {"max_steps": self.max_steps, "batch_size": self.batch_size, "window": self.window,
               "memory_steps": self.memory_steps, "eval_episodes": self.eval_episodes,
               "encoder": self.encoder, **self.extra}
        if self.eval_max_episode_steps:
            out["eval_max_episode_steps"] = self.eval_max_episode_steps
        return out


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    tasks: dict[str, tuple[DataSpec, Budget]]
    arms: tuple[str, ...]
    seeds: int


_SMOKE_BUDGET = Budget(max_steps=12, batch_size=4, window=4, memory_steps=4, eval_episodes=2,
                       eval_max_episode_steps=40, extra={"ckpt_every": 6, "eval_num_envs": 2})
# CPU: budgets sized so that the whole grid (4 tasks x 8 arms x 3 seeds) fits 4 hours with --jobs 2 on a 2-core
# host, from per-cell times measured beforehand (one thread each): ~0.25 s per step for the LXMERT arms, ~1.2 s for
# dt-published on Atari (its CNN reads every frame of a 30-50-step context), ~5 s per Atari evaluation episode.
# 1,000 steps a cell came to ~5 hours, so 750; Atari plays DT's 10 evaluation episodes, only of the primary target
# (the one scores.csv reads: its episodes are the same either way) and only sampled (greedy would double it).
# memory_drop 0.25 for the memory arms: chosen on a validation split (results/validation/memory-drop).
_CPU_ATARI = Budget(max_steps=750, batch_size=32, window=20, memory_steps=20, eval_episodes=10, memory_drop=0.25,
                    extra={"eval_greedy": False, "eval_primary_target_only": True})
_CPU_MUJOCO = Budget(max_steps=750, batch_size=32, window=20, memory_steps=20, eval_episodes=4, memory_drop=0.25,
                     extra={"eval_primary_target_only": True})
# Paper: DT's published budgets (Atari: context 30, batch 128, 5 epochs over 500k transitions ~ 20k steps;
# MuJoCo: context 20, batch 64, 100k steps) with the paper's pretrained encoder; for a GPU machine, online.
_PAPER_ATARI = Budget(max_steps=20_000, batch_size=128, window=30, memory_steps=30, eval_episodes=10,
                      encoder=PRETRAINED_ENCODER, extra={"lr": 3e-4, "warmup_steps": 10_000, "backbone": "gpt2"})
_PAPER_MUJOCO = Budget(max_steps=100_000, batch_size=64, window=20, memory_steps=20, eval_episodes=100,
                       encoder=PRETRAINED_ENCODER, extra={"lr": 3e-4, "warmup_steps": 10_000, "backbone": "gpt2",
                                                          "grad_clip": 0.25, "weight_decay": 1e-4})

_ALL_ARMS = ("more3s", "more3s-nomem", "embed-rtg", "dt", "dt-published", "bc", "prompts-synonym",
             "prompts-contextual", "pretrained", "random")

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", "two arms, one seed, tiny budgets: proves the wiring end to end (CI)",
        {"breakout": (DataSpec("more3s/breakout/smoke-v0", "mixed", 4, 40), _SMOKE_BUDGET)},
        arms=("more3s", "dt-published"), seeds=1),
    "cpu": Profile(
        "cpu", "what a 2-core CPU measures in about 4 hours with --jobs 2, on data collected here",
        {
            "breakout": (DataSpec("more3s/breakout/mixed-v1", "mixed", 40, 1000), _CPU_ATARI),  # the main job's v1 data
            "pong": (DataSpec("more3s/pong/mixed-v0", "mixed", 20, 800), _CPU_ATARI),
            "halfcheetah": (DataSpec("more3s/halfcheetah/mixed-v0", "mixed", 40, 1000), _CPU_MUJOCO),
            "hopper": (DataSpec("more3s/hopper/sac-replay-v2", "sac-medium-replay", 60, 1000,
                                sac_steps=60_000), _CPU_MUJOCO),
        },
        arms=_ALL_ARMS, seeds=3),
    "paper": Profile(
        "paper", "DT's budgets on the published datasets (GPU machine, online for the first download)",
        {
            "breakout": (DataSpec("atari/breakout/expert-v0"), _PAPER_ATARI),
            "qbert": (DataSpec("atari/qbert/expert-v0"), _PAPER_ATARI),
            "pong": (DataSpec("atari/pong/expert-v0"), _PAPER_ATARI),
            "seaquest": (DataSpec("atari/seaquest/expert-v0"), _PAPER_ATARI),
            **{f"{robot}-{level}": (DataSpec(f"mujoco/{robot}/{level}-v0"), _PAPER_MUJOCO)
               for robot in ("halfcheetah", "hopper", "walker2d")
               for level in ("medium", "medium-replay", "expert")},
        },
        arms=_ALL_ARMS, seeds=3),
}


@dataclass(frozen=True)
class Cell:
    profile: str
    task: str  # the profile's task key (e.g. "hopper-medium" in the paper profile)
    arm: str
    seed: int

    @property
    def env(self) -> str:
        """The more3s task behind the profile's task key."""
        return self.task.split("-", 1)[0]

    @property
    def key(self) -> str:
        return f"{self.task}/{self.arm}/seed{self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / "runs" / self.task / self.arm / f"seed{self.seed}"

    def config_overrides(self) -> dict[str, Any]:
        """Every TrainConfig field this cell sets (budget, then the arm's change, then identity)."""
        data, budget = PROFILES[self.profile].tasks[self.task]
        arm = ARMS[self.arm]
        preset = preset_overrides(arm["preset"], self.env) if "preset" in arm else {}
        preset = {k: v for k, v in preset.items() if k not in EQUAL_BUDGET}
        values = {**budget.overrides(), **preset, **arm, "env": self.env, "dataset": data.dataset,
                  "collect_if_missing": False, "seed": self.seed,
                  "name": f"{self.task}-{self.arm}-seed{self.seed}"}
        if budget.memory_drop > 0 and values["memory_steps"] > 0:
            values["memory_drop"] = budget.memory_drop
        return values


def check_names(kind: str, given: tuple[str, ...] | list[str], valid: tuple[str, ...] | list[str]) -> None:
    """An unknown name is an error that lists the valid ones."""
    bad = [g for g in given if g not in valid]
    if bad:
        raise ValueError(f"unknown {kind}{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                         f"valid {kind}s: {', '.join(valid)}")


def build_cells(profile: str, tasks: tuple[str, ...] = (), arms: tuple[str, ...] = (),
                seeds: int | None = None) -> list[Cell]:
    """The cells of ``profile`` restricted to ``tasks``/``arms`` (empty = all), ordered seed-major so that an
    interrupted grid has whole seeds of every arm rather than every seed of a few arms."""
    check_names("profile", [profile], tuple(PROFILES))
    prof = PROFILES[profile]
    check_names("task", tasks, tuple(prof.tasks))
    check_names("arm", arms, prof.arms)
    for task in prof.tasks:
        get_task(task.split("-", 1)[0])  # the profile names real tasks
    n = prof.seeds if seeds is None else seeds
    if n < 1:
        raise ValueError(f"--seeds must be >= 1, got {n}")
    return [Cell(profile, t, a, s) for s in range(n) for t in (tasks or tuple(prof.tasks))
            for a in (arms or prof.arms)]
