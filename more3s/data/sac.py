"""MuJoCo behaviour agents: a resumable stable-baselines3 SAC run with snapshots at quality levels.

D4RL's MuJoCo sets come from one SAC run: "expert" is the final policy, "medium" a policy stopped at
about a third of the expert's score, "medium-replay" the replay buffer up to the medium policy, and
"medium-expert" half medium, half expert episodes. We reproduce that recipe offline:

    python -m more3s.data.sac --env halfcheetah --total-steps 300000 --out-dir runs/sac/halfcheetah

trains (slow on CPU: ~16 updates/s measured on the shared 2-core machine, so ~2 h per 100k
steps), and every ``snapshot_every`` steps saves ``snapshots/step_XXXXXXX.zip`` and its
deterministic evaluation return into ``snapshots.json``. ``latest.zip`` + ``replay_buffer.pkl`` are written atomically at every snapshot,
so re-running the same command continues where an interrupted run stopped. Then

    python -m more3s.collect --env halfcheetah --policy sac-medium-replay:runs/sac/halfcheetah ...

builds the analogues (``select_snapshots``). stable-baselines3 is the optional ``[collect]`` extra
and is imported only inside these functions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from more3s.atomic import atomic_path, atomic_write_text
from more3s.envs import SCORE_REFS, get_task, make_env

if TYPE_CHECKING:
    from stable_baselines3 import SAC

__all__ = ["SACConfig", "train_sac", "load_sac", "evaluate_policy", "select_snapshots",
           "QUALITY_LEVELS", "MEDIUM_FRACTION"]

QUALITY_LEVELS = ("expert", "medium", "medium-replay", "medium-expert", "file")
MEDIUM_FRACTION = 1.0 / 3.0  # D4RL: "medium" is stopped at ~1/3 of the expert's performance


@dataclass
class SACConfig:
    env: str = "halfcheetah"
    out_dir: str = "runs/sac/halfcheetah"
    total_steps: int = 300_000
    snapshot_every: int = 10_000
    seed: int = 0
    learning_starts: int = 5_000  # random-action warm-up steps (SB3's default is 100)
    batch_size: int = 256  # Haarnoja et al. 2018 MuJoCo settings, as in SB3's rl-zoo
    buffer_size: int = 1_000_000  # holds a whole D4RL-sized run
    learning_rate: float = 3e-4
    hidden: int = 256  # two hidden layers of this width for actor and critics
    eval_episodes: int = 3
    max_episode_steps: int | None = None  # shorter episodes for smoke runs; None = the task's 1000

    def __post_init__(self) -> None:
        if get_task(self.env).family != "mujoco":
            raise ValueError(f"SAC training is for mujoco tasks, not {self.env!r}")
        for name in ("total_steps", "snapshot_every", "batch_size", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SACConfig.{name} must be >= 1, got {getattr(self, name)}")


def _save_model(model: SAC, dest: Path) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        model.save(f)


def load_sac(path: str | Path) -> SAC:
    """Load a SAC snapshot (.zip) for inference on the CPU."""
    from stable_baselines3 import SAC

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SAC snapshot")
    return SAC.load(path, device="cpu")


def evaluate_policy(model: SAC, task: str, episodes: int, seed: int,
                    max_episode_steps: int | None = None) -> float:
    """Mean undiscounted return of the deterministic policy over ``episodes`` episodes."""
    env = make_env(task, max_episode_steps=max_episode_steps)
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
    env.close()
    return total / episodes


def train_sac(cfg: SACConfig, progress: bool = False) -> Path:
    """Train (or resume) SAC until ``cfg.total_steps``; returns ``cfg.out_dir``."""
    import torch
    from stable_baselines3 import SAC

    out = Path(cfg.out_dir)
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    index_file = out / "snapshots.json"
    index: dict[str, Any] = json.loads(index_file.read_text()) if index_file.exists() else \
        {"task": get_task(cfg.env).name, "config": asdict(cfg), "snapshots": []}
    if index["task"] != get_task(cfg.env).name:
        raise ValueError(f"{out} holds a SAC run for {index['task']!r}, not {cfg.env!r}")
    env = make_env(cfg.env, max_episode_steps=cfg.max_episode_steps)
    latest, buffer = out / "latest.zip", out / "replay_buffer.pkl"
    if latest.exists():
        model = SAC.load(latest, env=env, device="cpu")
        if buffer.exists():
            model.load_replay_buffer(buffer)
        print(f"resuming SAC from {latest} at step {model.num_timesteps}")
    else:
        torch.manual_seed(cfg.seed)
        model = SAC("MlpPolicy", env, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size,
                    learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, seed=cfg.seed,
                    policy_kwargs={"net_arch": [cfg.hidden, cfg.hidden]}, device="cpu", verbose=0)
    # Drop index rows past the checkpoint (written after it by an interrupted run).
    index["snapshots"] = [s for s in index["snapshots"] if s["step"] <= model.num_timesteps]
    while model.num_timesteps < cfg.total_steps:
        target = min(cfg.total_steps,
                     (model.num_timesteps // cfg.snapshot_every + 1) * cfg.snapshot_every)
        model.learn(total_timesteps=target - model.num_timesteps, reset_num_timesteps=False,
                    progress_bar=progress)
        step = int(model.num_timesteps)
        snap = out / "snapshots" / f"step_{step:07d}.zip"
        _save_model(model, snap)
        ret = evaluate_policy(model, cfg.env, cfg.eval_episodes, seed=10_000 + step,
                              max_episode_steps=cfg.max_episode_steps)
        index["snapshots"].append({"step": step, "path": snap.name, "eval_return": ret})
        print(f"SAC {cfg.env} step {step}: eval return {ret:.1f}")
        with atomic_path(buffer) as tmp:
            model.save_replay_buffer(tmp)
        _save_model(model, latest)
        atomic_write_text(index_file, json.dumps(index, indent=1))
    env.close()
    return out


def select_snapshots(source: Path, level: str) -> tuple[list[Path], list[float] | None]:
    """Snapshots (and per-episode weights) for a quality level of a ``train_sac`` run.

    expert: the best-evaluated snapshot. medium: the snapshot whose return is closest to
    random + MEDIUM_FRACTION * (expert - random) (random = the task's D4RL reference).
    medium-replay: every snapshot up to the first that reaches that target (and at least up to the
    medium one), equally weighted: D4RL's replay buffer of a run trained until medium (the collecting
    policy adds SAC's initial random exploration as one more member, ``SnapshotPolicy(explore=True)``). The nearest
    snapshot alone is not enough: with snapshots far apart it can be one that never learned (a
    20k-step Hopper run: 17.6, 17.8, then 203 against a target of 81), and a replay of untrained
    snapshots is 60 copies of one fall. medium-expert: medium and expert, half each. file:
    ``source`` is one .zip.
    """
    if level not in QUALITY_LEVELS:
        raise ValueError(f"unknown SAC quality level {level!r}; choose one of {QUALITY_LEVELS}")
    if level == "file":
        if source.suffix != ".zip":
            raise ValueError(f"sac:{source}: expected a .zip snapshot (or use sac-medium:DIR etc.)")
        return [source], None
    index_file = source / "snapshots.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file}: not found; train with "
                                f"`python -m more3s.data.sac --out-dir {source}` first")
    index = json.loads(index_file.read_text())
    snaps = sorted(index.get("snapshots", []), key=lambda s: s["step"])
    if not snaps:
        raise ValueError(f"{index_file}: the run has no snapshots yet")
    rets = np.array([s["eval_return"] for s in snaps], dtype=np.float64)
    best = int(np.argmax(rets))
    ref = SCORE_REFS.get(index.get("task", ""))
    lo = ref.random if ref is not None else float(rets.min())
    target = lo + MEDIUM_FRACTION * (rets[best] - lo)
    medium = int(np.argmin(np.abs(rets[: best + 1] - target)))

    def path(i: int) -> Path:
        return source / "snapshots" / str(snaps[i]["path"])

    if level == "expert":
        return [path(best)], None
    if level == "medium":
        return [path(medium)], None
    if level == "medium-replay":
        reached = int(np.argmax(rets >= target))  # exists: rets[best] >= target
        return [path(i) for i in range(max(medium, reached) + 1)], None
    return [path(medium), path(best)], [0.5, 0.5]


def main() -> None:
    import tyro

    cfg = tyro.cli(SACConfig)
    print(f"done: {train_sac(cfg)}")


if __name__ == "__main__":
    main()
