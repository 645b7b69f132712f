"""``python -m more3s.train``: train MORE-3S (or the DT / BC baselines) end to end.

With no arguments this runs the embedded default of more3s.config (Breakout, collected
mixed-quality data, lxmert-tiny / dt-small on CPU) offline on a 2-core CPU in about 15 minutes:
collect the dataset if missing -> build or reuse the embedding cache -> train -> evaluate -> print
the final table and write ``report.png``. ``torchrun --nproc_per_node N -m more3s.train ...`` trains
with DDP (gloo on CPU, nccl on GPU); rank 0 collects the dataset, logs, checkpoints and writes the report,
all ranks build the embedding cache together (more3s.encoder.cache shards it), train on differently
seeded samplers and share the final evaluation's environments (more3s.evaluate).

The frozen encoder never runs during training: batches are gathered from the
memory-mapped embedding cache by the samplers' indices. With ``memory_steps > 0`` the stream
sampler walks episodes in consecutive windows and the model's detached Memory is carried from one
batch to the next (cleared by the model where a window starts an episode); it is checkpointed with
the sampler so that a resumed run continues exactly.

Run directory (default ``runs/<name>-<UTC timestamp>``): config.json/.yaml, run.json (what was
resolved: encoder and the dtype its cache was encoded in, backbone, dataset and its provenance, model config,
the timestep table and where its size came from, RTG targets, the evaluation cap and where it came from),
metrics.csv (with ``eval/`` rows when --eval-every is set), tb/ (TensorBoard), checkpoints/step_*/ (atomic; see
more3s.checkpoint), eval.json, report.png (and videos/ with --eval-video).

Timesteps: the learned timestep table has one row per timestep that training sees (0 .. the longest training
episode's last step, or the task's episode limit when the data reaches it); evaluation timesteps past it map to
the last row (DT clamps to ``max_ep_len`` alike), so no untrained row is ever read.

Resume: ``python -m more3s.train --resume DIR [overrides]`` loads DIR/config.json and the newest
intact checkpoint; on CPU the resumed run's losses equal an uninterrupted run's exactly (same
sampler state, RNG states, optimizer, scheduler and memory). A non-finite loss or gradient stops the
run with NonFiniteLossError before the optimizer step, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from more3s.atomic import atomic_write_text
from more3s.checkpoint import list_checkpoints, load_latest, save_checkpoint
from more3s.config import TrainConfig, config_to_dict, parse_args, save_config
from more3s.distributed import DistInfo, resolve_device, setup_distributed
from more3s.report import EVAL_FIELDS

__all__ = [
    "NonFiniteLossError", "DistInfo", "TrainData", "MetricsLog", "train", "main",
    "resolve_device", "resolve_encoder", "resolve_backbone", "ensure_dataset", "default_targets",
    "eval_cap", "timestep_table", "seed_everything",
    "capture_rng", "restore_rng", "lr_factor", "train_step", "log",
]

METRIC_FIELDS = ("step", "loss", "action_loss", "state_loss", "action_acc", "temperature", "lr",
                 "grad_norm", "samples_per_s", "elapsed_s", *EVAL_FIELDS)
PRETRAINED_LXMERT = "unc-nlp/lxmert-base-uncased"
FALLBACK_LXMERT = "lxmert-tiny"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stopped before the optimizer step."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _loud(msg: str) -> None:
    bar = "!" * 100
    log(f"{bar}\n!! {msg}\n{bar}")


# ==================================================================================================
# distributed / device / seeding
# ==================================================================================================
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
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


# ==================================================================================================
# resolving names: encoder / backbone / dataset
# ==================================================================================================
def _hf_available(name: str) -> bool:
    """Whether ``from_pretrained(name)`` can succeed offline: a local dir or a cached hub snapshot."""
    p = Path(name)
    if p.is_dir():
        return (p / "config.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a transformers dependency
        return False
    cfg = try_to_load_from_cache(name, "config.json")
    if not isinstance(cfg, str):
        return False
    for weights in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(name, weights), str):
            return True
    return False


def resolve_encoder(name: str) -> str:
    """'auto' -> pretrained LXMERT when available locally, else lxmert-tiny with a loud notice."""
    if name != "auto":
        return name
    if _hf_available(PRETRAINED_LXMERT):
        return PRETRAINED_LXMERT
    _loud(f"encoder=auto: pretrained {PRETRAINED_LXMERT} is not available offline; using the random-init "
          f"'{FALLBACK_LXMERT}' encoder (128 wide). Scores are NOT those of the paper's pretrained encoder. "
          f"Put the weights in the Hugging Face cache or pass --encoder /path/to/lxmert to use them.")
    return FALLBACK_LXMERT


def resolve_backbone(name: str, device: torch.device) -> str:
    """'auto' -> pretrained gpt2 (6 layers) when present and on GPU; else dt-small (loud notice)."""
    if name != "auto":
        return name
    present = _hf_available("gpt2")
    if present and device.type == "cuda":
        return "gpt2"
    why = ("pretrained gpt2 is not available offline" if not present else
           "training runs on CPU, where GPT-2 (768 wide) does not fit the 15-minute budget")
    _loud(f"backbone=auto: {why}; using 'dt-small' (width 128, 1 head, 6 layers, random init: the "
          f"paper's small variant). Pass --backbone gpt2 to force the pretrained backbone.")
    return "dt-small"


def default_targets(cfg: TrainConfig, task, stats, provenance: dict | None = None) -> tuple[tuple[float, ...], str]:
    """(RTG targets, where they come from): given > the data's (datasets more3s collected, by their metadata)
    > DT's published ones (any other dataset). ``provenance``: more3s.data.dataset_provenance's answer."""
    from more3s.report import data_targets, unique_targets

    if cfg.eval_targets:
        return unique_targets(cfg.eval_targets), "given on the command line / config"
    if provenance is None:
        return unique_targets(task.rtg_targets), ("Decision Transformer's published targets (a dataset more3s did "
                                                  "not collect)")
    pub = ", ".join(f"{t:g}" for t in task.rtg_targets)
    return data_targets(stats), ("from the data (a dataset more3s collected): its best episode "
                                 f"return and 90th percentile (DT's published target(s) for "
                                 f"{task.name}: {pub})")


def eval_cap(provenance: dict | None) -> tuple[int | None, str]:
    """The evaluation cap a dataset implies (None = the task's full protocol) and why."""
    if provenance is None:
        return None, "a dataset more3s did not collect: the task's full protocol"
    cap = provenance.get("max_episode_steps")
    if not cap:
        return None, "more3s collected this dataset without an episode cap: the task's full protocol"
    return int(cap), f"the collection cap more3s recorded for this dataset ({cap} agent steps)"


def timestep_table(lengths, task) -> tuple[int, str]:
    """(largest timestep with a trained embedding row, where the table's size comes from).

    Training sees timesteps 0 .. T-1 of an episode of T steps, so rows up to the longest episode's T-1 are
    trained; an episode limit the data reaches (MuJoCo's 1000 steps) sizes the table the same way."""
    longest = int(max(lengths))
    limit = int(task.max_episode_steps)
    if longest >= limit:
        return limit - 1, f"the task's episode limit ({limit} steps, reached by the data)"
    return longest - 1, f"the data (longest training episode: {longest} steps; the task allows {limit})"


def _eval_cap_arg(cfg: TrainConfig) -> int | str:
    """TrainConfig.eval_max_episode_steps in more3s.evaluate's terms ('run' holds the dataset's cap)."""
    return {"dataset": "run", "full": "full"}.get(cfg.eval_max_episode_steps, cfg.eval_max_episode_steps)


def _local_dataset_exists(dataset: str) -> bool:
    from more3s.data import dataset_path

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
    if _local_dataset_exists(cfg.dataset) or not cfg.collect_if_missing:
        return
    if Path(cfg.dataset).suffix or os.sep in cfg.dataset.strip("/").split("/", 1)[0]:
        return  # a path, not an id: load_episodes reports it missing
    if dist.main:
        from more3s.data import collect_dataset, published_reason

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
# data: gather windows from the embedding cache
# ==================================================================================================
class TrainData:
    """Flat per-step arrays of all episodes + the cached state embeddings, gathered by index.

    states: [N_obs, d_enc] (the cache, as a tensor on ``device``); actions / rtg: flat over all
    steps with ``step_off`` [E+1]; observation rows use the cache's own ``offsets`` [E+1].
    """

    def __init__(self, episodes, cache, device: torch.device, frame_stack: int = 1):
        lengths = np.asarray([len(ep) for ep in episodes], dtype=np.int64)  # [E]
        offsets = np.asarray(cache.offsets, dtype=np.int64)  # [E+1]
        if offsets.shape[0] != len(episodes) + 1:
            raise ValueError(f"embedding cache has {offsets.shape[0] - 1} episodes, dataset has "
                             f"{len(episodes)} (stale cache?)")
        obs_counts = np.diff(offsets)
        if not np.array_equal(obs_counts, lengths + 1):
            bad = int(np.flatnonzero(obs_counts != lengths + 1)[0])
            raise ValueError(f"embedding cache episode {bad} has {obs_counts[bad]} rows, expected "
                             f"{lengths[bad] + 1} (T+1 observations); rebuild the cache")
        self.lengths = lengths
        self.discrete = episodes[0].actions.ndim == 1
        self.step_off = np.concatenate([[0], np.cumsum(lengths)])  # [E+1]
        self.obs_off = offsets
        self.device = device
        self.frame_stack = frame_stack  # > 1: each state input is the last k observations' rows (DT's Atari frames)
        # The whole cache goes to the device once (fp16): it is small next to the model's activations.
        self.states = torch.from_numpy(np.ascontiguousarray(cache.states[:])).to(device)  # [N_obs, d]
        acts = np.concatenate([ep.actions for ep in episodes])  # [N] or [N, A]
        self.actions = torch.from_numpy(acts).to(device)
        self.rtg = torch.from_numpy(np.concatenate([ep.rtg for ep in episodes]).astype(np.float32)).to(device)

    def state_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of every cached state ([d_enc] float32 each).

        The std is floored at its median over dimensions: the cache is fp16, and dimensions that barely
        vary would otherwise blow fp16 rounding noise up into the model's inputs.
        """
        x = self.states.double()  # [N_obs, d]
        mean, std = x.mean(0), x.std(0, correction=0)
        std = std.clamp(min=max(float(std.median()), 1e-6))
        return mean.float(), std.float()

    def _states(self, ep, steps, obs_idx, to) -> torch.Tensor:
        """Cache rows of the windows' states; with frame stacking the k rows ending at each step, repeating an
        episode's first row before its start (as the rollout engine's stacks do)."""
        if self.frame_stack == 1:
            return self.states[to(obs_idx)]  # [B, K, d]
        back = np.arange(self.frame_stack - 1, -1, -1)  # [k]: k-1 .. 0 steps back
        rows = self.obs_off[ep][..., None] + np.maximum(steps[..., None] - back, 0)  # [B, K, k]
        return self.states[to(rows)].flatten(2)  # [B, K, k * d]

    def gather(self, batch) -> dict[str, torch.Tensor]:
        """A sampler's WindowBatch -> model inputs (all [B, K, ...] on device)."""
        ep = batch.episode[:, None]  # [B, 1]
        steps = batch.steps  # [B, K]
        mask_np = batch.mask  # [B, K]
        step_idx = self.step_off[ep] + steps  # [B, K] rows of actions / rtg
        prev_idx = np.maximum(step_idx - 1, 0)  # a_{t-1}; ignored by the model where first
        obs_idx = self.obs_off[ep] + steps  # [B, K] rows of the cache
        dev = self.device
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
        first = (steps == 0) & mask_np  # [B, K]
        return {
            "states": self._states(ep, steps, obs_idx, to),  # [B, K, d_enc]
            "prev_actions": self.actions[to(prev_idx)],  # [B, K] or [B, K, A]
            "actions": self.actions[to(step_idx)],
            "rtg": self.rtg[to(step_idx)],  # [B, K]
            "timesteps": to(steps),  # [B, K]
            "first": to(first),
            "mask": to(mask_np),
        }


# ==================================================================================================
# metrics
# ==================================================================================================
class MetricsLog:
    """metrics.csv (append, flushed per row) + optional TensorBoard; truncated to a step on resume."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None):
        self.path = run_dir / "metrics.csv"
        if resume_step is not None and self.path.is_file():
            # Rows written after the checkpoint by the killed run are replayed by this one; a row the kill
            # cut short (no newline yet, or missing fields) is dropped, not parsed.
            text = self.path.read_text()
            whole = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            rows = [r for r in csv.DictReader(whole.splitlines())
                    if (r.get("step") or "").isdigit() and None not in r.values() and int(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif not self.path.is_file():
            self._rewrite([])
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=METRIC_FIELDS)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def _rewrite(self, rows: list[dict]) -> None:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def write(self, row: dict[str, float]) -> None:
        self._w.writerow({k: (repr(float(v)) if k != "step" else int(v)) if v is not None else ""
                          for k, v in row.items() if k in METRIC_FIELDS})
        self._f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(f"train/{k}", float(v), global_step=int(row["step"]))

    def write_eval(self, report) -> None:
        """One ``eval/`` row per target of an --eval-every evaluation (TensorBoard: eval/target_<R>/...)."""
        for t in report.targets:
            self._w.writerow({"step": int(report.step), "eval/target": repr(float(t.target)),
                              "eval/normalized_mean": repr(t.mean), "eval/normalized_std": repr(t.std),
                              "eval/return_mean": repr(float(np.mean(t.returns))),
                              "eval/distinct": t.distinct_trajectories, "eval/episodes": len(t.returns)})
        self._f.flush()
        if self.tb is not None:
            from more3s.report import summary_dict

            for k, v in summary_dict(report).items():
                self.tb.add_scalar(k, float(v), global_step=int(report.step))

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


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
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "emb" not in name and "wte" not in name and "wpe" not in name
         else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)


def train_step(model, batch: dict[str, torch.Tensor], memory, cfg: TrainConfig, autocast_ctx):
    """Forward + loss for one batch; returns the ModelOutput (its .loss drives backward)."""
    with autocast_ctx:
        return model(batch["states"], batch["prev_actions"], batch["rtg"], batch["timesteps"],
                     first=batch["first"], mask=batch["mask"], memory=memory,
                     actions=batch["actions"])


# ==================================================================================================
# run directory
# ==================================================================================================
def _new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.run_dir is not None:
        d = Path(cfg.run_dir)
        if d.exists() and any(d.iterdir()):
            raise FileExistsError(f"run_dir {d} exists and is not empty; use --resume {d} to continue it")
        return d
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    d = Path(cfg.out_dir) / f"{cfg.name}-{stamp}"
    n = 1
    while d.exists():
        n += 1
        d = Path(cfg.out_dir) / f"{cfg.name}-{stamp}-{n}"
    return d


def _broadcast_obj(obj, dist: DistInfo):
    if not dist.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _check_replicas(model: torch.nn.Module, dist: DistInfo, run_dir: Path) -> None:
    """DDP sanity check: every rank must hold the same parameters; written to dist.json."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    mine = {"rank": dist.rank, "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()),
            "sha256": __import__("hashlib").sha256(flat.numpy().tobytes()).hexdigest()}
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, mine)
    agree = len({g["sha256"] for g in gathered}) == 1
    if dist.main:
        atomic_write_text(run_dir / "dist.json", json.dumps(
            {"world_size": dist.world_size, "replicas_agree": agree, "ranks": gathered}, indent=2) + "\n")
        log(f"DDP: parameters of all {dist.world_size} ranks {'agree' if agree else 'DIFFER'}")
    if not agree:
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {gathered}")


# ==================================================================================================
# the run
# ==================================================================================================
def train(cfg: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> Path:
    """Run ``cfg`` end to end; returns the run directory. ``on_step(step)`` runs after each step."""
    from more3s.evaluate import resolve_eval_dtype

    cfg.validate()
    dist, device = setup_distributed(cfg.device)
    try:
        resolve_eval_dtype(cfg.eval_dtype, device)  # a dtype the device cannot run: an error before training
    except ValueError:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise
    try:
        return _train(cfg, dist, device, on_step)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, dist: DistInfo, device: torch.device,
           on_step: Callable[[int], None] | None) -> Path:
    from more3s.data import StreamSampler, WindowSampler, dataset_provenance, load_episodes
    from more3s.encoder import CacheConfig, build_or_load_cache, load_encoder
    from more3s.encoder.raw import ATARI_FRAME_SIZE, RAW_ENCODER, RawObservations
    from more3s.envs import get_task
    from more3s.model import ModelConfig, build_model
    from more3s.report import behaviour_stats

    t_start = time.time()
    task = get_task(cfg.env)
    resuming = cfg.resume is not None
    # --- run directory ----------------------------------------------------------------------------
    if resuming:
        run_dir = Path(cfg.resume)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no config.json)")
    else:
        run_dir = _new_run_dir(cfg) if dist.main else None
        run_dir = Path(_broadcast_obj(str(run_dir) if run_dir else None, dist))
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        log(f"run directory: {run_dir}")
    seed_everything(cfg.seed + dist.rank)

    # --- data + embedding cache ---------------------------------------------------------------------
    ensure_dataset(cfg, dist)
    # Lazy: hdf5 frames stay on disk (a full Atari dataset is tens of GB); the cache reads them only to encode.
    episodes = load_episodes(cfg.dataset, task=task.name, max_episodes=cfg.max_episodes, lazy=True)
    episodes = [ep for ep in episodes if len(ep) > 0]
    if not episodes:
        raise ValueError(f"dataset {cfg.dataset!r} has no non-empty episodes")
    encoder_name = resolve_encoder(cfg.encoder) if dist.main else None
    encoder_name = _broadcast_obj(encoder_name, dist)
    t0 = time.time()
    if encoder_name == RAW_ENCODER:  # DT's own inputs: cheap per-step features, computed here, never cached
        encoder = RawObservations(task)
        cache = encoder.build(episodes, progress=cfg.progress and dist.main)
    else:
        encoder = load_encoder(encoder_name, device=device)
        # Every rank calls the builder (it shards the encoding across torchrun processes).
        cache = build_or_load_cache(episodes, encoder, task.name, cfg.prompt_set, cache_dir=cfg.cache_dir,
                                    config=CacheConfig(progress=cfg.progress))
    if dist.main:
        log(f"state inputs {'reused' if cache.hit else 'computed'} in {time.time() - t0:.1f} s: "
            f"{cache.states.shape[0]} states x {cache.states.shape[1]} ({encoder.describe()}) at {cache.path}")
    frame_stack = getattr(encoder, "frame_stack", 1)
    data = TrainData(episodes, cache, device, frame_stack=frame_stack)
    encoder_fp = encoder.fingerprint
    stats = behaviour_stats(task.name, [ep.raw_return for ep in episodes],
                            [ep.train_return for ep in episodes])
    provenance = dataset_provenance(cfg.dataset)
    targets, targets_source = default_targets(cfg, task, stats, provenance)
    cap, cap_source = eval_cap(provenance)
    max_timestep, timestep_source = timestep_table(data.lengths, task)
    n_episodes = len(episodes)
    encoder_dtype = str(encoder.dtype).removeprefix("torch.")
    # Training never needs the raw frames again, nor the encoder unless --eval-every plays episodes.
    del episodes
    if cfg.eval_every is None:
        del encoder

    # --- model ----------------------------------------------------------------------------------------
    backbone = resolve_backbone(cfg.backbone, device) if dist.main else None
    backbone = _broadcast_obj(backbone, dist)
    mcfg = ModelConfig(
        d_enc=int(cache.states.shape[1]) * frame_stack, act_dim=task.action_dim, discrete=task.action_kind == "discrete",
        backbone=backbone, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
        window=cfg.window, memory_steps=cfg.memory_steps,
        max_timestep=max_timestep, rtg_mode=cfg.rtg_mode, rtg_scale=task.rtg_scale,
        rtg_features=cfg.rtg_features, objective=cfg.objective,
        state_loss_weight=cfg.state_loss_weight, dropout=cfg.dropout,
        attention_backend=cfg.attention_backend,
        **({"state_embedder": "nature_cnn", "frame_stack": frame_stack, "frame_size": ATARI_FRAME_SIZE}
           if frame_stack > 1 else {}),
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    action_table = torch.as_tensor(np.asarray(cache.action_table), dtype=torch.float32)
    model = build_model(mcfg, action_table).to(device)
    if cfg.normalize_states and mcfg.state_embedder == "linear":  # the CNN reads pixels / 255, as DT
        mean, std = data.state_stats()
        model.set_state_normalization(mean, std)
    seed_everything(cfg.seed + dist.rank)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.max_steps, cfg.min_lr_ratio))
    Sampler = StreamSampler if cfg.sampler_kind == "stream" else WindowSampler
    sampler = Sampler(data.lengths.tolist(), cfg.window, cfg.batch_size, seed=cfg.seed * 1000 + dist.rank)
    memory = model.empty_memory(cfg.batch_size, device=device) if cfg.memory_steps > 0 else None

    # --- resume -----------------------------------------------------------------------------------------
    step = 0
    ckpt_root = run_dir / "checkpoints"
    if resuming:
        ckpt = load_latest(ckpt_root, model, map_location=device, log=log)
        if ckpt is None:
            log(f"--resume {run_dir}: no checkpoint yet; starting from step 0")
        else:
            st = ckpt.state
            if st.get("world_size", 1) != dist.world_size:
                raise ValueError(f"checkpoint {ckpt.path} was written by {st.get('world_size')} "
                                 f"processes; resume with the same number (now {dist.world_size})")
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            sampler.load_state_dict(st["sampler"][dist.rank])
            restore_rng(st["rng"][dist.rank])
            if memory is not None and st.get("memory") is not None:
                memory = st["memory"][dist.rank].to(device)
            step = int(st["step"])
            log(f"resumed from {ckpt.path} at step {step}")
    run_info = {
        "task": task.name, "dataset": cfg.dataset, "provenance": provenance, "episodes": n_episodes,
        "steps_in_data": int(data.lengths.sum()), "encoder": encoder_name,
        "encoder_fingerprint": encoder_fp, "encoder_dtype": encoder_dtype, "backbone": backbone,
        "prompt_set": cfg.prompt_set, "cache_path": str(cache.path),
        "model_config": mcfg.to_dict(), "timesteps": {"max_timestep": max_timestep, "source": timestep_source},
        "parameters": n_params, "world_size": dist.world_size,
        "device": str(device), "sampler": cfg.sampler_kind, "targets": list(targets),
        "targets_source": targets_source, "eval_max_episode_steps": cap, "eval_cap_source": cap_source,
        "behaviour": dataclasses.asdict(stats),
    }
    if resuming and (run_dir / "run.json").is_file():
        run_info = json.loads((run_dir / "run.json").read_text())  # what the run resolved when it started
    elif dist.main:
        atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")

    ddp_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # logit_scale has no gradient without the semantic objective (mse / continuous actions)
        unused = mcfg.objective != "semantic" or not mcfg.discrete
        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                        find_unused_parameters=unused)
    use_amp = cfg.amp and device.type == "cuda"
    autocast_ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
    metrics = MetricsLog(run_dir, cfg.tensorboard, step if resuming else None) if dist.main else None
    if dist.main:
        log(f"training {n_params / 1e6:.2f}M parameters ({backbone}, rtg_mode={cfg.rtg_mode}, "
            f"memory_steps={cfg.memory_steps}, {cfg.sampler_kind} sampler) on {device} x{dist.world_size}, "
            f"{n_episodes} episodes / {int(data.lengths.sum())} steps, steps {step}->{cfg.max_steps}")

    def checkpoint(at: int) -> None:
        states = {"sampler": sampler.state_dict(), "rng": capture_rng(),
                  "memory": memory.to("cpu") if memory is not None else None}
        if dist.enabled:
            gathered: list[Any] = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, states)
        else:
            gathered = [states]
        if dist.main:
            save_checkpoint(ckpt_root, at, model, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "sampler": [g["sampler"] for g in gathered], "rng": [g["rng"] for g in gathered],
                "memory": [g["memory"] for g in gathered] if memory is not None else None,
                "world_size": dist.world_size, "config": config_to_dict(cfg),
            }, keep=cfg.keep_checkpoints)
        dist.barrier()

    def evaluate_now(at: int) -> None:
        """--eval-every: the current weights on a few fixed episodes (every rank plays its share); curves only."""
        from more3s.evaluate import evaluate_model, resolve_eval_dtype

        rng = capture_rng()  # evaluation draws from its own seeded generators; training's RNG stays untouched
        report = evaluate_model(model, run_info, encoder, checkpoint=f"(weights at step {at})", step=at,
                                episodes=cfg.eval_every_episodes, targets=targets, seeds=[cfg.eval_seed],
                                engine=cfg.eval_engine, max_episode_steps=_eval_cap_arg(cfg),
                                num_envs=min(cfg.eval_num_envs, cfg.eval_every_episodes), sample=cfg.eval_sample,
                                greedy=False, dtype=resolve_eval_dtype(cfg.eval_dtype, device))
        restore_rng(rng)
        if metrics is not None:
            metrics.write_eval(report)

    # --- loop ----------------------------------------------------------------------------------------------
    pbar = None
    if dist.main and cfg.progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)  # quiet in log files
    model.train()
    t_loop, step0 = time.time(), step
    try:
        while step < cfg.max_steps:
            batch = data.gather(sampler.sample())
            out = train_step(ddp_model, batch, memory, cfg, autocast_ctx)
            loss = out.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            bad = (~torch.isfinite(loss.detach()) | ~torch.isfinite(grad_norm)).float()
            if dist.enabled:  # every rank must stop at the same step
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if bad.item() > 0:
                good = list_checkpoints(ckpt_root)
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) or gradient norm ({grad_norm.item()}) at "
                    f"step {step + 1}; stopped before the optimizer step. The last good checkpoint is "
                    f"{good[-1][1] if good else '(none yet)'}; try a lower --lr or --grad-clip and "
                    f"--resume {run_dir}")
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if memory is not None:
                memory = out.memory.detach() if out.memory is not None else memory
            step += 1
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                vals = {k: v.detach().float() for k, v in out.metrics.items()}
                if dist.enabled:
                    keys = sorted(vals)
                    stacked = torch.stack([vals[k] for k in keys]).to(device)
                    torch.distributed.all_reduce(stacked)
                    vals = dict(zip(keys, (stacked / dist.world_size).unbind(0)))
                if dist.main:
                    elapsed = time.time() - t_loop
                    row = {k: float(v) for k, v in vals.items()}
                    samples = (step - step0) * cfg.batch_size * dist.world_size
                    row.update(step=step, lr=lr_used, grad_norm=float(grad_norm),
                               samples_per_s=samples / max(elapsed, 1e-9), elapsed_s=elapsed)
                    metrics.write(row)
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
            if pbar is not None:
                pbar.update(1)
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps:
                checkpoint(step)
            if cfg.eval_every is not None and step % cfg.eval_every == 0:
                evaluate_now(step)
            if on_step is not None:
                on_step(step)
    finally:
        if pbar is not None:
            pbar.close()
        if metrics is not None:
            metrics.close()
    if dist.enabled:
        _check_replicas(model, dist, run_dir)
    if dist.main:
        log(f"training done: {step} steps in {time.time() - t_loop:.1f} s "
            f"(total so far {time.time() - t_start:.1f} s)")

    # --- evaluation (every rank plays its share of the environments) + report (rank 0) -------------
    if cfg.eval_at_end:
        from more3s.evaluate import evaluate_run, finish_report

        dist.barrier()  # rank 0's last checkpoint is on disk before any rank loads it
        report = evaluate_run(run_dir, episodes=cfg.eval_episodes, targets=targets,
                              seeds=[cfg.eval_seed], engine=cfg.eval_engine,
                              max_episode_steps=_eval_cap_arg(cfg), num_envs=cfg.eval_num_envs, device=device,
                              sample=cfg.eval_sample, greedy=cfg.eval_greedy, dtype=cfg.eval_dtype,
                              video=cfg.eval_video)
    if cfg.eval_at_end and dist.main:
        finish_report(run_dir, report)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            from more3s.report import summary_dict

            with SummaryWriter(str(run_dir / "tb")) as tb:
                for k, v in summary_dict(report).items():
                    tb.add_scalar(k, v, global_step=report.step)
        log(f"total wall time {time.time() - t_start:.1f} s")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    from more3s.evaluate import resolve_eval_dtype

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
