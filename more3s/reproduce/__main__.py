"""``python -m more3s.reproduce --profile {smoke,cpu,paper}``: the paper's claims, measured on a grid.

Runs arms x tasks x seeds (more3s.reproduce.grid) as ordinary run directories under ``results/<profile>/runs/``,
dispatched with submitit (``--launcher local``: J cells at once, one thread each on CPU or one GPU each;
``--launcher slurm`` for a cluster), then writes ``scores.csv``, ``table.md``, ``claims.md``, ``scores.png`` and
``grid.json`` (the grid's configuration, the machine, the commit). Finished cells are skipped and interrupted
ones resume from their checkpoints, so a killed grid continues where it stopped; a failed cell is recorded with
its message and the rest of the grid goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeAlias

import numpy as np
import tyro

from more3s.atomic import atomic_write_text

from .cells import CellResult, config_drift, not_run, read_cell, run_cell
from .claims import evaluate_claims
from .grid import ARMS, NEEDS_PRETRAINED, PRETRAINED_ENCODER, PROFILES, Cell, DataSpec, build_cells
from .outputs import format_claims, format_raw_by_seed, format_table, plot_scores, scores_by_task, write_scores_csv
from .sessions import Session, describe_sessions, read_sessions

if TYPE_CHECKING:
    ProfileChoice: TypeAlias = str
else:
    ProfileChoice = Literal[tuple(PROFILES)]  # tyro's choices: the profiles more3s.reproduce.grid defines

__all__ = ["ReproduceConfig", "run_grid", "main"]

Log = Callable[[str], None]


@dataclass
class ReproduceConfig:
    """Run the reproduction grid of a profile and judge the paper's claims."""

    profile: ProfileChoice = "smoke"
    tasks: tuple[str, ...] = ()
    """Tasks of the profile to run (empty: all)."""
    arms: tuple[str, ...] = ()
    """Arms to run (empty: the profile's)."""
    seeds: int | None = None
    """Seeds per cell (default: the profile's: smoke 1, cpu and paper 3)."""
    jobs: int = 1
    """Cells at once (local launcher: one thread each on CPU, one GPU each on a GPU machine)."""
    launcher: Literal["local", "slurm", "inline"] = "local"
    """submitit's local executor, submitit's Slurm executor, or inline (in this process, one cell at a time)."""
    out: Path | None = None
    """Output directory (default results/<profile>)."""
    data: tuple[str, ...] = ()
    """TASK=DATASET: use another dataset for a task (e.g. a local stand-in for a published one); recorded."""
    override: tuple[str, ...] = ()
    """KEY=VALUE TrainConfig overrides for every cell (JSON values), recorded in grid.json as deviations."""
    threads: int = 1
    slurm_partition: str | None = None
    slurm_time_min: int = 24 * 60
    slurm_gpus_per_job: int = 1
    report_only: bool = False
    """Run nothing: write the outputs from the cells finished so far (the others are listed as not run yet)."""


def _parse_pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _overrides(items: tuple[str, ...]) -> dict[str, Any]:
    from dataclasses import fields

    from more3s.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in _parse_pairs(items, "override").items():
        if key not in known:
            raise ValueError(f"--override {key}: not a TrainConfig field (see python -m more3s.train --help)")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value  # a bare string such as lxmert-tiny
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _pretrained_available() -> bool:
    from more3s.hub import hf_available

    return hf_available(PRETRAINED_ENCODER)


# A collected dataset whose episodes' returns all lie within this fraction of their mean magnitude (or within 1)
# has no spread of quality: offline RL on it measures nothing (the first cpu Hopper data were one untrained fall,
# returns 17.1-18.2).
ALIKE_FRACTION = 0.1


def describe_collected(dataset: str) -> tuple[str, bool] | None:
    """(one line on a dataset more3s collected: episodes, return range, lengths; whether its episodes are all
    alike), or None for a dataset more3s did not collect (nothing recorded to describe)."""
    from more3s.data import dataset_provenance

    prov = dataset_provenance(dataset)
    if not prov or not prov.get("returns"):
        return None
    rets = np.asarray(prov["returns"], dtype=np.float64)
    lengths = np.asarray(prov.get("lengths") or [0], dtype=np.int64)
    alike = bool(np.ptp(rets) <= max(1.0, ALIKE_FRACTION * abs(float(rets.mean()))))
    line = (f"{dataset}: {len(rets)} episodes, return min / median / max {rets.min():.1f} / {np.median(rets):.1f} / "
            f"{rets.max():.1f}, {lengths.min()}-{lengths.max()} steps")
    return line, alike


def kept_data_dir(root: Path, dataset: str) -> Path:
    """Where a grid keeps a collected dataset that cannot be re-collected exactly (``DataSpec.keep``)."""
    return root / "data" / dataset


def prepare_data(spec: DataSpec, env: str, root: Path, log: Log = print) -> None:
    """Collect a task's dataset here when the profile says how and it is missing (published ones never are), and
    say what it holds; a collected dataset whose episodes are all alike gets a warning in the grid's log.

    Data from a SAC run are kept under ``<root>/data/<id>`` and installed from there on another machine: SAC
    training is not reproducible across machines (float rounding compounds; the same seeded 60k-step Hopper run
    peaked at 347 on one machine and at 367 on another), and later cells of the grid must read the episodes its
    earlier cells read. Scripted policies' data are re-collected exactly from their seed."""
    from more3s.data.minari_paths import dataset_path
    from more3s.train import local_dataset_exists

    if spec.policy is None:  # a published dataset: used as it is
        return
    kept = kept_data_dir(root, spec.dataset)
    if not local_dataset_exists(spec.dataset):
        if spec.keep and (kept / "data" / "metadata.json").is_file():
            _copy_dir(kept, dataset_path(spec.dataset))
            log(f"installed {spec.dataset} from {kept} (the episodes this grid's earlier cells trained on)")
        else:
            _collect(spec, spec.policy, env, root, log)
    if spec.keep and not kept.exists():
        _copy_dir(dataset_path(spec.dataset), kept)
        log(f"kept {spec.dataset} in {kept} (commit it with the results: its policy cannot be re-trained exactly)")
    elif spec.keep and _episodes_digest(kept) != _episodes_digest(dataset_path(spec.dataset)):
        raise ValueError(f"{spec.dataset}: the local copy ({dataset_path(spec.dataset)}) holds other episodes than the "
                         f"ones this grid's cells trained on ({kept}); remove the local copy to install the kept one")
    described = describe_collected(spec.dataset)
    if described is not None:
        line, alike = described
        log(f"data {line}")
        if alike:
            log(f"WARNING: every episode of {spec.dataset} scores alike; its cells cannot tell good actions from bad "
                f"(check the behaviour policy {spec.policy!r})")


def _episodes_digest(dataset_dir: Path) -> str:
    """A Minari dataset's episodes file digest (a kept copy is byte for byte the collected one)."""
    from more3s.atomic import sha256_file

    return sha256_file(dataset_dir / "data" / "main_data.hdf5")


def _copy_dir(src: Path, dest: Path) -> None:
    import shutil

    from more3s.atomic import atomic_dir

    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def _collect(spec: DataSpec, policy: str, env: str, root: Path, log: Log) -> None:
    from more3s.data import collect_dataset

    if spec.sac_steps > 0:
        from more3s.data.sac import SACConfig, train_sac

        sac_dir = root / "sac" / env
        log(f"training a SAC behaviour agent for {env} ({spec.sac_steps} steps, resumable) in {sac_dir}")
        train_sac(SACConfig(env=env, total_steps=spec.sac_steps, out_dir=str(sac_dir),
                            snapshot_every=max(1, spec.sac_steps // 8)))
        policy = f"{policy}:{sac_dir}"
    log(f"collecting {spec.dataset}: {spec.episodes} {env} episodes of {policy!r}")
    collect_dataset(env, policy, spec.episodes, spec.dataset, seed=0, max_episode_steps=spec.max_episode_steps,
                    progress=False)


def _dispatch(cfg: ReproduceConfig, cells: list[Cell], root: Path, overrides: dict[Cell, dict[str, Any]],
              commit: str, log: Log = print, cell_done: Callable[[Cell], None] = lambda cell: None
              ) -> list[CellResult]:
    """Run ``cells`` (with their TrainConfig ``overrides``) at most ``cfg.jobs`` at once; results in order;
    ``cell_done(cell)`` after each."""
    from tqdm.auto import tqdm

    results: dict[Cell, CellResult] = {}
    bar = tqdm(total=len(cells), desc=f"grid {cfg.profile}", unit="cell", file=sys.stderr)
    if cfg.launcher == "inline":
        for cell in cells:
            results[cell] = run_cell(cell, str(root), overrides[cell], cfg.threads, commit)
            cell_done(cell)
            bar.update(1)
        bar.close()
        return [results[c] for c in cells]
    import submitit

    executor: submitit.Executor
    if cfg.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=root / "submitit", cluster="slurm")
        executor.update_parameters(timeout_min=cfg.slurm_time_min, slurm_partition=cfg.slurm_partition,
                                   gpus_per_node=cfg.slurm_gpus_per_job, cpus_per_task=max(1, cfg.threads))
    else:
        executor = submitit.LocalExecutor(folder=root / "submitit")
        executor.update_parameters(timeout_min=7 * 24 * 60)
    import torch

    n_gpu = torch.cuda.device_count() if cfg.launcher == "local" else 0
    pending, running = list(cells), list[tuple[Cell, int, Any]]()
    slots = list(range(cfg.jobs))
    try:
        while pending or running:
            while pending and slots and len(running) < cfg.jobs:
                cell, slot = pending.pop(0), slots.pop(0)
                extra = dict(overrides[cell])
                if n_gpu:  # local launcher on a GPU machine: one GPU per cell
                    extra.setdefault("device", f"cuda:{slot % n_gpu}")
                running.append((cell, slot, executor.submit(run_cell, cell, str(root), extra, cfg.threads, commit)))
            time.sleep(1.0)
            for item in [r for r in running if r[2].done()]:
                cell, slot, job = item
                running.remove(item)
                slots.append(slot)
                try:
                    results[cell] = job.result()
                except Exception as e:  # noqa: BLE001 - the job itself died (killed, out of memory, ...)
                    results[cell] = CellResult(arm=cell.arm, task=cell.task, seed=cell.seed, status="failed",
                                               message=f"job {job.job_id} died: {e}".splitlines()[0][:500],
                                               run_dir=str(cell.run_dir(root)))
                cell_done(cell)
                bar.update(1)
                log(f"cell {cell.key}: {results[cell].status}")
    except KeyboardInterrupt:
        for _, _, job in running:
            job.cancel()
        raise
    finally:
        bar.close()
    return [results[c] for c in cells]


def run_grid(cfg: ReproduceConfig, log: Log = print) -> Path:
    """Run (or continue) the grid; write its outputs; return the output directory."""
    if cfg.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {cfg.jobs}")
    cells = build_cells(cfg.profile, cfg.tasks, cfg.arms, cfg.seeds)
    prof = PROFILES[cfg.profile]
    root = Path(cfg.out or Path("results") / cfg.profile)
    data_over = _parse_pairs(cfg.data, "data")
    bad = sorted(set(data_over) - set(prof.tasks))
    if bad:
        raise ValueError(f"--data {', '.join(bad)}: not a task of profile {cfg.profile} "
                         f"({', '.join(prof.tasks)})")
    overrides = _overrides(cfg.override)
    pretrained = _pretrained_available()
    datasets = {t: data_over.get(t, prof.tasks[t][0].dataset) for t in prof.tasks}
    cell_over = {c: {**overrides, "dataset": datasets[c.task]} for c in cells}
    drifted = _drifted(cells, root, cell_over)
    if cfg.report_only:
        for line in drifted:
            log(f"WARNING: run with another configuration than this grid asks: {line}")
        return _write_outputs(cfg, root, _finished_so_far(cells, root, pretrained), pretrained, log)
    if drifted:
        raise ValueError(f"{root}: {len(drifted)} cell(s) were run with another configuration than this grid asks "
                         f"({'; '.join(drifted[:3])}{'; ...' if len(drifted) > 3 else ''}). Continue that grid with "
                         f"the code and options it was started with, or pass --out DIR for a new one "
                         f"(nothing was deleted)")
    from more3s.host import machine  # torch: imported only when a grid runs

    root.mkdir(parents=True, exist_ok=True)
    commit = _commit()
    record = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "profile": {"description": prof.description, "seeds": cfg.seeds or prof.seeds,
                    "tasks": {t: {"data": asdict(d), "budget": asdict(b)} for t, (d, b) in prof.tasks.items()},
                    "arms": {a: ARMS[a] for a in prof.arms}},
        "deviations": {"data": data_over, "override": overrides},
        "pretrained_encoder_available": pretrained, "machine": machine(), "commit": commit,
    }
    session = Session.start(commit, cfg.jobs)  # this invocation's share of the grid's wall time, data included
    sessions = [*read_sessions(root / "grid.json"), session]

    def save_record() -> None:
        record["sessions"] = [s.to_dict() for s in sessions]
        atomic_write_text(root / "grid.json", json.dumps(record, indent=2, default=str) + "\n")

    save_record()

    # data first, once per task (cells of one task share it; collecting it in parallel would collide)
    for task in dict.fromkeys(c.task for c in cells):
        spec = prof.tasks[task][0]
        if task in data_over:  # the user's dataset, used as it is (never collected under its name)
            spec = DataSpec(data_over[task])
        try:
            prepare_data(spec, task.split("-", 1)[0], root, log)
        except Exception as e:  # noqa: BLE001 - the task's cells fail with this message; others go on
            log(f"data for {task} could not be prepared: {e}")
    to_run, skipped = [], []
    for cell in cells:
        if cell.arm in NEEDS_PRETRAINED and not pretrained:
            skipped.append(_needs_pretrained(cell, root))
        else:
            to_run.append(cell)
    finished = [c for c in to_run if (r := read_cell(c.run_dir(root))) is not None and r.status == "ok"]
    log(f"grid {cfg.profile}: {len(cells)} cells, {len(finished)} already finished, {len(skipped)} not run here, "
        f"{len(to_run) - len(finished)} to run with {cfg.jobs} job(s) ({cfg.launcher})")
    session.cells_to_run = len(to_run) - len(finished)
    save_record()

    def cell_done(cell: Cell) -> None:
        if cell not in finished:
            session.cell_done()
            save_record()

    results = skipped + _dispatch(cfg, to_run, root, cell_over, commit, log, cell_done)
    session.end()
    save_record()
    return _write_outputs(cfg, root, results, pretrained, log)


def _drifted(cells: list[Cell], root: Path, overrides: dict[Cell, dict[str, Any]]) -> list[str]:
    """'task/arm/seedN: field recorded -> asked, ...' for every cell on disk whose configuration differs."""
    out = []
    for cell in cells:
        drift = config_drift(cell.run_dir(root), {**cell.config_overrides(), **overrides[cell]})
        if drift:
            out.append(f"{cell.key}: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(drift.items())))
    return out


def _needs_pretrained(cell: Cell, root: Path) -> CellResult:
    return not_run(cell, str(root), f"needs pretrained weights ({PRETRAINED_ENCODER}) on disk")


def _finished_so_far(cells: list[Cell], root: Path, pretrained: bool) -> list[CellResult]:
    """Each cell's recorded outcome, or 'not run' (needs pretrained weights / not run yet)."""
    out = []
    for cell in cells:
        if cell.arm in NEEDS_PRETRAINED and not pretrained:
            out.append(_needs_pretrained(cell, root))
        else:
            out.append(read_cell(cell.run_dir(root)) or not_run(cell, str(root), "the grid has not reached it yet"))
    return out


def _write_outputs(cfg: ReproduceConfig, root: Path, results: list[CellResult], pretrained: bool,
                   log: Log = print) -> Path:
    """scores.csv, table.md, claims.md and scores.png from the cells' outcomes."""
    prof = PROFILES[cfg.profile]
    root.mkdir(parents=True, exist_ok=True)
    results.sort(key=lambda r: (r.task, prof.arms.index(r.arm) if r.arm in prof.arms else 99, r.seed))
    write_scores_csv(root / "scores.csv", results)
    arms = [a for a in prof.arms if any(r.arm == a for r in results)]
    raw = format_raw_by_seed(results, arms)
    atomic_write_text(root / "table.md", f"# {cfg.profile} profile: scores\n\n"
                      f"{describe_sessions(read_sessions(root / 'grid.json'))}\n\n" + format_table(results, arms)
                      + (f"### Raw return per training seed, all tasks\n\n{raw}" if raw else ""))
    claims = evaluate_claims(scores_by_task(results), pretrained)
    atomic_write_text(root / "claims.md", f"# {cfg.profile} profile: the paper's claims\n\n" + format_claims(claims))
    plot_scores(root / "scores.png", results, arms)
    log(f"wrote {root}/scores.csv, table.md, claims.md, scores.png")
    return root


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(ReproduceConfig, args=argv, description=__doc__.split("\n\n")[0])
    try:
        run_grid(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
