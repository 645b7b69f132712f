"""Rollout engine: ring-cache decisions equal the banded oracle's over multi-episode rollouts."""

import numpy as np
import pytest
import torch

from more3s.encoder.lxmert import load_encoder
from more3s.envs import get_task, make_vector_env, normalized_score
from more3s.model import ModelConfig, MoreModel
from more3s.rollout.engine import RolloutEngine

N_ENVS, MAX_STEPS, EPISODES = 2, 20, 5  # 5 episodes over 2 envs: env 0 plays 3, env 1 plays 2


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("lxmert-tiny", device="cpu")


def _model(encoder, rtg_mode, memory_steps, seed):
    torch.manual_seed(seed)
    task = get_task("breakout")
    cfg = ModelConfig(d_enc=encoder.d_enc, act_dim=task.action_dim, n_layer=2, n_head=2, n_embd=32,
                      window=3, memory_steps=memory_steps, max_timestep=64, rtg_mode=rtg_mode, dropout=0.0)
    model = MoreModel(cfg, torch.randn(task.action_dim, encoder.d_enc))
    # At GPT-2's init scale every step scores the actions alike; large random weights make the
    # greedy action change along the episode, so rollouts exercise FIRE, moves and rewards.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # weights (std 0.02 -> 0.5); biases stay 0, norms stay 1
                p.mul_(25.0)
    return model.eval()


def _play(model, encoder, mode, target=5.0, **kw):
    venv = make_vector_env("breakout", N_ENVS, max_episode_steps=MAX_STEPS)
    try:
        return RolloutEngine(model, encoder, "breakout", mode=mode, **kw).run(
            venv, target, EPISODES, seed=123, record=True)
    finally:
        venv.close()


def _varied_model(encoder, rtg_mode, memory_steps):
    """The first seeded random model whose greedy actions vary along its ring rollouts, and those rollouts: a
    comparison of engines means little if every step picks the same action (which seed does depends on the
    state design, so it is searched, not fixed)."""
    for seed in range(32):
        model = _model(encoder, rtg_mode, memory_steps, seed)
        ring = _play(model, encoder, "ring")
        if len({tuple(a.tolist()) for a in ring.actions}) > 1:
            return model, ring
    raise AssertionError(f"no seed in 0-31 gives a {rtg_mode} model whose greedy actions vary")


@pytest.mark.parametrize("rtg_mode, memory_steps", [("kv", 2), ("token", 0)])
def test_ring_equals_banded_over_resets(encoder, rtg_mode, memory_steps):
    model, ring = _varied_model(encoder, rtg_mode, memory_steps)
    ref = _play(model, encoder, "banded")
    # the whole-episode oracle: history longer than any episode, so nothing is cut
    full = _play(model, encoder, "banded", history_steps=MAX_STEPS + 1)
    assert len(ring.logits) == len(ref.logits) == len(full.logits) >= 2 * MAX_STEPS  # resets happened
    for r, a, f in zip(ring.logits, ref.logits, full.logits):
        np.testing.assert_allclose(r, a, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a, f, rtol=1e-4, atol=1e-4)
    assert [a.tolist() for a in ring.actions] == [a.tolist() for a in ref.actions]
    assert ring.returns == ref.returns and ring.lengths == ref.lengths


def test_compiled_ring_equals_eager_ring(encoder):
    """``compile_step=True``: every decision comes from the compiled step, equal to the eager ring's, and a second
    run of the engine reuses its compiled step and ring (every run starts by resetting all environments)."""
    model = _model(encoder, "kv", 2, seed=8)
    eager = _play(model, encoder, "ring")
    engine = RolloutEngine(model, encoder, "breakout", compile_step=True)
    for run in range(2):
        venv = make_vector_env("breakout", N_ENVS, max_episode_steps=MAX_STEPS)
        res = engine.run(venv, 5.0, EPISODES, seed=123, record=True)
        venv.close()
        assert engine.compiled_steps == (run + 1) * len(res.logits) and len(engine._compiled) == 1
        for r, e in zip(res.logits, eager.logits):
            np.testing.assert_allclose(r, e, rtol=1e-4, atol=1e-4)
        assert res.returns == eager.returns and res.lengths == eager.lengths
    sampler = engine.sampling(True)  # the sampled-actions twin shares the compiled step and its ring
    venv = make_vector_env("breakout", N_ENVS, max_episode_steps=MAX_STEPS)
    sampled = sampler.run(venv, 5.0, EPISODES, seed=123)
    venv.close()
    assert sampler._compiled is engine._compiled and sampler.compiled_steps > 0 and not engine.sample
    assert len(sampled.returns) == EPISODES


def test_bookkeeping(encoder):
    model = _model(encoder, "kv", 2, seed=4)
    res = _play(model, encoder, "ring")
    assert len(res.returns) == EPISODES
    assert sorted(res.env_index) == [0, 0, 0, 1, 1]
    assert all(1 <= n <= MAX_STEPS for n in res.lengths)
    # RTG units are clipped rewards for Atari; raw returns are never smaller for Breakout (rewards >= 0)
    assert all(r >= t >= 0 for r, t in zip(res.returns, res.train_returns))
    assert np.all(np.isfinite(normalized_score("breakout", res.returns)))
    win = _play(model, encoder, "window")  # the cache-less DT-style baseline runs too
    assert len(win.returns) == EPISODES and win.logits[0].shape == (N_ENVS, 4)


def test_bad_arguments(encoder):
    model = _model(encoder, "kv", 2, seed=0)
    with pytest.raises(ValueError, match="engine mode"):
        RolloutEngine(model, encoder, "breakout", mode="beam")
    with pytest.raises(ValueError, match="act_dim|actions"):
        RolloutEngine(model, encoder, "pong")
    with pytest.raises(ValueError, match="history_steps"):
        RolloutEngine(model, encoder, "breakout", mode="banded", history_steps=2)
    with pytest.raises(ValueError, match="compile_step"):
        RolloutEngine(model, encoder, "breakout", mode="banded", compile_step=True)
    eng = RolloutEngine(model, encoder, "breakout")
    venv = make_vector_env("breakout", 1, max_episode_steps=5)
    with pytest.raises(ValueError, match="num_episodes"):
        eng.run(venv, 1.0, 0)
    venv.close()


class _FakeVecEnv:
    """Two envs with scripted rewards; env i ends its episodes after ``ends[i]`` steps (same-step reset)."""

    num_envs = 2
    ends = (3, 2)
    rewards = (4.0, 0.0, 7.0)  # raw Breakout-like rewards: clipped to 1, 0, 1 for the RTG

    def reset(self, seed=None):
        self.t = np.zeros(2, dtype=int)
        return np.zeros((2, 8, 8, 3), np.uint8), {}

    def step(self, action):
        r = np.array([self.rewards[self.t[i] % 3] for i in range(2)])
        self.t += 1
        term = self.t >= np.array(self.ends)
        self.t[term] = 0
        obs = np.full((2, 8, 8, 3), 1, np.uint8)
        return obs, r, term, np.zeros(2, bool), {}


def test_rtg_timestep_and_first_bookkeeping(zero_encoder, encoder, monkeypatch):
    model = _model(encoder, "kv", 2, seed=0)
    eng = RolloutEngine(model, zero_encoder(encoder.d_enc), "breakout", mode="banded")
    seen = []
    real = eng._decide
    monkeypatch.setattr(eng, "_decide", lambda s, a, r, t, f: (seen.append((r.tolist(), t.tolist(), f.tolist())),
                                                             real(s, a, r, t, f))[1])
    res = eng.run(_FakeVecEnv(), 10.0, 3)  # env 0 plays 2 episodes, env 1 plays 1
    rtg0 = [s[0][0] for s in seen[:4]]
    assert rtg0 == [10.0, 9.0, 9.0, 10.0]  # 10 - clip(4) - clip(0), then a new episode resets it
    assert [s[1][0] for s in seen[:4]] == [0, 1, 2, 0]
    assert [s[2][0] for s in seen[:4]] == [True, False, False, True]
    assert [s[0][1] for s in seen[:3]] == [10.0, 9.0, 10.0]  # env 1: episodes of 2 steps
    assert sorted(zip(res.env_index, res.returns, res.train_returns, res.lengths)) == [
        (0, 11.0, 2.0, 3), (0, 11.0, 2.0, 3), (1, 4.0, 1.0, 2)]


def test_graph_step_bookkeeping_matches_eager_steps(encoder, monkeypatch):
    """The CUDA-graph step's bookkeeping on this CPU (static input buffers, warm-up and capture tokens forgotten,
    ring state carried between replays, resets), with an eager twin standing in for capture and replay."""
    from more3s.rollout.engine import _CudaGraphStep

    def eager_record(self):
        for _ in range(3):  # the warm-up and capture steps write tokens into the ring, as on a GPU
            self._step()
        out = torch.empty(self.state.shape[0], self.model.config.act_dim)
        return (lambda: out.copy_(self._step())), out

    monkeypatch.setattr(_CudaGraphStep, "_record", eager_record)
    model = _model(encoder, "kv", 2, seed=4)
    N, A = 3, model.config.act_dim
    twin = _CudaGraphStep(model, model.new_rollout_cache(N), N, encoder.d_enc, (), torch.long, "cpu",
                          torch.float32)
    eager_cache = model.new_rollout_cache(N)
    g = torch.Generator().manual_seed(0)
    first = torch.tensor([True, False, False])  # envs 1, 2 start without a reset: the ring must be empty already
    for t in range(12):
        state = torch.randn(N, encoder.d_enc, generator=g)
        prev, rtg = torch.randint(0, A, (N,), generator=g), torch.rand(N, generator=g) * 5
        ts = torch.full((N,), t)
        got = twin.replay(state, prev, rtg, ts, first).clone()
        want = model.step(eager_cache, state, prev, rtg, ts, first)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        first = torch.rand(N, generator=g) < 0.2  # random resets
    torch.testing.assert_close(twin.cache.tokens_seen, eager_cache.tokens_seen, atol=0, rtol=0)


@pytest.mark.gpu
def test_cuda_graph_ring_equals_eager_and_banded_on_gpu():
    """The graph is captured and replayed (a capture that fell back to eager steps fails here: strict), on the
    CUDA ring kernels (not the reference fallback), and its decisions equal eager and banded steps."""
    enc = load_encoder("lxmert-tiny", device="cuda", dtype=torch.float32)
    model = _model(enc, "kv", 2, seed=4).cuda()
    engine = RolloutEngine(model, enc, "breakout", mode="ring", cache_backend="cuda", cuda_graph=True,
                           strict_graph=True)
    venv = make_vector_env("breakout", N_ENVS, max_episode_steps=MAX_STEPS)
    try:
        graph = engine.run(venv, 5.0, EPISODES, seed=123, record=True)
    finally:
        venv.close()
    assert engine._graph is not None and engine._cache.backend == "cuda"
    assert engine.graph_replays == len(graph.logits) > 0  # every step replayed the captured graph
    eager = _play(model, enc, "ring", cuda_graph=False, cache_backend="cuda")
    ref = _play(model, enc, "banded")
    for g, e, r in zip(graph.logits, eager.logits, ref.logits):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-3)
    assert graph.returns == ref.returns


def test_capture_fallback_is_an_error_under_tests(encoder, monkeypatch):
    """A failed capture falls back to eager steps with a warning for users; strict (the test suite sets
    MORE3S_STRICT_CUDA_GRAPH=1) makes it an error, so a GPU test cannot pass on the fallback."""
    import os

    from more3s.cuda_graphs import try_capture
    from more3s.rollout.engine import _CudaGraphStep

    def broken(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_CudaGraphStep, "_record", broken)
    model = _model(encoder, "kv", 2, seed=4)
    args = (model, model.new_rollout_cache(2), 2, encoder.d_enc, (), torch.long, "cpu", torch.float32)
    with pytest.warns(RuntimeWarning, match="running eager steps"):
        assert try_capture(lambda: _CudaGraphStep(*args), "the model step", strict=False) is None
    with pytest.raises(RuntimeError, match="strict"):
        try_capture(lambda: _CudaGraphStep(*args), "the model step", strict=True)
    assert os.environ["MORE3S_STRICT_CUDA_GRAPH"] == "1"
    assert RolloutEngine(model, encoder, "breakout").strict_graph  # the suite's default
    monkeypatch.setenv("MORE3S_STRICT_CUDA_GRAPH", "0")
    assert not RolloutEngine(model, encoder, "breakout").strict_graph


def test_episode_digests_count_distinct_trajectories(encoder):
    """Greedy play of a deterministic game replays one trajectory per reset state; sampling spreads them."""
    torch.manual_seed(0)
    task = get_task("breakout")
    cfg = ModelConfig(d_enc=encoder.d_enc, act_dim=task.action_dim, n_layer=1, n_head=1, n_embd=16,
                      window=3, max_timestep=64, dropout=0.0)
    model = MoreModel(cfg, torch.randn(task.action_dim, encoder.d_enc)).eval()
    sampled = _play(model, encoder, "ring", sample=True)
    assert len(sampled.digests) == EPISODES and len(set(sampled.digests)) == EPISODES
    greedy = _play(model, encoder, "ring")
    for env in set(greedy.env_index):  # one env's greedy episodes after a reset replay the same trajectory
        mine = [d for d, e in zip(greedy.digests, greedy.env_index) if e == env]
        assert len(set(mine)) == 1


def test_sampled_actions_follow_the_softmax_and_are_reproducible(encoder):
    """DT's Atari protocol samples actions: seeded runs repeat exactly, other seeds differ, and the
    sampled actions are not simply the argmax (a near-uniform policy makes that overwhelmingly likely)."""
    torch.manual_seed(0)
    task = get_task("breakout")
    cfg = ModelConfig(d_enc=encoder.d_enc, act_dim=task.action_dim, n_layer=1, n_head=1, n_embd=16,
                      window=3, max_timestep=64, dropout=0.0)
    model = MoreModel(cfg, torch.randn(task.action_dim, encoder.d_enc)).eval()  # init scale: near uniform
    a = _play(model, encoder, "ring", sample=True)
    b = _play(model, encoder, "ring", sample=True)
    greedy = [lg.argmax(-1).tolist() for lg in a.logits]
    assert [x.tolist() for x in a.actions] == [x.tolist() for x in b.actions]
    assert [x.tolist() for x in a.actions] != greedy
    venv = make_vector_env("breakout", N_ENVS, max_episode_steps=MAX_STEPS)
    try:
        c = RolloutEngine(model, encoder, "breakout", sample=True).run(venv, 5.0, EPISODES, seed=7, record=True)
    finally:
        venv.close()
    assert [x.tolist() for x in c.actions] != [x.tolist() for x in a.actions]
    # temperature 1 is the default; a cold softmax draws the argmax, a hot one strays from it more often
    assert [x.tolist() for x in _play(model, encoder, "ring", sample=True, temperature=1.0).actions] == \
        [x.tolist() for x in a.actions]
    cold = _play(model, encoder, "ring", sample=True, temperature=1e-6)
    assert [x.tolist() for x in cold.actions] == [lg.argmax(-1).tolist() for lg in cold.logits]
    sharp = torch.randn(task.action_dim, encoder.d_enc) * 50  # far from uniform: T moves the draws
    peaked = MoreModel(cfg, sharp).eval()

    def off_argmax(temperature):
        r = _play(peaked, encoder, "ring", sample=True, temperature=temperature)
        return np.mean([np.mean(np.asarray(x) != np.asarray(lg).argmax(-1)) for x, lg in zip(r.actions, r.logits)])

    assert off_argmax(0.25) < off_argmax(4.0)  # measured: 0.16 and 0.68 of the draws


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_temperature_must_be_a_finite_positive_number(encoder, bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        RolloutEngine(_model(encoder, "kv", 2, seed=0), encoder, "breakout", sample=True, temperature=bad)


class _SeededVecEnv:
    """N envs whose episode lengths follow their reset seeds (actions do not matter): which env got which seed
    and played how many episodes is visible in the results, whatever the model computes."""

    rewards = (1.0, 0.0, 3.0)

    def __init__(self, n):
        self.num_envs = n

    def reset(self, seed=None):
        self.seeds = np.asarray(seed)
        self.t = np.zeros(self.num_envs, dtype=int)
        self.episode = np.zeros(self.num_envs, dtype=int)
        return np.zeros((self.num_envs, 8, 8, 3), np.uint8), {}

    def step(self, action):
        r = np.array([self.rewards[(self.t[i] + self.seeds[i]) % 3] for i in range(self.num_envs)])
        self.t += 1
        term = self.t >= 2 + (self.seeds + self.episode) % 4  # lengths 2..5, per seed and episode
        self.t[term] = 0
        self.episode[term] += 1
        return np.ones((self.num_envs, 8, 8, 3), np.uint8), r, term, np.zeros(self.num_envs, bool), {}


def test_shards_play_the_episodes_of_one_process(zero_encoder, encoder):
    """Envs 0-1 and 2-4 of 5, run as two shards, play what one 5-env run plays: seeds, quotas, indices."""
    model = _model(encoder, "kv", 2, seed=0)
    eng = RolloutEngine(model, zero_encoder(encoder.d_enc), "breakout", mode="ring")

    def played(res):
        seen: dict[int, int] = {}
        out = []
        for env, ret, n in zip(res.env_index, res.returns, res.lengths):
            seen[env] = seen.get(env, -1) + 1
            out.append((env, seen[env], ret, n))
        return sorted(out)

    whole = played(eng.run(_SeededVecEnv(5), 10.0, 12, seed=40))
    shards = played(eng.run(_SeededVecEnv(2), 10.0, 12, seed=40, first_env=0, total_envs=5))
    shards += played(eng.run(_SeededVecEnv(3), 10.0, 12, seed=40, first_env=2, total_envs=5))
    assert len(whole) == 12 and sorted(shards) == whole
    assert [sum(1 for p in whole if p[0] == e) for e in range(5)] == [3, 3, 2, 2, 2]  # 12 over 5 envs
    with pytest.raises(ValueError, match="total_envs"):
        eng.run(_SeededVecEnv(3), 10.0, 12, seed=40, first_env=3, total_envs=5)
