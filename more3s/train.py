"""``python -m more3s.train``: train MORE-3S (or the DT / BC baselines) end to end.

With no arguments this runs the embedded default of more3s.config (Breakout, collected
mixed-quality data, lxmert-tiny / dt-small on CPU) offline on a 2-core CPU in about 15 minutes:
collect the dataset if missing -> build or reuse the embedding cache -> train -> evaluate -> print
the final table and write ``report.png``. ``torchrun --nproc_per_node N -m more3s.train ...`` trains
with DDP (gloo on CPU, nccl on GPU); rank 0 collects the dataset, logs, checkpoints and writes the report,
all ranks build the embedding cache together (more3s.encoder.cache shards it), train on differently
seeded samplers and share the final evaluation's environments (more3s.evaluate).

The trainer is its phases, in order: set-up (the run directory), data (dataset, embedding cache, what the run
resolves from them), build (model, optimizer, sampler), resume, the loop, and the final evaluation. The frozen
encoder never runs during training: batches are gathered from the memory-mapped embedding cache by the
samplers' indices (more3s.data.batches). With ``memory_steps > 0`` the stream sampler walks episodes in
consecutive windows and the model's detached Memory is carried from one batch to the next (cleared by the model
where a window starts an episode); it is checkpointed with the sampler so that a resumed run continues exactly.

The run directory and what run.json records are more3s.run's; curves go to metrics.csv (more3s.metrics).

Timesteps: the learned timestep table has one row per timestep that training sees (0 .. the longest training
episode's last step, or the task's episode limit when the data reaches it); evaluation timesteps past it map to
the last row (DT clamps to ``max_ep_len`` alike), so no untrained row is ever read.

Resume: ``python -m more3s.train --resume DIR [overrides]`` loads DIR/config.json and the newest
intact checkpoint; on CPU the resumed run's losses equal an uninterrupted run's exactly (same
sampler state, RNG states, optimizer, scheduler and memory). A non-finite loss or gradient stops the
run with NonFiniteLossError before the optimizer step, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from more3s.atomic import atomic_write_text
from more3s.checkpoint import list_checkpoints, load_latest, save_checkpoint
from more3s.config import TrainConfig, config_to_dict, model_config, parse_args, resolve_backbone, save_config
from more3s.data import (StreamSampler, WindowSampler, collect_dataset, dataset_path, dataset_provenance,
                         load_episodes, published_reason, training_episode_indices)
from more3s.data.batches import TrainData
from more3s.distributed import DistInfo, resolve_device, setup_distributed, torch_threads
from more3s.encoder import CacheConfig, build_or_load_cache, load_encoder, resolve_encoder
from more3s.encoder.raw import ATARI_FRAME_SIZE, RAW_ENCODER, RawObservations
from more3s.envs import TaskSpec, get_task
from more3s.host import machine
from more3s.evaluate import evaluate_model, evaluate_run, finish_report, resolve_eval_dtype
from more3s.metrics import MetricsLog
from more3s.model import Memory, ModelOutput, MoreModel, build_model
from more3s.report import behaviour_stats, summary_dict
from more3s.run import RunInfo, RunPaths, default_targets, eval_cap, new_run_dir, timestep_table

__all__ = [
    "NonFiniteLossError", "train", "main", "ensure_dataset", "local_dataset_exists", "seed_everything",
    "capture_rng", "restore_rng", "lr_factor", "make_optimizer", "train_step", "log",
]


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stopped before the optimizer step."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ==================================================================================================
# seeding and RNG state
# ==================================================================================================
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _broadcast(obj: Any, dist: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ==================================================================================================
# the dataset
# ==================================================================================================
def local_dataset_exists(dataset: str) -> bool:
    """Whether ``dataset`` (a path or a local Minari id) is here already."""
    if Path(dataset).exists():
        return True
    try:
        d = dataset_path(dataset)
    except ValueError:
        return False
    return d.is_dir() and any(d.rglob("metadata.json"))


def ensure_dataset(cfg: TrainConfig, dist: DistInfo) -> None:
    """Collect ``cfg.dataset`` (rank 0) when it is a missing local Minari id and collection is on.

    Never under a published id (more3s.data.published_reason): that one must be downloaded, and loading it
    fails with the download instructions, as with --no-collect-if-missing."""
    if local_dataset_exists(cfg.dataset) or not cfg.collect_if_missing:
        return
    if Path(cfg.dataset).suffix or os.sep in cfg.dataset.strip("/").split("/", 1)[0]:
        return  # a path, not an id: load_episodes reports it missing
    if dist.main:
        why = published_reason(cfg.dataset)
        if why:
            log(f"dataset {cfg.dataset!r} is not here and more3s does not collect it: {why}")
            dist.barrier()
            return
        log(f"dataset {cfg.dataset!r} not found locally: collecting {cfg.collect_episodes} "
            f"{cfg.env} episodes with the {cfg.collect_policy!r} policy "
            f"(<= {cfg.collect_max_episode_steps} steps each)")
        t0 = time.time()
        collect_dataset(cfg.env, cfg.collect_policy, cfg.collect_episodes, cfg.dataset,
                        seed=cfg.seed, max_episode_steps=cfg.collect_max_episode_steps)
        log(f"collected {cfg.dataset!r} in {time.time() - t0:.1f} s")
    dist.barrier()


# ==================================================================================================
# optimisation
# ==================================================================================================
def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings (GPT-2 / DT / nanoGPT practice)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "emb" not in name and "wte" not in name and "wpe" not in name
         else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], memory: Memory | None,
               autocast_ctx: AbstractContextManager[Any]) -> ModelOutput:
    """Forward + loss for one batch; returns the ModelOutput (its .loss drives backward)."""
    with autocast_ctx:
        out: ModelOutput = model(batch["states"], batch["prev_actions"], batch["rtg"], batch["timesteps"],
                                 first=batch["first"], mask=batch["mask"], memory=memory, actions=batch["actions"])
    return out


# ==================================================================================================
# the phases
# ==================================================================================================
@dataclass
class _Data:
    """What the data phase hands on: the batches, the encoder (for --eval-every) and what the run resolved."""

    data: TrainData
    encoder: Any  # a FrozenLxmert or RawObservations; None once training no longer needs it
    frame_stack: int
    d_enc: int
    action_table: torch.Tensor
    info: dict[str, Any]  # the RunInfo fields the data decides


@dataclass
class _Training:
    """Everything the loop advances, and what a checkpoint saves of it."""

    model: MoreModel
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: WindowSampler | StreamSampler
    memory: Memory | None
    step: int = 0


def _set_up(cfg: TrainConfig, dist: DistInfo) -> RunPaths:
    """The run directory (new, or the one being resumed) with the config saved in it; seeds every RNG."""
    if cfg.resume is not None:
        root = Path(cfg.resume)
        if not RunPaths(root).config_json.is_file():
            raise FileNotFoundError(f"--resume {root}: not a run directory (no config.json)")
    else:
        fresh = new_run_dir(cfg.run_dir, cfg.out_dir, cfg.name) if dist.main else None
        root = Path(_broadcast(str(fresh) if fresh else None, dist))
    if dist.main:
        root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, root)
        log(f"run directory: {root}")
    seed_everything(cfg.seed + dist.rank)
    return RunPaths(root)


def _load_data(cfg: TrainConfig, dist: DistInfo, device: torch.device, task: TaskSpec) -> _Data:
    """Episodes -> embedding cache -> TrainData, and what the run resolves from the data (targets, caps...)."""
    ensure_dataset(cfg, dist)
    # Lazy: hdf5 frames stay on disk (a full Atari dataset is tens of GB); the cache reads them only to encode.
    episodes = load_episodes(cfg.dataset, task=task.name, max_episodes=cfg.max_episodes, lazy=True)
    nonempty = [ep for ep in episodes if len(ep) > 0]
    if not nonempty:
        raise ValueError(f"dataset {cfg.dataset!r} has no non-empty episodes")
    # The report compares with the whole data (its statistics and targets) even when training sees its best part.
    stats = behaviour_stats(task.name, [ep.raw_return for ep in nonempty], [ep.train_return for ep in nonempty])
    episodes = [episodes[i] for i in training_episode_indices(episodes, cfg.top_percent)]
    if cfg.top_percent < 100 and dist.main:
        log(f"top_percent={cfg.top_percent:g}: training on the best {len(episodes)} of {len(nonempty)} episodes by "
            f"raw return ({sum(len(ep) for ep in episodes)} steps, returns >= "
            f"{min(ep.raw_return for ep in episodes):g})")
    encoder_name = _broadcast(resolve_encoder(cfg.encoder) if dist.main else None, dist)
    t0 = time.time()
    encoder: Any
    if encoder_name == RAW_ENCODER:  # DT's own inputs: cheap per-step features, computed here, never cached
        encoder = RawObservations(task)
        cache = encoder.build(episodes, progress=cfg.progress and dist.main)
    else:
        encoder = load_encoder(encoder_name, device=device)
        # Every rank calls the builder (it shards the encoding across torchrun processes).
        with torch_threads(cfg.encoder_threads):
            cache = build_or_load_cache(episodes, encoder, task.name, cfg.prompt_set, cache_dir=cfg.cache_dir,
                                        config=CacheConfig(progress=cfg.progress))
    if dist.main:
        log(f"state inputs {'reused' if cache.hit else 'computed'} in {time.time() - t0:.1f} s: "
            f"{cache.states.shape[0]} states x {cache.states.shape[1]} ({encoder.describe()}) at {cache.path}")
    frame_stack = getattr(encoder, "frame_stack", 1)
    data = TrainData(episodes, cache, device, frame_stack=frame_stack)
    provenance = dataset_provenance(cfg.dataset)
    targets, targets_source = default_targets(cfg.eval_targets, task, stats, provenance)
    cap, cap_source = eval_cap(provenance)
    max_timestep, timestep_source = timestep_table(data.lengths, task)
    info = dict(task=task.name, dataset=cfg.dataset, provenance=provenance, episodes=len(episodes),
                steps_in_data=int(data.lengths.sum()), encoder=encoder_name, encoder_fingerprint=encoder.fingerprint,
                encoder_dtype=str(encoder.dtype).removeprefix("torch."), prompt_set=cfg.prompt_set,
                cache_path=str(cache.path), max_timestep=max_timestep, timestep_source=timestep_source,
                targets=list(targets), targets_source=targets_source, eval_max_episode_steps=cap,
                eval_cap_source=cap_source, behaviour=stats)
    # Training never needs the raw frames again, nor the encoder unless --eval-every plays episodes.
    return _Data(data=data, encoder=encoder if cfg.eval_every is not None else None, frame_stack=frame_stack,
                 d_enc=int(cache.states.shape[1]) * frame_stack,
                 action_table=torch.as_tensor(np.asarray(cache.action_table), dtype=torch.float32), info=info)


def _build(cfg: TrainConfig, dist: DistInfo, device: torch.device, task: TaskSpec, d: _Data) -> _Training:
    """The model (identical initial weights on every rank), its optimizer and schedule, the sampler, the memory."""
    backbone = _broadcast(resolve_backbone(cfg.backbone, device) if dist.main else None, dist)
    cnn = {"state_embedder": "nature_cnn", "frame_stack": d.frame_stack, "frame_size": ATARI_FRAME_SIZE}
    mcfg = model_config(cfg, d_enc=d.d_enc, act_dim=task.action_dim, discrete=task.action_kind == "discrete",
                        backbone=backbone, max_timestep=d.info["max_timestep"], rtg_scale=task.rtg_scale,
                        **(cnn if d.frame_stack > 1 else {}))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(mcfg, d.action_table).to(device)
    if cfg.normalize_states and mcfg.standardizes_states:
        mean, std = d.data.state_stats()
        model.set_state_normalization(mean, std)
    seed_everything(cfg.seed + dist.rank)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio))
    sampler_cls = StreamSampler if cfg.sampler_kind == "stream" else WindowSampler
    sampler_args: dict[str, Any] = ({"rank": dist.rank, "world_size": dist.world_size}
                                    if sampler_cls is StreamSampler else {})
    sampler = sampler_cls(d.data.lengths.tolist(), cfg.window, cfg.batch_size, seed=cfg.seed * 1000 + dist.rank,
                          **sampler_args)
    memory = model.empty_memory(cfg.batch_size, device=device) if cfg.memory_steps > 0 else None
    return _Training(model, model, optimizer, scheduler, sampler, memory)


def _wrap_ddp(dist: DistInfo, device: torch.device, t: _Training) -> None:
    """Under torchrun, the model the loop steps is the DDP wrapper (after resuming: every rank loaded the same
    weights)."""
    if not dist.enabled:
        return
    from torch.nn.parallel import DistributedDataParallel

    mcfg = t.model.config
    # logit_scale has no gradient without the semantic objective (mse / continuous actions)
    unused = mcfg.objective != "semantic" or not mcfg.discrete
    t.ddp_model = DistributedDataParallel(t.model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=unused)


def _resume(cfg: TrainConfig, dist: DistInfo, device: torch.device, paths: RunPaths, t: _Training) -> None:
    """Continue from the newest intact checkpoint of the run being resumed (all of _Training's state)."""
    ckpt = load_latest(paths.checkpoints, t.model, map_location=device, log=log)
    if ckpt is None:
        log(f"--resume {paths.root}: no checkpoint yet; starting from step 0")
        return
    st = ckpt.state
    if st.get("world_size", 1) != dist.world_size:
        raise ValueError(f"checkpoint {ckpt.path} was written by {st.get('world_size')} "
                         f"processes; resume with the same number (now {dist.world_size})")
    t.optimizer.load_state_dict(st["optimizer"])
    t.scheduler.load_state_dict(st["scheduler"])
    t.sampler.load_state_dict(st["sampler"][dist.rank])
    restore_rng(st["rng"][dist.rank])
    if t.memory is not None and st.get("memory") is not None:
        t.memory = st["memory"][dist.rank].to(device)
    t.step = int(st["step"])
    log(f"resumed from {ckpt.path} at step {t.step}")


def _run_info(cfg: TrainConfig, dist: DistInfo, device: torch.device, paths: RunPaths, d: _Data,
              t: _Training) -> RunInfo:
    """What the run resolved (run.json): written when it starts, read back when it resumes."""
    if cfg.resume is not None and paths.run_json.is_file():
        return RunInfo.read(paths.root)  # what the run resolved when it started
    n_params = sum(p.numel() for p in t.model.parameters() if p.requires_grad)
    info = RunInfo(**d.info, backbone=t.model.config.backbone, model_config=t.model.config, parameters=n_params,
                   world_size=dist.world_size, device=str(device), sampler=cfg.sampler_kind, host=machine())
    if dist.main:
        info.write(paths.root)
    return info


def _save(cfg: TrainConfig, dist: DistInfo, paths: RunPaths, t: _Training) -> None:
    """A checkpoint of every rank's state at t.step (rank 0 writes it)."""
    states = {"sampler": t.sampler.state_dict(), "rng": capture_rng(),
              "memory": t.memory.to("cpu") if t.memory is not None else None}
    gathered: list[Any] = [states]
    if dist.enabled:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, states)
    if dist.main:
        save_checkpoint(paths.checkpoints, t.step, t.model, {
            "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
            "sampler": [g["sampler"] for g in gathered], "rng": [g["rng"] for g in gathered],
            "memory": [g["memory"] for g in gathered] if t.memory is not None else None,
            "world_size": dist.world_size, "config": config_to_dict(cfg), "model_config": t.model.config.to_dict(),
        }, keep=cfg.keep_checkpoints)
    dist.barrier()


def _eval_cap_arg(cfg: TrainConfig) -> int | str:
    """TrainConfig.eval_max_episode_steps in more3s.evaluate's terms ('run' holds the dataset's cap)."""
    cap = cfg.eval_max_episode_steps
    return {"dataset": "run", "full": "full"}[cap] if isinstance(cap, str) else cap


def _evaluate_now(cfg: TrainConfig, device: torch.device, t: _Training, info: RunInfo, d: _Data,
                  metrics: MetricsLog | None) -> None:
    """--eval-every: the current weights on a few fixed episodes (every rank plays its share); curves only."""
    encoder, targets = d.encoder, d.info["targets"]  # this invocation's targets (a resumed run may override them)
    rng = capture_rng()  # evaluation draws from its own seeded generators; training's RNG stays untouched
    report = evaluate_model(t.model, info, encoder, checkpoint=f"(weights at step {t.step})", step=t.step,
                            episodes=cfg.eval_every_episodes, targets=targets, seeds=[cfg.eval_seed],
                            engine=cfg.eval_engine, max_episode_steps=_eval_cap_arg(cfg),
                            num_envs=min(cfg.eval_num_envs, cfg.eval_every_episodes), sample=cfg.eval_sample,
                            greedy=False, dtype=resolve_eval_dtype(cfg.eval_dtype, device))
    restore_rng(rng)
    if metrics is not None:
        metrics.write_eval(report)


def _optimizer_step(cfg: TrainConfig, dist: DistInfo, paths: RunPaths, t: _Training, data: TrainData,
                    autocast_ctx: AbstractContextManager[Any]) -> tuple[ModelOutput, torch.Tensor, float]:
    """One batch: forward, backward, clip, a stop on a non-finite loss anywhere, the optimizer step.
    Returns (output, gradient norm, the learning rate used)."""
    batch = data.gather(t.sampler.sample())
    if t.memory is not None and cfg.memory_drop > 0:  # global torch RNG: checkpointed, so a resume replays it
        t.memory = t.memory.reset(torch.rand(t.memory.mem_len.shape, device=t.memory.mem_len.device) < cfg.memory_drop)
    out = train_step(t.ddp_model, batch, t.memory, autocast_ctx)
    loss = out.loss
    assert loss is not None  # the batch carries actions
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), max_norm)
    bad = (~torch.isfinite(loss.detach()) | ~torch.isfinite(grad_norm)).float()
    if dist.enabled:  # every rank must stop at the same step
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    if bad.item() > 0:
        good = list_checkpoints(paths.checkpoints)
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) or gradient norm ({grad_norm.item()}) at "
            f"step {t.step + 1}; stopped before the optimizer step. The last good checkpoint is "
            f"{good[-1][1] if good else '(none yet)'}; try a lower --lr or --grad-clip and "
            f"--resume {paths.root}")
    lr_used = float(t.optimizer.param_groups[0]["lr"])
    t.optimizer.step()
    t.scheduler.step()
    if t.memory is not None and out.memory is not None:
        t.memory = out.memory.detach()
    return out, grad_norm, lr_used


def _metrics_row(dist: DistInfo, device: torch.device, out: ModelOutput) -> dict[str, float]:
    """The step's metrics, averaged over ranks."""
    vals = {k: v.detach().float() for k, v in out.metrics.items()}
    if dist.enabled:
        keys = sorted(vals)
        stacked = torch.stack([vals[k] for k in keys]).to(device)
        torch.distributed.all_reduce(stacked)
        vals = dict(zip(keys, (stacked / dist.world_size).unbind(0)))
    return {k: float(v) for k, v in vals.items()}


def _progress_bar(cfg: TrainConfig, dist: DistInfo, step: int) -> Any:
    if not (dist.main and cfg.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)  # quiet in log files


def _loop(cfg: TrainConfig, dist: DistInfo, device: torch.device, paths: RunPaths, t: _Training, d: _Data,
          info: RunInfo, on_step: Callable[[int], None] | None) -> float:
    """Train from t.step to cfg.max_steps: log, checkpoint and --eval-every on their schedules; returns the
    loop's wall time."""
    autocast_ctx: AbstractContextManager[Any] = (torch.autocast("cuda", dtype=torch.bfloat16)
                                                 if cfg.amp and device.type == "cuda" else nullcontext())
    metrics = MetricsLog(paths.root, cfg.tensorboard, t.step if cfg.resume is not None else None) \
        if dist.main else None
    pbar = _progress_bar(cfg, dist, t.step)
    t.model.train()
    t_loop, step0 = time.time(), t.step
    try:
        while t.step < cfg.max_steps:
            out, grad_norm, lr_used = _optimizer_step(cfg, dist, paths, t, d.data, autocast_ctx)
            t.step += 1
            if t.step % cfg.log_every == 0 or t.step == cfg.max_steps:
                row = _metrics_row(dist, device, out)
                if metrics is not None:
                    elapsed = time.time() - t_loop
                    samples = (t.step - step0) * cfg.batch_size * dist.world_size
                    metrics.write({**row, "step": t.step, "lr": lr_used, "grad_norm": float(grad_norm),
                                   "samples_per_s": samples / max(elapsed, 1e-9), "elapsed_s": elapsed})
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr_used:.2e}", refresh=False)
            if pbar is not None:
                pbar.update(1)
            if t.step % cfg.ckpt_every == 0 or t.step == cfg.max_steps:
                _save(cfg, dist, paths, t)
            if cfg.eval_every is not None and t.step % cfg.eval_every == 0:
                _evaluate_now(cfg, device, t, info, d, metrics)
            if on_step is not None:
                on_step(t.step)
    finally:
        if pbar is not None:
            pbar.close()
        if metrics is not None:
            metrics.close()
    return time.time() - t_loop


def _check_replicas(model: torch.nn.Module, dist: DistInfo, paths: RunPaths) -> None:
    """DDP sanity check: every rank must hold the same parameters; written to dist.json."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    mine = {"rank": dist.rank, "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()),
            "sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest()}
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, mine)
    agree = len({g["sha256"] for g in gathered}) == 1
    if dist.main:
        atomic_write_text(paths.dist_json, json.dumps(
            {"world_size": dist.world_size, "replicas_agree": agree, "ranks": gathered}, indent=2) + "\n")
        log(f"DDP: parameters of all {dist.world_size} ranks {'agree' if agree else 'DIFFER'}")
    if not agree:
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {gathered}")


def _final_evaluation(cfg: TrainConfig, dist: DistInfo, device: torch.device, paths: RunPaths,
                      targets: list[float]) -> None:
    """The last checkpoint in the full protocol (every rank plays its share); rank 0 writes the report."""
    dist.barrier()  # rank 0's last checkpoint is on disk before any rank loads it
    with torch_threads(cfg.encoder_threads):  # a CPU evaluation step is mostly the encoder
        report = evaluate_run(paths.root, episodes=cfg.eval_episodes, targets=targets,
                              seeds=[cfg.eval_seed], engine=cfg.eval_engine,
                              max_episode_steps=_eval_cap_arg(cfg), num_envs=cfg.eval_num_envs, device=device,
                              sample=cfg.eval_sample, greedy=cfg.eval_greedy, dtype=cfg.eval_dtype,
                              video=cfg.eval_video)
    if not dist.main:
        return
    finish_report(paths.root, report)
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(paths.tensorboard)) as tb:
            for k, v in summary_dict(report).items():
                tb.add_scalar(k, v, global_step=report.step)


# ==================================================================================================
# the run
# ==================================================================================================
def train(cfg: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> Path:
    """Run ``cfg`` end to end; returns the run directory. ``on_step(step)`` runs after each step."""
    cfg.validate()
    dist, device = setup_distributed(cfg.device)
    try:
        resolve_eval_dtype(cfg.eval_dtype, device)  # a dtype the device cannot run: an error before training
        return _train(cfg, dist, device, on_step)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, dist: DistInfo, device: torch.device,
           on_step: Callable[[int], None] | None) -> Path:
    t_start = time.time()
    task = get_task(cfg.env)
    paths = _set_up(cfg, dist)
    d = _load_data(cfg, dist, device, task)
    t = _build(cfg, dist, device, task, d)
    if cfg.resume is not None:
        _resume(cfg, dist, device, paths, t)
    info = _run_info(cfg, dist, device, paths, d, t)
    _wrap_ddp(dist, device, t)
    if dist.main:
        # The thread count changes a CPU run's float rounding, and so its weights: the log keeps it.
        threads = f" (CPU threads: {torch.get_num_threads()})" if device.type == "cpu" else ""
        log(f"training {info.parameters / 1e6:.2f}M parameters ({info.backbone}, rtg_mode={cfg.rtg_mode}, "
            f"memory_steps={cfg.memory_steps}, {cfg.sampler_kind} sampler) on {device} x{dist.world_size}{threads}, "
            f"{info.episodes} episodes / {info.steps_in_data} steps, steps {t.step}->{cfg.max_steps}")
    loop_s = _loop(cfg, dist, device, paths, t, d, info, on_step)
    if dist.enabled:
        _check_replicas(t.model, dist, paths)
    if dist.main:
        log(f"training done: {t.step} steps in {loop_s:.1f} s (total so far {time.time() - t_start:.1f} s)")
    if cfg.eval_at_end:
        targets = d.info["targets"][:1] if cfg.eval_primary_target_only else d.info["targets"]
        _final_evaluation(cfg, dist, device, paths, targets)
        if dist.main:
            log(f"total wall time {time.time() - t_start:.1f} s")
    return paths.root


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        resolve_eval_dtype(cfg.eval_dtype, resolve_device(cfg.device))
    except (ValueError, TypeError, FileNotFoundError) as e:
        log(f"error: {e}")
        return 2
    try:
        train(cfg)
    except NonFiniteLossError as e:
        log(f"error: {e}")
        return 1
    except FileNotFoundError as e:  # e.g. a published dataset that is not here (with how to download it)
        log(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
