"""Resume after a KILLED precompute (issue 3): SIGKILL ``python -m more3s.encode`` mid-build, run it again.

test_cache.py injects a Python exception through ``on_chunk``; that unwinds ``finally`` blocks and
releases locks politely. A SIGKILL does none of that: the process dies between any two
instructions, possibly inside an atomic write (leaving a stray ``.tmp`` beside a chunk, which the
cache ignores) or holding a chunk's file lock (released by the OS). This test checks what the cache
promises for that case: the next build keeps every chunk that was complete on disk (same file,
never rewritten), encodes only the rest, and ends bit-identical to an uninterrupted build.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from more3s.encoder import CacheConfig, build_or_load_cache, open_cache

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[2]
DATASET = "test/encoder-kill-cheetah-v0"
EPISODES, STEPS = 4, 99  # 4 x (99 + 1) = 400 observations
# 100 chunks of one encoder call each (~15 ms here, >= ~3 ms on a fast CPU): the build runs for
# ~1.5 s (>= 0.3 s) after its first chunk, a wide window for a 2 ms poll to land the kill in.
CHUNK_ROWS, BATCH = 4, 4
POLL_S = 0.002
TIMEOUT_S = 120.0


def _encode_cmd(cache_dir: Path) -> list[str]:
    # --device cpu: the reference build below runs on the CPU too (the cache key covers the weights
    # and dtype but not the device, and CUDA kernels are not bit-identical to CPU ones).
    return [sys.executable, "-m", "more3s.encode", "--dataset", DATASET, "--encoder", "lxmert-tiny",
            "--cache-dir", str(cache_dir), "--chunk-rows", str(CHUNK_ROWS), "--batch-size", str(BATCH),
            "--device", "cpu", "--no-progress"]


def _start(cache_dir: Path, log: Path) -> subprocess.Popen:
    # The env passes through whole: MINARI_DATASETS_PATH is this test's temp root (the root conftest.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(_encode_cmd(cache_dir), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _complete_chunks(key_dir: Path) -> dict[int, tuple[int, int]]:
    """{chunk index: (inode, mtime_ns) of its .npy} for chunks whose sidecar .json exists.

    The sidecar is renamed into place only after the .npy was (more3s/encoder/cache.py ``_save_npy``),
    so a present sidecar marks a chunk the killed run had finished.
    """
    out = {}
    for side in (key_dir / "chunks").glob("states_*.json"):
        st = side.with_suffix(".npy").stat()
        out[int(side.stem.split("_")[1])] = (st.st_ino, st.st_mtime_ns)
    return out


def _kill_after_first_chunk(cache_dir: Path, log: Path) -> Path:
    """Start the CLI, SIGKILL it as soon as one chunk is complete; return the cache key directory."""
    p = _start(cache_dir, log)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            done = list(cache_dir.glob("*/chunks/states_*.json"))
            if done:
                break
            if p.poll() is not None:
                pytest.fail(f"encode exited (rc {p.returncode}) before writing a chunk:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no chunk after {TIMEOUT_S:.0f} s:\n{log.read_text()}")
            time.sleep(POLL_S)
        alive = p.poll() is None
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    key_dir = done[0].parents[1]
    # The kill must land mid-build, or this test proves nothing: fail (never skip) if it did not.
    assert alive and p.returncode == -signal.SIGKILL, (
        f"encode finished before the kill (rc {p.returncode}); lower CHUNK_ROWS/BATCH or add episodes:\n"
        f"{log.read_text()}")
    assert not (key_dir / "meta.json").exists(), "the killed build must not look complete"
    return key_dir


@pytest.fixture
def cheetah_400():
    from more3s.data import collect_dataset

    collect_dataset("halfcheetah", "random", EPISODES, DATASET, seed=1, max_episode_steps=STEPS, progress=False)
    return DATASET


def test_resume_after_sigkill_matches_uninterrupted_build(cheetah_400, tiny, tmp_path):
    cache_dir = tmp_path / "killed"
    key_dir = _kill_after_first_chunk(cache_dir, tmp_path / "killed.log")
    plan = json.loads((key_dir / "plan.json").read_text())
    n_rows, n_chunks = plan["n_rows"], -(-plan["n_rows"] // plan["chunk_rows"])
    assert n_rows == EPISODES * (STEPS + 1) and plan["chunk_rows"] == CHUNK_ROWS
    kept = _complete_chunks(key_dir)
    assert 1 <= len(kept) < n_chunks, f"{len(kept)} of {n_chunks} chunks complete at the kill"

    # -- build the same cache again (what the CLI runs, in-process to save a second ~5 s start-up): --
    # -- it must resume, not start over. on_chunk(i) fires only for chunks it actually encodes. --
    cfg = CacheConfig(chunk_rows=CHUNK_ROWS, batch_size=BATCH, progress=False)
    encoded = []
    resumed = build_or_load_cache(DATASET, tiny, cache_dir=cache_dir, config=cfg, on_chunk=encoded.append)
    assert resumed.path == key_dir and not resumed.hit  # same key as the CLI's: same weights, data, settings
    assert sorted(kept.keys() | encoded) == list(range(n_chunks)) and not kept.keys() & set(encoded)
    rows = [min(n_rows, (i + 1) * CHUNK_ROWS) - i * CHUNK_ROWS for i in range(n_chunks)]
    encoded_rows = sum(rows[i] for i in encoded)
    assert 0 < encoded_rows < n_rows and encoded_rows == n_rows - sum(rows[i] for i in kept)
    after = _complete_chunks(key_dir)
    assert sorted(after) == list(range(n_chunks))
    # Every chunk complete before the kill is the very same file (atomic writes rename a new inode in).
    assert {i: after[i] for i in kept} == kept, "the resumed build rewrote chunks the killed run had finished"
    resumed = open_cache(key_dir)  # verifies every checksum, as a later training run would

    # -- an uninterrupted build elsewhere, same chunking and batches: bit-identical result --
    built = []
    fresh = build_or_load_cache(DATASET, tiny, cache_dir=tmp_path / "fresh", config=cfg, on_chunk=built.append)
    assert sorted(built) == list(range(n_chunks)) and not fresh.hit
    assert fresh.path.name == key_dir.name  # same key: same data, encoder weights and settings
    a, b = np.asarray(resumed.states), np.asarray(fresh.states)  # [400, d_enc] fp16
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape == (n_rows, tiny.d_enc)
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))  # exact bits, not a tolerance
    np.testing.assert_array_equal(resumed.offsets, fresh.offsets)
    np.testing.assert_array_equal(resumed.action_table, fresh.action_table)
