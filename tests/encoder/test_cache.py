"""The embedding cache: equality with direct encoding, hits, keys, resume, corruption, concurrency."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from more3s.encoder import (
    CacheConfig, CacheCorruptError, RegionConfig, build_or_load_cache, dataset_fingerprint, default_cache_dir,
    load_encoder, open_cache,
)
from more3s.encoder.lxmert import EncoderConfig

from .conftest import make_episodes

CFG = CacheConfig(chunk_rows=8, batch_size=8, progress=False)


class Counting:
    """Wraps an encoder and counts the states it encodes."""

    def __init__(self, enc):
        self.enc, self.rows = enc, 0
        self._orig = enc.embed_regions

    def __enter__(self):
        def counted(task, regions):
            self.rows += len(regions)
            return self._orig(task, regions)

        self.enc.embed_regions = counted
        return self

    def __exit__(self, *exc):
        del self.enc.embed_regions


@pytest.fixture
def atari_eps(breakout_frames):
    return make_episodes(breakout_frames[:30], "breakout", [11, 19])  # 3 episodes: 11, 8, 11 observations


def _direct(enc, eps, task):
    return np.concatenate([enc.embed_states(task, ep.observations).numpy() for ep in eps])


def test_cache_equals_direct_encoding_and_hits(tiny, atari_eps, tmp_path):
    c = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    assert not c.hit and c.states.shape == (30, tiny.d_enc) and c.states.dtype == np.float16
    np.testing.assert_array_equal(c.offsets, [0, 11, 19, 30])
    direct = _direct(tiny, atari_eps, "breakout")
    np.testing.assert_allclose(c.states[:].astype(np.float32), direct, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(c.action_table, tiny.embed_actions("breakout").numpy(), rtol=1e-6)
    assert c.meta["task"] == "breakout" and c.prompt_set == "original" and c.meta["d_enc"] == tiny.d_enc == 1280
    # memmap-like indexing: a sampler batch of (episode, steps)
    ep, steps = np.array([2, 0]), np.array([[3, 4, 5], [0, 1, 2]])
    np.testing.assert_array_equal(c.gather(ep, steps), c.states[np.array([[22, 23, 24], [0, 1, 2]])])
    np.testing.assert_array_equal(c.episode_states(1), np.asarray(c.states)[11:19])
    np.testing.assert_array_equal(c.states[-1], c.states[29])
    with Counting(tiny) as n:
        again = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    assert again.hit and n.rows == 0 and again.path == c.path
    np.testing.assert_array_equal(again.states[:], c.states[:])


def test_prompt_sets_share_the_states_and_keep_their_own_tables(tiny, atari_eps, tmp_path):
    """States never see the action prompts: a second prompt set encodes no state, only its table."""
    base = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    with Counting(tiny) as n:
        syn = build_or_load_cache(atari_eps, tiny, prompt_set="synonym", cache_dir=tmp_path, config=CFG)
    assert n.rows == 0 and syn.hit and syn.path == base.path and syn.prompt_set == "synonym"
    np.testing.assert_array_equal(syn.states[:], base.states[:])
    np.testing.assert_allclose(syn.action_table, tiny.embed_actions("breakout", "synonym").numpy(), rtol=1e-6)
    assert not np.allclose(syn.action_table, base.action_table)
    np.testing.assert_array_equal(open_cache(base.path, "original").action_table, base.action_table)
    np.testing.assert_array_equal(open_cache(base.path, "synonym").action_table, syn.action_table)
    with pytest.raises(CacheCorruptError, match=r"no action table for prompt set 'contextual' \(it has \['original', "
                                                r"'synonym'\]\).*--prompt-set contextual"):
        open_cache(base.path, "contextual")
    with pytest.raises(ValueError, match="prompt set"):
        open_cache(base.path, "rhymes")


def test_key_covers_regions_and_data(tiny, atari_eps, tmp_path, monkeypatch):
    base = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    other = load_encoder("lxmert-tiny", device="cpu", config=EncoderConfig(regions=RegionConfig(projection_seed=1)))
    assert build_or_load_cache(atari_eps, other, cache_dir=tmp_path, config=CFG).path != base.path
    fewer = load_encoder("lxmert-tiny", device="cpu",
                         config=EncoderConfig(regions=RegionConfig(slots=4, bottom_slots=2)))
    assert build_or_load_cache(atari_eps, fewer, cache_dir=tmp_path, config=CFG).path != base.path  # the layout
    assert dataset_fingerprint(atari_eps) != dataset_fingerprint(atari_eps[:2])
    monkeypatch.setenv("MORE3S_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    with pytest.raises(ValueError, match="prompt set"):
        build_or_load_cache(atari_eps, tiny, prompt_set="rhymes", cache_dir=tmp_path)


def test_resume_after_failure_encodes_only_the_rest(tiny, atari_eps, tmp_path):
    class Boom(RuntimeError):
        pass

    done = []

    def fail_after_two(i):
        done.append(i)
        if len(done) == 2:
            raise Boom

    with pytest.raises(Boom):
        build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG, on_chunk=fail_after_two)
    (root,) = [p for p in tmp_path.iterdir()]
    assert not (root / "meta.json").exists()  # incomplete: not a cache yet
    with pytest.raises(CacheCorruptError, match="not a complete"):
        open_cache(root)
    with Counting(tiny) as n:
        c = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    assert not c.hit and n.rows == 30 - 16  # chunks 0 and 1 (8 rows each) were kept
    fresh = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path / "fresh", config=CFG)
    np.testing.assert_array_equal(c.states[:], fresh.states[:])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_chunk_detected_and_rebuilt(tiny, atari_eps, tmp_path, damage):
    c = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    good = np.asarray(c.states).copy()
    del c
    chunk = next(p for p in tmp_path.rglob("states_00001.npy"))
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[-7] ^= 0xFF  # a payload byte: the header still parses, only the checksum can tell
        chunk.write_bytes(bytes(data))
    else:
        chunk.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheCorruptError, match=r"chunks \[1\]"):
        open_cache(chunk.parent.parent)
    with Counting(tiny) as n:
        rebuilt = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    assert not rebuilt.hit and n.rows == 8  # only the broken chunk
    np.testing.assert_array_equal(np.asarray(rebuilt.states), good)
    assert open_cache(rebuilt.path).hit


def test_corrupt_action_table_named_and_rebuilt(tiny, atari_eps, tmp_path):
    """A broken action table is named as such (not as a chunk) and rebuilt without re-encoding any state."""
    c = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    table = c.action_table.copy()
    path = c.path / "action_table.original.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="the action table") as err:
        open_cache(c.path)
    assert "chunks" not in str(err.value)
    with Counting(tiny) as n:
        rebuilt = build_or_load_cache(atari_eps, tiny, cache_dir=tmp_path, config=CFG)
    assert n.rows == 0
    np.testing.assert_array_equal(rebuilt.action_table, table)
    np.testing.assert_array_equal(open_cache(c.path).action_table, table)


def test_two_builders_share_the_work(tiny, cheetah_run, tmp_path):
    """Two concurrent builders of one key: every chunk encoded once, the result sound."""
    eps = make_episodes(cheetah_run[0], "halfcheetah", [6])
    results, errors = [], []
    with Counting(tiny) as n:
        def run():
            try:
                results.append(build_or_load_cache(eps, tiny, cache_dir=tmp_path, config=CFG))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(results) == 2
    assert n.rows == 13  # each chunk once, although both threads walked all chunks
    np.testing.assert_array_equal(results[0].states[:], results[1].states[:])
    meta = json.loads((results[0].path / "meta.json").read_text())
    assert meta["n_chunks"] == 2 and meta["action_table_shape"] == [7, 1280]
    direct = _direct(tiny, eps, "halfcheetah")
    np.testing.assert_allclose(open_cache(results[0].path).states[:].astype(np.float32), direct,
                               atol=2e-3, rtol=2e-3)


def test_bad_sources(tiny, atari_eps, tmp_path):
    with pytest.raises(ValueError, match="no episodes"):
        build_or_load_cache([], tiny, cache_dir=tmp_path)
    mixed = atari_eps[:1] + make_episodes(np.zeros((3, 17)), "halfcheetah", [])
    with pytest.raises(ValueError, match="infer the task"):
        build_or_load_cache(mixed, tiny, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="chunk_rows"):
        CacheConfig(chunk_rows=0)


def _write_frames_dataset(dataset_id: str, frames: np.ndarray, splits: list[int], overwrite: bool = False) -> None:
    import gymnasium as gym

    from more3s.data import MinariWriter

    with MinariWriter(dataset_id, gym.spaces.Box(0, 255, frames.shape[1:], np.uint8), gym.spaces.Discrete(4),
                      metadata={"more3s": {"task": "breakout"}}, overwrite=overwrite) as w:
        for obs in np.split(frames, splits):
            w.begin_episode(obs[0], seed=0)
            for t in range(1, len(obs)):
                w.add_step(0, obs[t], 0.0, t == len(obs) - 1, False)
            w.end_episode({"policy": "test"})


def test_fingerprint_memo_skips_unchanged_files_and_rehashes_changed_ones(breakout_frames, tmp_path,
                                                                          monkeypatch):
    import more3s.encoder.cache as cache_mod
    from more3s.data import dataset_path, load_episodes

    _write_frames_dataset("tst/memo-v0", breakout_frames[:30], [11, 19])
    eager = load_episodes("tst/memo-v0")
    reads = []
    real = cache_mod._content_digest
    monkeypatch.setattr(cache_mod, "_content_digest", lambda obs, *a: reads.append(1) or real(obs, *a))
    memo = tmp_path / "fingerprints.json"
    fp = dataset_fingerprint(eager, memo)  # in-memory episodes: hashed, nothing memoized
    assert len(reads) == 3 and not memo.exists()
    assert dataset_fingerprint(load_episodes("tst/memo-v0", lazy=True), memo) == fp  # lazy == eager
    assert len(reads) == 6 and memo.exists()
    assert dataset_fingerprint(load_episodes("tst/memo-v0", lazy=True), memo) == fp  # memo hit: no frame read
    assert len(reads) == 6
    assert dataset_fingerprint(load_episodes("tst/memo-v0", lazy=True, max_episodes=2), memo) != fp
    assert len(reads) == 6  # a subset reuses the per-episode digests
    # rewriting the dataset with other frames changes the file's identity: re-hashed, new fingerprint
    _write_frames_dataset("tst/memo-v0", breakout_frames[10:40], [11, 19], overwrite=True)
    fp2 = dataset_fingerprint(load_episodes("tst/memo-v0", lazy=True), memo)
    assert len(reads) == 9 and fp2 != fp
    assert fp2 == dataset_fingerprint(load_episodes("tst/memo-v0"))
    # a damaged memo is ignored (re-hashed and rewritten), never an error
    memo.write_text("{not json")
    assert dataset_fingerprint(load_episodes("tst/memo-v0", lazy=True), memo) == fp2
    assert len(reads) == 15 and json.loads(memo.read_text())  # 9 + 3 (eager check above) + 3
    assert str(dataset_path("tst/memo-v0").resolve()) in next(iter(json.loads(memo.read_text())))


def test_cache_from_a_dataset_id_uses_the_memo(tiny, breakout_frames, tmp_path):
    from more3s.encoder.cache import FINGERPRINT_MEMO

    _write_frames_dataset("tst/memo-cache-v0", breakout_frames[:30], [11, 19])
    first = build_or_load_cache("tst/memo-cache-v0", tiny, cache_dir=tmp_path, config=CFG)
    assert (tmp_path / FINGERPRINT_MEMO).exists() and not first.hit
    again = build_or_load_cache("tst/memo-cache-v0", tiny, cache_dir=tmp_path, config=CFG)
    assert again.hit and again.path == first.path
    np.testing.assert_array_equal(again.states[:], first.states[:])


def test_fingerprint_memo_that_cannot_be_saved_only_warns(breakout_frames, tmp_path, caplog):
    import logging

    from more3s.data import load_episodes

    _write_frames_dataset("tst/memo-ro-v0", breakout_frames[:12], [5])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache root's folder should be")
    with caplog.at_level(logging.WARNING, logger="more3s.encoder.cache"):
        fp = dataset_fingerprint(load_episodes("tst/memo-ro-v0", lazy=True), blocker / "fingerprints.json")
    assert fp == dataset_fingerprint(load_episodes("tst/memo-ro-v0"))
    assert "could not save dataset fingerprints" in caplog.text
