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
    assert medium[0] in replay and replay[0].name == index["snapshots"][0]["path"]
    mixed, w = select_snapshots(out, "medium-expert")
    assert mixed == [medium[0], expert[0]] and w == [0.5, 0.5]
    with pytest.raises(ValueError, match="quality level"):
        select_snapshots(out, "superb")
    collect_dataset("halfcheetah", f"sac-medium-expert:{out}", 2, "hc/sac-v0",
                    max_episode_steps=20, progress=False)
    eps = load_episodes("hc/sac-v0")
    assert len(eps) == 2 and eps[0].actions.shape == (20, 6)
    # medium-replay samples its actions (a replay buffer's), reproducibly from the collection seed
    for name in ("hc/replay-a-v0", "hc/replay-b-v0"):
        collect_dataset("halfcheetah", f"sac-medium-replay:{out}", 2, name, seed=5, max_episode_steps=20,
                        progress=False)
    a, b = (load_episodes(n) for n in ("hc/replay-a-v0", "hc/replay-b-v0"))
    assert all(np.array_equal(x.actions, y.actions) for x, y in zip(a, b))
    for snapshot in replay:  # sampled: no snapshot's deterministic action
        det, _ = load_sac(snapshot).predict(a[0].observations[0], deterministic=True)
        assert not np.allclose(a[0].actions[0], det)
    # the replay opens with SAC's random exploration: one more member beside the snapshots, drawn per episode
    import h5py

    from more3s.data.minari_paths import dataset_path

    collect_dataset("halfcheetah", f"sac-medium-replay:{out}", 12, "hc/replay-c-v0", seed=0, max_episode_steps=5,
                    progress=False)
    with h5py.File(dataset_path("hc/replay-c-v0") / "data" / "main_data.hdf5") as f:
        members = {str(f[k].attrs["snapshot"]) for k in f}
    assert members == {"random-exploration", *(p.name for p in replay)}


def test_medium_replay_reaches_the_medium_target(tmp_path):
    """Snapshots far apart (a short Hopper run: two untrained, then ~200): the nearest to the medium target
    (random -20.3 + 1/3 of the way to 285 = 81.4) is an untrained one, and a replay of those alone was one fall
    repeated; the replay goes on to the first snapshot that reaches the target."""
    rets = [17.6, 17.8, 202.7, 213.9, 284.8, 218.9]
    snaps = [{"step": 2500 * (i + 1), "path": f"step_{i}.zip", "eval_return": r} for i, r in enumerate(rets)]
    (tmp_path / "snapshots.json").write_text(json.dumps({"task": "hopper", "snapshots": snaps}))
    medium, _ = select_snapshots(tmp_path, "medium")
    replay, _ = select_snapshots(tmp_path, "medium-replay")
    assert medium[0].name == "step_1.zip"
    assert [p.name for p in replay] == ["step_0.zip", "step_1.zip", "step_2.zip"]


def test_sac_config_validation():
    with pytest.raises(ValueError, match="mujoco"):
        SACConfig(env="pong")
    with pytest.raises(ValueError, match="total_steps"):
        SACConfig(total_steps=0)
