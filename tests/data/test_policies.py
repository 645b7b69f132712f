"""Behaviour policies: RAM addresses checked against the frames, trackers far above random,
the sine gait moves the cheetah forward, epsilon mixtures are seeded per episode."""

import numpy as np
import pytest

from more3s.data.policies import (BreakoutTracker, EpsilonMixture, PongTracker, RandomPolicy,
                                  SinePolicy, make_policy, replay_tracker)
from more3s.envs import make_env


def _fit(ram_vals, pixel_vals):
    ok = ~np.isnan(pixel_vals)
    x, y = np.asarray(ram_vals, float)[ok], pixel_vals[ok]
    slope, icpt = np.polyfit(x, y, 1)
    return np.corrcoef(x, y)[0, 1], slope


def test_breakout_ram_addresses_match_frames():
    env = make_env("breakout", noop_max=0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    paddle_ram, paddle_px, bx_ram, bx_px, by_ram, by_px = [], [], [], [], [], []
    for t in range(400):
        obs, *_ = env.step(1 if t % 25 == 0 else int(rng.integers(4)))
        ram = env.unwrapped.ale.getRAM()
        cols = np.flatnonzero(obs[190, 8:152].sum(1) > 0) + 8  # the paddle's row
        paddle_ram.append(ram[BreakoutTracker.PADDLE_X])
        paddle_px.append(cols.mean() if len(cols) else np.nan)
        ys, xs = np.nonzero(obs[94:188, 8:152].sum(2) > 0)  # below the bricks, above the paddle
        bx_ram.append(ram[BreakoutTracker.BALL_X])
        by_ram.append(ram[BreakoutTracker.BALL_Y])
        bx_px.append(xs.mean() + 8 if len(xs) else np.nan)
        by_px.append(ys.mean() + 94 if len(ys) else np.nan)
    for ram_vals, px in ((paddle_ram, paddle_px), (bx_ram, bx_px), (by_ram, by_px)):
        r, slope = _fit(ram_vals, np.array(px))
        assert r > 0.99 and slope == pytest.approx(1.0, abs=0.05)


def test_pong_ram_addresses_match_frames():
    env = make_env("pong", noop_max=0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    p_ram, p_px, b_ram, b_px = [], [], [], []
    for _ in range(600):
        obs, *_ = env.step(int(rng.integers(6)))
        ram = env.unwrapped.ale.getRAM()
        play = obs[34:194]
        ys, _ = np.nonzero(np.all(play[:, 135:150] == (92, 186, 92), axis=2))  # own (green) paddle
        p_ram.append(ram[PongTracker.PADDLE_Y])
        p_px.append(ys.mean() + 34 if len(ys) else np.nan)
        ys, _ = np.nonzero(np.all(play == (236, 236, 236), axis=2))  # the ball
        b_ram.append(ram[PongTracker.BALL_Y])
        b_px.append(ys.mean() + 34 if len(ys) else np.nan)
    for ram_vals, px in ((p_ram, p_px), (b_ram, b_px)):
        r, slope = _fit(ram_vals, np.array(px))
        assert r > 0.98 and slope == pytest.approx(1.0, abs=0.06)


def _play(task, policy, steps, seed=0):
    env = make_env(task, max_episode_steps=steps)
    pol = make_policy(task, policy, env) if isinstance(policy, str) else policy
    obs, _ = env.reset(seed=seed)
    pol.reset(env, np.random.default_rng(seed))
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(pol.act(obs, env))
        total += r
        done = term or trunc
    return total, env


def test_breakout_tracker_far_above_random():
    tracker, _ = _play("breakout", "tracker", 1000)
    rand = np.mean([_play("breakout", "random", 1000, seed=s)[0] for s in range(2)])
    assert tracker >= 25 and tracker > 10 * max(rand, 1.0), (tracker, rand)


def test_pong_tracker_scores_points():
    tracker, _ = _play("pong", "tracker", 1200)
    rand, _ = _play("pong", "random", 1200)
    assert tracker > rand + 5, (tracker, rand)


def test_sine_gait_moves_forward():
    ret, env = _play("halfcheetah", "sine", 300)
    rand, _ = _play("halfcheetah", "random", 300)
    assert env.unwrapped.data.qpos[0] > 5.0  # metres travelled in 300 steps
    assert ret > rand + 200


def test_epsilon_mixture_draws_epsilon_per_episode():
    env = make_env("breakout")
    mix = make_policy("breakout", "mixed", env)
    assert isinstance(mix, EpsilonMixture) and isinstance(mix.base, BreakoutTracker)
    eps = [mix.reset(env, np.random.default_rng(s))["epsilon"] for s in range(20)]
    assert len(set(eps)) == 20 and 0 <= min(eps) and max(eps) <= 1
    assert mix.reset(env, np.random.default_rng(3))["epsilon"] == eps[3]  # seeded
    fixed = make_policy("breakout", "eps:0.25", env)
    assert fixed.reset(env, np.random.default_rng(0))["epsilon"] == 0.25
    hc = make_env("halfcheetah")
    assert isinstance(make_policy("halfcheetah", "mixed", hc).base, SinePolicy)
    r = make_policy("halfcheetah", "random", hc)
    assert isinstance(r, RandomPolicy)
    r.reset(hc, np.random.default_rng(0))
    a = r.act(None, hc)
    assert a.shape == (6,) and hc.action_space.contains(a)


@pytest.mark.parametrize("task", ["breakout", "pong"])
def test_replaying_the_tracker_on_recorded_ram_gives_its_actions(task, tmp_path, monkeypatch):
    """replay_tracker reads a dataset's recorded RAM as the tracker read the console: on the tracker's own
    episodes it returns the actions taken, step for step; on an epsilon mixture it differs where they were random."""
    from more3s.data import collect_dataset, load_episodes
    from more3s.data.facts import load_step_infos

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    for policy, match in (("tracker", True), ("eps:0.5", False)):
        path = collect_dataset(task, policy, 2, f"replay/{task}-{policy.replace(':', '').replace('.', '')}-v0", seed=1,
                               max_episode_steps=200, progress=False)
        for ep, info in zip(load_episodes(path), load_step_infos(path)):
            replayed = replay_tracker(task, info["ram"][:-1])
            assert replayed.shape == ep.actions.shape
            assert np.array_equal(replayed, ep.actions) == match
            if not match:  # half the steps drew a random action, a quarter of those the tracker's own
                assert 0.45 < np.mean(replayed == ep.actions) < 0.85
    with pytest.raises(ValueError, match="no scripted tracker for task 'halfcheetah'"):
        replay_tracker("halfcheetah", np.zeros((3, 128), np.uint8))
