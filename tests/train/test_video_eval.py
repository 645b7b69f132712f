"""Recording evaluation episodes (more3s.video + the engine's recorder hook + evaluate/train flags)."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from more3s.encoder.lxmert import load_encoder
from more3s.envs import action_prompts, get_task, make_vector_env
from more3s.model import ModelConfig, MoreModel
from more3s.rollout.engine import RolloutEngine
from more3s.video import EpisodeRecorder, decision_lines, decision_scores, render_kwargs

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


class _ZeroEncoder:
    def __init__(self, d):
        self.d = d

    def embed_states(self, task, obs, prev):
        return torch.zeros(len(obs), self.d)


def test_overlay_text_is_the_engines_decision_for_a_scripted_episode(encoder, tmp_path):
    model = _model(encoder, seed=1)
    task = get_task("breakout")
    prompts = action_prompts("breakout")
    eng = RolloutEngine(model, _ZeroEncoder(encoder.d_enc), task, mode="banded")
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


def test_train_and_evaluate_write_videos_and_the_report_strip(tiny_config, monkeypatch, capsys):
    """--eval-video on train, a bare --video on evaluate (= 1 per target); a later evaluation replaces the videos."""
    import more3s.video
    from more3s.evaluate import main as eval_main
    from more3s.train import train

    strips = []
    real_strip = more3s.video.best_episode_strip

    def spy(*a, **k):
        strips.append(real_strip(*a, **k))
        return strips[-1]

    monkeypatch.setattr(more3s.video, "best_episode_strip", spy)
    run = train(tiny_config(name="video", max_steps=2, ckpt_every=2, eval_at_end=True, eval_episodes=3,
                            eval_num_envs=2, eval_max_episode_steps=9, eval_video=2))
    rep = json.loads((run / "eval.json").read_text())
    assert len(rep["targets"]) >= 1 and rep["video_note"] == ""
    assert len(rep["videos"]) == 2 * len(rep["targets"])  # the first 2 episodes of every target
    for v in rep["videos"]:
        assert (run / "videos" / v["video"]).is_file() and (run / "videos" / v["log"]).is_file()
        assert v["length"] == len(iio.imread(run / "videos" / v["video"], index=None))
    best = max(rep["videos"], key=lambda v: v["return"])
    assert strips[-1] is not None and len(strips[-1].frames) == min(8, best["length"])
    assert strips[-1].frames[0].shape == (630, 480, 3)  # the game area of the video, without the text panel
    log = json.loads((run / "videos" / best["log"]).read_text())
    assert strips[-1].labels[0] == f"t=0: {log['steps'][0]['text'][1]}"  # frame 0 labelled with its action's words
    assert "best recorded episode" in strips[-1].title
    assert f"videos: {len(rep['videos'])} episodes under {run / 'videos'}" in capsys.readouterr().out

    assert eval_main(["--run", str(run), "--episodes", "2", "--num-envs", "2", "--targets", "3",
                      "--max-episode-steps", "6", "--video"]) == 0
    rep = json.loads((run / "eval.json").read_text())
    assert [v["video"] for v in rep["videos"]] == ["rtg3_seed1000_ep00.mp4"]
    assert sorted(p.name for p in (run / "videos").iterdir()) == ["rtg3_seed1000_ep00.json",
                                                                   "rtg3_seed1000_ep00.mp4"]  # old ones pruned
    assert (run / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert eval_main(["--run", str(run), "--video", "-1"]) == 2  # bad input: a clear error, no traceback

    from more3s.evaluate import finish_report
    from more3s.report import load_report

    (run / "videos" / "rtg3_seed1000_ep00.mp4").unlink()  # the video gone since: report.png without the strip
    (run / "report.png").unlink()
    finish_report(run, load_report(run / "eval.json"))
    assert "report.png: no frame strip" in capsys.readouterr().out and (run / "report.png").is_file()


def test_mujoco_evaluation_without_rendering_still_writes_its_numbers(tiny_config, tmp_path, monkeypatch, capsys):
    """A headless MuJoCo (forced here: the renderer raises) gets a message, eval.json and report.png, no videos."""
    import os

    from gymnasium.envs.mujoco import mujoco_rendering

    from more3s.data import collect_dataset
    from more3s.evaluate import main as eval_main
    from more3s.train import train

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    path = collect_dataset("halfcheetah", "sine", 2, "test/cheetah-tiny-v0", seed=0, max_episode_steps=12,
                           progress=False)
    run = train(tiny_config(name="cheetah", env="halfcheetah", dataset=str(path), max_steps=2, ckpt_every=2))

    def broken(self, *a, **k):
        raise RuntimeError("no EGL display (forced by the test)")

    monkeypatch.setattr(mujoco_rendering.MujocoRenderer, "render", broken)
    assert eval_main(["--run", str(run), "--episodes", "2", "--num-envs", "2", "--targets", "500",
                      "--max-episode-steps", "5", "--video", "2"]) == 0
    out = capsys.readouterr().out
    rep = json.loads((run / "eval.json").read_text())
    assert rep["videos"] == [] and "rendering failed" in rep["video_note"] and "MUJOCO_GL" in rep["video_note"]
    assert "videos: no video frames for halfcheetah" in out and "normalized score" in out
    assert len(rep["targets"][0]["returns"]) == 2 and (run / "report.png").is_file()
    assert not (run / "videos").exists() or not any((run / "videos").iterdir())
    assert os.environ["MUJOCO_GL"] == "egl"  # recording MuJoCo asks for offscreen rendering unless told otherwise


def test_eval_video_flag_on_train():
    from more3s.config import TrainConfig, parse_args

    assert parse_args([]).eval_video == 0  # off by default: nothing rendered or drawn
    assert parse_args(["--eval-video"]).eval_video == 1  # bare: the first episode of every target
    assert parse_args(["--eval-video", "3", "--max-steps", "5"]).eval_video == 3
    with pytest.raises(ValueError, match="eval_video"):
        TrainConfig(eval_video=-2).validate()


def test_report_png_gains_a_frame_strip(tmp_path):
    from more3s.report import FrameStrip, plot_report

    frames = [np.full((60, 40, 3), 40 * i, np.uint8) for i in range(5)]
    plain = iio.imread(plot_report(tmp_path / "plain.png", {}, None))
    strip = FrameStrip(frames, [f"t={i}: move the paddle left" for i in range(5)], title="best recorded episode")
    with_strip = iio.imread(plot_report(tmp_path / "strip.png", {}, None, strip=strip))
    assert with_strip.shape[1] == plain.shape[1] and with_strip.shape[0] > plain.shape[0] * 1.5
    empty = iio.imread(plot_report(tmp_path / "empty.png", {}, None, strip=FrameStrip([], [])))
    assert empty.shape == plain.shape  # nothing recorded: the plain report


def test_an_interrupted_recording_leaves_no_partial_video(encoder, tmp_path):
    class _Dies(_ScriptedVecEnv):
        def step(self, action):
            if self.t[0] == 2:
                raise KeyboardInterrupt("killed mid-episode")
            return super().step(action)

    model = _model(encoder, seed=1)
    rec = _recorder(tmp_path, get_task("breakout"), model, count=2)
    eng = RolloutEngine(model, _ZeroEncoder(encoder.d_enc), "breakout")
    with pytest.raises(KeyboardInterrupt):
        try:
            eng.run(_Dies(), 10.0, 2, recorder=rec)
        finally:
            rec.close()  # what evaluate_run does
    assert list(tmp_path.iterdir()) == [] and rec.entries == []
