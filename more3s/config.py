"""TrainConfig: every hyper-parameter of a more3s run, typed, validated, saved with the run.

One flat dataclass (as nanoGPT's and CORL's configs), parsed from the command line with tyro. The command line is
``python -m more3s.train [--config FILE] [--preset more3s|dt|bc|dt-published] [--resume DIR] [overrides...]``:
the defaults below are the embedded default run; ``--config`` loads a saved config (yaml or json,
e.g. a run's ``config.json``), ``--preset`` applies a baseline's settings, ``--resume`` continues a
run from its own saved config; flags given after that override any of them.

The embedded default (no arguments) is sized for a 2-core CPU in <= 15 minutes end to end
(README.md records the latest full runs and the load they ran under):

* data: ``breakout``; a mixed-quality Minari dataset ``more3s/breakout/mixed-v2`` is collected if
  it is missing (80 episodes from the ``mixed`` behaviour policy — the scripted tracker with a
  per-episode epsilon in [0, 1] — each capped at 1000 agent steps: ~44k steps, ~35 s; raw returns
  0-67, mean ~18.7);
* encoder: ``auto`` = pretrained ``unc-nlp/lxmert-base-uncased`` when it is available locally,
  otherwise ``lxmert-tiny`` (random init, 128 wide) with a loud notice;
* backbone: ``auto`` = pretrained ``gpt2`` (first 6 layers) when present *and* a GPU is used;
  on CPU ``dt-small`` (width 128, 1 head, 6 layers) because that is what fits 15 minutes;
  a loud notice says which and why;
* MORE-3S proper: RTG in K/V (``rtg_mode=kv``, phi(R) = R), semantic objective with the
  state-embedding MSE at weight 1.0, state embeddings standardized per dimension with the dataset's
  mean/std, window 20 steps plus 20 steps of detached memory (stream
  sampler), dropout 0.1, seed 0;
* optimisation: AdamW (0.9, 0.95), lr 3e-4 (paper), weight decay 0.1, linear warm-up then cosine
  decay to 10 % of lr, grad clip 1.0 (DT Atari), batch 32, 1500 steps (~0.16 s each on two
  cores, ~0.24 s on one: compute-bound matmuls; the paper's 10k warm-up is for 100k-step runs, here warm-up is
  10 % of the steps); metrics every 10 steps, checkpoints every 250 (the newest 3 kept);
* evaluation (ring engine, seed 1000), DT's protocol: Atari actions *sampled* from the policy's softmax with
  greedy episodes played from the same seeds and reported beside them (``--no-eval-greedy`` skips those),
  MuJoCo deterministic; 2 RTG targets taken from the data (best episode return and 90th-percentile return,
  for datasets more3s collected), 16 episodes per target in 8 vectorised envs;
  the episode cap comes from the dataset (``eval_max_episode_steps="dataset"``): the recorded collection cap
  (1,000 here) for datasets more3s collected, none (the full-game protocol) for any other dataset;
  ``--eval-every N`` also scores the current weights on a few fixed episodes every N steps (curves only).

Baselines through the same code: ``--preset dt`` (RTG token, no memory, window sampler: Decision
Transformer on the same embeddings), ``--preset dt-published`` (Decision Transformer as published: its raw inputs,
RTG token and hyper-parameters per task family) and ``--preset bc`` (no RTG, no memory: behaviour cloning).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence, get_args

from more3s.envs import PROMPT_SETS, PromptSet
from more3s.hub import hf_available, loud
from more3s.model import ModelConfig
from more3s.model.attention import BACKENDS as ATTENTION_BACKENDS, AttentionBackend
from more3s.model.config import OBJECTIVES, RTG_MODES, Objective, RtgMode
from more3s.rollout.engine import ENGINE_MODES, EngineMode
from more3s.run import RunPaths

if TYPE_CHECKING:
    import torch

__all__ = [
    "TrainConfig", "PRESETS", "DT_PUBLISHED", "preset_overrides", "SAMPLERS", "EVAL_DTYPES", "model_config",
    "resolve_backbone", "parse_args", "load_config_file", "config_from_dict", "config_to_dict", "save_config",
]

SamplerChoice = Literal["auto", "window", "stream"]
SAMPLERS: tuple[SamplerChoice, ...] = get_args(SamplerChoice)
EvalDtypeChoice = Literal["auto", "fp32", "bf16", "fp16"]
EVAL_DTYPES: tuple[EvalDtypeChoice, ...] = get_args(EvalDtypeChoice)

# Choice values an older more3s wrote into config files, and their names now.
RENAMED_CHOICES = {("eval_engine", "recompute"): "banded"}

# Baseline presets: applied to the defaults (or the --config file) before command-line overrides.
PresetChoice = Literal["more3s", "dt", "bc", "dt-published"]
PRESETS: dict[PresetChoice, dict[str, Any]] = {
    "more3s": {},
    "dt": {"rtg_mode": "token", "memory_steps": 0, "sampler": "window", "name": "dt"},
    "bc": {"rtg_mode": "none", "memory_steps": 0, "sampler": "window", "name": "bc"},
    # Decision Transformer as published (Chen et al. 2021): its own inputs (Atari: a Nature CNN over 4 stacked 84x84
    # grayscale frames, trained end to end; MuJoCo: the standardized observation through a linear map), its RTG
    # token, no memory, a linear action head and no state prediction; per-family values in DT_PUBLISHED.
    "dt-published": {"encoder": "raw", "rtg_mode": "token", "memory_steps": 0, "sampler": "window",
                     "state_loss_weight": 0.0, "backbone": "dt-small", "name": "dt-published"},
}



@dataclass
class TrainConfig:
    """A more3s training run (and the evaluation it ends with)."""

    # --- run -------------------------------------------------------------------------------------
    name: str = "more3s"
    """Run name; the run directory is ``<out_dir>/<name>-<UTC timestamp>`` unless ``run_dir`` is set."""
    out_dir: Path = Path("runs")
    run_dir: Path | None = None
    """Explicit run directory (created; must be empty or absent unless resuming)."""
    resume: Path | None = None
    """Continue the run in this directory from its newest intact checkpoint."""
    preset: PresetChoice = "more3s"
    """Baseline settings applied before other overrides: dt = RTG token + no memory, bc = no RTG."""
    seed: int = 0
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""

    # --- data ------------------------------------------------------------------------------------
    env: str = "breakout"
    """Task (more3s.envs.TASKS): breakout, pong, qbert, seaquest, halfcheetah, hopper, walker2d."""
    dataset: str = "more3s/breakout/mixed-v2"
    """Local Minari id or path, remote Minari id (online only) or D4RL hdf5 path."""
    collect_if_missing: bool = True
    """Collect ``dataset`` with more3s.data.collect_dataset when it is a missing local Minari id."""
    collect_policy: str = "mixed"
    collect_episodes: int = 80
    """v2 of the default dataset has 80 episodes (v1: 40, its first 40): twice the data's few near-expert episodes
    lifted the main job's score (+8.4 raw on a validation seed, +2.1 over training seeds 0-2 at the reported one)
    where twice the training steps did not."""
    collect_max_episode_steps: int = 1000
    """Cap on agent steps per collected episode (~44k steps in all, ~35 s). Long enough that the data's good
    episodes (low epsilon) stand apart from the noise of a short game; v0 of the dataset had 400."""
    max_episodes: int | None = None
    """Use only the first N episodes of the dataset."""
    top_percent: float = 100.0
    """Train only on the best episodes by raw return that hold this percentage of the steps (100 = every episode).
    With ``--preset bc`` it is Decision Transformer's %BC baseline (e.g. 10 = 10 %BC). The behaviour statistics and
    the data's RTG targets stay those of every episode, so scores compare with the same data either way."""

    # --- encoder -----------------------------------------------------------------------------------
    encoder: str = "auto"
    """'auto' = unc-nlp/lxmert-base-uncased when present locally, else lxmert-tiny (loud notice)."""
    prompt_set: PromptSet = "original"
    cache_dir: Path | None = None
    """Embedding cache root (None: more3s.encoder.cache's default)."""
    encoder_threads: int | None = None
    """CPU threads while the frozen encoder runs (building the embedding cache, the final evaluation), whose
    large batches and region extraction scale with threads where training's small ops do not; training keeps
    torch's count (OMP_NUM_THREADS). None = every core this process may use, shared by torchrun's processes."""

    # --- model -------------------------------------------------------------------------------------
    backbone: str = "auto"
    """'auto' = pretrained gpt2 (6 layers) when present and on GPU, else dt-small (loud notice)."""
    n_layer: int | None = None
    """Override the backbone's geometry (None = the backbone's: dt-small 6/1/128, gpt2 6/12/768)."""
    n_head: int | None = None
    n_embd: int | None = None
    rtg_mode: RtgMode = "kv"
    objective: Objective = "semantic"
    window: int = 20
    """Steps per training window (each step = 2 tokens [a_{t-1}, s_t])."""
    memory_steps: int = 20
    """Steps of detached K/V memory carried across windows of the same episode (0 = off)."""
    memory_drop: float = 0.0
    """Chance that a stream forgets its memory before a training window (0 = only at episode starts). Without it a
    memory model learns to act from a short context only at episode starts, where it must act at any step."""
    sampler: SamplerChoice = "auto"
    """'auto' = stream when memory_steps > 0 (required), else window (random windows as DT)."""
    dropout: float = 0.1
    state_loss_weight: float = 1.0
    """lambda: weight of the state-embedding MSE (a mean over d_enc components, O(1) like the CE)."""
    normalize_states: bool = True
    """Standardize state embeddings per dimension with the dataset's mean/std (saved with the model)."""
    rtg_features: int = 1
    """F, the size of the RTG feature phi(R): 1 = R / rtg_scale; odd F > 1 adds sin/cos pairs."""
    attention_backend: AttentionBackend = "auto"

    # --- optimisation ------------------------------------------------------------------------------
    batch_size: int = 32
    """Sequences per optimizer step per process (global batch = batch_size x world size)."""
    max_steps: int = 1500
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int | None = None
    """Linear warm-up steps; None = 10 % of max_steps."""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Max global grad norm (0 = no clipping)."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU, where training runs in fp32)."""

    # --- logging / checkpoints ---------------------------------------------------------------------
    log_every: int = 10
    """Write a metrics.csv row (and TensorBoard scalars) every N optimizer steps."""
    ckpt_every: int = 250
    keep_checkpoints: int = 3
    progress: bool = True
    tensorboard: bool = True

    # --- evaluation (run at the end of training; python -m more3s.evaluate runs it alone) ---------
    eval_at_end: bool = True
    """Evaluate the final checkpoint and print the table + write report.png when training ends."""
    eval_episodes: int = 16
    eval_targets: tuple[float, ...] = ()
    """RTG targets (clipped-reward units for Atari). Empty: for datasets more3s collected (their metadata says
    so), the data's best and 90th-percentile episode returns; for any other dataset DT's published targets.
    Duplicates are evaluated once."""
    eval_primary_target_only: bool = False
    """At the end of training, play only the first (primary) target: its episodes are the same either way (it is
    played first, from the same seeds), so a grid that scores only the primary target saves the others' time."""
    eval_num_envs: int = 8
    """Vectorised evaluation environments per process (under torchrun every rank plays its share)."""
    eval_max_episode_steps: int | Literal["dataset", "full"] = "dataset"
    """Cap on agent steps per evaluation episode: 'dataset' = the collection cap recorded by more3s for datasets
    it collected (so scores compare with the equally capped behaviour returns), none for any other dataset;
    'full' = the task's full protocol (Atari: up to 108k frames); N >= 1 = a cap of N steps."""
    eval_seed: int = 1000
    eval_sample: bool = True
    """Sample discrete actions from the policy's softmax (DT's Atari protocol); --no-eval-sample: greedy only.
    MuJoCo actions are deterministic either way."""
    eval_greedy: bool = True
    """When sampling, also play greedy episodes from the same seeds and report them beside the sampled ones."""
    eval_engine: EngineMode = "ring"
    """ring = KV-cache engine; banded = its exact oracle (forward_banded); window = cache-less DT-style baseline."""
    eval_dtype: EvalDtypeChoice = "auto"
    """dtype of the rollout model step: auto = bf16 on a GPU, fp32 on the CPU (fp16 needs a GPU)."""
    eval_every: int | None = None
    """Every N optimizer steps, score the current weights on ``eval_every_episodes`` fixed episodes per target
    (protocol actions, seed ``eval_seed``) and log ``eval/`` rows to metrics.csv and TensorBoard (curves only:
    the final scores are the last checkpoint's). None = off."""
    eval_every_episodes: int = 4
    """Episodes per target for each --eval-every evaluation."""
    eval_video: int = 0
    """Record the first N evaluation episodes of every RTG target as videos under the run's videos/ (0 = off;
    a bare --eval-video means 1); report.png then shows frames of the best of them."""

    # -----------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field; return self so calls chain."""
        from more3s.envs import get_task

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"config: {name}={getattr(self, name)!r} is invalid: {why}")

        get_task(self.env)  # ValueError "unknown env ..." with the list of tasks
        choices = {"rtg_mode": RTG_MODES, "objective": OBJECTIVES, "sampler": SAMPLERS,
                   "eval_engine": ENGINE_MODES, "eval_dtype": EVAL_DTYPES, "preset": tuple(PRESETS),
                   "prompt_set": PROMPT_SETS, "attention_backend": ATTENTION_BACKENDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {', '.join(allowed)}")
        positive_ints = ("window", "batch_size", "max_steps", "log_every", "ckpt_every",
                         "keep_checkpoints", "eval_episodes", "eval_num_envs", "rtg_features",
                         "collect_episodes", "collect_max_episode_steps", "eval_every_episodes")
        for name in positive_ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an integer >= 1")
        v = self.encoder_threads
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad("encoder_threads", "must be an integer >= 1 (or None for every core this process may use)")
        w = self.warmup_steps
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0):
            raise bad("warmup_steps", "must be an integer >= 0 (or None for 10 % of max_steps)")
        v = self.memory_steps
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad("memory_steps", "must be an integer >= 0")
        v = self.memory_drop
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise bad("memory_drop", "must be a probability in [0, 1)")
        if v > 0 and self.memory_steps == 0:
            raise bad("memory_drop", "needs memory (memory_steps > 0)")
        v = self.eval_max_episode_steps
        if v not in ("dataset", "full") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad("eval_max_episode_steps", "must be an integer >= 1 (a cap in agent steps), 'dataset' "
                      "(the collection cap more3s recorded; none for other datasets) or 'full' (the full protocol)")
        v = self.eval_video
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad("eval_video", "must be an integer >= 0")
        v = self.eval_every
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad("eval_every", "must be a positive number of optimizer steps (or None for off)")
        if self.max_episodes is not None and self.max_episodes < 1:
            raise bad("max_episodes", "must be >= 1 (or None for all)")
        for name in ("lr", "beta1", "beta2", "weight_decay", "grad_clip", "dropout",
                     "state_loss_weight", "min_lr_ratio"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.state_loss_weight < 0:
            raise ValueError("config: weight_decay, grad_clip and state_loss_weight must be >= 0 "
                             f"(got {self.weight_decay}, {self.grad_clip}, {self.state_loss_weight})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"config: beta1/beta2 must be in [0, 1) (got {self.beta1}, {self.beta2})")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if not 0 < self.top_percent <= 100:
            raise bad("top_percent", "must be in (0, 100] (a percentage of the data's steps)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.warmup_steps is not None and self.warmup_steps > self.max_steps:
            raise bad("warmup_steps", f"must be <= max_steps ({self.max_steps})")
        if self.memory_steps > 0 and self.sampler == "window":
            raise bad("sampler", "memory_steps > 0 needs the stream sampler (memory is carried "
                      "across consecutive windows of an episode); use sampler=stream or auto")
        if self.memory_steps > 0 and self.rtg_mode == "token":
            raise bad("memory_steps", "rtg_mode=token (DT baseline) runs without memory; "
                      "set memory_steps=0 (--preset dt does)")
        if self.rtg_features % 2 == 0:
            raise bad("rtg_features", "must be 1 or odd (R plus sin/cos pairs)")
        for name in ("n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(name, "must be an integer >= 1 (or None for the backbone's)")
        if self.n_embd is not None and self.n_head is not None and self.n_embd % self.n_head:
            raise bad("n_embd", f"must be divisible by n_head={self.n_head}")
        if any(not math.isfinite(t) for t in self.eval_targets):
            raise bad("eval_targets", "targets must be finite numbers")
        if self.resume is not None and self.run_dir is not None and \
                Path(self.resume).resolve() != Path(self.run_dir).resolve():
            raise ValueError(f"config: resume={self.resume} and run_dir={self.run_dir} disagree")
        return self

    @property
    def warmup(self) -> int:
        """Warm-up steps actually used."""
        return self.max_steps // 10 if self.warmup_steps is None else self.warmup_steps

    @property
    def sampler_kind(self) -> str:
        """The sampler actually used ('window' or 'stream')."""
        if self.sampler != "auto":
            return self.sampler
        return "stream" if self.memory_steps > 0 else "window"


# DT's published hyper-parameters per task family (its Atari and gym code). Warm-up stays the trainer's 10 % of
# the steps (DT: 10k of 100k steps on MuJoCo; ~10k tokens on Atari).
DT_PUBLISHED: dict[str, dict[str, Any]] = {
    "atari": {"objective": "linear", "window": 30, "batch_size": 128, "n_layer": 6, "n_head": 8, "n_embd": 128,
              "lr": 6e-4, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1, "grad_clip": 1.0, "dropout": 0.1},
    "pong": {"window": 50, "batch_size": 512},  # DT's Pong exception, on top of its Atari values
    "mujoco": {"window": 20, "batch_size": 64, "n_layer": 3, "n_head": 1, "n_embd": 128, "lr": 1e-4,
               "beta1": 0.9, "beta2": 0.999, "weight_decay": 1e-4, "grad_clip": 0.25, "dropout": 0.1},
}


def model_config(cfg: TrainConfig, **derived: Any) -> ModelConfig:
    """The ModelConfig of a run: every ModelConfig field the TrainConfig shares by name, plus what the run derived
    (the data's width and actions, the resolved backbone, the timestep table, ...), which takes precedence."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(ModelConfig)
              if f.name not in derived and hasattr(cfg, f.name)}
    return ModelConfig(**shared, **derived)


def resolve_backbone(name: str, device: torch.device) -> str:
    """'auto' -> pretrained gpt2 (6 layers) when present and on GPU; else dt-small (loud notice)."""
    if name != "auto":
        return name
    present = hf_available("gpt2")
    if present and device.type == "cuda":
        return "gpt2"
    why = ("pretrained gpt2 is not available offline" if not present else
           "training runs on CPU, where GPT-2 (768 wide) does not fit the 15-minute budget")
    loud(f"backbone=auto: {why}; using 'dt-small' (width 128, 1 head, 6 layers, random init: the "
         f"paper's small variant). Pass --backbone gpt2 to force the pretrained backbone.")
    return "dt-small"


def preset_overrides(preset: str, env: str) -> dict[str, Any]:
    """The TrainConfig values ``preset`` sets for task ``env`` (dt-published depends on the task family)."""
    from more3s.envs import get_task

    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: choose one of {', '.join(PRESETS)}")
    out = dict(PRESETS[preset])
    if preset == "dt-published":
        task = get_task(env)
        out.update(DT_PUBLISHED[task.family])
        out.update(DT_PUBLISHED.get(task.name, {}))
    return out


# --- (de)serialisation -------------------------------------------------------------------------------
def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a json/yaml value to the field's declared type (Path, tuple, Optional...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise TypeError(f"config: {name} may not be null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for member in inner:  # e.g. int | Literal["dataset", "full"]: the first member that accepts the value
            try:
                return _coerce(name, member, value)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise TypeError(f"config: {name}={value!r} matches none of its types ({'; '.join(errors)})")
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise TypeError(f"config: {name} must be a path string, got {type(value).__name__}")
        return Path(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config: {name} must be a list, got {type(value).__name__}")
        (elem, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(name, elem, v) for v in value)
    if origin is Literal:
        if (name, value) in RENAMED_CHOICES:
            raise ValueError(f"config: {name}={value!r} was renamed {RENAMED_CHOICES[name, value]!r}; edit the "
                             f"config file (a run saved before the rename)")
        if value not in typing.get_args(tp):
            raise ValueError(f"config: {name}={value!r} must be one of {typing.get_args(tp)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config: {name} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"config: {name} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config: {name} must be true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"config: {name} must be a string, got {value!r}")
        return value
    return value


def config_from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a dict (unknown keys are an error), starting from ``base``."""
    if not isinstance(data, dict):
        raise TypeError(f"config: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values = {k: _coerce(k, hints[k], v) for k, v in data.items()}
    return dataclasses.replace(base or TrainConfig(), **values)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def load_config_file(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Load a saved config (.json, .yaml or .yml)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"config file {path} could not be parsed: {e}") from e
    return config_from_dict(data, base)


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    """Write config.json and config.yaml into the run directory (atomically)."""
    import yaml

    from more3s.atomic import atomic_write_text

    d = config_to_dict(cfg)
    paths = RunPaths(Path(run_dir))
    atomic_write_text(paths.config_json, json.dumps(d, indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths.config_yaml, yaml.safe_dump(d, sort_keys=True))


# --- command line ----------------------------------------------------------------------------------
def _pop_flag(argv: list[str], flag: str) -> str | None:
    """Remove ``--flag VALUE`` / ``--flag=VALUE`` from argv; return VALUE (last one wins)."""
    value = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            if i + 1 >= len(argv):
                raise SystemExit(f"error: {flag} needs a value")
            value = argv[i + 1]
            del argv[i:i + 2]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
            del argv[i]
        else:
            i += 1
    return value


def _peek_flag(argv: Sequence[str], flag: str) -> str | None:
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults <- --resume DIR's config.json | --config FILE <- --preset <- flags; validated."""
    import tyro

    from more3s.video import expand_bare_flag

    argv = expand_bare_flag(sys.argv[1:] if argv is None else argv, "--eval-video", "1")
    config_file = _pop_flag(argv, "--config")
    resume = _peek_flag(argv, "--resume")
    base = TrainConfig()
    if resume is not None:
        saved = RunPaths(Path(resume)).config_json
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {resume}: no config.json there (not a run directory?)")
        base = load_config_file(saved)
    if config_file is not None:
        base = load_config_file(config_file, base)
    preset = _peek_flag(argv, "--preset")
    if preset is not None:
        values = preset_overrides(preset, _peek_flag(argv, "--env") or base.env)
        base = dataclasses.replace(base, preset=typing.cast(PresetChoice, preset), **values)
    cfg = tyro.cli(TrainConfig, default=base, args=argv,
                   description="Train a MORE-3S (or DT / BC baseline) model; see more3s.config.")
    if cfg.resume is not None:
        cfg = dataclasses.replace(cfg, run_dir=Path(cfg.resume))
    return cfg.validate()
