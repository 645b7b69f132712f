"""Hyper-parameters of the MORE-3S sequence model (DESIGN §3), one flat dataclass.

The model receives this config whole (nanoGPT habit). Geometry (layers, heads, width) defaults to the
named backbone's (``BACKBONES``); every other field has a "why" comment where the value is not obvious.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "BACKBONES", "RTG_MODES", "OBJECTIVES"]

# Named geometries. "gpt2" = the first 6 of GPT-2 small's 12 layers (the paper's backbone); the
# random twin has the same shape; "dt-small" is the paper's small variant (width 128, 1 head, 6 layers).
BACKBONES: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 6, "n_head": 12, "n_embd": 768},
    "gpt2-6l-random": {"n_layer": 6, "n_head": 12, "n_embd": 768},
    "dt-small": {"n_layer": 6, "n_head": 1, "n_embd": 128},
}
RTG_MODES = ("kv", "embed", "token", "none")
# semantic: cosine to the action table (MORE-3S); mse: the paper literally; linear: a plain linear head on the
# same state tokens (discrete actions; the baseline the semantic head is measured against)
OBJECTIVES = ("semantic", "mse", "linear")


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
    max_timestep: int = 10_000  # timestep embedding rows; larger timesteps are clipped
    rtg_mode: str = "kv"
    rtg_scale: float = 1.0  # Atari 1, MuJoCo 1000 (DESIGN §4)
    rtg_features: int = 1  # F: 1 = R/scale; odd F > 1 adds (F-1)/2 sin/cos pairs at octave frequencies
    objective: str = "semantic"
    state_loss_weight: float = 1.0  # lambda; the MSE is a mean over d_enc components, so O(1) like the CE
    dropout: float = 0.1  # residual/embedding dropout, as GPT-2 and DT (no attention dropout: fused kernel)
    bias: bool = True  # GPT-2 has biases everywhere; needed to load its weights
    layer_norm_eps: float = 1e-5  # GPT-2's value
    init_temperature: float = 0.07  # cosine-logit temperature at init (CLIP's), learned afterwards
    attention_backend: str = "auto"  # more_attention backend: auto | reference | triton
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
        for name in ("d_enc", "act_dim", "n_layer", "n_head", "n_embd", "window", "max_timestep"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if not isinstance(self.memory_steps, int) or self.memory_steps < 0:
            raise ValueError(f"memory_steps={self.memory_steps!r}: expected an int >= 0")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
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
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def context_steps(self) -> int:
        """S = window + memory steps: what a rollout token sees (DESIGN §3 rollout semantics)."""
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
