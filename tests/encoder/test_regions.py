"""Region extraction on real ALE frames and real MuJoCo states, and on synthetic frames with known objects."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from scipy import ndimage

from more3s.encoder import (
    MAX_BODIES, ComponentMemo, RegionConfig, Regions, atari_regions, extract_regions, grid_regions, image_feature_dim,
    mujoco_regions, region_projection,
)
from more3s.encoder import regions as regions_module
from more3s.encoder.regions import _PLANE_8, VELOCITY_SCALE, _split_stacked_bars

AREA, MOTION = 6, -1  # feature columns: area fraction, motion
DX, DY, MATCHED = -4, -3, -2  # displacement from the matching previous-frame object (/ 4 px), matched flag


def _check_boxes(r):
    m = r.mask
    b = r.boxes[m]
    assert np.all((b >= 0) & (b <= 1))
    assert np.all(b[:, 0] <= b[:, 2]) and np.all(b[:, 1] <= b[:, 3])
    # padding rows are all zero
    assert not r.feats[~m].any() and not r.boxes[~m].any()
    # real regions come first
    assert np.all(np.diff(m.astype(int), axis=1) <= 0)


def test_atari_regions_on_real_frames(breakout_frames):
    r = extract_regions("breakout", breakout_frames)
    N = len(breakout_frames)
    assert r.kind == "objects"
    assert r.feats.shape == (N, 36, image_feature_dim(RegionConfig()))
    assert r.boxes.shape == (N, 36, 4) and r.mask.shape == (N, 36)
    assert r.feats.dtype == np.float32
    _check_boxes(r)
    counts = r.mask.sum(1)
    assert np.all((counts >= 10) & (counts < 36))  # walls, 6 brick rows, score digits, paddle, ball...
    # smallest box first within each frame (the slot order of sprites)
    for i in range(N):
        b = r.boxes[i, r.mask[i]] * [160, 210, 160, 210]
        assert np.all(np.diff(np.round((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))) >= 0)
    # the six brick rows of Breakout: 144 px wide, 6 px high, starting at y=57
    rows = [(b * [160, 210, 160, 210]).round() for b in r.boxes[0, r.mask[0]]]
    bricks = [b for b in rows if b[0] == 8 and b[2] == 152 and b[3] - b[1] == 6]
    assert sorted(b[1] for b in bricks) == [57, 63, 69, 75, 81, 87]


def test_motion_features_follow_moving_objects(breakout_frames):
    cur, prev = breakout_frames[2:17], breakout_frames[1:16]  # the served ball is in flight here
    still = atari_regions(cur, cur)
    assert not still.feats[..., MOTION].any()  # same frame: no motion anywhere
    moving = atari_regions(cur, prev)
    np.testing.assert_array_equal(moving.boxes, still.boxes)  # regions come from the current frame
    assert (moving.feats[..., MOTION] > 0).any(axis=1).all()  # the ball (or paddle) moved in every pair
    # the brick rows do not move
    wide = (moving.boxes[..., 2] - moving.boxes[..., 0] > 0.8) & (moving.boxes[..., 3] - moving.boxes[..., 1] < 0.05)
    assert wide.any() and not moving.feats[..., MOTION][wide].any()
    # sequence mode: row t pairs with row t-1, row 0 with itself
    seq = atari_regions(breakout_frames[1:17])
    np.testing.assert_array_equal(seq.feats[1:], moving.feats)
    first = breakout_frames[1:2]
    np.testing.assert_array_equal(seq.feats[0], atari_regions(first, first).feats[0])


def test_displacement_is_the_matched_objects_motion():
    """Each object's displacement is its centroid minus that of the same-coloured, same-sized object of the
    previous frame; an object without a match (new, or of another size) gets zeros."""
    prev = np.zeros((1, 60, 60, 3), np.uint8)
    cur = np.zeros((1, 60, 60, 3), np.uint8)
    prev[0, 10:14, 10:12] = cur[0, 13:17, 18:20] = (200, 72, 72)  # a 2x4 ball moves by (+8, +3)
    prev[0, 50:54, 20:36] = cur[0, 50:54, 16:32] = (200, 72, 72)  # a 16x4 paddle, same colour, by (-4, 0)
    cur[0, 30:36, 40:48] = (66, 72, 200)  # a brick that was not there
    r = atari_regions(cur, prev)  # smallest box first: ball (8 px), brick (48), paddle (64)
    np.testing.assert_allclose(r.feats[0, :3, DX] * 4, [8, 0, -4])
    np.testing.assert_allclose(r.feats[0, :3, DY] * 4, [3, 0, 0])
    np.testing.assert_array_equal(r.feats[0, :3, MATCHED], [1, 0, 1])


def test_ball_displacement_follows_the_ram(breakout_frames):
    """On real frames the ball's displacement (slot 0: the smallest object) is its per-step motion."""
    r = atari_regions(breakout_frames)
    b = r.boxes[:, 0] * [160, 210, 160, 210]
    ball = np.round((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) == 8  # a 2x4 ball is in slot 0
    both = ball[1:] & ball[:-1]
    assert both.sum() > 10
    cx = (b[:, 0] + b[:, 2]) / 2
    np.testing.assert_allclose(r.feats[1:, 0, DX][both] * 4, np.diff(cx)[both], atol=1e-3)


def test_synthetic_objects_exact():
    f = np.zeros((1, 50, 40, 3), np.uint8)
    f[0, 5:15, 2:22] = (200, 0, 0)  # 200 px red
    f[0, 5:15, 22:30] = (0, 200, 0)  # 80 px green, touching the red block: a separate object
    f[0, 30:33, 10:13] = (0, 0, 200)  # 9 px blue
    f[0, 40, 35] = (0, 0, 200)  # 1 px blue, not connected to the other blue
    r = atari_regions(f)
    assert r.mask[0].sum() == 4
    px = (r.boxes[0, :4] * [40, 50, 40, 50]).round().astype(int)  # smallest box first
    np.testing.assert_array_equal(px, [[35, 40, 36, 41], [10, 30, 13, 33], [22, 5, 30, 15], [2, 5, 22, 15]])
    np.testing.assert_allclose(r.feats[0, :4, AREA] * 2000, [1, 9, 80, 200], rtol=1e-5)
    np.testing.assert_allclose(r.feats[0, 3, 8:11], [200 / 255, 0, 0], rtol=1e-6)  # colour
    # slots: the first 4 by size, then the 4 lowest (by centroid) by colour (packed RGB: red < green < blue), then
    # largest box first, -1 = empty
    np.testing.assert_array_equal(r.slots[0], [0, 1, 2, 3, 3, 2, 1, 0])
    f[0, 40, 35] = (200, 0, 0)  # the dot turns red: it leads the blue block now, after the larger red block
    np.testing.assert_array_equal(atari_regions(f).slots[0], [0, 1, 2, 3, 3, 0, 2, 1])
    np.testing.assert_array_equal(atari_regions(f, cfg=RegionConfig(bottom_order="largest")).slots[0],
                                  [0, 1, 2, 3, 3, 2, 1, 0])
    f[0, 40, 35] = (0, 0, 200)
    # with 3 bottom slots the lowest 3 (the dot, the blue block, then the red one: ties left to right), largest
    # first, then the first by colour (packed RGB: red < green < blue); bottom-first alone keeps the lowest first
    np.testing.assert_array_equal(atari_regions(f, cfg=RegionConfig(bottom_slots=3)).slots[0], [0, 1, 2, 3, 3, 1, 0, 3])
    np.testing.assert_array_equal(atari_regions(f, cfg=RegionConfig(bottom_slots=3, bottom_order="lowest")).slots[0],
                                  [0, 1, 2, 3, 0, 1, 3, 3])
    # the previous design: 16 slots, half by size, half by colour
    old = atari_regions(f, cfg=RegionConfig(slots=16, bottom_slots=0))
    np.testing.assert_array_equal(old.slots[0], [0, 1, 2, 3, -1, -1, -1, -1, 3, 2, 0, 1, -1, -1, -1, -1])


def test_sprite_touching_an_object_of_its_colour_is_split_from_it():
    """A 2x4 ball resting on a 16x4 paddle of its colour is one component; split into its two bars it is the
    smallest object again (size slot 0), with its own box. Shapes of two runs per row (digits) stay whole."""
    f = np.zeros((1, 50, 40, 3), np.uint8)
    f[0, 40:44, 10:26] = (200, 72, 72)  # paddle
    f[0, 36:40, 14:16] = (200, 72, 72)  # ball on it
    f[0, 5:10, 5:9] = (142, 142, 142)
    f[0, 7:9, 6:8] = 0  # a ring ("0"): rows of two runs, not bars
    f[0, 20:22, 30:31] = f[0, 22:24, 30:32] = f[0, 24:26, 30:33] = f[0, 26:28, 30:34] = (0, 0, 200)  # four bars
    r = atari_regions(f)
    px = (r.boxes[0, :r.mask[0].sum()] * [40, 50, 40, 50]).round().astype(int)
    assert [14, 36, 16, 40] == px[0].tolist()  # the ball, smallest first
    assert [10, 40, 26, 44] in px.tolist() and [5, 5, 9, 10] in px.tolist() and [30, 20, 34, 28] in px.tolist()
    whole = atari_regions(f, cfg=RegionConfig(split_bars=False))  # the previous design: ball and paddle one object
    assert whole.mask[0].sum() == 3
    assert [10, 36, 26, 44] in (whole.boxes[0, :3] * [40, 50, 40, 50]).round().astype(int).tolist()


def test_a_foot_under_a_wider_bar_of_its_colour_keeps_its_box():
    """A paddle drawn over the top of a wall's foot of its colour (Breakout's at the far right) is one component
    of two stacked bars: the paddle's, and the 8 x 2 pixels of the foot below it. The foot keeps its whole box, and
    with it its size and its place among the smallest objects; its area stays the pixels it shows. A ball (taller
    than wide) on the paddle or under a brick of its colour keeps its own box."""
    f = np.zeros((1, 60, 60, 3), np.uint8)
    red = (200, 72, 72)
    f[0, 44:50, 52:60] = red  # the foot: 8 x 6
    f[0, 44:48, 44:60] = red  # the paddle over its top: 16 x 4
    f[0, 30:32, 20:22] = (0, 200, 0)  # a 2 x 2 sprite: the smallest object
    f[0, 5:10, 5:10] = (142, 142, 142)  # a 5 x 5 block: smaller than the foot's box, larger than its pixels
    r = atari_regions(f)
    n = int(r.mask[0].sum())
    px = (r.boxes[0, :n] * 60).round().astype(int).tolist()
    assert px == [[20, 30, 22, 32], [5, 5, 10, 10], [52, 44, 60, 50], [44, 44, 60, 48]]  # smallest box first
    np.testing.assert_allclose(r.feats[0, 2, AREA] * 3600, 16, rtol=1e-5)  # the foot's visible pixels
    cut = atari_regions(f, cfg=RegionConfig(keep_feet=False))  # the design before: the foot cut to 8 x 2
    assert (cut.boxes[0, 1] * 60).round().astype(int).tolist() == [52, 48, 60, 50]
    f[0, 40:44, 50:52] = red  # a ball on the paddle: its own 2 x 4 box, above a wider bar
    f[0, 20:26, 30:50] = red  # a brick of the ball's colour
    f[0, 26:30, 40:42] = red  # a ball under it: taller than wide, its own box
    r = atari_regions(f)
    px = (r.boxes[0, :int(r.mask[0].sum())] * 60).round().astype(int).tolist()
    assert [50, 40, 52, 44] in px and [40, 26, 42, 30] in px and [30, 20, 50, 26] in px


def test_the_right_foot_keeps_its_size_slot_under_the_paddle(breakout_frames):
    """Real frames with the paddle moved to the far right, over the red foot of the right wall: the size slots
    hold the same objects' boxes as with the paddle elsewhere (the cut foot used to take size slot 1)."""
    frames = breakout_frames[5:15].copy()
    colour = np.array([200, 72, 72], np.uint8)
    frames[:, 189:193, 8:152] = 0  # the paddle's rows between the walls' feet: cleared
    plain = atari_regions(frames)
    frames[:, 189:193, 144:152] = colour  # the paddle at the far right, over the foot (x 152-160)
    right = atari_regions(frames)
    half = RegionConfig().slots // 2

    def size_boxes(r):
        return (np.take_along_axis(r.boxes, r.slots[:, :half, None], 1) * [160, 210, 160, 210]).round()

    np.testing.assert_array_equal(size_boxes(right), size_boxes(plain))
    assert (size_boxes(right)[:, :, 1:] == [189, 160, 195]).all(-1).any(1).all()  # the foot, whole
    cut = atari_regions(frames, cfg=RegionConfig(keep_feet=False))
    assert not (size_boxes(cut) == size_boxes(plain)).all((1, 2)).any()


def _labelled(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Components of one colour (8-connected) over black frames -> (labels [N, H, W], packed colour per id)."""
    packed = frames.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    labels, colours = np.zeros(packed.shape, np.int32), [0]
    for c in np.unique(packed[packed > 0]):
        lab, n = ndimage.label(packed == c, structure=_PLANE_8, output=np.int32)
        np.add(lab, len(colours) - 1, out=labels, where=lab > 0)
        colours += [int(c)] * n
    return labels, np.array(colours, np.uint32)


def test_split_bars_return_the_boxes_of_the_relabelled_image(breakout_frames):
    """The split hands back its bars' boxes so that the labels need no second pass: they must be exactly what
    ``find_objects`` finds in the relabelled image, on real frames (the ball on the paddle or a brick row) and on
    two, three and four stacked bars (four stay whole)."""
    f = np.zeros((3, 30, 30, 3), np.uint8)
    f[0, 10:12, 5:9] = f[0, 12:15, 3:12] = 200  # two bars
    f[1, 4:6, 20:22] = f[1, 6:8, 19:24] = f[1, 8:9, 18:26] = 200  # three bars
    f[2, 1:3, 1:2] = f[2, 3:5, 1:3] = f[2, 5:7, 1:4] = f[2, 7:9, 1:5] = 200  # four: not split
    split = 0
    for frames in (f, breakout_frames):
        labels, colours = _labelled(frames)
        before = int(labels.max())
        colours, slices, _ = _split_stacked_bars(labels, colours, ndimage.find_objects(labels))
        assert len(colours) == len(slices) + 1 == labels.max() + 1
        assert slices == ndimage.find_objects(labels)
        split += int(labels.max()) - before
    assert split >= 3 + 1  # the synthetic frames' 1 + 2 new bars, and at least one on the real frames


def _holds_paddle(r, slots: slice) -> np.ndarray:
    """[N] bool: one of the frame's ``slots`` holds Breakout's paddle (rows 189-193, at least 16 px wide)."""
    px = (np.take_along_axis(r.boxes, np.maximum(r.slots[:, slots], 0)[..., None], 1) * [160, 210, 160, 210]).round()
    return ((px[..., 1] == 189) & (px[..., 3] == 193) & (px[..., 2] - px[..., 0] >= 16) & (r.slots[:, slots] >= 0)).any(1)


def test_bottom_slots_keep_the_paddle_as_bricks_break_and_the_ball_passes_it(breakout_frames):
    """On real frames the lowest objects are the walls' coloured feet and the paddle, and a ball lost below it: the
    4 lowest, by colour then largest first, hold the paddle first in every frame while bricks and digits change above
    it and a ball passes below it (the red foot and the ball share its colour, and both are smaller). Bottom-first
    alone put it third, after the feet, and fourth with a ball below it: out of 3 bottom slots."""
    half = RegionConfig().slots // 2
    frames = breakout_frames.copy()
    colour = np.array([200, 72, 72], np.uint8)  # the paddle's
    assert (frames[:, 190, 8:152] == colour).all(-1).any(1).all()
    high = np.round(atari_regions(frames).boxes[:, 0, 3] * 210) < 185  # the smallest object (ball) above the paddle
    lost = np.flatnonzero(high)[1::2]  # every other such frame gets a ball below the paddle, left or right of it
    assert len(lost) >= 10
    frames[lost[0::2], 195:199, 30:32] = colour
    frames[lost[1::2], 195:199, 120:122] = colour
    r = atari_regions(frames)
    assert _holds_paddle(r, slice(half, half + 1)).all()
    old = atari_regions(frames, cfg=RegionConfig(bottom_slots=3, bottom_order="lowest"))
    assert not _holds_paddle(old, slice(half, half + 3))[lost].any()
    assert _holds_paddle(old, slice(half, half + 3))[high & ~np.isin(np.arange(len(frames)), lost)].all()


def _paddle_slots(r, x1: int) -> list[tuple[int, ...]]:
    """Per frame, the bottom slots holding the Pong paddle whose box starts at pixel column ``x1`` (16: the enemy's,
    140: the agent's)."""
    half = r.slots.shape[1] // 2
    px = (np.take_along_axis(r.boxes, np.maximum(r.slots, 0)[..., None], 1) * [160, 210, 160, 210]).round()
    held = (px[..., 0] == x1) & (px[..., 2] == x1 + 4) & (r.slots >= 0)
    return [tuple(int(s) for s in np.flatnonzero(row) if s >= half) for row in held]


def test_pong_paddles_keep_their_bottom_slots_whether_the_ball_is_there_or_not(pong_frames):
    """Pong's paddles are among the 4 lowest regions with the bottom wall and the ball, or the top wall when no
    ball is in play. By colour, the enemy's (orange) and the agent's (green) paddle keep bottom slots 0 and 1 in
    every frame where both are drawn, clipped at a wall or not; largest first moved the agent's between slots 1-3
    as the ball came and went and the paddle shrank into the top wall."""
    half = RegionConfig().slots // 2
    frames = pong_frames
    agent_rows = (frames[:, 34:194, 140:144] == [92, 186, 92]).all(-1).any(-1).sum(-1)  # [N] drawn rows
    ball = (frames[:, 34:194] == 236).all(-1).sum((1, 2)) > 0
    assert (agent_rows < 16).sum() >= 10 and (agent_rows == 16).sum() >= 3  # clipped at the top wall, and whole
    assert ball.sum() >= 10 and (~ball).sum() >= 10
    r = atari_regions(frames)
    enemy, agent = _paddle_slots(r, 16), _paddle_slots(r, 140)
    both = [i for i in range(len(frames)) if enemy[i] and agent[i]]
    assert len(both) >= 100  # the enemy is drawn from the serve on
    assert {enemy[i] for i in both} == {(half,)} and {agent[i] for i in both} == {(half + 1,)}
    largest = _paddle_slots(atari_regions(frames, cfg=RegionConfig(bottom_order="largest")), 140)
    assert len({s for i, s in enumerate(largest) if i in both}) >= 2


def test_hmove_bars_are_dropped(pong_frames):
    """Pong draws the console's black 8-px HMOVE bar on its top row in every frame: not an object, and as small as
    the ball, so kept it would take the ball's size slot whenever the ball is drawn partly."""
    def bars(r):
        px = (r.boxes * [160, 210, 160, 210]).round()
        return ((px == [0, 0, 8, 1]).all(-1) & r.mask).sum(1)

    kept = atari_regions(pong_frames, cfg=RegionConfig(drop_hmove_bars=False))
    assert (bars(kept) == 1).all()
    assert (bars(atari_regions(pong_frames)) == 0).all()


def test_object_cap_and_blank_frame():
    f = np.zeros((2, 40, 40, 3), np.uint8)
    for k in range(50):  # 50 separate dots; dot k has k % 3 + 1 pixels
        y, x = 2 * (k // 10) * 2, 4 * (k % 10)
        f[0, y, x:x + k % 3 + 1] = 255
    r = atari_regions(f)
    assert r.mask[0].all()  # capped at 36, the smallest kept
    sizes = np.round(r.feats[0, :, AREA] * 1600).astype(int)  # 16 dots of 3 px, 17 of 2, 17 of 1
    np.testing.assert_array_equal(sizes, [1] * 17 + [2] * 17 + [3] * 2)
    assert r.mask[1].sum() == 1  # a blank frame: one whole-frame region
    np.testing.assert_allclose(r.boxes[1, 0], [0, 0, 1, 1])


def test_grid_fallback():
    f = np.zeros((3, 60, 48, 3), np.uint8)
    f[:, :30, :24] = 255
    r = extract_regions(None, f)  # unknown image env -> grid
    assert r.kind == "grid" and r.mask.all() and r.feats.shape[:2] == (3, 36)
    _check_boxes(r)
    np.testing.assert_allclose(r.boxes[0, 0], [0, 0, 1 / 6, 1 / 6], atol=1e-6)
    np.testing.assert_allclose(r.boxes[0, -1], [5 / 6, 5 / 6, 1, 1], atol=1e-6)
    colour = r.feats[0, :, 8:11].reshape(6, 6, 3)
    np.testing.assert_allclose(colour[:3, :3], 1.0)
    np.testing.assert_allclose(colour[3:, :], 0.0)
    forced = extract_regions("breakout", f, cfg=RegionConfig(image_mode="grid"))
    assert forced.kind == "grid"


def test_mujoco_bodies_match_forward_kinematics(cheetah_run):
    obs, env = cheetah_run
    r = extract_regions("halfcheetah", obs)
    model = env.unwrapped.model
    nb = model.nbody - 1
    assert r.kind == "bodies" and r.feats.shape == (len(obs), nb, 3 + 4 + 6 + MAX_BODIES + 6)
    assert r.mask.all()
    _check_boxes(r)
    # the env's own state, with the root moved to x=0: body positions must agree exactly
    data = mujoco.MjData(model)
    data.qpos[:] = env.unwrapped.data.qpos
    data.qvel[:] = env.unwrapped.data.qvel
    data.qpos[0] = 0.0
    mujoco.mj_forward(model, data)
    np.testing.assert_allclose(r.feats[-1, :, :3], data.xpos[1:], atol=1e-5)
    np.testing.assert_allclose(r.feats[-1, :, 3:7], data.xquat[1:], atol=1e-5)
    np.testing.assert_allclose(r.feats[-1, :, 7:13] * VELOCITY_SCALE, data.cvel[1:], atol=1e-4)  # velocities ~1
    # bodies move between steps
    assert np.abs(np.diff(r.feats[:, :, :3], axis=0)).max() > 1e-3
    # each body carries its own joints: the observation is in the regions, joint by joint
    j = 3 + 4 + 6 + MAX_BODIES
    np.testing.assert_allclose(r.feats[:, 0, j + 1:j + 3], obs[:, 0:2], atol=1e-6)  # root z, pitch (x is 0)
    np.testing.assert_allclose(r.feats[:, 1:, j], obs[:, 2:8], atol=1e-6)  # the 6 hinge angles
    np.testing.assert_allclose(r.feats[:, 1:, j + 3] * VELOCITY_SCALE, obs[:, 11:17], rtol=1e-5, atol=1e-5)  # their velocities
    np.testing.assert_array_equal(r.slots[0], [0, 1, 2, 3, 4, 5, 6, -1])
    hop = mujoco_regions("hopper", np.zeros((2, 11)))
    assert hop.feats.shape[1] == 4


def test_projection_is_fixed_and_seeded():
    a = region_projection(84, 2048, seed=0)
    assert a.shape == (84, 2048) and a.dtype == np.float32
    np.testing.assert_array_equal(a, region_projection(84, 2048, seed=0))
    assert not np.allclose(a, region_projection(84, 2048, seed=1))
    assert abs(a.std() * np.sqrt(84) - 1) < 0.05


def test_bad_inputs_raise(breakout_frames):
    with pytest.raises(TypeError, match="uint8"):
        atari_regions(breakout_frames.astype(np.float32))
    with pytest.raises(ValueError, match="RGB frames"):
        atari_regions(breakout_frames[..., 0])
    with pytest.raises(ValueError, match="prev_observations shape"):
        atari_regions(breakout_frames[:3], breakout_frames[:2])
    with pytest.raises(ValueError, match=r"\[N, 17\]"):
        extract_regions("halfcheetah", np.zeros((3, 11)))
    with pytest.raises(ValueError, match="unknown env"):
        extract_regions("nope", breakout_frames[:2])
    with pytest.raises(ValueError, match="image_mode"):
        RegionConfig(image_mode="pixels")


@pytest.mark.parametrize("task", ["breakout", None])  # objects, grid
def test_threaded_extraction_is_identical(breakout_frames, task):
    """Splitting the batch over threads changes nothing: every frame's regions depend on its own pair alone
    (also for a sequence, whose previous frames are paired before the split)."""
    one = extract_regions(task, breakout_frames)
    paired = extract_regions(task, breakout_frames[1:], breakout_frames[:-1], workers=4)
    for workers in (2, 3, 16):
        many = extract_regions(task, breakout_frames, workers=workers)
        assert many.kind == one.kind
        for field in ("feats", "boxes", "mask", "slots"):
            np.testing.assert_array_equal(getattr(many, field), getattr(one, field))
            np.testing.assert_array_equal(getattr(paired, field), getattr(one, field)[1:])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            extract_regions(task, breakout_frames[:4], workers=bad)


def test_a_sequence_slice_reads_each_row_with_its_previous_frame(breakout_frames):
    """Rows a..b-1 of a sequence, read from one frame early, are the whole sequence's rows a..b-1."""
    from more3s.encoder.regions import sequence_slice

    assert [(list(f), d) for f, d in (sequence_slice(range(10), 0, 3), sequence_slice(range(10), 4, 7))] == \
        [([0, 1, 2], 0), ([3, 4, 5, 6], 1)]
    whole = extract_regions("breakout", breakout_frames)
    for a, b in ((0, 3), (2, 5), (len(breakout_frames) - 2, len(breakout_frames))):
        frames, drop = sequence_slice(breakout_frames, a, b)
        _assert_same_regions(extract_regions("breakout", frames).rows(drop), whole.rows(a, b))


def _assert_same_regions(a, b):
    assert a.kind == b.kind
    for field in ("feats", "boxes", "mask", "slots"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_memo_reuses_the_last_steps_frames_and_changes_nothing(breakout_frames, pong_frames, monkeypatch, workers):
    """Rollout-like steps of 4 environments (the previous frames are the last step's current frames, but for a
    reset row, whose previous frame is its current one): with a memo every step's regions equal those computed
    without it, and each step computes components of the current frames and of the reset rows only; a new
    RegionConfig, another batch size or other previous frames are computed afresh."""
    frames = {0: breakout_frames[:24], 1: breakout_frames[10:34], 2: pong_frames[:24], 3: pong_frames[50:74]}
    computed: list[int] = []
    real = regions_module._components
    monkeypatch.setattr(regions_module, "_components", lambda cfg, obs: computed.append(len(obs)) or real(cfg, obs))
    memo = ComponentMemo()
    prev = np.stack([frames[e][0] for e in range(4)])
    for t in range(1, 24):
        cur = np.stack([frames[e][t] for e in range(4)])
        reset = t % 7 == 0  # env 1 starts a new episode (another game's frame): its previous frame is its current
        if reset:
            prev[1] = cur[1] = pong_frames[90 + t]
        computed.clear()
        got = extract_regions("breakout", cur, prev, workers=workers, memo=memo)
        expected_frames = 4 + (4 if t == 1 else int(reset))
        assert sum(computed) == expected_frames, (t, computed)
        computed.clear()
        _assert_same_regions(got, extract_regions("breakout", cur, prev, workers=workers))
        prev = cur
    # Anything else the memo did not see is computed: other previous frames, another config, another batch size.
    cur = np.stack([frames[e][5] for e in range(4)])
    for p, cfg in ((np.stack([frames[e][3] for e in range(4)]), RegionConfig()), (prev, RegionConfig(keep_feet=False))):
        computed.clear()
        got = extract_regions("breakout", cur, p, cfg, workers=workers, memo=memo)
        assert sum(computed) == 8
        _assert_same_regions(got, extract_regions("breakout", cur, p, cfg, workers=workers))
    computed.clear()
    _assert_same_regions(extract_regions("breakout", cur[:3], cur[:3], workers=workers, memo=memo),
                         extract_regions("breakout", cur[:3], cur[:3], workers=workers))


def test_regions_rows_and_cat_round_trip_and_refuse_mixed_parts(breakout_frames, cheetah_run):
    r = extract_regions("breakout", breakout_frames[:10])
    _assert_same_regions(Regions.cat([r.rows(0, 4), r.rows(4)]), r)
    with pytest.raises(ValueError, match="Regions.cat"):
        Regions.cat([])
    with pytest.raises(ValueError, match="Regions.cat"):
        Regions.cat([r, extract_regions("halfcheetah", cheetah_run[0][:3])])
