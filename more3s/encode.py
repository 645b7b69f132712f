"""Precompute the embedding cache of a dataset: ``python -m more3s.encode --dataset SRC --encoder NAME``.

Options: ``--prompt-set {original,synonym,contextual}``, ``--cache-dir DIR`` (default $MORE3S_CACHE or
~/.cache/more3s/embeddings), ``--task``, ``--max-episodes``, ``--device``, ``--chunk-rows``,
``--batch-size``, ``--fallback lxmert-tiny|lxmert-base-random`` (use it, loudly, when the pretrained
encoder is missing). Prints the encoder that ran, the cache directory and whether it was a hit; a
second identical call encodes nothing. ``torchrun --nproc_per_node N -m more3s.encode ...`` shards
the chunks across processes (gloo on CPU, nccl on GPU); the result equals a one-process run.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields

from more3s.envs import PromptSet
from more3s.encoder.lxmert import PRETRAINED_ID

__all__ = ["EncodeConfig", "main"]


@dataclass
class EncodeConfig:
    dataset: str  # Minari id or path, or a D4RL hdf5 path (more3s.data.load_episodes)
    encoder: str = PRETRAINED_ID  # or a local directory, lxmert-tiny, lxmert-base-random
    prompt_set: PromptSet = "original"  # the paper's prompt ablation
    cache_dir: str | None = None  # default: $MORE3S_CACHE or ~/.cache/more3s/embeddings
    task: str | None = None  # inferred from the dataset when omitted
    max_episodes: int | None = None
    device: str | None = None  # default: cuda (per local rank) when available, else cpu
    chunk_rows: int = 4096  # states per chunk file (the unit of resume and sharding)
    batch_size: int | None = None  # states per encoder call (default: the encoder's)
    fallback: str | None = None  # random-init encoder to use, with a warning, if the pretrained one is missing
    progress: bool = True


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(EncodeConfig, args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .distributed import setup_distributed

    try:
        dist_info, device = setup_distributed(cfg.device or "auto")
    except ValueError as e:
        print(f"error: --device: {e}", file=sys.stderr)
        return 2
    rank, world = dist_info.rank, dist_info.world_size
    from .encoder import CacheConfig, build_or_load_cache, load_encoder

    try:
        encoder = load_encoder(cfg.encoder, device=str(device), fallback=cfg.fallback)
        cache = build_or_load_cache(
            cfg.dataset, encoder, task=cfg.task, prompt_set=cfg.prompt_set, cache_dir=cfg.cache_dir,
            max_episodes=cfg.max_episodes,
            config=CacheConfig(**{f.name: getattr(cfg, f.name) for f in fields(CacheConfig) if hasattr(cfg, f.name)}),
        )
    except (OSError, ValueError, RuntimeError) as e:  # missing weights/dataset, bad input, corrupt cache
        print(f"more3s.encode: error: {e}", file=sys.stderr)
        return 2
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if rank == 0:
        print(f"encoder: {encoder.describe()}")
        print(f"states: {cache.states.shape[0]} in {cache.num_episodes} episodes, d_enc {cache.states.shape[1]}, "
              f"action table {tuple(cache.action_table.shape)} ({cfg.prompt_set})")
        print(f"cache: {cache.path}")
        print(f"hit: {'yes' if cache.hit else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
