"""The grid end to end: the smoke profile, a killed grid resuming, failed cells recorded, the paper wiring."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from more3s.reproduce.__main__ import ReproduceConfig, run_grid

ROOT = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> list[dict]:
    with open(out / "scores.csv") as f:
        return list(csv.DictReader(f))


def _env(cache: Path) -> dict:
    return {**os.environ, "MORE3S_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_smoke_profile_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "-m", "more3s.reproduce", "--profile", "smoke", "--out", str(out),
                           "--jobs", "2"], cwd=ROOT, env=_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert [(r["arm"], r["status"]) for r in rows] == [("more3s", "ok"), ("dt-published", "ok")], rows
    assert all(r["protocol"].startswith("last checkpoint") and r["commit"] for r in rows)
    for name in ("table.md", "claims.md", "scores.png", "grid.json"):
        assert (out / name).stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "| more3s | 1 |" in table and "Behaviour data" in table
    assert "inconclusive" in (out / "claims.md").read_text()  # one seed decides nothing


def test_killed_grid_resumes_without_rerunning_finished_cells(tmp_path):
    out = tmp_path / "grid"
    args = [sys.executable, "-m", "more3s.reproduce", "--profile", "smoke", "--out", str(out), "--launcher",
            "inline", "--override", "max_steps=40", "ckpt_every=5", "log_every=1"]
    env = _env(tmp_path / "cache")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = out / "runs/breakout/more3s/seed0/cell.json"
    second_ckpts = out / "runs/breakout/dt-published/seed0/checkpoints"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if first.is_file() and second_ckpts.is_dir() and any(second_ckpts.glob("step_*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the grid ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "runs/breakout/dt-published/seed0/cell.json").exists()
    partial = subprocess.run([*args, "--report-only"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert [(r["arm"], r["status"]) for r in _rows(out)] == [("more3s", "ok"), ("dt-published", "not run")]
    assert "not reached it yet" in _rows(out)[1]["message"]
    assert not (out / "runs/breakout/dt-published/seed0/cell.json").exists()  # --report-only ran nothing
    stamp = first.stat().st_mtime_ns
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 already finished" in again.stderr
    assert "resumed from" in again.stderr
    assert first.stat().st_mtime_ns == stamp  # the finished cell was not run again
    assert [r["status"] for r in _rows(out)] == ["ok", "ok"]
    # the grid's wall time: the killed invocation up to its finished cell, then the one that completed it
    killed, resumed = json.loads((out / "grid.json").read_text())["sessions"]
    assert (killed["ended"], killed["cells_finished"], killed["cells_to_run"]) == (None, 1, 2)
    assert resumed["ended"] is not None and (resumed["cells_finished"], resumed["cells_to_run"]) == (1, 1)
    assert killed["wall_s"] > 0 and resumed["wall_s"] > 0
    hours = (killed["wall_s"] + resumed["wall_s"]) / 3600
    assert f"Grid wall time: {hours:.2f} h over 2 invocation(s)" in (out / "table.md").read_text()


def test_failed_cells_are_recorded_and_the_grid_goes_on(tmp_path):
    out = tmp_path / "fail"
    run_grid(ReproduceConfig(profile="smoke", out=out, launcher="inline",
                             data=(f"breakout={tmp_path / 'missing.hdf5'}",)), log=lambda m: None)
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("missing.hdf5" in r["message"] for r in rows)
    assert "Failed: more3s seed 0" in (out / "table.md").read_text()


def test_bad_grid_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a TrainConfig field"):
        run_grid(ReproduceConfig(out=tmp_path, override=("learning_rate=1",)))
    with pytest.raises(ValueError, match="not a task of profile smoke"):
        run_grid(ReproduceConfig(out=tmp_path, data=("pong=x",)))
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        run_grid(ReproduceConfig(out=tmp_path, data=("breakout",)))
    with pytest.raises(ValueError, match="jobs"):
        run_grid(ReproduceConfig(out=tmp_path, jobs=0))


def test_paper_profile_first_cell_on_a_local_stand_in(tmp_path, tiny_breakout):
    """The paper profile's wiring (published dataset id, DT budgets) runs here with a stand-in dataset."""
    out = tmp_path / "paper"
    run_grid(ReproduceConfig(
        profile="paper", tasks=("breakout",), arms=("more3s",), seeds=1, out=out, launcher="inline",
        data=(f"breakout={tiny_breakout}",),
        override=("encoder=lxmert-tiny", "backbone=dt-small", "max_steps=4", "warmup_steps=0", "batch_size=2",
                  "window=4", "memory_steps=4", "eval_episodes=1", "eval_max_episode_steps=20", "ckpt_every=4",
                  "eval_num_envs=1", f"cache_dir=\"{tmp_path / 'cache'}\"")), log=lambda m: None)
    (row,) = _rows(out)
    assert row["status"] == "ok", row["message"]
    assert row["task"] == "breakout" and row["dataset"] == str(tiny_breakout)
    grid = (out / "grid.json").read_text()
    assert "atari/breakout/expert-v0" in grid and "deviations" in grid


def test_a_grid_refuses_cells_of_another_configuration_and_may_move(tmp_path, tiny_breakout):
    """Cells on disk that were run with other options are never taken for this grid's (nothing is deleted); a
    grid's root may move (its cells say where they lie now)."""
    import shutil

    out = tmp_path / "grid"

    def grid(steps: int, root: Path = out, **kw) -> Path:
        return run_grid(ReproduceConfig(
            profile="paper", tasks=("breakout",), arms=("bc",), seeds=1, out=root, launcher="inline",
            data=(f"breakout={tiny_breakout}",),
            override=("encoder=lxmert-tiny", "backbone=dt-small", f"max_steps={steps}", "warmup_steps=0",
                      "batch_size=2", "window=4", "eval_episodes=1", "eval_max_episode_steps=10",
                      "ckpt_every=2", "eval_num_envs=1", f"cache_dir=\"{tmp_path / 'cache'}\""), **kw), log=lambda m: None)

    grid(2)
    cell = out / "runs/breakout/bc/seed0"
    stamp = (cell / "cell.json").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"1 cell\(s\) were run with another configuration.*breakout/bc/seed0: "
                                         r"max_steps 2 -> 3.*--out DIR"):
        grid(3)
    assert (cell / "cell.json").stat().st_mtime_ns == stamp  # refused before anything ran or was removed
    lines: list[str] = []
    run_grid(ReproduceConfig(profile="paper", tasks=("breakout",), arms=("bc",), seeds=1, out=out,
                             data=(f"breakout={tiny_breakout}",), override=("max_steps=3",), report_only=True),
             log=lines.append)
    assert any(line.startswith("WARNING: run with another configuration") and "max_steps" in line for line in lines)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    grid(2, moved, report_only=True)
    (row,) = _rows(moved)
    assert row["status"] == "ok" and row["run_dir"] == str(moved / "runs/breakout/bc/seed0")


@pytest.mark.parametrize("returns, alike", [
    ([17.9, 17.6, 17.1, 18.2, 17.4], True),  # the first cpu Hopper data: one untrained fall, repeated
    ([3.1, 28.1, 210.6, 216.1, 12.0], False),  # its replacement
    ([0.0, 0.0, 0.5, 0.2, 0.0], True),  # all near zero
])
def test_collected_data_alike_in_quality_is_flagged(tmp_path, monkeypatch, returns, alike):
    from more3s.reproduce import __main__ as grid_main
    from more3s.reproduce.grid import DataSpec

    prov = {"collected_by": "more3s", "returns": returns, "lengths": [37] * len(returns)}
    monkeypatch.setattr("more3s.data.dataset_provenance", lambda dataset: prov)
    monkeypatch.setattr("more3s.train.local_dataset_exists", lambda dataset: True)
    lines: list[str] = []
    grid_main.prepare_data(DataSpec("more3s/hopper/x-v0", "sac-medium-replay", 5, 1000), "hopper", tmp_path,
                           lines.append)
    assert lines[0].startswith(f"data more3s/hopper/x-v0: 5 episodes, return min / median / max {min(returns):.1f}")
    assert any(line.startswith("WARNING: every episode of more3s/hopper/x-v0 scores alike") for line in lines) == alike
    monkeypatch.setattr("more3s.data.dataset_provenance", lambda dataset: None)  # not collected by more3s
    lines.clear()
    grid_main.prepare_data(DataSpec("more3s/hopper/x-v0", "mixed", 5, 1000), "hopper", tmp_path, lines.append)
    assert lines == []


def test_sac_data_are_kept_with_the_results_and_installed_from_there(tmp_path, monkeypatch):
    """A SAC run cannot be re-trained exactly on another machine: the grid keeps its episodes under
    results/<profile>/data and a fresh machine installs them instead of collecting different ones."""
    import shutil

    from more3s.data import collect_dataset, dataset_path, load_episodes
    from more3s.reproduce import __main__ as grid_main
    from more3s.reproduce.grid import DataSpec

    spec = DataSpec("more3s/hopper/kept-v0", "sac-medium-replay", 3, 10, sac_steps=100)
    collected: list[str] = []

    def fake_collect(spec, policy, env, root, log):  # stands in for the SAC run + collection
        collected.append(spec.dataset)
        collect_dataset("hopper", "random", spec.episodes, spec.dataset, seed=3, max_episode_steps=10, progress=False)

    monkeypatch.setattr(grid_main, "_collect", fake_collect)
    lines: list[str] = []
    grid_main.prepare_data(spec, "hopper", tmp_path, lines.append)
    kept = grid_main.kept_data_dir(tmp_path, spec.dataset)
    assert collected == [spec.dataset] and (kept / "data" / "metadata.json").is_file()
    assert any(line.startswith(f"kept {spec.dataset}") for line in lines)
    before = [ep.rewards for ep in load_episodes(spec.dataset)]

    shutil.rmtree(dataset_path(spec.dataset))  # a fresh machine: only the results travel
    monkeypatch.setattr(grid_main, "_collect", lambda *a: pytest.fail("collected again instead of installing"))
    lines.clear()
    grid_main.prepare_data(spec, "hopper", tmp_path, lines.append)
    assert lines[0].startswith(f"installed {spec.dataset} from {kept}")
    after = [ep.rewards for ep in load_episodes(spec.dataset)]
    assert len(after) == 3 and all(np.array_equal(a, b) for a, b in zip(before, after))

    # a local copy with other episodes (another machine's SAC run) is an error, not silently used
    shutil.rmtree(dataset_path(spec.dataset))
    collect_dataset("hopper", "random", 3, spec.dataset, seed=4, max_episode_steps=10, progress=False)
    with pytest.raises(ValueError, match="holds other episodes than the ones this grid's cells trained on"):
        grid_main.prepare_data(spec, "hopper", tmp_path, lines.append)

