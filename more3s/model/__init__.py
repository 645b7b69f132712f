"""more3s.model: the MORE-3S sequence model.

``model.py`` holds the whole model (tokens, RTG-in-K/V attention, memory, heads, rollout step);
``config.py`` its hyper-parameters; ``backbones.py`` the named geometries and the GPT-2 weight mapping;
``attention.py`` the attention contract (reference path + Triton dispatch).
"""

from more3s.model.backbones import BACKBONES, build_model, load_gpt2_weights
from more3s.model.config import ModelConfig
from more3s.model.model import Memory, ModelOutput, MoreModel, banded_attention_mask, rtg_features

__all__ = [
    # config and construction
    "ModelConfig",
    "BACKBONES",
    "build_model",
    "load_gpt2_weights",
    # the model and its records
    "MoreModel",
    "Memory",
    "ModelOutput",
    "banded_attention_mask",
    "rtg_features",
]
