"""Evaluation of a run (more3s.evaluate): the sampled protocol with greedy beside, timesteps past the data, dtypes,
torchrun shards, encoder checks, videos."""

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import imageio.v3 as iio
import pytest
import torch

from more3s.encoder.lxmert import load_encoder
from more3s.envs import make_vector_env
from more3s.rollout.engine import RolloutEngine
from more3s.train import train


def test_a_policy_that_does_not_read_rtg_plays_one_target(tiny_config):
    """Behaviour cloning's episodes are the same at every target (same seeds): only the first is played, and the
    report says why; a policy that reads RTG plays each."""
    from more3s.evaluate import evaluate_run
    from more3s.report import format_table

    bc = train(tiny_config(name="bc", preset="bc", rtg_mode="none", memory_steps=0, sampler="window", max_steps=1,
                           ckpt_every=1))
    report = evaluate_run(bc, episodes=2, num_envs=2, targets=(3.0, 2.0), max_episode_steps=6)
    assert [t.target for t in report.targets] == [3.0] and [g.target for g in report.greedy] == [3.0]
    table = format_table(report)
    assert "does not read RTG (rtg_mode=none): only 3 is played, 2 would replay its episodes" in table
    assert not report.reads_rtg and table.count("    not read | ") == 2 and "         3.0 | " not in table
    dt = train(tiny_config(name="dt", preset="dt", rtg_mode="token", memory_steps=0, sampler="window", max_steps=1,
                           ckpt_every=1))
    played = evaluate_run(dt, episodes=2, num_envs=2, targets=(3.0, 2.0), max_episode_steps=6, greedy=False)
    assert [t.target for t in played.targets] == [3.0, 2.0] and "does not read RTG" not in format_table(played)
    assert played.reads_rtg and "         3.0 | sampled" in format_table(played)


def test_sampled_protocol_with_greedy_beside_and_distinct_counts(tiny_config, capsys):
    from more3s.evaluate import evaluate_run
    from more3s.report import format_table, load_report

    run = train(tiny_config(name="proto", max_steps=2, ckpt_every=2, eval_at_end=True, eval_episodes=4,
                            eval_num_envs=2, eval_max_episode_steps=15))
    out = capsys.readouterr().out
    assert "sampled from the policy's softmax" in out and "greedy actions from the same seeds beside" in out
    assert "collected by more3s" in out and "policy 'mixed', seed 3, episodes capped at 24 steps" in out
    rep = json.loads((run / "eval.json").read_text())
    assert rep["actions"] == "sampled" and len(rep["greedy"]) == len(rep["targets"])
    for s, g in zip(rep["targets"], rep["greedy"]):
        assert s["actions"] == "sampled" and g["actions"] == "greedy" and s["target"] == g["target"]
        assert len(s["trajectory_digests"]) == len(g["trajectory_digests"]) == 4
        assert s["distinct_trajectories"] == len(set(s["trajectory_digests"]))
        assert 1 <= g["distinct_trajectories"] <= 4
    # every target once, even when given twice
    report = evaluate_run(run, episodes=2, num_envs=2, targets=(3.0, 3.0, 2.0), max_episode_steps=6,
                          greedy=False)
    assert [t.target for t in report.targets] == [3.0, 2.0] and report.greedy == []
    # greedy Breakout replays one trajectory per reset seed at most: the table says how many are distinct
    greedy_only = evaluate_run(run, episodes=4, num_envs=2, targets=(3.0,), max_episode_steps=15, sample=False)
    row = greedy_only.targets[0]
    assert greedy_only.actions == "greedy" and row.distinct_trajectories == len(set(row.trajectory_digests))
    assert f"{row.distinct_trajectories} / 4" in format_table(greedy_only)
    assert load_report(run / "eval.json").greedy[0].actions == "greedy"  # eval.json round-trips
    # --compile-step: the same episodes from the compiled ring step; refused where there is no ring step
    compiled = evaluate_run(run, episodes=4, num_envs=2, targets=(3.0,), max_episode_steps=15, sample=False,
                            compile_step=True)
    assert compiled.targets[0].trajectory_digests == row.trajectory_digests
    with pytest.raises(ValueError, match="compile_step"):
        evaluate_run(run, episodes=1, num_envs=1, engine="banded", compile_step=True)
    # another softmax temperature is a diagnostic, and the report says so; it shapes sampled actions only
    assert report.temperature == 1 and "(DT's Atari protocol)" in format_table(report)
    hot = evaluate_run(run, episodes=2, num_envs=2, targets=(3.0,), max_episode_steps=6, greedy=False,
                       temperature=0.5)
    assert hot.temperature == 0.5 and "temperature 0.5 (a DIAGNOSTIC, not DT's protocol" in format_table(hot)
    with pytest.raises(ValueError, match="temperature=0.5 shapes sampled discrete actions"):
        evaluate_run(run, episodes=1, num_envs=1, sample=False, temperature=0.5)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        evaluate_run(run, episodes=1, num_envs=1, temperature=0.0)


def test_primary_target_only_plays_the_same_primary_episodes(tiny_config):
    """--eval-primary-target-only drops the other targets, not the primary's episodes: sampled and greedy alike
    equal those of an evaluation of every target, and the targets keep the run's source."""
    from more3s.evaluate import evaluate_run
    from more3s.report import load_report
    from more3s.run import RunInfo

    run = train(tiny_config(name="primary", max_steps=2, ckpt_every=2, eval_at_end=True, eval_episodes=4,
                            eval_num_envs=2, eval_max_episode_steps=15, eval_targets=(3.0, 2.0),
                            eval_primary_target_only=True))
    info = RunInfo.read(run)
    assert info.targets == [3.0, 2.0]
    only = load_report(run / "eval.json")
    assert [t.target for t in only.targets] == [t.target for t in only.greedy] == info.targets[:1]
    assert only.targets_source == info.targets_source
    every = evaluate_run(run, episodes=4, num_envs=2, max_episode_steps=15)
    assert [t.target for t in every.targets] == info.targets
    for kept, full in ((only.targets[0], every.targets[0]), (only.greedy[0], every.greedy[0])):
        assert kept.trajectory_digests == full.trajectory_digests and kept.returns == full.returns


def test_timesteps_past_the_data_read_only_trained_rows(tiny_config):
    """An evaluation longer than every training episode: timesteps beyond the longest one map to its last row."""
    from more3s.evaluate import evaluate_run
    from more3s.run import RunInfo, load_run_model

    run = train(tiny_config(name="ts", max_steps=2, ckpt_every=2))
    info = RunInfo.read(run)
    longest = 24  # tiny_dataset: episodes capped at 24 steps
    assert info.model_config.max_timestep == info.max_timestep <= longest - 1
    assert "data" in info.timestep_source
    model, _, _ = load_run_model(run)
    rows = model.embed_timestep.weight.shape[0]
    assert rows == info.max_timestep + 1  # no row that training cannot reach
    seen: list[torch.Tensor] = []
    real = torch.nn.Embedding.forward

    def spy(self, idx):
        if self.weight.shape[0] == rows:
            seen.append(idx.detach().flatten().clone())
        return real(self, idx)

    import more3s.evaluate as ev

    orig = ev.load_run_model
    ev.load_run_model = lambda *a, **k: (model, *orig(*a, **k)[1:])
    try:
        torch.nn.Embedding.forward = spy
        report = evaluate_run(run, episodes=2, num_envs=2, targets=(2.0,), max_episode_steps=60, sample=False)
    finally:
        torch.nn.Embedding.forward = real
        ev.load_run_model = orig
    assert max(report.targets[0].lengths) > longest  # played past every training episode
    used = torch.cat(seen)
    assert int(used.max()) == rows - 1 and int(used.min()) == 0


def test_encoder_dtype_mismatch_warns_once(tiny_config):
    from more3s.encoder import load_encoder
    from more3s.evaluate import evaluate_model
    from more3s.run import load_run_model

    run = train(tiny_config(name="dt", max_steps=2, ckpt_every=2))
    model, info, ckpt = load_run_model(run)
    assert info.encoder_dtype == "float32"
    enc = load_encoder(info.encoder, device="cpu")
    info = dataclasses.replace(info, encoder_dtype="float16")  # as if the cache had been encoded on a GPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            evaluate_model(model, info, enc, checkpoint="x", step=2, episodes=1, num_envs=1, targets=(1.0,),
                           max_episode_steps=3, greedy=False)
    msgs = [str(w.message) for w in caught if "encoded in" in str(w.message)]
    assert len(msgs) == 1 and "float16" in msgs[0] and "float32" in msgs[0]
    # the rollout step in bf16 on the CPU: the caller's model stays fp32
    rep = evaluate_model(model, info, enc, checkpoint="x", step=2, episodes=1, num_envs=1, targets=(1.0,),
                         max_episode_steps=3, greedy=False, dtype=torch.bfloat16)
    assert rep.dtype == "bfloat16" and model.embed_state.weight.dtype == torch.float32


@pytest.mark.gpu
def test_gpu_evaluation_runs_the_step_in_the_asked_dtype(tiny_config):
    """On a GPU the rollout step runs in bf16 by default (--eval-dtype auto), with the CUDA ring cache, and the
    fp32 CPU-encoded training cache vs the GPU's fp16 encoder is named in a warning."""
    from more3s.evaluate import evaluate_run, resolve_eval_dtype
    from more3s.rollout.engine import RolloutEngine

    assert resolve_eval_dtype("auto", "cuda") == torch.bfloat16
    run = train(tiny_config(name="gpu", max_steps=2, ckpt_every=2))
    seen = []
    real_setup = RolloutEngine._setup

    def spy(self, N):
        real_setup(self, N)
        seen.append((self.dtype, self._cache.backend, self._cache.dtype))

    RolloutEngine._setup = spy
    try:
        with pytest.warns(RuntimeWarning, match="encoded in float32.*float16"):
            rep = evaluate_run(run, episodes=2, num_envs=2, targets=(2.0,), max_episode_steps=6, device="cuda")
    finally:
        RolloutEngine._setup = real_setup
    assert rep.dtype == "bfloat16"
    assert seen and all(s == (torch.bfloat16, "cuda", torch.bfloat16) for s in seen)


def test_torchrun_evaluation_plays_the_shards_of_one_process(tiny_config):
    """2 ranks x 2 envs: rank 0 gathers and reports the 5 episodes that the same two shards (envs 0-1 and 2-3
    of 4, same seeds and quotas) play in this process."""
    from more3s.encoder import load_encoder
    from more3s.envs import make_vector_env
    from more3s.run import load_run_model
    from more3s.rollout.engine import RolloutEngine

    run = train(tiny_config(name="evaldist", max_steps=2, ckpt_every=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "more3s.evaluate", "--run-dir", str(run), "--episodes", "5", "--num-envs", "2", "--targets", "2",
           "--seeds", "7", "--max-episode-steps", "6", "--device", "cpu", "--no-plot"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Evaluation of") == 1 and "on 2 processes" in proc.stdout
    rep = json.loads((run / "eval.json").read_text())
    assert rep["processes"] == 2 and rep["episodes_per_target"] == 5

    model, info, _ = load_run_model(run, "cpu")
    eng = RolloutEngine(model, load_encoder(info.encoder, device="cpu"), "breakout")
    played = []
    for first in (0, 2):
        venv = make_vector_env("breakout", 2, max_episode_steps=6)
        try:
            res = eng.run(venv, 2.0, 5, seed=7, first_env=first, total_envs=4)
        finally:
            venv.close()
        seen: dict[int, int] = {}
        for e, r, n in zip(res.env_index, res.returns, res.lengths):
            seen[e] = seen.get(e, -1) + 1
            played.append((e, seen[e], r, n))
    played.sort()
    assert [e for e, *_ in played] == [0, 0, 1, 2, 3]  # 5 episodes over 4 envs
    got = rep["targets"][0]
    assert got["returns"] == [p[2] for p in played] and got["lengths"] == [p[3] for p in played]


def test_evaluate_refuses_an_encoder_with_other_weights(tiny_config):
    from more3s.encoder import load_encoder
    from more3s.evaluate import evaluate_run

    run = train(tiny_config(name="fp", max_steps=2, ckpt_every=2))
    other = load_encoder("lxmert-tiny", device="cpu")
    other.fingerprint = "0" * 40  # as if other weights had been loaded
    with pytest.raises(ValueError, match="fingerprint"):
        evaluate_run(run, episodes=1, num_envs=1, max_episode_steps=5, encoder=other)


def test_train_and_evaluate_write_videos_and_the_report_strip(tiny_config, monkeypatch, capsys):
    """--eval-video on train, a bare --video on evaluate (= 1 per target); a later evaluation replaces the videos."""
    import more3s.evaluate
    from more3s.evaluate import main as eval_main
    from more3s.train import train

    strips = []
    real_strip = more3s.evaluate.best_episode_strip

    def spy(*a, **k):
        strips.append(real_strip(*a, **k))
        return strips[-1]

    monkeypatch.setattr(more3s.evaluate, "best_episode_strip", spy)
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
