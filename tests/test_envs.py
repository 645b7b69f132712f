"""The envs package against live environments: action meanings, joints, prompts, scores, protocol."""

import mujoco
import numpy as np
import pytest

from more3s.envs import (ATARI_FRAMESKIP, PROMPT_SETS, SCORE_REFS, TASKS, action_prompts,
                         base_action_prompt, get_task, make_env, make_vector_env, normalized_score,
                         state_caption)

ATARI = [t for t in TASKS.values() if t.family == "atari"]
MUJOCO = [t for t in TASKS.values() if t.family == "mujoco"]


@pytest.mark.parametrize("spec", ATARI, ids=lambda t: t.name)
def test_atari_action_meanings_match_ale(spec):
    env = make_env(spec)
    assert tuple(env.unwrapped.get_action_meanings()) == spec.action_names
    assert env.action_space.n == spec.action_dim
    assert env.observation_space.shape == (210, 160, 3)
    assert spec.clip_rewards and spec.rtg_scale == 1.0


@pytest.mark.parametrize("spec", MUJOCO, ids=lambda t: t.name)
def test_mujoco_joints_and_obs_match_model(spec):
    env = make_env(spec)
    model = env.unwrapped.model
    # the joint each actuator drives (hopper/walker2d actuators are unnamed; joints are "x_joint")
    joints = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(model.actuator_trnid[i, 0]))
              for i in range(model.nu)]
    names = tuple(j.removesuffix("_joint") for j in joints)
    assert names == spec.action_names
    assert env.observation_space.shape == (spec.obs_dim,)
    assert env.spec.max_episode_steps == spec.max_episode_steps == 1000
    assert not spec.clip_rewards and spec.rtg_scale == 1000.0


def test_get_task_by_name_and_gym_id():
    assert get_task("ALE/Breakout-v5").name == "breakout"
    assert get_task(" HalfCheetah-v5 ").name == "halfcheetah"
    with pytest.raises(ValueError, match="unknown env 'tetris'"):
        get_task("tetris")


@pytest.mark.parametrize("task", list(TASKS))
def test_prompts_distinct_per_action_and_per_set(task):
    spec = get_task(task)
    sets = {s: action_prompts(task, s) for s in PROMPT_SETS}
    for s, prompts in sets.items():
        assert len(prompts) == spec.action_dim
        assert all(isinstance(p, str) and p.strip() for p in prompts)
        assert len(set(prompts)) == len(prompts), (task, s)  # one distinct prompt per action
    for i in range(spec.action_dim):  # each set words action i differently
        assert len({sets[s][i] for s in PROMPT_SETS}) == len(PROMPT_SETS)
    if spec.action_kind == "continuous":
        bases = [base_action_prompt(task, s) for s in PROMPT_SETS]
        assert len(set(bases)) == 3 and not set(bases) & set(sets["original"])
    else:
        with pytest.raises(ValueError, match="discrete"):
            base_action_prompt(task)
    assert state_caption(task)
    with pytest.raises(ValueError, match="prompt set"):
        action_prompts(task, "poetic")


def test_captions_distinct():
    assert len({state_caption(t) for t in TASKS}) == len(TASKS)


@pytest.mark.parametrize("task", list(TASKS))
def test_normalized_score(task):
    ref = SCORE_REFS[task]
    assert normalized_score(task, ref.random) == pytest.approx(0.0)
    assert normalized_score(task, ref.reference) == pytest.approx(100.0)
    mid = (ref.random + ref.reference) / 2
    out = normalized_score(task, np.array([ref.random, mid]))
    np.testing.assert_allclose(out, [0.0, 50.0])
    assert isinstance(normalized_score(task, mid), float)


def test_known_reference_values():
    # DT's table: Breakout gamer 30.5 / random 1.7; D4RL halfcheetah -280.18 / 12135.
    assert normalized_score("breakout", 30.5) == pytest.approx(100.0)
    assert normalized_score("halfcheetah", 12135.0) == pytest.approx(100.0)
    assert normalized_score("pong", 14.6) == pytest.approx(100.0)


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
