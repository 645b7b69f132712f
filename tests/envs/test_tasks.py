"""The task table against live environments (action meanings, joints, observation sizes), the task lookup, and
the one check that an action space or actions fit a task."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from more3s.envs import TASKS, check_action_space, check_actions, get_task, guess_task, make_env

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


def test_get_task_passes_a_task_through():
    spec = TASKS["pong"]
    assert get_task(spec) is spec


def test_guess_task_from_names():
    assert guess_task("halfcheetah-medium-v2").name == "halfcheetah"
    assert guess_task("ALE/Pong-v5").name == "pong"
    assert guess_task("tst/walker_2d-v0").name == "walker2d"  # "-" and "_" do not count
    assert guess_task("tst/tetris-v0") is None and guess_task("") is None and guess_task(None) is None


def test_check_action_space_names_source_and_expectation():
    check_action_space(TASKS["breakout"], gym.spaces.Discrete(4), "here")
    check_action_space(TASKS["hopper"], gym.spaces.Box(-1, 1, (3,)), "here")
    with pytest.raises(ValueError, match=r"my/file.json: field 'action_space' .* Discrete\(4\)"):
        check_action_space(TASKS["breakout"], gym.spaces.Discrete(6), "my/file.json")
    with pytest.raises(ValueError, match=r"env 'Hopper-v5'.*'hopper' .*Box of shape \(3,\)"):
        check_action_space(TASKS["hopper"], gym.spaces.Discrete(3), "env 'Hopper-v5'")


def test_check_actions():
    check_actions(TASKS["breakout"], np.array([0, 3, 1]), "src")
    check_actions(TASKS["hopper"], np.zeros((5, 3), np.float32), "src")
    with pytest.raises(ValueError, match="src: field 'actions' has values outside"):
        check_actions(TASKS["breakout"], np.array([0, 4]), "src")
    with pytest.raises(ValueError, match="discrete actions"):
        check_actions(TASKS["breakout"], np.zeros((2, 4), np.float32), "src")
    with pytest.raises(ValueError, match="3-dimensional continuous actions"):
        check_actions(TASKS["hopper"], np.zeros((5, 6), np.float32), "src")
