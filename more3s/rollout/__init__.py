"""Rollouts: the ring-buffer KV cache (csrc/ kernels behind torch ops) for batched model steps."""

from more3s.rollout.kv_cache import BACKENDS, RingKVCache, RingKVCacheConfig, resolve_backend

__all__ = ["BACKENDS", "RingKVCache", "RingKVCacheConfig", "resolve_backend"]
