"""torchrun setup shared by the entry points that scale out (train, evaluate, encode): one place that reads
torchrun's environment, picks the device per local rank, starts the process group (nccl on CUDA,
gloo on CPU) and answers "which rank of how many is this process" (:func:`rank_and_world`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistInfo", "rank_and_world", "resolve_device", "setup_distributed"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialized torch.distributed group (torchrun), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def setup_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment; init the process group (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist = DistInfo(rank, world, local)
    device = resolve_device(device_pref, local if world > 1 else None)
    if dist.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
    return dist, device


def resolve_device(pref: str, local_rank: int | None = None) -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> a device; plain "cuda" means this process's local rank."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={pref!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank or 0)
    elif dev.type != "cpu":
        raise ValueError(f"device={pref!r}: expected auto, cpu, cuda or cuda:N")
    return dev
