"""Encoder benchmarks: region extraction, LXMERT states/s, cache vs on-the-fly batch assembly, GPU fast path.

Run: ``pytest bench/test_encoder.py --benchmark-only``. Throughputs and ratios go in ``extra_info``;
every ratio's baseline is measured in the same test run.
"""

from __future__ import annotations

import os
import time
import types

import numpy as np
import pytest
import torch

from more3s.encoder import (
    CacheConfig, atari_regions, build_or_load_cache, extract_regions, grid_regions, load_encoder, mujoco_regions,
)


def _best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """[65, 210, 160, 3] real Breakout frames (a served ball in flight)."""
    from more3s.envs import make_env

    env = make_env("breakout", noop_max=0)
    obs, _ = env.reset(seed=0)
    out = [obs]
    rng = np.random.default_rng(0)
    for t in range(64):
        obs, _, term, trunc, _ = env.step(1 if t % 16 == 0 else int(rng.integers(4)))
        out.append(obs)
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


@pytest.fixture(scope="module")
def cheetah() -> np.ndarray:
    from more3s.envs import make_env

    env = make_env("halfcheetah")
    obs, _ = env.reset(seed=0)
    out = [obs]
    for _ in range(255):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    env.close()
    return np.stack(out)


@pytest.mark.parametrize("kind", ["atari-objects", "grid", "mujoco-bodies"])
def test_region_extraction(benchmark, frames, cheetah, kind):
    if kind == "atari-objects":
        fn, n = (lambda: atari_regions(frames[1:], frames[:-1])), len(frames) - 1
    elif kind == "grid":
        fn, n = (lambda: grid_regions(frames[1:], frames[:-1])), len(frames) - 1
    else:
        fn, n = (lambda: mujoco_regions("halfcheetah", cheetah)), len(cheetah)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    benchmark.extra_info.update(batch=n, frames_per_s=n / benchmark.stats.stats.mean)


@pytest.mark.parametrize("workers", [2, 4])
def test_region_extraction_threads(benchmark, frames, workers):
    """Atari objects for 64 frame pairs split over threads, against one thread in the same run (this machine
    has 2 cores; a GPU machine's 16 cores are where it matters: regions are the step's CPU cost there)."""
    one = _best_of(lambda: extract_regions("breakout", frames[1:], frames[:-1], workers=1), 3)
    benchmark.pedantic(lambda: extract_regions("breakout", frames[1:], frames[:-1], workers=workers), rounds=5,
                       warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    n = len(frames) - 1
    benchmark.extra_info.update(batch=n, workers=workers, cpu_count=os.cpu_count(),
                                frames_per_s=n / benchmark.stats.stats.median,
                                speedup_vs_one_thread=one / benchmark.stats.stats.min)


@pytest.mark.parametrize("name,batch,rounds", [("lxmert-tiny", 64, 5), ("lxmert-base-random", 16, 2)])
def test_encoder_states_per_s_cpu(benchmark, frames, name, batch, rounds):
    enc = load_encoder(name, device="cpu")
    regions = enc.regions("breakout", frames[1:batch + 1], frames[:batch])
    enc.embed_regions("breakout", regions)  # warm-up (caption states, fused projection)
    benchmark.pedantic(lambda: enc.embed_regions("breakout", regions), rounds=rounds, warmup_rounds=0)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    lxmert_s = benchmark.stats.stats.mean
    region_s = _best_of(lambda: enc.regions("breakout", frames[1:batch + 1], frames[:batch]), 3)
    benchmark.extra_info.update(
        batch=batch, threads=torch.get_num_threads(), lxmert_states_per_s=batch / lxmert_s,
        end_to_end_states_per_s=batch / (lxmert_s + region_s), region_share=region_s / (lxmert_s + region_s))


def test_rollout_regions_memo_vs_none(benchmark, frames):
    """Regions of 8 environments for 32 rollout steps (each previous frame is the step before's current frame) with
    a ComponentMemo (each frame's components computed once) against the same steps without one (twice), same run."""
    from more3s.encoder import ComponentMemo

    envs, steps = 8, 32
    pairs = [(frames[t + 1:t + 1 + envs], frames[t:t + envs]) for t in range(steps)]

    def play(memo):
        for cur, prev in pairs:
            extract_regions("breakout", cur, prev, memo=memo)

    none_s = _best_of(lambda: play(None), 3)
    benchmark.pedantic(lambda: play(ComponentMemo()), rounds=5, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    benchmark.extra_info.update(envs=envs, steps=steps, memo_steps_per_s=steps / benchmark.stats.stats.mean,
                                no_memo_steps_per_s=steps / none_s, speedup=none_s / benchmark.stats.stats.min)


def test_cache_rows_as_sequences_vs_frame_pairs(benchmark, frames):
    """The cache build's encoding of 64 rows of two episodes (``cache._encode_rows``: each episode's rows read as a
    sequence, every frame's components computed once) against the frame pairs it used to hand the encoder (each frame
    labelled twice), same run, one thread; the states are the same bits."""
    from more3s.distributed import torch_threads
    from more3s.encoder.cache import _encode_rows

    enc = load_encoder("lxmert-tiny", device="cpu")
    episodes = [types.SimpleNamespace(observations=frames[:30]), types.SimpleNamespace(observations=frames[30:])]
    offsets = np.array([0, 30, len(frames)])

    def pairs() -> np.ndarray:
        cur = np.concatenate([frames[:30], frames[30:]])
        prev = np.concatenate([frames[:1], frames[:29], frames[30:31], frames[30:-1]])
        return enc.embed_states("breakout", cur, prev).numpy().astype(np.float16)

    with torch_threads(1):
        np.testing.assert_array_equal(_encode_rows(enc, "breakout", episodes, offsets, 0, len(frames), 64, int), pairs())
        pairs_s = _best_of(pairs, 3)
        benchmark.pedantic(lambda: _encode_rows(enc, "breakout", episodes, offsets, 0, len(frames), 64, int),
                           rounds=5, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    n = len(frames)
    benchmark.extra_info.update(rows=n, sequence_states_per_s=n / benchmark.stats.stats.mean,
                                pairs_states_per_s=n / pairs_s, speedup=pairs_s / benchmark.stats.stats.min)


def test_featurization_new_vs_old(benchmark, frames):
    """Atari regions with matched displacements and slot orders (new) against what the previous design computed
    (components, crops and box features only; measured in the same run): the cost of keeping motion."""
    import dataclasses

    from more3s.encoder import RegionConfig
    from more3s.encoder import regions as R

    cfg = RegionConfig()
    cur, prev = frames[1:], frames[:-1]
    n = len(cur)

    def old():
        c = R._components(cfg, cur)
        N, Rm = len(cur), cfg.max_regions
        pix = np.zeros((N, Rm, 4), np.int64)
        pix[c["frame"], c["rank"]] = np.stack([c["x1"], c["y1"], c["x2"], c["y2"]], -1)
        mask = np.zeros((N, Rm), bool)
        mask[c["frame"], c["rank"]] = True
        z = np.zeros((N, Rm), np.float32)
        return R._box_features(cfg, cur, prev, pix, np.zeros((N, Rm, 2), np.float32), z, np.zeros((N, Rm, 3)),
                               mask, np.zeros((N, Rm, 3), np.float32))

    old_s = _best_of(old, 3)
    benchmark.pedantic(lambda: atari_regions(cur, prev, dataclasses.replace(cfg)), rounds=5, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    benchmark.extra_info.update(batch=n, new_frames_per_s=n / benchmark.stats.stats.mean,
                                old_frames_per_s=n / old_s, new_vs_old_time=benchmark.stats.stats.min / old_s)


def test_state_design_new_vs_previous(benchmark, frames):
    """End-to-end lxmert-tiny states/s (regions + encoder) of the state design (new: bars split, HMOVE bars dropped, 8
    slots: by size and the lowest regions by colour) against the previous one (16 slots, half by size and half by
    colour, no split), same run, same frames; the featurization's own frames/s beside."""
    from more3s.encoder import EncoderConfig, RegionConfig

    cur, prev = frames[1:65], frames[:64]
    previous = RegionConfig(slots=16, bottom_slots=0, split_bars=False)
    new = load_encoder("lxmert-tiny", device="cpu")
    old = load_encoder("lxmert-tiny", device="cpu", config=EncoderConfig(regions=previous))

    def states(enc):
        return enc.embed_regions("breakout", enc.regions("breakout", cur, prev))

    states(old), states(new)  # warm-up
    old_s = _best_of(lambda: states(old), 3)
    old_regions_s = _best_of(lambda: atari_regions(cur, prev, previous), 3)
    new_regions_s = _best_of(lambda: atari_regions(cur, prev, new.config.regions), 3)
    benchmark.pedantic(lambda: states(new), rounds=5, warmup_rounds=0)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    n = len(cur)
    benchmark.extra_info.update(
        batch=n, d_enc_new=new.d_enc, d_enc_old=old.d_enc, new_states_per_s=n / benchmark.stats.stats.mean,
        old_states_per_s=n / old_s, new_vs_old_time=benchmark.stats.stats.min / old_s,
        new_region_frames_per_s=n / new_regions_s, old_region_frames_per_s=n / old_regions_s)


def test_encoder_slots_vs_pooled_mean(benchmark, frames):
    """lxmert-tiny states/s with the slotted state vector (8 region slots beside pooled + mean; new) against the
    pooled + mean vector alone (the previous design, ``RegionConfig(slots=0)``), same run, same regions."""
    import dataclasses

    from more3s.encoder import EncoderConfig, RegionConfig

    new = load_encoder("lxmert-tiny", device="cpu")
    old = load_encoder("lxmert-tiny", device="cpu", config=EncoderConfig(regions=RegionConfig(slots=0)))
    regions = new.regions("breakout", frames[1:65], frames[:64])
    bare = dataclasses.replace(regions, slots=regions.slots[:, :0])
    old.embed_regions("breakout", bare), new.embed_regions("breakout", regions)  # warm-up
    old_s = _best_of(lambda: old.embed_regions("breakout", bare), 3)
    benchmark.pedantic(lambda: new.embed_regions("breakout", regions), rounds=5, warmup_rounds=0)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    benchmark.extra_info.update(batch=64, d_enc_new=new.d_enc, d_enc_old=old.d_enc,
                                new_states_per_s=64 / benchmark.stats.stats.mean, old_states_per_s=64 / old_s,
                                new_vs_old_time=benchmark.stats.stats.min / old_s)


def test_batch_assembly_cache_vs_on_the_fly(benchmark, frames, tmp_path):
    """A training batch (B windows of K states) gathered from the cache vs encoded on the fly."""
    enc = load_encoder("lxmert-tiny", device="cpu")
    eps = [types.SimpleNamespace(observations=o, task="breakout") for o in np.split(frames, [20, 45])]
    cache = build_or_load_cache(eps, enc, cache_dir=tmp_path, config=CacheConfig(chunk_rows=16, progress=False))
    rng = np.random.default_rng(0)
    B, K = 8, 10
    lengths = np.diff(cache.offsets)
    episode = rng.integers(0, len(eps), B)
    start = rng.integers(0, lengths[episode] - K + 1)
    steps = start[:, None] + np.arange(K)  # [B, K]

    def from_cache():
        return torch.from_numpy(cache.gather(episode, steps).astype(np.float32))  # [B, K, d_enc]

    def on_the_fly():
        cur = np.concatenate([eps[e].observations[s] for e, s in zip(episode, steps)])  # [B*K, H, W, 3]
        prev = np.concatenate([eps[e].observations[np.maximum(s - 1, 0)] for e, s in zip(episode, steps)])
        return enc.embed_states("breakout", cur, prev).reshape(B, K, -1)

    torch.testing.assert_close(from_cache(), on_the_fly(), atol=5e-3, rtol=5e-3)
    benchmark(from_cache)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    fly = _best_of(on_the_fly, 3)
    benchmark.extra_info.update(batch=f"{B}x{K}", on_the_fly_s=fly,
                                speedup_cache_vs_on_the_fly=fly / benchmark.stats.stats.mean)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 16, 256])
def test_gpu_fp16_graphs_vs_fp32_eager(benchmark, frames, batch):
    fast = load_encoder("lxmert-base-random", device="cuda")  # fp16 + CUDA graphs
    ref = load_encoder("lxmert-base-random", device="cuda", dtype=torch.float32, cuda_graphs=False)
    idx = np.arange(batch) % (len(frames) - 1)
    regions = fast.regions("breakout", frames[idx + 1], frames[idx])

    def run(enc):
        out = enc.embed_regions("breakout", regions)
        torch.cuda.synchronize()
        return out

    run(fast), run(ref)  # capture / warm-up
    benchmark.pedantic(lambda: run(fast), rounds=20, warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    eager = min(_best_of(lambda: run(ref), 5), float("inf"))
    benchmark.extra_info.update(batch=batch, fp16_graph_states_per_s=batch / benchmark.stats.stats.mean,
                                fp32_eager_states_per_s=batch / eager,
                                speedup=eager / benchmark.stats.stats.mean)


def test_encoder_threads_vs_one(benchmark, frames):
    """The trainer's ``encoder_threads`` (None: every core this process may use) against one thread, same run:
    ``embed_states`` of 64 Breakout frame pairs, regions and LXMERT (lxmert-tiny): one batch of encoder work."""
    from more3s.distributed import cores_per_process, torch_threads

    enc = load_encoder("lxmert-tiny", device="cpu")
    cur, prev = frames[1:], frames[:-1]
    enc.embed_states("breakout", cur, prev)  # warm-up
    with torch_threads(1):
        one = _best_of(lambda: enc.embed_states("breakout", cur, prev), 3)
    with torch_threads(None) as n:
        benchmark.pedantic(lambda: enc.embed_states("breakout", cur, prev), rounds=5, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    benchmark.extra_info.update(batch=len(cur), threads=n, cores=cores_per_process(),
                                states_per_s=len(cur) / benchmark.stats.stats.median,
                                one_thread_states_per_s=len(cur) / one, speedup_vs_one_thread=one / benchmark.stats.stats.min)
