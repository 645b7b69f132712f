"""torchrun setup shared by the entry points that scale out (train, evaluate, encode): one place that reads
torchrun's environment, picks the device per local rank, starts the process group (nccl on CUDA,
gloo on CPU) and answers "which rank of how many is this process" (:func:`rank_and_world`)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

__all__ = ["DistInfo", "cores_per_process", "rank_and_world", "resolve_device", "setup_distributed", "torch_threads"]


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


def cores_per_process() -> int:
    """The cores this process may run on, shared evenly by the processes torchrun started on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to ``n`` (None: ``cores_per_process()``) inside the block, restored after."""
    before = torch.get_num_threads()
    n = cores_per_process() if n is None else int(n)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
