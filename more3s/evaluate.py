"""``python -m more3s.evaluate --run DIR``: evaluate a run's checkpoint in vectorised environments.

Loads the run's newest intact checkpoint (or ``--checkpoint``) with the model config it carries
(more3s.run.load_run_model), the encoder the run was trained with (run.json), and plays RTG-conditioned episodes with the rollout engine
(more3s.rollout.engine; the ring-buffer engine by default, ``--engine banded`` for its exact
oracle, ``--engine window`` for the cache-less DT-style baseline). For each RTG target it reports the
normalized score (more3s.envs.normalized_score on RAW returns) as mean ± std over episodes, how many
distinct trajectories those episodes are, next to the dataset's behaviour returns, and which checkpoint was
evaluated.

Protocol (as Decision Transformer): Atari actions are *sampled* from the policy's softmax (seeded),
up to 30 random no-ops, full games unless a cap applies; greedy episodes from the same seeds are reported beside
(``--no-greedy`` skips them). MuJoCo actions are deterministic. The episode cap follows the run's dataset
(run.json): the collection cap more3s recorded for datasets it collected, none for any other dataset;
``--max-episode-steps N`` or ``full`` overrides it. Targets default to the run's (run.json), each evaluated once.
The model step runs in ``--dtype`` (auto: bf16 on a GPU, fp32 on the CPU); an encoder whose dtype differs from
the one the training cache was encoded with is used with a warning naming both. Writes eval.json and report.png
into the run directory; ``--video N`` also records the first N episodes of every target (the protocol's actions)
as videos under ``videos/`` (more3s.video) and puts frames of the best of them into report.png.

``torchrun --nproc_per_node N -m more3s.evaluate --run-dir DIR ...`` splits the environments over N processes (one GPU each,
or CPU processes with gloo): the shards play exactly the episodes one process with N x --num-envs environments
plays (same seeds and per-environment quotas), and rank 0 gathers them and writes the report.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import torch
import tyro

from more3s.checkpoint import CorruptCheckpointError
from more3s.config import EVAL_DTYPES, EvalDtypeChoice
from more3s.rollout.engine import EngineMode
from more3s.distributed import rank_and_world, resolve_device, setup_distributed
from more3s.encoder import load_encoder
from more3s.encoder.raw import RAW_ENCODER, RawObservations
from more3s.envs import SCORE_REFS, TaskSpec, action_prompts, get_task, make_vector_env, normalized_score
from more3s.model import MoreModel
from more3s.report import (EvalReport, TargetResult, format_table, plot_report, read_metrics, save_report,
                           unique_targets)
from more3s.rollout.engine import ENGINE_MODES, RolloutEngine, check_temperature
from more3s.run import RunInfo, RunPaths, load_run_model
from more3s.video import (EpisodeRecorder, best_episode_strip, decision_scores, expand_bare_flag, prune_videos,
                          render_kwargs)

__all__ = ["EvalConfig", "evaluate_run", "evaluate_model", "resolve_eval_dtype", "resolve_cap", "finish_report",
           "main"]

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # EVAL_DTYPES but auto


@dataclass
class EvalConfig:
    """Evaluate a training run."""

    run: Annotated[Path, tyro.conf.arg(aliases=("--run-dir",))]
    """The run directory (holds config.json, run.json, checkpoints/). Under torchrun spell it --run-dir:
    torchrun's own parser takes --run for an abbreviation of its --run-path."""
    episodes: int = 10
    """Episodes per RTG target and seed (DT: 10 for Atari)."""
    targets: tuple[float, ...] = ()
    """RTG targets; empty = the run's (run.json). Each distinct target is evaluated once."""
    seeds: tuple[int, ...] = (1000,)
    """Environment seeds (env i of the vector gets seed + i); episodes run per seed and target."""
    engine: EngineMode = "ring"
    """ring = KV-cache engine; banded = its exact oracle (forward_banded); window = cache-less DT-style baseline."""
    compile_step: bool = False
    """CPU ring engine: run the model step as one torch.compile'd graph (the same decisions, fewer microseconds
    per step after a one-off compile of tens of seconds; worth it for long evaluations)."""
    max_episode_steps: int | Literal["run", "full"] = "run"
    """Cap on agent steps per episode: run = the run's (from its dataset: the recorded collection cap for datasets
    more3s collected, none for others); full = the task's full protocol; N >= 1 = a cap of N steps."""
    num_envs: int = 8
    """Vectorised environments per process (at most --episodes in all are used)."""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    dtype: EvalDtypeChoice = "auto"
    """dtype of the rollout model step: auto = bf16 on a GPU, fp32 on the CPU (fp16 needs a GPU)."""
    checkpoint: Path | None = None
    """A specific checkpoint directory; default: the run's newest intact one."""
    plot: bool = True
    sample: bool = True
    """Sample discrete actions from the policy's softmax (DT's Atari protocol); --no-sample: greedy only."""
    greedy: bool = True
    """When sampling, also play greedy episodes from the same seeds and report them beside."""
    temperature: float = 1.0
    """Softmax temperature of the sampled actions. 1 is DT's protocol; any other value is a diagnostic (how the
    same weights play when they hedge less or more), and the report says so."""
    video: int = 0
    """Record the first N episodes of every RTG target as MP4 (GIF without ffmpeg) under the run's videos/,
    each frame with the step, RTG, reward and the chosen action's sentence; a bare --video means 1."""


def resolve_eval_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The rollout step's dtype: auto = bf16 on CUDA, fp32 on the CPU; ValueError for one the device cannot run."""
    dev = torch.device(device)
    if name == "auto":
        name = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else \
            "fp16" if dev.type == "cuda" else "fp32"
    if name not in _TORCH_DTYPES:
        raise ValueError(f"eval dtype {name!r}: expected one of {', '.join(EVAL_DTYPES)}")
    if dev.type == "cpu" and name == "fp16":
        raise ValueError("eval dtype 'fp16' needs a CUDA device (the CPU rollout runs fp32 or bf16)")
    if dev.type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"eval dtype 'bf16' is not supported by {torch.cuda.get_device_name(dev)}; use fp16 or fp32")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"eval dtype: device {dev} is neither cpu nor cuda")
    return _TORCH_DTYPES[name]


def resolve_cap(max_episode_steps: int | str | None, info: RunInfo) -> tuple[int | None, str]:
    """(cap in agent steps or None for the full protocol, where it came from) for ``max_episode_steps`` =
    'run' (run.json's, which follows the dataset's provenance), 'full' / None, or a cap N >= 1."""
    if max_episode_steps == "run":
        return info.eval_max_episode_steps, info.eval_cap_source
    if max_episode_steps in ("full", None):
        return None, "the full protocol was asked for"
    if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be an integer >= 1, 'run' or 'full', got {max_episode_steps!r}")
    return int(max_episode_steps), "the cap was given on the command line / config"


_WARNED_DTYPES: set[tuple[str, str]] = set()


def _check_encoder_dtype(encoder: Any, info: RunInfo) -> None:
    """Warn once per (cache dtype, evaluation dtype) pair when the evaluation encoder computes in another dtype
    than the one the training cache was encoded with (e.g. an fp32 CPU cache evaluated with fp16 on a GPU)."""
    want = info.encoder_dtype
    have = str(encoder.dtype).removeprefix("torch.")
    if want and want != have and (want, have) not in _WARNED_DTYPES:
        _WARNED_DTYPES.add((want, have))
        warnings.warn(f"the training embedding cache was encoded in {want}, this evaluation encodes states in "
                      f"{have}: the model sees slightly different inputs than it trained on", RuntimeWarning,
                      stacklevel=3)


def _cast(model: MoreModel, dtype: torch.dtype) -> MoreModel:
    """The model for rollouts in ``dtype`` (a copy when that differs: the caller's model is left as it is); the
    action table and state statistics stay fp32, as the model reads them in fp32."""
    if model.param_dtype == dtype:
        return model
    out = copy.deepcopy(model).to(dtype)
    for name in ("action_table", "state_mean", "state_std"):
        setattr(out, name, getattr(model, name).detach().float().clone())
    return out.eval()


def evaluate_run(run_dir: str | Path, *, episodes: int = 10, targets: Sequence[float] = (),
                 seeds: Sequence[int] = (1000,), engine: str = "ring",
                 max_episode_steps: int | str | None = "run", num_envs: int = 8,
                 device: torch.device | str = "auto", checkpoint: str | Path | None = None, encoder: Any = None,
                 sample: bool = True, greedy: bool = True, dtype: str = "auto", video: int = 0,
                 compile_step: bool = False, temperature: float = 1.0) -> EvalReport:
    """Evaluate a run's checkpoint; returns a more3s.report.EvalReport (not yet saved). See evaluate_model.

    ``video``: record the first N episodes of every target (over the seeds in order) under ``run_dir/videos``.
    """
    if isinstance(video, bool) or not isinstance(video, int) or video < 0:
        raise ValueError(f"video must be an integer >= 0 (episodes to record per target), got {video!r}")
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    step_dtype = resolve_eval_dtype(dtype, dev)  # bad dtype: an error before anything loads
    model, info, ckpt = load_run_model(run_dir, dev, checkpoint)
    if encoder is None:
        encoder = (RawObservations(info.task) if info.encoder == RAW_ENCODER
                   else load_encoder(info.encoder, device=dev))
    info.check_encoder(encoder, run_dir)
    return evaluate_model(model, info, encoder, checkpoint=str(ckpt.path), step=ckpt.step, episodes=episodes,
                          targets=targets, seeds=seeds, engine=engine, max_episode_steps=max_episode_steps,
                          num_envs=num_envs, sample=sample, greedy=greedy, dtype=step_dtype,
                          video=video, run_dir=run_dir, compile_step=compile_step, temperature=temperature)


@dataclass
class _Plan:
    """Who plays what: the protocol's modes and targets, and this process's share of the environments."""

    task: TaskSpec
    targets: tuple[float, ...]
    modes: list[str]  # "sampled" and/or "greedy"; the first is the protocol's
    episodes: int
    seeds: Sequence[int]
    cap: int | None
    lo: int  # this process plays environments lo .. hi-1 of total_envs
    hi: int
    total_envs: int
    video: int
    run_dir: Path | None
    prompt_set: str
    temperature: float  # of the sampled actions' softmax


# One played episode: (mode#, target#, seed#, env, the env's episode ordinal, return, train return, length, digest)
_Played = tuple[int, int, int, int, int, float, float, int, str]


def _check_args(episodes: int, num_envs: int, engine: str, seeds: Sequence[int], video: int,
                run_dir: str | Path | None, compile_step: bool = False, temperature: float = 1.0) -> None:
    check_temperature(temperature)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if engine not in ENGINE_MODES:
        raise ValueError(f"engine {engine!r}: expected one of {ENGINE_MODES}")
    if compile_step and engine != "ring":
        raise ValueError(f"compile_step: compiles the ring engine's step; engine {engine!r} has none")
    if not seeds:
        raise ValueError("seeds: give at least one evaluation seed")
    if video and run_dir is None:
        raise ValueError("video: recording needs the run directory (run_dir=) to write videos/ into")


def evaluate_model(model: MoreModel, info: RunInfo, encoder: Any, *, checkpoint: str, step: int,
                   episodes: int = 10, targets: Sequence[float] = (), seeds: Sequence[int] = (1000,),
                   engine: str = "ring", max_episode_steps: int | str | None = "run", num_envs: int = 8,
                   sample: bool = True, greedy: bool = True, dtype: torch.dtype | None = None, video: int = 0,
                   run_dir: str | Path | None = None, compile_step: bool = False,
                   temperature: float = 1.0) -> EvalReport:
    """Play the episodes of every (target, seed) with ``model`` (its weights as they are: the trainer's
    --eval-every passes its live model) and return an EvalReport.

    ``info``: the run's RunInfo (task, targets, behaviour, evaluation cap). ``sample``: discrete actions
    drawn from the softmax (seeded) and, with ``greedy``, greedy episodes from the same seeds beside them;
    continuous actions are deterministic. Every target is played once, whatever the duplicates in ``targets``;
    a policy that does not read RTG (``rtg_mode="none"``) plays only the first.
    ``video``: record the first N episodes of every target in the protocol's actions under ``run_dir/videos``.
    ``temperature``: of the sampled softmax; 1 is DT's protocol, any other value a diagnostic the report names.
    """
    _check_args(episodes, num_envs, engine, seeds, video, run_dir, compile_step, temperature)
    cap, cap_source = resolve_cap(max_episode_steps, info)
    task = get_task(info.task)
    given = unique_targets(targets)
    run_targets = unique_targets(info.targets)
    own = len(unique_targets((*run_targets, *given))) == len(run_targets)  # the run's targets, or some of them
    targets_source = info.targets_source if own else "given on the command line"
    play_targets = given or run_targets
    if model.config.rtg_mode == "none" and len(play_targets) > 1:
        # Behaviour cloning never reads the target: from the same seeds every other target replays the first's
        # episodes (the same trajectories), so they are not played.
        targets_source += (f"; the policy does not read RTG (rtg_mode=none): only {play_targets[0]:g} is played, "
                           f"{', '.join(f'{t:g}' for t in play_targets[1:])} would replay its episodes")
        play_targets = play_targets[:1]
    _check_encoder_dtype(encoder, info)
    dtype = dtype or model.param_dtype
    was_training = model.training
    step_model = _cast(model, dtype)
    discrete = task.action_kind == "discrete"
    modes = (["sampled", "greedy"] if greedy else ["sampled"]) if sample and discrete else ["greedy"]
    if temperature != 1 and modes[0] != "sampled":
        raise ValueError(f"temperature={temperature:g} shapes sampled discrete actions; this evaluation plays "
                         f"{'continuous' if not discrete else 'greedy'} ones only")
    rank, world = rank_and_world()
    total_envs = min(num_envs * world, episodes)  # envs over all processes; each plays its quota of episodes
    lo, hi = (int(x) for x in np.linspace(0, total_envs, world + 1).round().astype(int)[rank:rank + 2])
    plan = _Plan(task=task, targets=play_targets, modes=modes, episodes=episodes, seeds=seeds, cap=cap,
                 lo=lo, hi=hi, total_envs=total_envs, video=video, run_dir=Path(run_dir) if run_dir else None,
                 prompt_set=info.prompt_set, temperature=float(temperature))
    t0 = time.perf_counter()
    played, env_steps, videos, notes = _play(plan, step_model, encoder, engine, compile_step)
    model.train(was_training)  # the engine set eval mode; the trainer's model goes back to training
    if world > 1:
        played, env_steps, videos, notes = _gather(world, played, env_steps, videos, notes)
    if plan.run_dir is not None and video and rank == 0:
        videos.sort(key=lambda v: (v["target"], v["seed"], v["episode"]))
        prune_videos(RunPaths(plan.run_dir).videos, videos)  # every process has written its videos by now
    rows = _results(plan, played, rank)
    wall = time.perf_counter() - t0
    return EvalReport(
        task=task.name, checkpoint=checkpoint, step=int(step), engine=engine,
        episodes_per_target=episodes * len(seeds), max_episode_steps=cap, actions=modes[0],
        seeds=[int(s) for s in seeds], targets=rows[modes[0]], behaviour=info.behaviour,
        score_source=SCORE_REFS[task.name].source, targets_source=targets_source,
        wall_s=wall, steps_per_s=env_steps / wall if wall > 0 else 0.0, processes=world,
        greedy=rows["greedy"] if modes[0] != "greedy" and "greedy" in rows else [],
        cap_source=cap_source, dtype=str(dtype).removeprefix("torch."), dataset=_dataset_line(info),
        videos=videos, video_note=" ".join(sorted(n for n in notes if n)), reads_rtg=model.config.rtg_mode != "none",
        temperature=float(temperature),
    )


def _play(plan: _Plan, model: MoreModel, encoder: Any, engine: str,
          compile_step: bool) -> tuple[list[_Played], int, list[dict[str, Any]], set[str]]:
    """This process's episodes of every (mode, target, seed): (played, env steps, videos, video notes)."""
    mode_: Any = engine  # one of ENGINE_MODES (checked by _check_args)
    engine_ = RolloutEngine(model, encoder, plan.task, mode=mode_, compile_step=compile_step,
                            temperature=plan.temperature)
    engines = {m: engine_.sampling(m == "sampled") for m in plan.modes}
    played: list[_Played] = []
    env_steps = 0
    videos: list[dict[str, Any]] = []
    notes: set[str] = set()
    for mi, mode in enumerate(plan.modes):
        for ti, target in enumerate(plan.targets):
            for si, seed in enumerate(plan.seeds):
                if plan.hi == plan.lo:  # more processes than environments: this one has none
                    continue
                # protocol episodes only
                count = min(max(plan.video - si * plan.episodes, 0), plan.episodes) if mi == 0 else 0
                rec = _recorder(plan, model, target, seed, count)
                venv = make_vector_env(plan.task, plan.hi - plan.lo, max_episode_steps=plan.cap,
                                       **(render_kwargs(plan.task) if rec is not None else {}))
                try:
                    res = engines[mode].run(venv, target, plan.episodes, seed=int(seed), first_env=plan.lo,
                                            total_envs=plan.total_envs, recorder=rec)
                finally:
                    venv.close()
                    if rec is not None:
                        rec.close()
                        videos += rec.entries
                        notes.add(rec.note)
                ordinal: dict[int, int] = {}
                for env, ret, tr, n, dg in zip(res.env_index, res.returns, res.train_returns, res.lengths,
                                               res.digests):
                    ordinal[env] = ordinal.get(env, -1) + 1
                    played.append((mi, ti, si, env, ordinal[env], ret, tr, n, dg))
                env_steps += res.env_steps
    return played, env_steps, videos, notes


def _gather(world: int, played: list[_Played], env_steps: int, videos: list[dict[str, Any]],
            notes: set[str]) -> tuple[list[_Played], int, list[dict[str, Any]], set[str]]:
    """Every process's episodes, videos and notes, on every process."""
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (played, env_steps, videos, notes))
    # A rank may return from the gather while its own part is still in flight to a peer; the barrier keeps every
    # rank's connections up until all have received everything, so no rank tears them down (destroy_process_group,
    # exit) under a peer's transfer.
    torch.distributed.barrier()
    return ([p for part, *_ in gathered for p in part], sum(g[1] for g in gathered),
            [v for g in gathered for v in g[2]], set().union(*(g[3] for g in gathered)))


def _results(plan: _Plan, played: list[_Played], rank: int) -> dict[str, list[TargetResult]]:
    """The TargetResults of every mode (printed by rank 0), in an order that does not depend on the split."""
    played = sorted(played)  # by mode, target, seed, environment, then each environment's episode order
    rows: dict[str, list[TargetResult]] = {m: [] for m in plan.modes}
    for mi, mode in enumerate(plan.modes):
        for ti, target in enumerate(plan.targets):
            mine = [p for p in played if p[0] == mi and p[1] == ti]
            rets = [p[5] for p in mine]
            trains = [p[6] for p in mine]
            lens = [p[7] for p in mine]
            digests = [p[8] for p in mine]
            norm = np.asarray(normalized_score(plan.task.name, rets), dtype=np.float64).reshape(-1)
            rows[mode].append(TargetResult(target=target, returns=rets, normalized=norm.tolist(), lengths=lens,
                                           train_returns=trains, actions=mode, trajectory_digests=digests,
                                           distinct_trajectories=len(set(digests))))
            if rank == 0:
                print(f"target {target:g} ({mode}): normalized {np.mean(norm):.1f} ± {np.std(norm):.1f} "
                      f"(raw {np.mean(rets):.1f}) over {len(rets)} episodes, {len(set(digests))} distinct",
                      file=sys.stderr)
    return rows


def _recorder(plan: _Plan, model: MoreModel, target: float, seed: int, count: int) -> EpisodeRecorder | None:
    """The video recorder of one (target, seed) run, or None when it records nothing."""
    if count == 0 or plan.run_dir is None:
        return None
    return EpisodeRecorder(RunPaths(plan.run_dir).videos, plan.task, action_prompts(plan.task.name, plan.prompt_set),
                           target=target, seed=int(seed), total_envs=plan.total_envs, count=count,
                           scores=decision_scores(model), prompt_set=plan.prompt_set)


def _dataset_line(info: RunInfo) -> str:
    """The training dataset and who collected it (run.json's provenance), for the report."""
    p = info.provenance
    if p is None:
        return f"{info.dataset}, not collected by more3s"
    cap = f"episodes capped at {p['max_episode_steps']} steps" if p.get("max_episode_steps") else "no episode cap"
    return (f"{info.dataset}, collected by more3s {p.get('version', '(version not recorded)')} (policy "
            f"{p.get('policy')!r}, seed {p.get('seed')}, {cap})")


def finish_report(run_dir: str | Path, report: EvalReport, plot: bool = True) -> str:
    """Save eval.json, print the table (stdout) and write report.png (with frames of the best recorded episode
    when there are videos); returns the table."""
    paths = RunPaths(Path(run_dir))
    save_report(report, paths.eval_json)
    table = format_table(report)
    print(table, flush=True)
    if report.videos:
        print(f"videos: {len(report.videos)} episodes under {paths.videos}", flush=True)
    if report.video_note:
        print(f"videos: {report.video_note}", flush=True)
    if plot:
        try:
            strip = best_episode_strip(paths.videos, report.videos)
        except (OSError, ValueError, KeyError) as e:  # a video moved or damaged since: the plot goes on without it
            print(f"report.png: no frame strip, the best episode's video could not be read ({e})", flush=True)
            strip = None
        png = plot_report(paths.report_png, read_metrics(paths.metrics), report, title=paths.root.name, strip=strip)
        print(f"plot: {png}", flush=True)
    return table


def main(argv: Sequence[str] | None = None) -> int:
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
                              sample=cfg.sample, greedy=cfg.greedy, dtype=cfg.dtype, video=cfg.video,
                              compile_step=cfg.compile_step, temperature=cfg.temperature)
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
