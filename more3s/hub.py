"""Pretrained weights or a fallback: whether Hugging Face weights can be loaded offline (the one check behind
every 'auto' that prefers pretrained weights: the encoder, the backbone, the grid's pretrained arms) and the
loud notice printed when a fallback changes what the scores mean."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["hf_available", "loud"]


def hf_available(name: str) -> bool:
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


def loud(msg: str) -> None:
    """A notice framed so that it cannot be missed in a log (a fallback that changes what the scores mean)."""
    bar = "!" * 100
    print(f"{bar}\n!! {msg}\n{bar}", file=sys.stderr, flush=True)
