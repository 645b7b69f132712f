"""The trainer end to end on tiny datasets (more3s.train): exact resume, NaN stop, corrupt-checkpoint fallback,
baselines, DT as published, datasets more3s did not write, --eval-every, 2-process DDP."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
import torch

import more3s.train as train_mod
from more3s.checkpoint import list_checkpoints, load_checkpoint
from more3s.config import config_from_dict, parse_args, preset_overrides
from more3s.data import collect_dataset, dataset_path, dataset_provenance, load_episodes, published_reason
from more3s.encoder.raw import RawObservations
from more3s.envs import make_vector_env, normalized_score
from more3s.rollout.engine import RolloutEngine
from more3s.run import RunInfo, load_run_model
from more3s.train import NonFiniteLossError, train
from more3s.train import main as train_main


def _losses(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["loss"], r["action_loss"], r["state_loss"], r["grad_norm"])
                for r in csv.DictReader(f)]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


class _Killed(Exception):
    pass


@pytest.mark.parametrize("memory_drop", [0.0, 0.5])
def test_resume_after_kill_equals_uninterrupted_run(tiny_config, capsys, memory_drop):
    full = train(tiny_config(run_dir=None, name="full", memory_drop=memory_drop))
    ref = _losses(full)
    assert [r[0] for r in ref] == list(range(1, 9))
    if memory_drop:  # the drops change training (their draws are checkpointed with the RNG: the resume is exact)
        kept = _losses(train(tiny_config(run_dir=None, name="kept")))
        assert kept != ref

    def kill_at_6(step):
        if step == 6:  # after the step-4 checkpoint and two more logged steps
            raise _Killed()

    cut = tiny_config(name="cut", memory_drop=memory_drop)
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

    def poisoned(model, batch, memory, ctx):
        out = real(model, batch, memory, ctx)
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
    info = RunInfo.read(run)
    assert info.model_config.rtg_mode == rtg_mode and info.sampler == "window"
    assert len(_losses(run)) == 3


def test_percentile_bc_trains_on_the_best_episodes_and_reports_against_all(tiny_config, capsys):
    """--preset bc --top-percent X is DT's X %BC: the best episodes by return, the whole data's statistics."""
    from more3s.data import best_episode_indices, load_episodes

    full = RunInfo.read(train(tiny_config(name="all", preset="bc", rtg_mode="none", memory_steps=0,
                                          sampler="window", max_steps=1, ckpt_every=1)))
    cfg = tiny_config(name="pbc", preset="bc", rtg_mode="none", memory_steps=0, sampler="window", max_steps=2,
                      ckpt_every=2, top_percent=40)
    info = RunInfo.read(train(cfg))
    episodes = load_episodes(cfg.dataset, task="breakout")
    want = [episodes[i] for i in best_episode_indices(episodes, 40)]
    assert 0 < info.episodes == len(want) < full.episodes
    assert info.steps_in_data == sum(len(ep) for ep in want)
    assert info.behaviour == full.behaviour and info.targets == full.targets  # compared with the whole data
    assert f"training on the best {len(want)} of {full.episodes} episodes" in capsys.readouterr().err


def test_train_then_evaluate_and_report(tiny_config, capsys):
    from more3s.evaluate import main as eval_main

    cfg = tiny_config(name="e2e", max_steps=4, eval_at_end=True, eval_episodes=2, eval_num_envs=2,
                      eval_max_episode_steps=12, tensorboard=True)
    run = train(cfg)
    out = capsys.readouterr().out
    assert "normalized score" in out and "step_00000004" in out and "capped at 12" in out
    rep = json.loads((run / "eval.json").read_text())
    info = RunInfo.read(run)
    assert [t["target"] for t in rep["targets"]] == info.targets  # from the data: best, p90
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


def test_eval_dtype_the_device_cannot_run_fails_before_training(capsys):
    from more3s.evaluate import resolve_eval_dtype
    from more3s.train import main

    assert resolve_eval_dtype("auto", "cpu") == torch.float32
    assert resolve_eval_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        resolve_eval_dtype("fp16", "cpu")
    assert main(["--device", "cpu", "--eval-dtype", "fp16", "--dataset", "more3s/none/missing-v0"]) == 2
    assert "fp16" in capsys.readouterr().err


def _eval_rows(run):
    with open(Path(run) / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["eval/target"]]


def test_eval_every_logs_scores_and_leaves_training_alone(tiny_config):
    def losses(run):
        with open(Path(run) / "metrics.csv", newline="") as f:
            return [(r["step"], r["loss"]) for r in csv.DictReader(f) if r["loss"]]

    plain = train(tiny_config(name="plain", max_steps=4))
    run = train(tiny_config(name="every", max_steps=4, eval_every=2, eval_every_episodes=2,
                            eval_max_episode_steps=8, tensorboard=True))
    assert losses(run) == losses(plain)  # evaluating in between changes no training number
    rows = _eval_rows(run)
    info = RunInfo.read(run)
    assert sorted({int(r["step"]) for r in rows}) == [2, 4]
    assert len(rows) == 2 * len(info.targets)
    assert all(int(r["eval/episodes"]) == 2 and 1 <= int(r["eval/distinct"]) <= 2 for r in rows)
    from more3s.report import plot_report, read_metrics

    png = plot_report(run / "curve.png", read_metrics(run / "metrics.csv"), None)
    assert png.read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("eval/")]
    assert tags and sorted({e.step for e in acc.Scalars(tags[0])}) == [2, 4]


def _dt_config(tiny_config, env, dataset):
    base = tiny_config()
    cfg = config_from_dict(preset_overrides("dt-published", env), base)
    # the published geometry and batch, shrunk for a test: 2 layers, width 32, batch 4, 4-step windows
    return dataclasses.replace(cfg, env=env, dataset=dataset, n_layer=2, n_head=2, n_embd=32, batch_size=4,
                               window=4, max_steps=6, ckpt_every=6, preset="dt-published").validate()


def _ring_vs_banded(run_dir, env, steps=18):
    model, info, _ = load_run_model(run_dir)
    enc = RawObservations(env)
    out = {}
    for mode in ("ring", "banded"):
        venv = make_vector_env(env, 2, max_episode_steps=steps)
        try:
            out[mode] = RolloutEngine(model, enc, env, mode=mode, sample=True).run(venv, 3.0, 3, seed=5, record=True)
        finally:
            venv.close()
    ring, ref = out["ring"], out["banded"]
    assert len(ring.logits) == len(ref.logits) >= steps + 1  # an episode reset happened
    for r, a in zip(ring.logits, ref.logits):
        np.testing.assert_allclose(r, a, rtol=1e-4, atol=1e-4)
    for r, a in zip(ring.actions, ref.actions):  # discrete: the same draws from the same logits
        np.testing.assert_allclose(r, a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ring.returns, ref.returns, rtol=1e-4, atol=1e-3)  # MuJoCo amplifies 1e-6 action noise
    return model, info, ring


def test_atari_nature_cnn_trains_and_rolls_out(tiny_config, tiny_dataset):
    run = train(_dt_config(tiny_config, "breakout", tiny_dataset))
    model, info, ring = _ring_vs_banded(run, "breakout")
    cfg = model.config
    assert info.encoder == "raw" and cfg.state_embedder == "nature_cnn" and cfg.frame_stack == 4
    assert cfg.rtg_mode == "token" and cfg.memory_steps == 0 and cfg.objective == "linear"
    assert model.head_state is None and model.head_action.out_features == 4  # DT: linear logits, no state loss
    assert len({tuple(a.tolist()) for a in ring.actions}) > 1


def test_mujoco_observation_path_trains_and_rolls_out(tiny_config, tiny_cheetah):
    run = train(_dt_config(tiny_config, "halfcheetah", tiny_cheetah))
    model, info, _ = _ring_vs_banded(run, "halfcheetah")
    assert info.encoder == "raw" and model.config.state_embedder == "linear" and model.config.d_enc == 17
    assert float(model.state_std.min()) > 0 and not torch.equal(model.state_std, torch.ones(17))  # standardized


EPISODE_STEPS = 1000  # gymnasium's HalfCheetah-v5 limit, as D4RL's and Minari's mujoco datasets


def _cheetah_episodes(n: int, seed: int = 0):
    """n full-length random-action HalfCheetah episodes: (obs [T+1, 17], actions, rewards, qpos [T, 9])."""
    env = gym.make("HalfCheetah-v5")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, qpos = [obs], [], [], []
        trunc = False
        while not trunc:
            a = rng.uniform(-1, 1, size=6).astype(np.float32)
            qpos.append(env.unwrapped.data.qpos.copy())
            obs, r, term, trunc, _ = env.step(a)
            assert not term
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
        out.append((np.asarray(observations), np.asarray(actions), np.asarray(rewards), np.asarray(qpos)))
    env.close()
    return out


@pytest.fixture(scope="module")
def cheetah():
    return _cheetah_episodes(2)


def _minari_by_minari(dataset_id: str, episodes) -> None:
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for obs, act, rew, _ in episodes:
        T = len(act)
        buffers.append(EpisodeBuffer(observations=list(obs), actions=list(act), rewards=list(rew),
                                     terminations=[False] * T, truncations=[False] * (T - 1) + [True]))
    minari.create_dataset_from_buffers(dataset_id, buffers, env="HalfCheetah-v5", algorithm_name="random",
                                       author="someone else", author_email="x@example.org",
                                       code_permalink="https://example.org", description="random actions",
                                       eval_env="HalfCheetah-v5")


def _d4rl_file(path, episodes) -> None:
    """D4RL's layout: flat arrays, episodes split at timeouts, plus infos/* and metadata/* as D4RL ships them."""
    obs = np.concatenate([o[:-1] for o, *_ in episodes])
    nxt = np.concatenate([o[1:] for o, *_ in episodes])
    timeouts = np.concatenate([np.arange(len(a)) == len(a) - 1 for _, a, *_ in episodes])
    with h5py.File(path, "w") as f:
        f["observations"], f["next_observations"] = obs, nxt
        f["actions"] = np.concatenate([a for _, a, *_ in episodes])
        f["rewards"] = np.concatenate([r for *_, r, _ in episodes])
        f["terminals"], f["timeouts"] = np.zeros(len(obs), bool), timeouts
        f["infos/qpos"] = np.concatenate([q for *_, q in episodes])
        f["infos/action_log_probs"] = np.zeros(len(obs), np.float32)
        f["metadata/algorithm"] = "SAC"
        f["metadata/policy/fc0/weight"] = np.zeros((4, 17), np.float32)


def test_minari_written_dataset_runs_the_full_protocol(cheetah, tiny_config, cache_root, tmp_path):
    from more3s.evaluate import evaluate_run

    _minari_by_minari("someone/halfcheetah-random-v0", cheetah)
    assert dataset_provenance("someone/halfcheetah-random-v0") is None
    eps = load_episodes("someone/halfcheetah-random-v0")
    assert [len(e) for e in eps] == [EPISODE_STEPS] * 2
    cfg = tiny_config(name="ext", env="halfcheetah", dataset="someone/halfcheetah-random-v0", max_steps=2,
                      ckpt_every=2, batch_size=2)
    run = train(cfg)
    info = RunInfo.read(run)
    assert info.provenance is None and info.eval_max_episode_steps is None
    assert "did not collect" in info.eval_cap_source
    assert info.targets == [12000.0, 6000.0] and "published" in info.targets_source
    assert info.max_timestep == EPISODE_STEPS - 1 and "episode limit" in info.timestep_source
    rep = evaluate_run(run, episodes=1, num_envs=1, targets=(6000.0,))  # the run's cap: none
    assert rep.max_episode_steps is None and rep.targets[0].lengths == [EPISODE_STEPS]
    assert rep.actions == "greedy" and rep.greedy == []  # MuJoCo: deterministic actions only
    from more3s.report import format_table

    text = format_table(rep)
    assert "full game" in text and "not collected by more3s" in text and "did not collect" in text


def test_d4rl_layout_file_with_infos_and_metadata(cheetah, tiny_config, tmp_path):
    path = tmp_path / "halfcheetah_random-v2.hdf5"
    _d4rl_file(path, cheetah)
    eps = load_episodes(path, task="halfcheetah")
    assert [len(e) for e in eps] == [EPISODE_STEPS] * 2
    np.testing.assert_allclose(eps[1].observations[-1], cheetah[1][0][-1])
    assert dataset_provenance(path) is None
    run = train(tiny_config(name="d4rl", env="halfcheetah", dataset=str(path), max_steps=1, ckpt_every=1,
                            batch_size=2))
    info = RunInfo.read(run)
    assert info.eval_max_episode_steps is None and info.targets == [12000.0, 6000.0]


def test_published_ids_are_never_collected(capsys):
    for pid in ("atari/breakout/expert-v0", "mujoco/halfcheetah/medium-v0", "D4RL/door/human-v2",
                "minigrid/BabyAI-Pickup/optimal-v0"):
        assert published_reason(pid, check_remote=False)
    assert published_reason("more3s/breakout/mixed-v0") is None
    with pytest.raises(ValueError, match="published.*minari download"):
        collect_dataset("breakout", "random", 1, "atari/breakout/expert-v0", max_episode_steps=5, progress=False)
    assert not dataset_path("atari/breakout/expert-v0").exists()
    # the trainer offline: no collection, the download instructions, exit status 2
    assert train_main(["--dataset", "atari/breakout/expert-v0", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "minari download atari/breakout/expert-v0" in err and "does not collect" in err
    assert not dataset_path("atari/breakout/expert-v0").exists()
