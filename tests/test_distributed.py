"""torchrun setup without torchrun: a single-process DistInfo, no process group, the device from a preference."""

import pytest
import torch

from more3s.distributed import (DistInfo, cores_per_process, rank_and_world, resolve_device, setup_distributed,
                                torch_threads)

TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


def test_setup_without_torchrun_is_one_process_on_cpu(no_torchrun):
    dist, device = setup_distributed("cpu")
    assert dist == DistInfo(rank=0, world_size=1, local_rank=0)
    assert not dist.enabled and dist.main
    assert device == torch.device("cpu")
    assert not torch.distributed.is_initialized()  # a single process starts no group
    dist.barrier()  # a no-op without a group


def test_setup_reads_rank_but_starts_no_group_for_a_world_of_one(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "3")
    dist, device = setup_distributed("cpu")
    assert (dist.rank, dist.world_size, dist.local_rank) == (0, 1, 3)
    assert not dist.enabled
    assert device.type == "cpu"
    assert not torch.distributed.is_initialized()


def test_setup_passes_a_bad_device_on_as_its_error(no_torchrun):
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        setup_distributed("mps")


def test_rank_and_world_without_a_process_group():
    assert not torch.distributed.is_initialized()
    assert rank_and_world() == (0, 1)


@pytest.mark.parametrize("rank,world,enabled,main", [(0, 1, False, True), (0, 4, True, True),
                                                     (2, 4, True, False)])
def test_distinfo_enabled_and_main(rank, world, enabled, main):
    d = DistInfo(rank=rank, world_size=world, local_rank=rank)
    assert d.enabled is enabled
    assert d.main is main


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", local_rank=5) == torch.device("cpu")  # the local rank picks only a GPU
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


def test_resolve_device_auto_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")


@pytest.mark.parametrize("pref", ["cuda", "cuda:1"])
def test_resolve_device_cuda_without_cuda_is_a_clear_error(monkeypatch, pref):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"device='{pref}' requested but CUDA is not available"):
        resolve_device(pref)


def test_resolve_device_plain_cuda_means_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch.device() itself needs no GPU
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)  # an explicit index wins


@pytest.mark.parametrize("pref", ["mps", "meta"])
def test_resolve_device_other_device_types_are_rejected(pref):
    with pytest.raises(ValueError, match=rf"device='{pref}': expected auto, cpu, cuda or cuda:N"):
        resolve_device(pref)


def test_resolve_device_unparsable_string_is_an_error():
    with pytest.raises(RuntimeError, match="gpu0"):  # torch.device's own message names the bad string
        resolve_device("gpu0")


def test_cores_are_shared_by_the_processes_torchrun_started_on_the_node(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = cores_per_process()
    assert alone >= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cores_per_process() == max(1, alone // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(alone * 4))  # more processes than cores: still one thread each
    assert cores_per_process() == 1


@pytest.mark.parametrize("n", [None, 1, 3])
def test_torch_threads_sets_the_count_inside_and_restores_it_after(monkeypatch, n):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(n) as inside:
            assert inside == (cores_per_process() if n is None else n) == torch.get_num_threads()
            raise RuntimeError("inside")  # restored on the way out of an error, too
    assert torch.get_num_threads() == before
