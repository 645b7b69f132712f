"""more3s.model: the MORE-3S sequence model.

``model.py`` holds the whole model (tokens, RTG-in-K/V attention, memory, heads, rollout step);
``config.py`` its hyper-parameters and choice tuples; ``backbones.py`` the named geometries and the GPT-2 weight
mapping; ``attention.py`` the attention contract (reference path + Triton dispatch, the one RTG injection and
the one masked-attention reference); ``kv_cache.py`` the ring-buffer KV cache a rollout ``step`` appends to, and
``ring_ops.py`` its two ops (the only door to the compiled ``torch.ops.more3s``, and their PyTorch twins).
The engine that drives the model lives above it, in ``more3s.rollout``.
"""

from more3s.model.backbones import BACKBONES, build_model, load_gpt2_weights
from more3s.model.config import OBJECTIVES, RTG_MODES, ModelConfig, Objective, RtgMode
from more3s.model.kv_cache import RingKVCache, RingKVCacheConfig
from more3s.model.model import Memory, ModelOutput, MoreModel, banded_attention_mask, rtg_features

__all__ = [
    # config and construction
    "ModelConfig",
    "BACKBONES",
    "RTG_MODES",
    "RtgMode",
    "OBJECTIVES",
    "Objective",
    "build_model",
    "load_gpt2_weights",
    # the model and its records
    "MoreModel",
    "Memory",
    "ModelOutput",
    "banded_attention_mask",
    "rtg_features",
    # the rollout cache
    "RingKVCache",
    "RingKVCacheConfig",
]
