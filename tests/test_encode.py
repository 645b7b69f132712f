"""``python -m more3s.encode`` on a real Minari dataset: concurrent builders, hits, and torchrun sharding."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from more3s.encoder import CacheConfig, build_or_load_cache, open_cache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cheetah_dataset():
    from more3s.data import collect_dataset

    collect_dataset("halfcheetah", "random", 3, "test/encoder-cheetah-v0", seed=0, max_episode_steps=12,
                    progress=False)
    return "test/encoder-cheetah-v0"


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([*args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _communicate(p: subprocess.Popen) -> str:
    try:
        out, _ = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the whole group: torchrun and its workers
        out, _ = p.communicate()
        pytest.fail(f"{p.args} timed out:\n{out}")
    return out


def _finish(p: subprocess.Popen) -> tuple[str, str]:
    out = _communicate(p)
    assert p.returncode == 0, out
    (path,) = re.findall(r"^cache: (.+)$", out, re.M)
    (hit,) = re.findall(r"^hit: (yes|no)$", out, re.M)
    assert re.search(r"^encoder: lxmert-tiny \(random init", out, re.M), out
    return path, hit


def test_cli_concurrent_builds_hit_and_torchrun(cheetah_dataset, tmp_path, tiny):
    args = ["--dataset", cheetah_dataset, "--encoder", "lxmert-tiny", "--chunk-rows", "8", "--batch-size", "8"]
    one = str(tmp_path / "one")
    # two processes build the same key at once: no corruption, one result
    procs = [_cli(sys.executable, "-m", "more3s.encode", *args, "--cache-dir", one) for _ in range(2)]
    (p1, _), (p2, _) = (_finish(p) for p in procs)
    assert p1 == p2 and p1.startswith(one)
    first = open_cache(p1)  # verifies every checksum
    assert first.states.shape == (39, 1280) and first.num_episodes == 3
    # a second identical call encodes nothing
    path, hit = _finish(_cli(sys.executable, "-m", "more3s.encode", *args, "--cache-dir", one))
    assert path == p1 and hit == "yes"
    # in-process build with the same settings: the same key and the same numbers
    inproc = build_or_load_cache(cheetah_dataset, tiny, cache_dir=tmp_path / "inproc",
                                 config=CacheConfig(chunk_rows=8, batch_size=8, progress=False))
    assert inproc.path.name == Path(p1).name
    np.testing.assert_array_equal(np.asarray(inproc.states), np.asarray(first.states))
    # torchrun with 2 processes (gloo): shards the 5 chunks, result identical to one process
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    two = str(tmp_path / "two")
    path2, hit2 = _finish(_cli(torchrun, "--standalone", "--nproc_per_node", "2", "-m", "more3s.encode",
                               *args, "--cache-dir", two, "--no-progress"))
    assert hit2 == "no" and Path(path2).name == Path(p1).name
    np.testing.assert_array_equal(np.asarray(open_cache(path2).states), np.asarray(first.states))
    np.testing.assert_array_equal(open_cache(path2).action_table, first.action_table)


def test_cli_rejects_bad_arguments(tmp_path):
    p = _cli(sys.executable, "-m", "more3s.encode", "--dataset", "test/none-v0", "--encoder", "lxmert-tiny",
             "--prompt-set", "haiku", "--cache-dir", str(tmp_path))
    out = _communicate(p)
    assert p.returncode != 0 and "haiku" in out
