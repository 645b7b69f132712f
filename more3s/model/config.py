"""Hyper-parameters of the MORE-3S sequence model, one flat dataclass.

The model receives this config whole (nanoGPT habit). Geometry (layers, heads, width) defaults to the
named backbone's (``BACKBONES``); every other field has a "why" comment where the value is not obvious.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from more3s.model.attention import AttentionBackend

__all__ = ["ModelConfig", "BACKBONES", "RtgMode", "RTG_MODES", "Objective", "OBJECTIVES", "StateEmbedder",
           "STATE_EMBEDDERS"]

# Named geometries. "gpt2" = the first 6 of GPT-2 small's 12 layers (the paper's backbone); the
# random twin has the same shape; "dt-small" is the paper's small variant (width 128, 1 head, 6 layers).
BACKBONES: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 6, "n_head": 12, "n_embd": 768},
    "gpt2-6l-random": {"n_layer": 6, "n_head": 12, "n_embd": 768},
    "dt-small": {"n_layer": 6, "n_head": 1, "n_embd": 128},
}
# kv: RTG in every layer's K/V (MORE-3S); embed: added to the step's tokens; token: DT's RTG token; none: BC
RtgMode = Literal["kv", "embed", "token", "none"]
RTG_MODES: tuple[RtgMode, ...] = get_args(RtgMode)
# semantic: cosine to the action table (MORE-3S); mse: the paper literally; linear: a plain linear head on the
# same state tokens (discrete actions; the baseline the semantic head is measured against)
Objective = Literal["semantic", "mse", "linear"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)
# How the state input becomes a token: a linear map of the (frozen) encoder's embedding, or DT's Nature CNN over
# stacked frames trained end to end (``--encoder raw`` on Atari: d_enc = frame_stack * frame_size**2 pixels).
StateEmbedder = Literal["linear", "nature_cnn"]
STATE_EMBEDDERS: tuple[StateEmbedder, ...] = get_args(StateEmbedder)


@dataclass
class ModelConfig:
    d_enc: int  # width of the frozen encoder's state/action embeddings
    act_dim: int  # discrete: number of actions A; continuous: action dimensions A
    discrete: bool = True
    backbone: str = "dt-small"
    n_layer: int | None = None  # None -> the backbone's named geometry
    n_head: int | None = None
    n_embd: int | None = None
    window: int = 30  # K steps per training window (DT's Atari context)
    memory_steps: int = 0  # M steps of detached K/V from earlier windows; 0 = off
    # Largest timestep with an embedding row (max_timestep + 1 rows); larger timesteps map to it, as DT clamps to
    # max_ep_len. The trainer sets it to the largest timestep training sees, so no untrained row is ever read.
    max_timestep: int = 10_000
    rtg_mode: RtgMode = "kv"
    rtg_scale: float = 1.0  # Atari 1, MuJoCo 1000
    rtg_features: int = 1  # F: 1 = R/scale; odd F > 1 adds (F-1)/2 sin/cos pairs at octave frequencies
    objective: Objective = "semantic"
    state_loss_weight: float = 1.0  # lambda; the MSE is a mean over d_enc components, so O(1) like the CE
    dropout: float = 0.1  # residual/embedding dropout, as GPT-2 and DT (no attention dropout: fused kernel)
    bias: bool = True  # GPT-2 has biases everywhere; needed to load its weights
    layer_norm_eps: float = 1e-5  # GPT-2's value
    init_temperature: float = 0.07  # cosine-logit temperature at init (CLIP's), learned afterwards
    state_embedder: StateEmbedder = "linear"
    frame_stack: int = 1  # nature_cnn: frames per state input (DT: 4)
    frame_size: int = 84  # nature_cnn: frames are frame_size x frame_size grayscale (DT: 84)
    attention_backend: AttentionBackend = "auto"  # more_attention backend: auto | reference | triton
    backbone_path: str = "gpt2"  # gpt2 only: local dir or hub id for GPT2Model.from_pretrained
    require_pretrained: bool = False  # gpt2 only: error instead of a logged random-init fallback

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r}: expected one of {sorted(BACKBONES)}")
        geometry = BACKBONES[self.backbone]
        for key, value in geometry.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.rtg_mode not in RTG_MODES:
            raise ValueError(f"rtg_mode={self.rtg_mode!r}: expected one of {RTG_MODES}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}: expected one of {OBJECTIVES}")
        if self.objective == "linear" and not self.discrete:
            raise ValueError("objective='linear' is a head over discrete actions; continuous actions use tanh + MSE")
        if self.state_embedder not in STATE_EMBEDDERS:
            raise ValueError(f"state_embedder={self.state_embedder!r}: expected one of {STATE_EMBEDDERS}")
        if self.state_embedder == "nature_cnn" and self.d_enc != self.frame_stack * self.frame_size ** 2:
            raise ValueError(f"state_embedder='nature_cnn' reads {self.frame_stack} frames of {self.frame_size}^2 "
                             f"pixels: d_enc must be {self.frame_stack * self.frame_size ** 2}, got {self.d_enc}")
        for name in ("d_enc", "act_dim", "n_layer", "n_head", "n_embd", "window", "max_timestep"):
            value = getattr(self, name)
            least = 0 if name == "max_timestep" else 1  # one-step episodes train only timestep 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name}={value!r}: expected an int >= {least}")
        if not isinstance(self.memory_steps, int) or self.memory_steps < 0:
            raise ValueError(f"memory_steps={self.memory_steps!r}: expected an int >= 0")
        _, n_head, n_embd = self.geometry
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        if self.rtg_features < 1 or self.rtg_features % 2 == 0:
            raise ValueError(f"rtg_features={self.rtg_features}: expected 1 or an odd number (R + sin/cos pairs)")
        if not self.rtg_scale > 0:
            raise ValueError(f"rtg_scale={self.rtg_scale}: expected > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: expected in [0, 1)")
        if not self.init_temperature > 0:
            raise ValueError(f"init_temperature={self.init_temperature}: expected > 0")

    @property
    def tokens_per_step(self) -> int:
        """2 tokens [a_{t-1}, s_t] per step; 3 with DT's separate RTG token [R_t, a_{t-1}, s_t]."""
        return 3 if self.rtg_mode == "token" else 2

    @property
    def standardizes_states(self) -> bool:
        """Whether state inputs go through the dataset's standardization (mean / std): embeddings and raw
        observations do; the Nature CNN reads pixels / 255, as DT, and has no state head to score."""
        return self.state_embedder == "linear"

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(n_layer, n_head, n_embd), resolved: the fields are None only until ``__post_init__`` fills them in."""
        L, H, C = self.n_layer, self.n_head, self.n_embd
        if L is None or H is None or C is None:  # pragma: no cover - __post_init__ resolves them
            raise ValueError("ModelConfig geometry is unresolved")
        return L, H, C

    @property
    def head_dim(self) -> int:
        _, H, C = self.geometry
        return C // H

    @property
    def context_steps(self) -> int:
        """S = window + memory steps: what a rollout token sees (the rollout semantics: README, 'Rollouts')."""
        return self.window + self.memory_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)
