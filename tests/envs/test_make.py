"""Environment factories: DT's Atari protocol (frameskip, no sticky actions, no-op starts), time limits,
vector envs, and the console RAM."""

import numpy as np

from more3s.envs import ATARI_FRAMESKIP, atari_ram, make_env, make_vector_env


def test_atari_protocol_frameskip_no_sticky_noop_starts():
    env = make_env("breakout")
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.0
    starts = set()
    for seed in range(6):
        env.reset(seed=seed)
        starts.add(ale.getEpisodeFrameNumber())
    assert len(starts) > 1  # random no-op starts
    assert max(starts) <= (30 + 1) * ATARI_FRAMESKIP + 60  # at most 30 no-ops (+ reset frames)
    f0 = ale.getEpisodeFrameNumber()
    env.step(0)
    assert ale.getEpisodeFrameNumber() - f0 == ATARI_FRAMESKIP
    # noop_max=0 gives deterministic starts; sticky actions off -> identical replays
    env0 = make_env("breakout", noop_max=0)
    frames = []
    for _ in range(2):
        obs, _ = env0.reset(seed=0)
        for a in [1, 2, 2, 3, 0, 1] * 10:
            obs, *_ = env0.step(a)
        frames.append(obs)
    np.testing.assert_array_equal(frames[0], frames[1])


def test_max_episode_steps_truncates():
    env = make_env("halfcheetah", max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]


def test_make_vector_env():
    venv = make_vector_env("pong", 2, seed=0, max_episode_steps=20)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 210, 160, 3)
    obs, r, term, trunc, _ = venv.step(np.array([0, 2]))
    assert r.shape == (2,)
    venv.close()


def test_atari_ram_reads_through_the_wrappers():
    env = make_env("breakout", noop_max=0)
    env.reset(seed=0)
    ram = atari_ram(env)
    assert ram.shape == (128,) and ram.dtype == np.uint8
    np.testing.assert_array_equal(ram, env.unwrapped.ale.getRAM())
    env.close()
