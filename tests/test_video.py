"""more3s.video: the frame layout and text, the decision's words, atomic MP4/GIF writing, the bare-flag helper."""

import imageio.v3 as iio
import numpy as np
import pytest

from more3s import video
from more3s.envs import action_prompts, get_task
from more3s.video import FrameLayout, VideoWriter, decision_lines, expand_bare_flag


def _frame(h=210, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_layout_scales_small_frames_and_pads_to_macro_blocks():
    frame = _frame()
    lay = FrameLayout.for_frame(frame)
    assert lay.scale == 3 and lay.game_size == (630, 480)  # Atari 160 wide -> 480
    H, W = lay.size
    assert H % video.MACRO_BLOCK == 0 and W % video.MACRO_BLOCK == 0 and H >= 630 + video.TEXT_ROWS * lay.row_h
    out = lay.compose(frame, ["step 0", "FIRE: launch the ball at the bricks"])
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:630:3, :480:3], frame)  # the game, untouched (nearest-neighbour)
    assert out[630:].any()  # text in the panel
    other = lay.compose(frame, ["step 0", "LEFT: move the paddle left"])
    assert not np.array_equal(out[630:], other[630:]) and np.array_equal(out[:630], other[:630])
    assert FrameLayout.for_frame(_frame(480, 480)).scale == 1  # MuJoCo's 480x480 renders stay as they are


def test_layout_rejects_bad_frames_and_cuts_long_text():
    with pytest.raises(ValueError, match="uint8"):
        FrameLayout.for_frame(np.zeros((10, 10), np.uint8))
    lay = FrameLayout.for_frame(_frame(64, 64))
    with pytest.raises(ValueError, match="like the episode's first frame"):
        lay.compose(_frame(32, 64), ["x"])
    long = lay.compose(_frame(64, 64), ["word " * 400])  # far more than TEXT_ROWS rows: cut, not grown
    assert long.shape[:2] == lay.size


def test_decision_lines_discrete_name_the_chosen_action_and_the_runner_up():
    task = get_task("breakout")
    prompts = action_prompts("breakout", "synonym")
    scores = np.array([0.1, 0.2, 0.9, 0.5])
    lines = decision_lines(task, prompts, t=7, rtg=11.0, reward=1.0, ret=3.0, action=2, scores=scores)
    assert lines[0] == "step 7 | RTG 11.0 | reward +1 | return 3.0"
    assert lines[1] == f"RIGHT: {prompts[2]}"
    assert lines[2] == f"cos 0.900 vs runner-up 0.500 (LEFT: {prompts[3]})"
    sampled = decision_lines(task, prompts, t=0, rtg=5, reward=0, ret=0, action=0, scores=scores)
    assert "cos 0.100 vs runner-up 0.900 (RIGHT" in sampled[2]  # a sampled, not-best action says so
    assert len(decision_lines(task, prompts, t=0, rtg=5, reward=0, ret=0, action=0)) == 2  # no scores: no line


def test_decision_lines_continuous_show_the_vector_and_the_hardest_joint():
    task = get_task("hopper")
    prompts = action_prompts("hopper")
    lines = decision_lines(task, prompts, t=3, rtg=3600.0, reward=0.25, ret=1.5, action=[0.1, -0.8, 0.3])
    assert lines[1] == f"hardest: {prompts[1]} (-0.80)"
    assert lines[2] == "action [+0.10 -0.80 +0.30]"


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_writer_is_atomic_and_decodes(tmp_path, monkeypatch, fmt):
    if fmt == "gif":  # the fallback where no ffmpeg can be found
        monkeypatch.setattr(video, "mp4_available", lambda: False)
    elif not video.mp4_available():
        pytest.skip("no ffmpeg here")
    lay = FrameLayout.for_frame(_frame(50, 40))
    frames = [lay.compose(_frame(50, 40, seed=i), [f"step {i}"]) for i in range(7)]
    w = VideoWriter(tmp_path / "ep", fps=15)
    assert w.format == fmt and w.path == tmp_path / f"ep.{fmt}"
    for f in frames:
        w.append(f)
        assert not w.path.exists()  # nothing under the final name until close()
    assert w.close() == w.path
    back = iio.imread(w.path, index=None)
    assert back.shape[0] == 7 and back.shape[1:3] == lay.size
    if fmt == "gif":  # palette-quantized: close to the frames, not equal
        assert np.abs(back[..., :3].astype(int) - np.stack(frames)).mean() < 40
    assert sorted(p.name for p in tmp_path.iterdir()) == [w.path.name]  # no temp files left


def test_writer_abort_keeps_the_previous_video_and_rejects_bad_input(tmp_path):
    if not video.mp4_available():
        pytest.skip("no ffmpeg here")
    frame = FrameLayout.for_frame(_frame(32, 32)).compose(_frame(32, 32), ["x"])
    w = VideoWriter(tmp_path / "ep", fps=10)
    w.append(frame)
    w.close()
    before = w.path.read_bytes()
    w2 = VideoWriter(tmp_path / "ep", fps=10)
    w2.append(frame)
    w2.append(frame)
    w2.abort()  # an interrupted episode
    assert w.path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ep.mp4"]
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "empty", fps=10).close()
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x", fps=0)
    with pytest.raises(ValueError, match="format"):
        VideoWriter(tmp_path / "x", fps=10, fmt="avi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.mp4"]


def test_expand_bare_flag():
    assert expand_bare_flag(["--run", "r", "--video"], "--video", "1") == ["--run", "r", "--video", "1"]
    assert expand_bare_flag(["--video", "--run", "r"], "--video", "1") == ["--video", "1", "--run", "r"]
    assert expand_bare_flag(["--video", "4"], "--video", "1") == ["--video", "4"]
    assert expand_bare_flag(["--videos"], "--video", "1") == ["--videos"]
