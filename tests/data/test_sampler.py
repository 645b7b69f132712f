"""Sampler invariants: windows stay inside episodes, left padding matches masks, streams are
contiguous and reset at episode starts, sampling is seeded and resumable exactly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from more3s.data import StreamSampler, WindowSampler

lengths_st = st.lists(st.integers(0, 40), min_size=1, max_size=12).filter(lambda l: sum(l) > 0)


def _check_window(batch, lengths, K):
    B = batch.episode.shape[0]
    assert batch.steps.shape == (B, K) and batch.mask.shape == (B, K)
    assert batch.steps.dtype == np.int64 and batch.mask.dtype == bool
    for b in range(B):
        T = lengths[batch.episode[b]]
        m = batch.mask[b]
        n = int(m.sum())
        assert 1 <= n <= K
        assert not m[: K - n].any() and m[K - n:].all()  # padding strictly on the left
        assert (batch.steps[b, : K - n] == 0).all()
        real = batch.steps[b, K - n:]
        assert (np.diff(real) == 1).all()  # consecutive steps
        assert real[0] >= 0 and real[-1] < T  # never crosses the episode end


@settings(max_examples=40, deadline=None)
@given(lengths_st, st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**31))
def test_window_sampler_invariants(lengths, K, B, seed):
    s = WindowSampler(lengths, K, B, seed)
    for _ in range(5):
        batch = s.sample()
        assert all(lengths[e] > 0 for e in batch.episode)
        _check_window(batch, lengths, K)


def test_window_sampler_is_proportional_to_length():
    lengths = [10, 30, 60]
    s = WindowSampler(lengths, 4, 1000, seed=1)
    counts = np.bincount(np.concatenate([s.sample().episode for _ in range(20)]), minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.3, 0.6], atol=0.02)


@settings(max_examples=40, deadline=None)
@given(lengths_st, st.integers(1, 9), st.integers(1, 5), st.integers(0, 2**31))
def test_stream_sampler_contiguous_and_resets(lengths, K, B, seed):
    s = StreamSampler(lengths, K, B, seed)
    last = [None] * B  # (episode, last step) per stream
    seen = []
    nonempty = sum(1 for l in lengths if l > 0)
    n_batches = (sum(lengths) // (K * B) + 2) * 2
    for _ in range(n_batches):
        batch = s.sample()
        _check_window(batch, lengths, K)
        for b in range(B):
            real = batch.steps[b][batch.mask[b]]
            ep = int(batch.episode[b])
            if last[b] is None:  # the stream's first window enters its episode at the stream's stagger
                assert real[0] == b * lengths[ep] // B
                seen.append(ep)
            elif real[0] == 0:  # the window starts an episode
                # a new episode starts only after the previous one was walked to its end
                assert last[b][1] == lengths[last[b][0]] - 1
                seen.append(ep)
            else:
                assert last[b] is not None and last[b][0] == ep
                assert real[0] == last[b][1] + 1  # continues exactly where it stopped
            last[b] = (ep, int(real[-1]))
    # every epoch covers each non-empty episode once before any repeats
    first_epoch = seen[:nonempty]
    assert sorted(first_epoch) == sorted(i for i, l in enumerate(lengths) if l > 0)


def test_stream_sampler_streams_never_run_in_lockstep():
    # Equal-length episodes (MuJoCo's are all 1,000 steps): streams that entered together would keep
    # one narrow band of timesteps per batch for the whole run. Staggered, every batch spreads over
    # the episode and every timestep is trained at about the same rate.
    L, K, B = 100, 10, 8
    s = StreamSampler([L] * 6, K, B, seed=0)
    counts = np.zeros(L)
    for _ in range(200):
        batch = s.sample()
        real = batch.steps[batch.mask]
        assert real.max() - real.min() >= L // 2, "a batch holds one band of timesteps"
        np.add.at(counts, real, 1)
    assert counts.min() >= 0.7 * counts.mean()


def test_stream_sampler_staggers_over_every_process_under_ddp():
    # Two processes of 4 streams each: 8 distinct entry steps, interleaved, not the same 4 twice.
    L, K, B = 80, 10, 4
    entries = [StreamSampler([L] * 8, K, B, seed=r, rank=r, world_size=2).sample() for r in (0, 1)]
    starts = sorted(int(b.steps[i][b.mask[i]][0]) for b in entries for i in range(B))
    assert starts == [i * L // 8 for i in range(8)]
    with pytest.raises(ValueError, match="rank"):
        StreamSampler([L], K, B, seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("cls", [WindowSampler, StreamSampler])
def test_seeded_reproducible_and_exact_resume(cls):
    lengths = [5, 17, 0, 33, 8, 21]
    a, b = cls(lengths, 6, 4, seed=3), cls(lengths, 6, 4, seed=3)
    for _ in range(7):
        x, y = a.sample(), b.sample()
        np.testing.assert_array_equal(x.steps, y.steps)
        np.testing.assert_array_equal(x.episode, y.episode)
    state = a.state_dict()
    ref = [a.sample() for _ in range(9)]
    c = cls(lengths, 6, 4, seed=999)
    c.load_state_dict(state)
    for r in ref:
        z = c.sample()
        for f in ("episode", "steps", "mask"):
            np.testing.assert_array_equal(getattr(z, f), getattr(r, f))
    d, e = cls(lengths, 6, 4, seed=4), cls(lengths, 6, 4, seed=3)
    seq = lambda s: [s.sample().episode.tolist() for _ in range(6)]  # noqa: E731
    assert seq(d) != seq(e)  # the seed matters


def test_iteration_and_state_mismatch():
    s = StreamSampler([4, 4], 2, 2, 0)
    it = iter(s)
    assert next(it).episode.shape == (2,)
    with pytest.raises(ValueError, match="window"):
        StreamSampler([4, 4], 3, 2, 0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="lengths_sha"):
        StreamSampler([4, 5], 2, 2, 0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="kind"):
        WindowSampler([4, 4], 2, 2, 0).load_state_dict(s.state_dict())


@pytest.mark.parametrize("args,exc", [
    (([], 3, 2, 0), ValueError), (([0, 0], 3, 2, 0), ValueError), (([3, -1], 3, 2, 0), ValueError),
    (([3], 0, 2, 0), ValueError), (([3], 3, 0, 0), ValueError), (([3.5], 3, 2, 0), TypeError),
    (([3], 3, 2, "x"), TypeError),
])
def test_bad_arguments(args, exc):
    for cls in (WindowSampler, StreamSampler):
        with pytest.raises(exc):
            cls(*args)
