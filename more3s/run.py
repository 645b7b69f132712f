"""The run directory: its layout, what a run resolved (run.json), and loading a run's model.

Training writes a run directory; evaluation, the probe and the reproduction grid read it. This module is the one
place that knows its layout (:class:`RunPaths`), reads and writes ``run.json`` (:class:`RunInfo`, versioned by
its ``format`` field) and rebuilds a run's model from a checkpoint (:func:`load_run_model`: the model config
comes from the checkpoint itself, or, for checkpoints written before it carried one, from run.json).

An older run.json is read through :func:`upgrade_run_info` (what it did not record reads "not recorded");
``python -m more3s.run upgrade DIR`` rewrites the file in the current format.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from more3s.atomic import atomic_write_text
from more3s.checkpoint import Checkpoint, load_checkpoint, load_latest, load_weights
from more3s.envs import TaskSpec
from more3s.model import ModelConfig, MoreModel
from more3s.report import BehaviourStats, data_targets, unique_targets

__all__ = ["RUN_FORMAT", "RunFormatError", "RunPaths", "RunInfo", "new_run_dir", "load_run_model",
           "default_targets", "eval_cap", "timestep_table", "upgrade_run_info", "main"]

RUN_FORMAT = 2  # bump when RunInfo's fields change; add the conversion to upgrade_run_info


class RunFormatError(ValueError):
    """run.json is of a newer format version, or not a more3s run's."""


class RunPaths:
    """Where each part of a run lives under its directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.config_json = self.root / "config.json"
        self.config_yaml = self.root / "config.yaml"
        self.run_json = self.root / "run.json"
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.csv"
        self.tensorboard = self.root / "tb"
        self.eval_json = self.root / "eval.json"
        self.report_png = self.root / "report.png"
        self.videos = self.root / "videos"
        self.dist_json = self.root / "dist.json"

    def __repr__(self) -> str:
        return f"RunPaths({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunPaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


@dataclass
class RunInfo:
    """What a training run resolved when it started (run.json): what it trained on, with what, and the
    evaluation protocol that follows from its data."""

    task: str
    dataset: str
    provenance: dict[str, Any] | None  # more3s.data.dataset_provenance: None for a dataset more3s did not collect
    episodes: int
    steps_in_data: int
    encoder: str
    encoder_fingerprint: str
    encoder_dtype: str  # the dtype the training embedding cache was encoded in
    backbone: str
    prompt_set: str
    cache_path: str
    model_config: ModelConfig
    max_timestep: int  # the learned timestep table's last row
    timestep_source: str
    parameters: int
    world_size: int
    device: str
    sampler: str
    targets: list[float]
    targets_source: str
    eval_max_episode_steps: int | None
    eval_cap_source: str
    behaviour: BehaviourStats
    host: dict[str, Any]  # more3s.host.machine() in the training process: CPU, training threads, torch, GPUs
    format: int = RUN_FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(model_config=self.model_config.to_dict(), behaviour=dataclasses.asdict(self.behaviour))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "run.json") -> RunInfo:
        """The RunInfo of a run.json dict, an older format upgraded; RunFormatError naming ``source`` for a newer
        or foreign one."""
        if not isinstance(d, dict):
            raise RunFormatError(f"{source}: not a more3s run.json (a {type(d).__name__}, not a mapping)")
        fmt = d.get("format", 0)
        if not isinstance(fmt, int) or not 0 <= fmt <= RUN_FORMAT:
            raise RunFormatError(f"{source}: run.json format {fmt!r}, this more3s reads formats 0-{RUN_FORMAT} "
                                 f"(a newer more3s wrote it?)")
        d = upgrade_run_info(d)
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) != names:
            raise RunFormatError(f"{source}: not a more3s run.json of format {RUN_FORMAT}: missing "
                                 f"{sorted(names - set(d))}, unknown {sorted(set(d) - names)}")
        return cls(**{**d, "model_config": ModelConfig.from_dict(d["model_config"]),
                      "behaviour": BehaviourStats(**d["behaviour"])})

    def check_encoder(self, encoder: Any, run_dir: str | Path) -> None:
        """ValueError unless ``encoder`` (its ``fingerprint``: weights and state design) gives the embeddings this run
        was trained on; a run that recorded no fingerprint is not checked."""
        want = self.encoder_fingerprint
        if want and encoder.fingerprint != want:
            raise ValueError(f"encoder {encoder.name!r} has fingerprint {encoder.fingerprint[:12]}..., but run "
                             f"{run_dir} was trained on embeddings of {want[:12]}... (different weights or state "
                             f"design: retrain the run, or evaluate it with the more3s version that trained it)")

    def write(self, run_dir: str | Path) -> None:
        """Write run.json into ``run_dir`` atomically."""
        atomic_write_text(RunPaths(Path(run_dir)).run_json, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        path = RunPaths(Path(run_dir)).run_json
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (is {path.parent} a more3s run directory?)")
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise RunFormatError(f"{path}: not JSON ({e})") from e
        return cls.from_dict(data, source=str(path))


def upgrade_run_info(d: dict[str, Any]) -> dict[str, Any]:
    """A run.json dict of an older format converted to the current one. Format 0: before ``format`` was
    recorded, with the timestep table nested under ``timesteps``; format 1: before the host was recorded."""
    d = dict(d)
    if "format" not in d:
        ts = d.pop("timesteps", {})
        d.update(max_timestep=ts.get("max_timestep", d.get("model_config", {}).get("max_timestep")),
                 timestep_source=ts.get("source", "(not recorded)"), format=1)
    if d["format"] == 1:
        d.update(host={"note": "not recorded (run.json format 1)"}, format=2)
    return d


def new_run_dir(run_dir: Path | None, out_dir: Path, name: str) -> Path:
    """``run_dir`` when given (absent or empty), else a fresh ``<out_dir>/<name>-<UTC timestamp>[-n]``."""
    if run_dir is not None:
        d = Path(run_dir)
        if d.exists() and any(d.iterdir()):
            raise FileExistsError(f"run_dir {d} exists and is not empty; use --resume {d} to continue it")
        return d
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    d = Path(out_dir) / f"{name}-{stamp}"
    n = 1
    while d.exists():
        n += 1
        d = Path(out_dir) / f"{name}-{stamp}-{n}"
    return d


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def load_run_model(run_dir: str | Path, device: torch.device | str = "cpu",
                   checkpoint: str | Path | None = None,
                   log: Callable[[str], None] = _log) -> tuple[MoreModel, RunInfo, Checkpoint]:
    """(model in eval mode, RunInfo, Checkpoint) of a run's newest intact (or given) checkpoint.

    The model config is the checkpoint's own; a checkpoint written before checkpoints carried it gets the
    run's (run.json), which is the config it was trained with."""
    run_dir = Path(run_dir)
    info = RunInfo.read(run_dir)
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
    else:
        found = load_latest(RunPaths(run_dir).checkpoints, log=log)
        if found is None:
            raise FileNotFoundError(f"run {run_dir} has no checkpoint yet (checkpoints/ is empty)")
        ckpt = found
    saved = ckpt.state.get("model_config")
    mcfg = ModelConfig.from_dict(saved) if saved is not None else info.model_config
    rows = mcfg.act_dim if mcfg.discrete else mcfg.act_dim + 1
    model = MoreModel(mcfg, torch.zeros(rows, mcfg.d_enc))  # the action table comes from the checkpoint
    load_weights(ckpt.path, model)
    return model.to(device).eval(), info, ckpt


def default_targets(given: Sequence[float], task: TaskSpec, stats: BehaviourStats,
                    provenance: dict[str, Any] | None) -> tuple[tuple[float, ...], str]:
    """(RTG targets, where they come from): ``given`` > the data's (datasets more3s collected, by their metadata)
    > DT's published ones (any other dataset). ``provenance``: more3s.data.dataset_provenance's answer."""
    if given:
        return unique_targets(given), "given on the command line / config"
    if provenance is None:
        return unique_targets(task.rtg_targets), ("Decision Transformer's published targets (a dataset more3s did "
                                                  "not collect)")
    pub = ", ".join(f"{t:g}" for t in task.rtg_targets)
    return data_targets(stats), ("from the data (a dataset more3s collected): its best episode "
                                 f"return and 90th percentile (DT's published target(s) for {task.name}: {pub})")


def eval_cap(provenance: dict[str, Any] | None) -> tuple[int | None, str]:
    """The evaluation cap a dataset implies (None = the task's full protocol) and why."""
    if provenance is None:
        return None, "a dataset more3s did not collect: the task's full protocol"
    cap = provenance.get("max_episode_steps")
    if not cap:
        return None, "more3s collected this dataset without an episode cap: the task's full protocol"
    return int(cap), f"the collection cap more3s recorded for this dataset ({cap} agent steps)"


def timestep_table(lengths: Sequence[int] | np.ndarray, task: TaskSpec) -> tuple[int, str]:
    """(largest timestep with a trained embedding row, where the table's size comes from).

    Training sees timesteps 0 .. T-1 of an episode of T steps, so rows up to the longest episode's T-1 are
    trained; an episode limit the data reaches (MuJoCo's 1000 steps) sizes the table the same way."""
    longest = int(max(lengths))
    limit = int(task.max_episode_steps)
    if longest >= limit:
        return limit - 1, f"the task's episode limit ({limit} steps, reached by the data)"
    return longest - 1, f"the data (longest training episode: {longest} steps; the task allows {limit})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m more3s.run upgrade DIR...``: convert older run.json files to the current format."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "upgrade":
        print("usage: python -m more3s.run upgrade RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for run_dir in args[1:]:
        path = RunPaths(Path(run_dir)).run_json
        try:
            info = RunInfo.from_dict(upgrade_run_info(json.loads(path.read_text())), source=str(path))
        except (OSError, ValueError, TypeError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        info.write(run_dir)
        print(f"{path}: format {RUN_FORMAT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
