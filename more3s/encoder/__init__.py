"""The frozen multimodal encoder: regions of a state, frozen LXMERT, and the embedding cache.

``regions`` turns frames (Atari objects, a grid) or MuJoCo observations (robot bodies) into LXMERT's
visual input; ``lxmert`` embeds states and action prompts into one space; ``resolve`` picks the encoder
``encoder=auto`` means (the pretrained one when its weights are here); ``cache`` stores state
embeddings of a whole dataset once, memory-mapped, so training never runs the encoder.
"""

from .cache import (
    FORMAT_VERSION, CacheConfig, CacheCorruptError, ChunkedStates, EmbeddingCache, build_or_load_cache,
    cache_key, dataset_fingerprint, default_cache_dir, open_cache,
)
from .lxmert import (
    PRETRAINED_ID, RANDOM_CONFIGS, EncoderConfig, EncoderNotFoundError, FrozenLxmert, load_encoder,
)
from .resolve import FALLBACK_ENCODER, resolve_encoder
from .regions import (
    MAX_BODIES, ComponentMemo, RegionConfig, Regions, atari_regions, extract_regions, grid_regions, image_feature_dim,
    mujoco_regions, region_projection,
)
from .tokenizer import TokenizerError, build_tokenizer, build_vocab, check_tokenizer, project_texts

__all__ = [
    # regions
    "RegionConfig", "Regions", "extract_regions", "atari_regions", "grid_regions", "mujoco_regions",
    "region_projection", "image_feature_dim", "MAX_BODIES", "ComponentMemo",
    # encoder
    "PRETRAINED_ID", "RANDOM_CONFIGS", "EncoderConfig", "FrozenLxmert", "load_encoder",
    "EncoderNotFoundError", "resolve_encoder", "FALLBACK_ENCODER",
    # tokenizer
    "TokenizerError", "build_tokenizer", "build_vocab", "check_tokenizer", "project_texts",
    # cache
    "FORMAT_VERSION", "CacheConfig", "EmbeddingCache", "ChunkedStates", "CacheCorruptError",
    "build_or_load_cache", "open_cache", "cache_key", "dataset_fingerprint", "default_cache_dir",
]
