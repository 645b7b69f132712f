"""Rollouts: the engine that plays batched, RTG-conditioned episodes with a MoreModel (``engine.py``).

The engine sits above the model and drives it through its rollout API; the ring-buffer KV cache it steps
(``more3s.model.kv_cache``, over the torch ops of ``more3s.model.ring_ops``) belongs to the model.
"""

from more3s.rollout.engine import ENGINE_MODES, EngineMode, RolloutEngine, RolloutResult, StateEncoder

__all__ = ["ENGINE_MODES", "EngineMode", "RolloutEngine", "RolloutResult", "StateEncoder"]
