"""Ground truth recorded with Atari data: the RAM round-trips through Minari, row t belongs to observation t,
and the decoded facts are where the frame shows the objects."""

import minari
import numpy as np
import pytest

from more3s.data import collect_dataset
from more3s.data.facts import FACTS, decode_facts, load_step_infos
from more3s.encoder import atari_regions
from more3s.envs import make_env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """{task: (minari episode, step infos, episode seed)} of one short collected episode per game."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari_facts")))
        out = {}
        for task, steps in (("breakout", 150), ("pong", 150)):
            collect_dataset(task, "eps:0.3", 1, f"{task}/facts-v0", seed=5, max_episode_steps=steps, progress=False)
            ds = minari.load_dataset(f"{task}/facts-v0")
            seed = int(next(iter(ds.storage.get_episode_metadata([0])))["seed"])
            out[task] = (next(ds.iterate_episodes()), load_step_infos(f"{task}/facts-v0")[0], seed)
        yield out


@pytest.mark.parametrize("task", ["breakout", "pong"])
def test_ram_roundtrips_through_minari(recorded, task):
    ep, infos, seed = recorded[task]
    T = len(ep.actions)
    ram = ep.infos["ram"]  # plain Minari reads it
    assert ram.shape == (T + 1, 128) and ram.dtype == np.uint8
    np.testing.assert_array_equal(infos["ram"], ram)
    for k in FACTS[task]:
        assert ep.infos[k].shape == (T + 1,) and ep.infos[k].dtype == np.float32
    facts = decode_facts(task, ram, ep.observations)
    for k, v in facts.items():
        np.testing.assert_array_equal(ep.infos[k], v)
    # row t is the RAM beside observation t: replaying the seed and actions reproduces it
    env = make_env(task, max_episode_steps=T)
    env.reset(seed=seed)
    np.testing.assert_array_equal(env.unwrapped.ale.getRAM(), ram[0])
    for t, a in enumerate(ep.actions):
        env.step(int(a))
        np.testing.assert_array_equal(env.unwrapped.ale.getRAM(), ram[t + 1])
    env.close()


def _near(frame_regions, t, x, y, tol):
    """Is there a region of frame t whose centroid is within ``tol`` px of (x, y)?"""
    r = frame_regions
    cx, cy = r.feats[t, :, 4] * 160, r.feats[t, :, 5] * 210
    return bool(np.any(r.mask[t] & (np.abs(cx - x) <= tol) & (np.abs(cy - y) <= tol)))


def test_facts_are_where_the_frame_shows_them(recorded):
    ep, infos, _ = recorded["breakout"]
    r = atari_regions(ep.observations)
    on = np.flatnonzero(np.isfinite(infos["ball_x"]))
    assert len(on) > 50
    hits = [_near(r, t, infos["ball_x"][t], infos["ball_y"][t], 1.5) for t in on]
    assert np.mean(hits) == 1.0, np.mean(hits)  # a ball the frame does not draw is off screen
    paddle = [_near(r, t, infos["paddle_x"][t], 191, 1.5) for t in range(len(r))]
    assert np.mean(paddle) > 0.9, np.mean(paddle)

    ep, infos, _ = recorded["pong"]
    r = atari_regions(ep.observations)
    on = np.flatnonzero(np.isfinite(infos["ball_x"]))
    assert len(on) > 50
    assert np.mean([_near(r, t, infos["ball_x"][t], infos["ball_y"][t], 1.5) for t in on]) == 1.0
    # paddles (own at x 142, opponent at x 18) within a few pixels where on screen: the sprite is drawn a step late
    # at times (and a paddle the walls cut is a shorter region, its centroid moved)
    for x, fact in ((142, "paddle_y"), (18, "enemy_y")):
        on = np.flatnonzero(np.isfinite(infos[fact]))
        assert len(on) > 50
        assert np.mean([_near(r, t, x, infos[fact][t], 6) for t in on]) > 0.8, fact


def test_velocity_is_the_difference_of_visible_steps():
    ram = np.zeros((5, 128), np.uint8)
    ram[:, 101] = [0, 50, 52, 54, 0]  # ball y (0 = no ball)
    ram[:, 99] = [0, 100, 103, 101, 0]  # ball x
    f = decode_facts("breakout", ram)
    np.testing.assert_array_equal(np.isfinite(f["ball_x"]), [False, True, True, True, False])
    np.testing.assert_array_equal(f["ball_vx"][2:4], [3, -2])
    np.testing.assert_array_equal(f["ball_vy"][2:4], [2, 2])
    assert np.isnan(f["ball_vx"][[0, 1, 4]]).all()
    assert np.isfinite(f["paddle_x"]).all()


def test_a_ball_the_frame_does_not_draw_is_off_screen():
    """Breakout's ball inside a side wall or behind a brick keeps its RAM position; the frame decides."""
    ram = np.zeros((4, 128), np.uint8)
    ram[:, 101] = 89  # ball y: centre row 100
    ram[:, 99] = [67, 67, 67, 67]  # ball x: centre column 19
    frames = np.zeros((4, 210, 160, 3), np.uint8)
    frames[0, 98:102, 18:20] = (200, 72, 72)  # drawn: 2 x 4 pixels of the ball's colour
    frames[1, 98:102, 18:19] = (200, 72, 72)  # half drawn (at a wall's edge): still on screen
    # frame 2 draws nothing there (hidden); frame 3 draws it touching a same-coloured object
    frames[3, 98:102, 18:20] = (200, 72, 72)
    frames[3, 102:108, 10:30] = (200, 72, 72)
    f = decode_facts("breakout", ram, frames)
    np.testing.assert_array_equal(np.isfinite(f["ball_x"]), [True, True, False, False])
    np.testing.assert_array_equal(np.isfinite(f["ball_y"]), [True, True, False, False])
    np.testing.assert_array_equal(np.isfinite(f["ball_vx"]), [False, True, False, False])
    assert np.isfinite(decode_facts("breakout", ram)["ball_x"]).all()  # without frames: the RAM alone


def test_a_paddle_the_walls_hide_is_off_screen():
    """Pong's opponent paddle above the top wall keeps its RAM y; a frame that draws none of it decides."""
    ram = np.zeros((4, 128), np.uint8)
    ram[:, 50] = [25 + 5, 60 + 5, 60 + 5, 34 + 5]  # opponent y (decoded: RAM - 5): hidden, drawn, not drawn, cut
    ram[:, 51] = 100 + 5  # own paddle y, drawn in every frame
    frames = np.zeros((4, 210, 160, 3), np.uint8)
    frames[:, 34:194] = (144, 72, 17)  # the field
    frames[:, 92:108, 140:144] = (92, 186, 92)
    frames[0, 1:21, 36:40] = (213, 130, 74)  # the opponent's score digit: its colour, elsewhere
    frames[1, 50:66, 16:20] = (213, 130, 74)
    frames[3, 34:40, 16:20] = (213, 130, 74)  # only the rows under the wall
    f = decode_facts("pong", ram, frames)
    np.testing.assert_array_equal(np.isfinite(f["enemy_y"]), [False, True, False, True])
    np.testing.assert_array_equal(f["enemy_y"][[1, 3]], [60, 34])
    assert np.isfinite(f["paddle_y"]).all()
    frames[2] = (109, 118, 43)  # Pong's reset frame: the game in other colours, no paddle of its own colour
    assert np.isnan(decode_facts("pong", ram, frames)["paddle_y"][2])
    assert np.isfinite(decode_facts("pong", ram)["enemy_y"]).all()  # without frames: the RAM alone


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N, 128\]"):
        decode_facts("breakout", np.zeros((3, 64), np.uint8))
    with pytest.raises(ValueError, match="no RAM facts for task 'qbert'"):
        decode_facts("qbert", np.zeros((3, 128), np.uint8))
    with pytest.raises(ValueError, match=r"frames must be uint8 \[N=3, H, W, 3\] beside the RAM rows"):
        decode_facts("breakout", np.zeros((3, 128), np.uint8), np.zeros((2, 210, 160, 3), np.uint8))
