"""The trainer end to end on a tiny dataset: exact resume, NaN stop, corrupt-checkpoint fallback,
baselines, evaluation + report, and 2-process DDP on CPU."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import more3s.train as train_mod
from more3s.checkpoint import list_checkpoints, load_checkpoint
from more3s.config import parse_args
from more3s.envs import normalized_score
from more3s.train import NonFiniteLossError, train


def _losses(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["loss"], r["action_loss"], r["state_loss"], r["grad_norm"])
                for r in csv.DictReader(f)]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


class _Killed(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted_run(tiny_config, capsys):
    full = train(tiny_config(run_dir=None, name="full"))
    ref = _losses(full)
    assert [r[0] for r in ref] == list(range(1, 9))

    def kill_at_6(step):
        if step == 6:  # after the step-4 checkpoint and two more logged steps
            raise _Killed()

    cut = tiny_config(name="cut")
    with pytest.raises(_Killed):
        train(cut, on_step=kill_at_6)
    run = next(Path(cut.out_dir).glob("cut-*"))
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    assert len(_losses(run)) == 6  # rows 5-6 were written after the checkpoint
    train(parse_args(["--resume", str(run)]))
    assert _losses(run) == ref  # exact: same sampler, RNG, optimizer, scheduler and memory state
    a, b = _weights(run / "checkpoints/step_00000008"), _weights(full / "checkpoints/step_00000008")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Truncate the newest checkpoint: resuming falls back to step 4 and replays 5..8 identically.
    f = run / "checkpoints/step_00000008/model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    capsys.readouterr()
    train(parse_args(["--resume", str(run)]))
    err = capsys.readouterr().err
    assert "step_00000008" in err and "falling back" in err and "resumed from" in err
    assert _losses(run) == ref


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, monkeypatch):
    real = train_mod.train_step
    calls = {"n": 0}

    def poisoned(model, batch, memory, cfg, ctx):
        out = real(model, batch, memory, cfg, ctx)
        calls["n"] += 1
        if calls["n"] == 7:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    cfg = tiny_config(name="nan", ckpt_every=3)
    with pytest.raises(NonFiniteLossError, match="step 7") as e:
        train(cfg)
    run = next(Path(cfg.out_dir).glob("nan-*"))
    assert "step_00000006" in str(e.value) and "--resume" in str(e.value)
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [3, 6]
    ck = load_checkpoint(run / "checkpoints/step_00000006")  # intact and verifiable
    assert ck.step == 6
    assert all(torch.isfinite(t).all() for t in _weights(ck.path).values())
    assert train_mod.main(["--config", str(run / "config.json"), "--run-dir", str(run / "x"),
                           "--lr", "-1"]) == 2  # config errors are reported, not raised


@pytest.mark.parametrize("preset, rtg_mode", [("dt", "token"), ("bc", "none")])
def test_baseline_presets_train(tiny_config, preset, rtg_mode):
    cfg = tiny_config(name=preset, preset=preset, rtg_mode=rtg_mode, memory_steps=0, sampler="window",
                      max_steps=3, ckpt_every=3)
    run = train(cfg)
    info = json.loads((run / "run.json").read_text())
    assert info["model_config"]["rtg_mode"] == rtg_mode and info["sampler"] == "window"
    assert len(_losses(run)) == 3


def test_train_then_evaluate_and_report(tiny_config, capsys):
    from more3s.evaluate import main as eval_main

    cfg = tiny_config(name="e2e", max_steps=4, eval_at_end=True, eval_episodes=2, eval_num_envs=2,
                      eval_max_episode_steps=12, tensorboard=True)
    run = train(cfg)
    out = capsys.readouterr().out
    assert "normalized score" in out and "step_00000004" in out and "capped at 12" in out
    rep = json.loads((run / "eval.json").read_text())
    info = json.loads((run / "run.json").read_text())
    assert [t["target"] for t in rep["targets"]] == info["targets"]  # from the data: best, p90
    for t in rep["targets"]:
        assert len(t["returns"]) == 2
        assert t["normalized"] == pytest.approx(list(normalized_score("breakout", t["returns"])))
    assert (run / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "config.json").is_file()
    # the standalone evaluator: other engine, explicit target, full protocol flag shown
    assert eval_main(["--run", str(run), "--episodes", "2", "--num-envs", "2", "--targets", "3",
                      "--max-episode-steps", "10", "--engine", "banded", "--no-plot"]) == 0
    rep2 = json.loads((run / "eval.json").read_text())
    assert rep2["engine"] == "banded" and [t["target"] for t in rep2["targets"]] == [3.0]
    assert eval_main(["--run", str(run / "missing")]) == 2


def test_ddp_two_processes_agree(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=4, ckpt_every=4)
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "more3s.train", "--dataset", cfg.dataset, "--no-collect-if-missing",
           "--encoder", "lxmert-tiny", "--backbone", "dt-small", "--n-layer", "2", "--n-head", "2",
           "--n-embd", "32", "--window", "4", "--memory-steps", "4", "--batch-size", "2",
           "--max-steps", "4", "--ckpt-every", "4", "--log-every", "1", "--no-progress",
           "--no-tensorboard", "--eval-episodes", "3", "--eval-num-envs", "1", "--eval-max-episode-steps", "5",
           "--device", "cpu", "--cache-dir", str(cfg.cache_dir), "--run-dir", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((run / "eval.json").read_text())  # the final evaluation, shared by both ranks
    assert rep["processes"] == 2 and all(len(t["returns"]) == 3 for t in rep["targets"])
    assert proc.stdout.count("Evaluation of") == 1  # rank 0 alone reports
    dist = json.loads((run / "dist.json").read_text())
    assert dist["world_size"] == 2 and dist["replicas_agree"]
    assert len({r["sha256"] for r in dist["ranks"]}) == 1
    ck = load_checkpoint(run / "checkpoints/step_00000004")
    assert ck.state["world_size"] == 2 and len(ck.state["sampler"]) == 2
    assert ck.state["sampler"][0] != ck.state["sampler"][1]  # ranks draw different data


def test_torchrun_evaluation_plays_the_shards_of_one_process(tiny_config):
    """2 ranks x 2 envs: rank 0 gathers and reports the 5 episodes that the same two shards (envs 0-1 and 2-3
    of 4, same seeds and quotas) play in this process."""
    from more3s.encoder import load_encoder
    from more3s.envs import make_vector_env
    from more3s.evaluate import load_run_model
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
    eng = RolloutEngine(model, load_encoder(info["encoder"], device="cpu"), "breakout")
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


def test_linear_head_and_held_out_action_accuracy(tiny_config):
    """objective=linear trains a plain logits head on the same tokens; the probe scores trained runs on the
    episodes after the ones they trained on (teacher-forced, memory carried), and refuses a run without any."""
    from more3s.evaluate import load_run_model
    from more3s.probe import run_action_accuracy

    runs = {obj: train(tiny_config(name=obj, objective=obj, max_episodes=4, max_steps=3, ckpt_every=3))
            for obj in ("semantic", "linear")}
    model, _, _ = load_run_model(runs["linear"])
    assert model.head_action.out_features == 4  # Breakout's 4 actions, not the encoder space
    for obj, run in runs.items():
        r = run_action_accuracy(run, tiny_config().dataset, tiny_config().cache_dir)
        assert r["objective"] == obj and r["heldout_episodes"] == [4, 5] and 0 <= r["action_accuracy"] <= 1
    everything = train(tiny_config(name="all", max_steps=2, ckpt_every=2))
    with pytest.raises(ValueError, match="no others to hold out"):
        run_action_accuracy(everything, tiny_config().dataset, tiny_config().cache_dir)
