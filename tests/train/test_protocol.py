"""Issue 10: numbers users can trust. The evaluation protocol (sampled Atari actions with greedy beside, distinct
trajectories counted, every target once), timesteps past the data, --eval-every, the eval dtype checks."""

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

from more3s.train import train


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


def test_timesteps_past_the_data_read_only_trained_rows(tiny_config):
    """An evaluation longer than every training episode: timesteps beyond the longest one map to its last row."""
    from more3s.evaluate import evaluate_run, load_run_model

    run = train(tiny_config(name="ts", max_steps=2, ckpt_every=2))
    info = json.loads((run / "run.json").read_text())
    longest = 24  # tiny_dataset: episodes capped at 24 steps
    assert info["model_config"]["max_timestep"] == info["timesteps"]["max_timestep"] <= longest - 1
    assert "data" in info["timesteps"]["source"]
    model, _, _ = load_run_model(run)
    rows = model.embed_timestep.weight.shape[0]
    assert rows == info["timesteps"]["max_timestep"] + 1  # no row that training cannot reach
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
    info = json.loads((run / "run.json").read_text())
    assert sorted({int(r["step"]) for r in rows}) == [2, 4]
    assert len(rows) == 2 * len(info["targets"])
    assert all(int(r["eval/episodes"]) == 2 and 1 <= int(r["eval/distinct"]) <= 2 for r in rows)
    from more3s.report import plot_report, read_metrics

    png = plot_report(run / "curve.png", read_metrics(run / "metrics.csv"), None)
    assert png.read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("eval/")]
    assert tags and sorted({e.step for e in acc.Scalars(tags[0])}) == [2, 4]


def test_encoder_dtype_mismatch_warns_once(tiny_config):
    from more3s.encoder import load_encoder
    from more3s.evaluate import evaluate_model, load_run_model

    run = train(tiny_config(name="dt", max_steps=2, ckpt_every=2))
    model, info, ckpt = load_run_model(run)
    assert info["encoder_dtype"] == "float32"
    enc = load_encoder(info["encoder"], device="cpu")
    info = {**info, "encoder_dtype": "float16"}  # as if the cache had been encoded on a GPU
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
