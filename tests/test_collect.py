"""``python -m more3s.collect``: the command line writes datasets plain Minari reads, with a spread of returns,
and bad env/policy names are clear errors (exit status 2, the message on stderr, no dataset)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import minari
import numpy as np
import pytest

from more3s.collect import main as collect_main
from more3s.data import dataset_path, load_episodes

REPO = Path(__file__).resolve().parents[1]


def _returns(dataset_id):
    ds = minari.load_dataset(dataset_id)  # plain minari, no more3s help
    rets = [float(ep.rewards.sum()) for ep in ds.iterate_episodes()]
    assert len(rets) == ds.total_episodes
    return ds, rets


def test_cli_breakout_mixed_subprocess(_minari_root):
    env = dict(os.environ, MINARI_DATASETS_PATH=str(_minari_root))
    out = subprocess.run(
        [sys.executable, "-m", "more3s.collect", "--env", "breakout", "--policy", "mixed",
         "--episodes", "5", "--dataset-id", "breakout/mixed-v0", "--seed", "1",
         "--max-episode-steps", "400", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "return min/mean/max" in out.stdout
    ds, rets = _returns("breakout/mixed-v0")
    assert len(set(rets)) > 1, rets  # a spread of qualities
    ep = next(ds.iterate_episodes())
    assert ep.observations.shape[1:] == (210, 160, 3) and ep.observations.dtype == np.uint8
    meta = json.loads((dataset_path("breakout/mixed-v0") / "data" / "metadata.json").read_text())
    assert meta["more3s"]["returns"] == pytest.approx(rets)
    assert meta["jpeg_encoding"] is False


@pytest.mark.parametrize("env,policy,cap", [("pong", "mixed", 400), ("halfcheetah", "mixed", 200),
                                            ("halfcheetah", "sine", 100)])
def test_cli_returns_differ(env, policy, cap, capsys):
    did = f"{env}/{policy}-v0"
    assert collect_main(["--env", env, "--policy", policy, "--episodes", "5", "--dataset-id", did,
                         "--seed", "1", "--max-episode-steps", str(cap), "--no-progress"]) == 0
    _, rets = _returns(did)
    assert len(rets) == 5 and len(set(np.round(rets, 6))) > 1, rets
    eps = load_episodes(did)
    assert eps[0].task == env and all(len(e) <= cap for e in eps)
    if env == "pong":
        assert all(e.rtg[0] == pytest.approx(np.clip(e.rewards, -1, 1).sum()) for e in eps)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["--env", "tetris", "--policy", "random"], "unknown env 'tetris'"),
    (["--env", "breakout", "--policy", "genius"], "unknown policy 'genius'"),
    (["--env", "qbert", "--policy", "tracker"], "breakout and pong"),
    (["--env", "pong", "--policy", "sine"], "mujoco"),
    (["--env", "breakout", "--policy", "eps:lots"], "eps:X"),
    (["--env", "breakout", "--policy", "eps:1.5"], "epsilon"),
    (["--env", "halfcheetah", "--policy", "sac-medium:/nonexistent/run"], "snapshots.json"),
    (["--env", "breakout", "--policy", "sac:x.zip"], "mujoco"),
])
def test_cli_clear_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        collect_main([*argv, "--episodes", "1", "--dataset-id", "err/x-v0", "--no-progress"])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err
    assert not dataset_path("err/x-v0").exists()
