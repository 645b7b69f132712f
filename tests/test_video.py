"""Recording evaluation episodes (more3s.video and the engine's recorder hook)."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from more3s import video
from more3s.encoder.lxmert import load_encoder
from more3s.envs import action_prompts, get_task
from more3s.envs import make_vector_env
from more3s.model import ModelConfig, MoreModel
from more3s.rollout.engine import RolloutEngine
from more3s.video import EpisodeRecorder, decision_lines, decision_scores, render_kwargs
from more3s.video import FrameLayout, VideoWriter, expand_bare_flag


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


N_ENVS, MAX_STEPS, EPISODES = 2, 14, 3  # env 0 plays episodes 0 and 2, env 1 plays episode 1


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("lxmert-tiny", device="cpu")


def _model(encoder, task_name="breakout", seed=4):
    """A small random model whose decisions vary along an episode (large weights, as in test_engine)."""
    torch.manual_seed(seed)
    task = get_task(task_name)
    cfg = ModelConfig(d_enc=encoder.d_enc, act_dim=task.action_dim, discrete=task.action_kind == "discrete",
                      n_layer=2, n_head=2, n_embd=32, window=3, memory_steps=2, max_timestep=64, dropout=0.0)
    rows = task.action_dim if cfg.discrete else task.action_dim + 1
    model = MoreModel(cfg, torch.randn(rows, encoder.d_enc))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(25.0)
    return model.eval()


def _recorder(tmp_path, task, model, count, target=5.0, seed=123):
    return EpisodeRecorder(tmp_path, task, action_prompts(task.name), target=target, seed=seed,
                           total_envs=N_ENVS, count=count, scores=decision_scores(model), log=lambda m: None)


def _play(model, encoder, task_name="breakout", recorder=None, sample=True, episodes=EPISODES):
    task = get_task(task_name)
    kw = render_kwargs(task) if recorder is not None else {}
    venv = make_vector_env(task, N_ENVS, max_episode_steps=MAX_STEPS, **kw)
    try:
        return RolloutEngine(model, encoder, task, sample=sample).run(venv, 5.0, episodes, seed=123, record=True,
                                                                     recorder=recorder)
    finally:
        venv.close()
        if recorder is not None:
            recorder.close()


def _episode_actions(res, env, ordinal):
    """The engine's chosen actions of env ``env``'s ``ordinal``-th episode (from the per-step record)."""
    lengths = [n for e, n in zip(res.env_index, res.lengths) if e == env]
    start = sum(lengths[:ordinal])
    return [a[env].tolist() for a in res.actions[start:start + lengths[ordinal]]]


def test_recording_changes_nothing_and_videos_match_the_episodes(encoder, tmp_path):
    model = _model(encoder)
    plain = _play(model, encoder)  # sampled actions: the engine's RNG is in play too
    rec = _recorder(tmp_path, get_task("breakout"), model, count=2)
    recorded = _play(model, encoder, recorder=rec)
    assert recorded.returns == plain.returns and recorded.lengths == plain.lengths
    assert [a.tolist() for a in recorded.actions] == [a.tolist() for a in plain.actions]
    assert len({a for x in plain.actions for a in x.tolist()}) > 1  # decisions vary along the episodes
    # episodes 0 and 1 (env 0's first, env 1's first) recorded; episode 2 (env 0's second) not
    assert sorted(e["episode"] for e in rec.entries) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rtg5_seed123_ep00.json", "rtg5_seed123_ep00.mp4", "rtg5_seed123_ep01.json", "rtg5_seed123_ep01.mp4"]
    for e in rec.entries:
        log = json.loads((tmp_path / e["log"]).read_text())
        frames = iio.imread(tmp_path / e["video"], index=None)
        length = [n for env, n in zip(plain.env_index, plain.lengths) if env == e["env"]][0]
        assert e["length"] == length == frames.shape[0] == len(log["steps"])
        assert frames.shape[1:3] == tuple(log["frame_size"]) == (736, 480)  # 630 (210 x 3) + text panel
        assert e["return"] == [r for env, r in zip(plain.env_index, plain.returns) if env == e["env"]][0]
        assert [s["action"] for s in log["steps"]] == _episode_actions(plain, e["env"], 0)
        assert [s["t"] for s in log["steps"]] == list(range(length))


class _ScriptedVecEnv:
    """Two envs with image observations and scripted rewards; env i's episodes last ``ends[i]`` steps."""

    num_envs = 2
    ends = (4, 3)
    rewards = (2.0, 0.0, 1.0, 0.0)

    def reset(self, seed=None):
        self.t = np.zeros(2, dtype=int)
        return self._obs(), {}

    def _obs(self):
        obs = np.zeros((2, 40, 30, 3), np.uint8)
        obs[:, :, :, 0] = (self.t * 50)[:, None, None]
        return obs

    def step(self, action):
        r = np.array([self.rewards[t % 4] for t in self.t])
        self.t += 1
        term = self.t >= np.array(self.ends)
        self.t[term] = 0
        return self._obs(), r, term, np.zeros(2, bool), {}


def test_overlay_text_is_the_engines_decision_for_a_scripted_episode(zero_encoder, encoder, tmp_path):
    model = _model(encoder, seed=1)
    task = get_task("breakout")
    prompts = action_prompts("breakout")
    eng = RolloutEngine(model, zero_encoder(encoder.d_enc), task, mode="banded")
    rec = _recorder(tmp_path, task, model, count=2, target=10.0, seed=0)
    res = eng.run(_ScriptedVecEnv(), 10.0, 2, record=True, recorder=rec)
    scale = float(model.logit_scale.detach().exp())
    for e in rec.entries:
        log = json.loads((tmp_path / e["log"]).read_text())
        env, n = e["env"], _ScriptedVecEnv.ends[e["env"]]
        assert len(log["steps"]) == n
        rtg, ret = 10.0, 0.0
        for t, step in enumerate(log["steps"]):
            a = int(res.actions[t][env])
            reward = _ScriptedVecEnv.rewards[t % 4]
            ret += reward
            cos = res.logits[t][env].astype(np.float64) / scale  # the semantic head's cosine similarities
            assert step["text"] == decision_lines(task, prompts, t=t, rtg=rtg, reward=reward, ret=ret, action=a,
                                                  scores=cos)
            assert step["text"][1] == f"{task.action_names[a]}: {prompts[a]}"
            assert step["text"][0] == f"step {t} | RTG {rtg:.1f} | reward {reward:+g} | return {ret:.1f}"
            rtg -= min(reward, 1.0)  # Atari: the RTG falls by the clipped reward
        assert abs(float(step["text"][2].split()[1]) - cos[a]) < 1e-3
    frames = iio.imread(tmp_path / rec.entries[0]["video"], index=None)
    assert frames.shape[0] == _ScriptedVecEnv.ends[rec.entries[0]["env"]]


def _can_render_mujoco() -> bool:
    import os
    import subprocess
    import sys

    code = ("import gymnasium as gym; e = gym.make('HalfCheetah-v5', render_mode='rgb_array'); e.reset(seed=0); "
            "assert e.render().shape == (480, 480, 3)")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120).returncode == 0


def test_mujoco_without_rendering_records_nothing_and_plays_the_same(encoder, tmp_path, monkeypatch):
    from gymnasium.envs.mujoco import mujoco_rendering

    def broken(self, *a, **k):
        raise RuntimeError("no EGL display (forced by the test)")

    monkeypatch.setattr(mujoco_rendering.MujocoRenderer, "render", broken)
    model = _model(encoder, "halfcheetah")
    logs: list[str] = []
    rec = EpisodeRecorder(tmp_path, get_task("halfcheetah"), action_prompts("halfcheetah"), target=1000.0, seed=123,
                          total_envs=N_ENVS, count=2, scores=None, log=logs.append)
    recorded = _play(model, encoder, "halfcheetah", recorder=rec, sample=False, episodes=2)
    plain = _play(model, encoder, "halfcheetah", sample=False, episodes=2)
    assert recorded.returns == plain.returns and recorded.lengths == plain.lengths
    assert rec.entries == [] and list(tmp_path.iterdir()) == []
    assert "rendering failed" in rec.note and "MUJOCO_GL" in rec.note and "forced by the test" in rec.note
    assert logs == [f"video: {rec.note}"]  # said once, not per step


@pytest.mark.skipif(not _can_render_mujoco(), reason="no offscreen MuJoCo rendering (MUJOCO_GL=egl) here")
def test_mujoco_episode_is_rendered_with_its_action_vector(encoder, tmp_path):
    model = _model(encoder, "hopper")
    task = get_task("hopper")
    rec = EpisodeRecorder(tmp_path, task, action_prompts("hopper"), target=1800.0, seed=123, total_envs=N_ENVS,
                          count=1, scores=None, log=lambda m: None)
    res = _play(model, encoder, "hopper", recorder=rec, sample=False, episodes=1)
    (entry,) = rec.entries
    log = json.loads((tmp_path / entry["log"]).read_text())
    frames = iio.imread(tmp_path / entry["video"], index=None)
    assert frames.shape[0] == entry["length"] == res.lengths[0]
    assert frames.shape[1:3] == tuple(log["frame_size"]) == (592, 480)  # 480x480 render + text panel, 16-aligned
    plain = _play(model, encoder, "hopper", sample=False, episodes=1)
    assert res.returns == plain.returns and res.lengths == plain.lengths
    assert log["fps"] == 125.0  # Hopper's dt = 0.008 s: real time
    assert frames[:, :480].std() > 1  # a rendered scene, not a blank frame
    assert log["steps"][0]["text"][2].startswith("action [") and len(log["steps"][0]["action"]) == 3


def test_an_interrupted_recording_leaves_no_partial_video(zero_encoder, encoder, tmp_path):
    class _Dies(_ScriptedVecEnv):
        def step(self, action):
            if self.t[0] == 2:
                raise KeyboardInterrupt("killed mid-episode")
            return super().step(action)

    model = _model(encoder, seed=1)
    rec = _recorder(tmp_path, get_task("breakout"), model, count=2)
    eng = RolloutEngine(model, zero_encoder(encoder.d_enc), "breakout")
    with pytest.raises(KeyboardInterrupt):
        try:
            eng.run(_Dies(), 10.0, 2, recorder=rec)
        finally:
            rec.close()  # what evaluate_run does
    assert list(tmp_path.iterdir()) == [] and rec.entries == []
