"""more3s.agreement: a trained Breakout policy scored against the scripted tracker, in play and on its data."""

import json

import numpy as np
import pytest

from more3s.agreement import ERROR_BANDS, NO_BALL, _band, main
from more3s.train import train


def test_bands_cover_every_error_once():
    assert [_band(d) for d in (0.0, 0.5, 1.0, 1.5, 2.0, 3.9, 4.0, 4.1, 1e9)] == [
        "|d| <= dead zone", "|d| <= dead zone", "|d| <= dead zone", "1-2x dead zone", "1-2x dead zone",
        "2-4x dead zone", "2-4x dead zone", "> 4x dead zone", "> 4x dead zone"]


def test_agreement_of_a_trained_run(tiny_config, tmp_path, capsys):
    run = train(tiny_config(name="agree", max_steps=3, ckpt_every=3))
    out = tmp_path / "agreement.json"
    assert main(["--run", str(run), "--episodes", "3", "--num-envs", "2", "--seed", "5",
                 "--cache-dir", str(tiny_config().cache_dir), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    play = rep["in_play"]
    assert play["episodes"] == 3 and play["seed"] == 5 and rep["task"] == "breakout"
    assert set(play["bands"]) <= {name for name, _, _ in ERROR_BANDS} | {NO_BALL}
    assert sum(b["steps"] for b in play["bands"].values()) == play["all"]["steps"] > 0
    # every protocol step is scored once: the steps are the episodes' lengths (cap 24 of the tiny data)
    assert play["all"]["steps"] == pytest.approx(play["length_mean"] * 3)
    for b in [play["all"], *play["bands"].values()]:
        assert 0 <= b["sampled"] <= 1 and 0 <= b["greedy"] <= 1 and 0 < b["p_tracker"] < 1
    data = rep["data"]
    assert [r["episode"] for r in data] == list(range(6))  # every training episode, in order
    # the mixed policy's behaviour: the tracker's action or a random one (epsilon per episode)
    assert all(0 <= r["behaviour"] <= 1 and 0 < r["model_p_tracker"] < 1 for r in data)
    assert np.mean([r["behaviour"] for r in data]) > 0.4
    text = capsys.readouterr().out
    assert "agreement with the tracker's action in play" in text and "teacher-forced" in text
    assert play["temperature"] == 1 and "temperature" not in text
    # another temperature plays other draws, scores p(tracker action) under it, and says it is a diagnostic
    assert main(["--run", str(run), "--episodes", "3", "--num-envs", "2", "--seed", "5", "--no-data",
                 "--temperature", "0.5", "--json", str(out)]) == 0
    cold = json.loads(out.read_text())["in_play"]
    assert cold["temperature"] == 0.5 and "temperature 0.5 (a diagnostic" in capsys.readouterr().out
    assert cold["all"]["p_tracker"] != play["all"]["p_tracker"]
    assert main(["--run", str(run), "--temperature", "0", "--no-data"]) == 2


def test_agreement_teacher_forces_the_episodes_a_percentile_run_trained_on(tiny_config, tiny_dataset, tmp_path):
    import shutil

    import h5py

    from more3s.data import best_episode_indices, load_episodes

    # The tiny episodes score nothing in 24 steps: a copy in which the last two score, so that the best are no prefix.
    data = tmp_path / "breakout-scored"
    shutil.copytree(tiny_dataset, data)
    with h5py.File(data / "data" / "main_data.hdf5", "a") as f:
        for name in ("episode_4", "episode_5"):
            f[name]["rewards"][0] = 1.0
    cfg = tiny_config(name="pbc", preset="bc", rtg_mode="none", memory_steps=0, sampler="window", max_steps=2,
                      ckpt_every=2, top_percent=30, dataset=str(data))
    run = train(cfg)
    out = tmp_path / "agreement.json"
    assert main(["--run", str(run), "--episodes", "1", "--num-envs", "1", "--cache-dir", str(cfg.cache_dir),
                 "--json", str(out)]) == 0
    episodes = load_episodes(cfg.dataset, task="breakout")
    want = best_episode_indices(episodes, 30)
    assert want == [4, 5]
    rows = json.loads(out.read_text())["data"]
    assert [r["episode"] for r in rows] == want and [r["return"] for r in rows] == [1.0, 1.0]


def test_a_run_that_is_not_there_is_a_clear_error(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "more3s.agreement: error" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "nope"), "--episodes", "0"]) == 2
    assert "episodes and num_envs must be >= 1, got 0" in capsys.readouterr().err
