"""SAC behaviour agents: a tiny resumable run, snapshot selection by quality, collection with it."""

import json

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from more3s.data import collect_dataset, load_episodes  # noqa: E402
from more3s.data.sac import SACConfig, select_snapshots, train_sac  # noqa: E402


def test_tiny_sac_run_resumes_and_feeds_collection(tmp_path):
    cfg = SACConfig(env="halfcheetah", out_dir=str(tmp_path / "run"), total_steps=200,
                    snapshot_every=100, learning_starts=50, batch_size=32, buffer_size=1000,
                    hidden=16, eval_episodes=1, max_episode_steps=30)
    out = train_sac(cfg)
    index = json.loads((out / "snapshots.json").read_text())
    assert [s["step"] for s in index["snapshots"]] == [100, 200]
    # resume: a longer target continues from step 200 instead of starting over
    cfg.total_steps = 300
    train_sac(cfg)
    index = json.loads((out / "snapshots.json").read_text())
    assert [s["step"] for s in index["snapshots"]] == [100, 200, 300]
    from more3s.data.sac import load_sac

    assert load_sac(out / "latest.zip").num_timesteps == 300
    # quality levels from the recorded evaluation returns
    rets = [s["eval_return"] for s in index["snapshots"]]
    expert, _ = select_snapshots(out, "expert")
    assert expert[0].name == index["snapshots"][int(np.argmax(rets))]["path"]
    replay, _ = select_snapshots(out, "medium-replay")
    medium, _ = select_snapshots(out, "medium")
    assert replay[-1] == medium[0] and len(replay) >= 1
    mixed, w = select_snapshots(out, "medium-expert")
    assert mixed == [medium[0], expert[0]] and w == [0.5, 0.5]
    with pytest.raises(ValueError, match="quality level"):
        select_snapshots(out, "superb")
    collect_dataset("halfcheetah", f"sac-medium-expert:{out}", 2, "hc/sac-v0",
                    max_episode_steps=20, progress=False)
    eps = load_episodes("hc/sac-v0")
    assert len(eps) == 2 and eps[0].actions.shape == (20, 6)


def test_sac_config_validation():
    with pytest.raises(ValueError, match="mujoco"):
        SACConfig(env="pong")
    with pytest.raises(ValueError, match="total_steps"):
        SACConfig(total_steps=0)
