"""``python -m more3s.evaluate --run DIR``: evaluate a run's checkpoint in vectorised environments.

Loads the run's model config and its newest intact checkpoint (or ``--checkpoint``), the encoder the
run was trained with (run.json), and plays greedy RTG-conditioned episodes with the rollout engine
(more3s.rollout.engine; the ring-buffer engine by default, ``--engine recompute`` for the reference
path, ``--engine window`` for the cache-less DT-style baseline). For each RTG target it reports the
normalized score (more3s.envs.normalized_score on RAW returns) as mean ± std over episodes, next to
the dataset's behaviour returns, and which checkpoint was evaluated.

Protocol: Atari full games (up to 108k frames, 30 no-op starts) by default; ``--max-episode-steps``
caps episodes (the embedded training default uses a cap to fit its time budget; the output says so).
Targets default to the run's (run.json: DT's published targets, or for collected datasets the data's
best and 90th-percentile returns). Writes eval.json and report.png into the run directory; ``--video N``
also records the first N episodes of every target as videos under ``videos/`` (more3s.video) and puts frames
of the best of them into report.png.

``torchrun --nproc_per_node N -m more3s.evaluate --run-dir DIR ...`` splits the environments over N processes (one GPU each,
or CPU processes with gloo): the shards play exactly the episodes one process with N x --num-envs environments
plays (same seeds and per-environment quotas), and rank 0 gathers them and writes the report.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
import torch
import tyro

__all__ = ["EvalConfig", "load_run_model", "evaluate_run", "finish_report", "main"]


@dataclass
class EvalConfig:
    """Evaluate a training run."""

    run: Annotated[Path, tyro.conf.arg(aliases=("--run-dir",))]
    """The run directory (holds config.json, run.json, checkpoints/). Under torchrun spell it --run-dir:
    torchrun's own parser takes --run for an abbreviation of its --run-path."""
    episodes: int = 10
    """Episodes per RTG target and seed (DT: 10 for Atari)."""
    targets: tuple[float, ...] = ()
    """RTG targets; empty = the run's (run.json)."""
    seeds: tuple[int, ...] = (1000,)
    """Environment seeds (env i of the vector gets seed + i); episodes run per seed and target."""
    engine: Literal["ring", "recompute", "window"] = "ring"
    """ring = KV-cache engine; recompute = exact reference path; window = cache-less DT-style baseline."""
    max_episode_steps: int | None = None
    """Cap on agent steps per episode; None = the full-game protocol."""
    num_envs: int = 8
    """Vectorised environments per process (at most --episodes in all are used)."""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    checkpoint: Path | None = None
    """A specific checkpoint directory; default: the run's newest intact one."""
    plot: bool = True
    sample: bool = False
    """Sample discrete actions from the policy's softmax (DT's Atari protocol) instead of greedy argmax."""
    video: int = 0
    """Record the first N episodes of every RTG target as MP4 (GIF without ffmpeg) under the run's videos/,
    each frame with the step, RTG, reward and the chosen action's sentence; a bare --video means 1."""


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {path.parent} a more3s run directory?)")
    return json.loads(path.read_text())


def load_run_model(run_dir: str | Path, device: torch.device | str = "cpu",
                   checkpoint: str | Path | None = None):
    """(model in eval mode, run.json dict, Checkpoint) of a run's newest intact (or given) checkpoint."""
    from more3s.checkpoint import load_checkpoint, load_latest
    from more3s.model import ModelConfig, MoreModel

    run_dir = Path(run_dir)
    info = _read_json(run_dir / "run.json")
    mcfg = ModelConfig.from_dict(info["model_config"])
    rows = mcfg.act_dim if mcfg.discrete else mcfg.act_dim + 1
    model = MoreModel(mcfg, torch.zeros(rows, mcfg.d_enc))  # the action table comes from the checkpoint
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint, model)
    else:
        ckpt = load_latest(run_dir / "checkpoints", model, log=lambda m: print(m, file=sys.stderr))
        if ckpt is None:
            raise FileNotFoundError(f"run {run_dir} has no checkpoint yet (checkpoints/ is empty)")
    return model.to(device).eval(), info, ckpt


def evaluate_run(run_dir: str | Path, *, episodes: int = 10, targets: Sequence[float] = (),
                 seeds: Sequence[int] = (1000,), engine: str = "ring", max_episode_steps: int | None = None,
                 num_envs: int = 8, device: torch.device | str = "auto",
                 checkpoint: str | Path | None = None, encoder=None, sample: bool = False, video: int = 0):
    """Evaluate a run; returns a more3s.report.EvalReport (not yet saved).

    ``sample``: draw discrete actions from the policy's softmax (DT's Atari protocol; seeded); default greedy.
    ``video``: record the first N episodes of every target (over the seeds in order) under ``run_dir/videos``.
    """
    from more3s.encoder import load_encoder
    from more3s.envs import SCORE_REFS, get_task, make_vector_env, normalized_score
    from more3s.report import BehaviourStats, EvalReport, TargetResult
    from more3s.rollout.engine import ENGINE_MODES, RolloutEngine
    from more3s.train import resolve_device
    from more3s.video import VIDEO_DIR, prune_videos, render_kwargs

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if engine not in ENGINE_MODES:
        raise ValueError(f"engine {engine!r}: expected one of {ENGINE_MODES}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1 (or None for full games), got {max_episode_steps}")
    if not seeds:
        raise ValueError("seeds: give at least one evaluation seed")
    if isinstance(video, bool) or not isinstance(video, int) or video < 0:
        raise ValueError(f"video must be an integer >= 0 (episodes to record per target), got {video!r}")
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model, info, ckpt = load_run_model(run_dir, dev, checkpoint)
    task = get_task(info["task"])
    given = tuple(float(t) for t in targets)
    targets = given or tuple(float(t) for t in info["targets"])
    targets_source = (info.get("targets_source", "") if not given or given == tuple(info["targets"])
                      else "given on the command line")
    if encoder is None:
        encoder = load_encoder(info["encoder"], device=dev)
    want = info.get("encoder_fingerprint")
    if want and encoder.fingerprint != want:
        raise ValueError(f"encoder {encoder.name!r} has weights fingerprint {encoder.fingerprint[:12]}..., "
                         f"but run {run_dir} was trained on embeddings of {want[:12]}... (different weights)")
    eng = RolloutEngine(model, encoder, task, mode=engine, sample=sample)
    rank, world = _rank_world()
    total_envs = min(num_envs * world, episodes)  # envs over all processes; each plays its quota of episodes
    lo, hi = (int(x) for x in np.linspace(0, total_envs, world + 1).round().astype(int)[rank:rank + 2])
    played, t0, env_steps = [], time.perf_counter(), 0  # played: (target#, seed#, env, ordinal, ret, train, len)
    videos: list[dict] = []
    notes: set[str] = set()
    for ti, target in enumerate(targets):
        for si, seed in enumerate(seeds):
            if hi == lo:  # more processes than environments: this one has none
                continue
            rec = _recorder(run_dir, task, info, eng.model, target, seed, total_envs,
                            count=min(max(video - si * episodes, 0), episodes))
            venv = make_vector_env(task, hi - lo, max_episode_steps=max_episode_steps,
                                   **(render_kwargs(task) if rec is not None else {}))
            try:
                res = eng.run(venv, target, episodes, seed=int(seed), first_env=lo, total_envs=total_envs,
                              recorder=rec)
            finally:
                venv.close()
                if rec is not None:
                    rec.close()
                    videos += rec.entries
                    notes.add(rec.note)
            ordinal: dict[int, int] = {}
            for env, ret, tr, n in zip(res.env_index, res.returns, res.train_returns, res.lengths):
                ordinal[env] = ordinal.get(env, -1) + 1
                played.append((ti, si, env, ordinal[env], ret, tr, n))
            env_steps += res.env_steps
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (played, env_steps, videos, notes))
        played = [p for part, *_ in gathered for p in part]
        env_steps = sum(g[1] for g in gathered)
        videos = [v for g in gathered for v in g[2]]
        notes = set().union(*(g[3] for g in gathered))
    if video and rank == 0:
        videos.sort(key=lambda v: (v["target"], v["seed"], v["episode"]))
        prune_videos(Path(run_dir) / VIDEO_DIR, videos)  # every process has written its videos by now
    played.sort()  # by target, seed, environment, then each environment's episode order: same for any split
    results = []
    for ti, target in enumerate(targets):
        mine = [p for p in played if p[0] == ti]
        rets, trains, lens = [p[4] for p in mine], [p[5] for p in mine], [p[6] for p in mine]
        norm = np.asarray(normalized_score(task.name, rets), dtype=np.float64).reshape(-1)
        results.append(TargetResult(target=target, returns=rets, normalized=norm.tolist(),
                                    lengths=lens, train_returns=trains))
        if rank == 0:
            print(f"target {target:g}: normalized {np.mean(norm):.1f} ± {np.std(norm):.1f} "
                  f"(raw {np.mean(rets):.1f}) over {len(rets)} episodes", file=sys.stderr)
    wall = time.perf_counter() - t0
    behaviour = BehaviourStats(**info["behaviour"]) if info.get("behaviour") else None
    return EvalReport(
        task=task.name, checkpoint=str(ckpt.path), step=ckpt.step, engine=engine,
        episodes_per_target=episodes * len(seeds), max_episode_steps=max_episode_steps,
        actions="sampled" if sample and task.action_kind == "discrete" else "greedy",
        seeds=[int(s) for s in seeds], targets=results, behaviour=behaviour,
        score_source=SCORE_REFS[task.name].source,
        targets_source=targets_source,
        wall_s=wall, steps_per_s=env_steps / wall if wall > 0 else 0.0, processes=world,
        videos=videos, video_note=" ".join(sorted(n for n in notes if n)),
    )


def _recorder(run_dir, task, info: dict, model, target: float, seed: int, total_envs: int, count: int):
    """The video recorder of one (target, seed) run, or None when it records nothing."""
    if count == 0:
        return None
    from more3s.envs import action_prompts
    from more3s.video import VIDEO_DIR, EpisodeRecorder, decision_scores

    prompt_set = info.get("prompt_set", "original")
    return EpisodeRecorder(Path(run_dir) / VIDEO_DIR, task, action_prompts(task.name, prompt_set), target=target,
                           seed=int(seed), total_envs=total_envs, count=count, scores=decision_scores(model),
                           prompt_set=prompt_set)


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialized torch.distributed group (torchrun), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def finish_report(run_dir: str | Path, report, plot: bool = True) -> str:
    """Save eval.json, print the table (stdout) and write report.png (with frames of the best recorded episode
    when there are videos); returns the table."""
    from more3s.report import format_table, plot_report, read_metrics, save_report
    from more3s.video import VIDEO_DIR, best_episode_strip

    run_dir = Path(run_dir)
    save_report(report, run_dir / "eval.json")
    table = format_table(report)
    print(table, flush=True)
    if report.videos:
        print(f"videos: {len(report.videos)} episodes under {run_dir / VIDEO_DIR}", flush=True)
    if report.video_note:
        print(f"videos: {report.video_note}", flush=True)
    if plot:
        try:
            strip = best_episode_strip(run_dir / VIDEO_DIR, report.videos)
        except (OSError, ValueError, KeyError) as e:  # a video moved or damaged since: the plot goes on without it
            print(f"report.png: no frame strip, the best episode's video could not be read ({e})", flush=True)
            strip = None
        png = plot_report(run_dir / "report.png", read_metrics(run_dir / "metrics.csv"), report,
                          title=run_dir.name, strip=strip)
        print(f"plot: {png}", flush=True)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    from more3s.checkpoint import CorruptCheckpointError

    from more3s.distributed import setup_distributed

    from more3s.video import expand_bare_flag

    cfg = tyro.cli(EvalConfig, args=expand_bare_flag(sys.argv[1:] if argv is None else argv, "--video", "1"))
    try:
        dist, device = setup_distributed(cfg.device)  # one process, or one per torchrun rank
    except ValueError as e:
        print(f"error: --device: {e}", file=sys.stderr)
        return 2
    try:
        report = evaluate_run(cfg.run, episodes=cfg.episodes, targets=cfg.targets, seeds=cfg.seeds,
                              engine=cfg.engine, max_episode_steps=cfg.max_episode_steps,
                              num_envs=cfg.num_envs, device=device, checkpoint=cfg.checkpoint,
                              sample=cfg.sample, video=cfg.video)
    except (ValueError, FileNotFoundError, CorruptCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if dist.main:
        finish_report(cfg.run, report, plot=cfg.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
