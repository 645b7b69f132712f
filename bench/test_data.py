"""Data pipeline throughput: sampler batches/s and load_episodes steps/s, each with a baseline
measured in the same run (a naive per-row Python window sampler; Minari's own reader).

    pytest bench/test_data.py --benchmark-only
"""

import time

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from more3s.data import MinariWriter, StreamSampler, WindowSampler, load_episodes

LENGTHS = np.random.default_rng(0).integers(50, 3000, size=500)  # a medium-replay-like spread
B, K = 128, 30  # DT's Atari batch and context


def _naive_window_batch(rng, lengths, offsets, total):
    """Reference: DT's per-row sampling loop in pure Python."""
    eps, steps, masks = [], [], []
    for _ in range(B):
        flat = int(rng.integers(total))
        ep = int(np.searchsorted(offsets, flat, side="right") - 1)
        start = flat - offsets[ep]
        n = min(K, lengths[ep] - start)
        steps.append([0] * (K - n) + list(range(start, start + n)))
        masks.append([False] * (K - n) + [True] * n)
        eps.append(ep)
    return np.array(eps), np.array(steps), np.array(masks)


def _rate(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


@pytest.mark.parametrize("kind", ["window", "stream"])
def test_sampler_batches_per_second(benchmark, kind):
    cls = WindowSampler if kind == "window" else StreamSampler
    s = cls(LENGTHS, K, B, seed=0)
    benchmark(s.sample)
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    baseline = _rate(lambda: _naive_window_batch(rng, LENGTHS, offsets, int(offsets[-1])), 200)
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    ours = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info.update(batch=B, window=K, batches_per_s=round(ours, 1),
                                naive_python_batches_per_s=round(baseline, 1),
                                speedup_vs_naive=round(ours / baseline, 2))


@pytest.fixture(scope="module")
def d4rl_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 100_000  # 100 episodes of 1000 MuJoCo steps
    path = tmp_path_factory.mktemp("d4rl") / "halfcheetah-bench.hdf5"
    timeouts = np.zeros(n, bool)
    timeouts[999::1000] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 17)).astype(np.float32)
        f["next_observations"] = rng.normal(size=(n, 17)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 6)).astype(np.float32)
        f["rewards"] = rng.normal(size=n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = timeouts
    return path, n


def test_load_d4rl_steps_per_second(benchmark, d4rl_file):
    path, n = d4rl_file
    eps = benchmark.pedantic(load_episodes, args=(path,), rounds=3, iterations=1)
    assert sum(len(e) for e in eps) == n
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    benchmark.extra_info.update(steps=n, steps_per_s=round(n / benchmark.stats.stats.mean))


def _atari_like_dataset(dataset_id, episodes=4, T=500):
    rng = np.random.default_rng(0)
    space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    frame = np.zeros((210, 160, 3), np.uint8)
    with MinariWriter(dataset_id, space, gym.spaces.Discrete(4),
                      metadata={"more3s": {"task": "breakout"}}) as w:
        for _ in range(episodes):
            w.begin_episode(frame)
            for t in range(T):
                f = frame.copy()  # mostly background with a few moving objects, like Atari
                y, x = rng.integers(0, 200), rng.integers(0, 150)
                f[y:y + 4, x:x + 8] = 200
                f[190:194, (t % 140):(t % 140) + 16] = (200, 72, 72)
                w.add_step(int(rng.integers(4)), f, float(rng.integers(2)), False, t == T - 1)
            w.end_episode()
    return episodes * T


def test_load_minari_frames_steps_per_second(benchmark):
    n = _atari_like_dataset("bench/frames-v0")

    def plain_minari():
        return [ep.observations for ep in minari.load_dataset("bench/frames-v0").iterate_episodes()]

    eps = benchmark.pedantic(load_episodes, args=("bench/frames-v0",), rounds=3, iterations=1)
    assert sum(len(e) for e in eps) == n
    t0 = time.perf_counter()
    plain_minari()
    plain = time.perf_counter() - t0
    if benchmark.disabled:  # --benchmark-disable: it ran once, nothing to report
        return
    ours = benchmark.stats.stats.mean
    benchmark.extra_info.update(steps=n, steps_per_s=round(n / ours),
                                plain_minari_steps_per_s=round(n / plain),
                                ratio_vs_plain_minari=round(plain / ours, 2))
