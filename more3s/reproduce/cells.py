"""One cell of the grid: train + final evaluation in an ordinary run directory, resumable, never fatal.

``run_cell`` is what a launcher (submitit's local or Slurm executor) runs. Its outcome is ``cell.json`` in the
run directory, written atomically: a finished cell is skipped by the next grid run, an interrupted one (a
``config.json`` but no ``cell.json``) resumes from its newest checkpoint, and a failure (NaN loss, a dataset
missing offline, ...) is recorded with its message instead of stopping the grid.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from more3s.atomic import atomic_write_text

from .grid import Cell

__all__ = ["CellResult", "run_cell", "read_cell", "config_drift", "CELL_FILE"]

CELL_FILE = "cell.json"
# TrainConfig fields a cell's numbers do not depend on: where and on what it runs, what it logs and keeps.
LAUNCH_FIELDS = frozenset({"run_dir", "resume", "progress", "device", "cache_dir", "out_dir", "tensorboard",
                           "log_every", "ckpt_every", "keep_checkpoints", "eval_video",
                           "encoder_threads"})


@dataclass
class CellResult:
    """What scores.csv records of a cell (one row)."""

    arm: str
    task: str
    seed: int
    status: str  # ok | failed | not run
    dataset: str = ""
    normalized_mean: float | None = None  # mean over evaluation episodes, at the protocol's primary target
    normalized_std: float | None = None
    raw_mean: float | None = None
    raw_std: float | None = None
    episodes: int = 0
    target: float | None = None
    protocol: str = ""
    behaviour_mean: float | None = None  # the dataset's own (raw) mean and best episode returns
    behaviour_best: float | None = None
    steps: int = 0
    wall_s: float = 0.0
    commit: str = ""
    message: str = ""
    run_dir: str = ""


def read_cell(run_dir: Path) -> CellResult | None:
    """The cell's recorded outcome, its run_dir where it lies now (a grid's root may have moved)."""
    f = Path(run_dir) / CELL_FILE
    if not f.is_file():
        return None
    try:
        return CellResult(**{**json.loads(f.read_text()), "run_dir": str(run_dir)})
    except (ValueError, TypeError):
        return None  # a foreign or damaged file: the cell runs again


def config_drift(run_dir: Path, values: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (recorded, asked)} for each TrainConfig field whose value in the run's config.json differs from
    ``values`` (what the grid asks of the cell now), launch details aside; empty when nothing is recorded yet.
    A finished or half-run cell of another configuration must not pass for one of this grid."""
    from more3s.config import config_from_dict
    from more3s.run import RunPaths

    f = RunPaths(run_dir).config_json
    if not f.is_file():
        return {}
    try:
        then = asdict(config_from_dict(json.loads(f.read_text())))
    except (ValueError, TypeError) as e:  # a config of an older or foreign format
        return {"config.json": (f"unreadable ({e})".splitlines()[0][:200], "this version's TrainConfig")}
    now = asdict(config_from_dict(values))
    return {k: (then[k], v) for k, v in now.items() if k not in LAUNCH_FIELDS and then[k] != v}


def _write(run_dir: Path, res: CellResult) -> CellResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CELL_FILE, json.dumps(asdict(res), indent=2) + "\n")
    return res


def _score(cell: Cell, run_dir: Path, res: CellResult) -> CellResult:
    """Fill ``res`` from the run's eval.json and RunInfo: the first RTG target of the run is its primary one
    (DT's published target, or the data's best-episode return), fixed before training."""
    import numpy as np

    from more3s.report import load_report
    from more3s.run import RunInfo, RunPaths

    report = load_report(RunPaths(run_dir).eval_json)
    primary = report.targets[0]
    raw = np.asarray(primary.returns, dtype=np.float64)
    info = RunInfo.read(run_dir)
    cap = f"capped at {report.max_episode_steps} steps" if report.max_episode_steps else "full episodes"
    res.normalized_mean, res.normalized_std = primary.mean, primary.std
    res.raw_mean, res.raw_std = float(raw.mean()), float(raw.std())
    res.episodes, res.target, res.steps = len(primary.returns), primary.target, report.step
    res.protocol = (f"last checkpoint (step {report.step}), {len(primary.returns)} episodes "
                    f"({primary.distinct_trajectories} distinct), {report.actions} actions, {cap}, "
                    f"engine={report.engine}")
    res.behaviour_mean = info.behaviour.mean_return
    res.behaviour_best = info.behaviour.best_return
    return res


def run_cell(cell: Cell, root: str, overrides: dict[str, Any] | None = None, threads: int = 1,
             commit: str = "") -> CellResult:
    """Train and evaluate ``cell`` under ``root``; resumes or skips by the run directory's state."""
    import torch

    torch.set_num_threads(threads)
    run_dir = cell.run_dir(Path(root))
    done = read_cell(run_dir)
    if done is not None and done.status == "ok":
        return done
    from more3s.config import config_from_dict
    from more3s.run import RunPaths
    from more3s.train import train

    # The cell's one thread holds while its encoder runs, too: --jobs J cells share the machine's cores.
    values = {**cell.config_overrides(), **(overrides or {}), "encoder_threads": threads}
    res = CellResult(arm=cell.arm, task=cell.task, seed=cell.seed, status="failed", dataset=values["dataset"],
                     commit=commit, run_dir=str(run_dir))
    t0 = time.time()
    try:
        if run_dir.exists() and not RunPaths(run_dir).config_json.is_file():
            shutil.rmtree(run_dir)  # killed before the run wrote its config: nothing to resume
        resume = RunPaths(run_dir).config_json.is_file()
        values.update(progress=False, run_dir=str(run_dir), resume=str(run_dir) if resume else None)
        train(config_from_dict(values))
        res = _score(cell, run_dir, res)
        res.status = "ok"
    except KeyboardInterrupt:
        raise  # an interrupted grid: no cell.json, so the next run resumes this cell
    except Exception as e:  # noqa: BLE001 - recorded in scores.csv; the grid goes on
        res.message = f"{type(e).__name__}: {e}".strip()
        (run_dir / "error.log").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.log").write_text(traceback.format_exc())
    res.wall_s = round(time.time() - t0, 1)
    return _write(run_dir, res)


def not_run(cell: Cell, root: str, why: str) -> CellResult:
    """A cell the grid does not run here (e.g. it needs pretrained weights); recorded, not trained."""
    return CellResult(arm=cell.arm, task=cell.task, seed=cell.seed, status="not run", message=why,
                      run_dir=str(cell.run_dir(Path(root))))
