"""A grid cell's record: cell.json round-trips, a missing or damaged one reads as 'run it again', a finished cell
is never trained again, a failure is recorded instead of raised, and a cell the grid skips is 'not run'."""

import json
from dataclasses import asdict, fields, replace

import pytest

import more3s.train
from more3s.reproduce import cells
from more3s.reproduce.cells import CELL_FILE, CellResult, not_run, read_cell, run_cell
from more3s.reproduce.grid import Cell

CELL = Cell(profile="smoke", task="breakout", arm="more3s", seed=0)


def _finished(**kw) -> CellResult:
    base = dict(arm="more3s", task="breakout", seed=0, status="ok", dataset="more3s/breakout/smoke-v0",
                normalized_mean=12.5, normalized_std=1.25, raw_mean=3.0, raw_std=0.5, episodes=4, target=90.0,
                protocol="last checkpoint (step 8)", behaviour_mean=1.5, behaviour_best=6.0, steps=8, wall_s=3.2,
                commit="abc123", message="", run_dir="/r/runs/breakout/more3s/seed0")
    base.update(kw)
    return CellResult(**base)


def test_read_cell_of_a_missing_or_empty_dir_is_none(tmp_path):
    assert read_cell(tmp_path / "nowhere") is None
    assert read_cell(tmp_path) is None  # a run directory without cell.json: not finished


def test_written_cell_round_trips(tmp_path):
    res = _finished()
    assert cells._write(tmp_path / "a" / "b", res) is res  # creates the run directory
    f = tmp_path / "a" / "b" / CELL_FILE
    assert CELL_FILE == "cell.json" and f.is_file()
    assert json.loads(f.read_text()) == asdict(res)
    here = replace(res, run_dir=str(tmp_path / "a" / "b"))  # read back where it lies now
    assert read_cell(tmp_path / "a" / "b") == here
    assert read_cell(str(tmp_path / "a" / "b")) == here  # a str path works too


def test_round_trip_keeps_nones_of_a_failed_cell(tmp_path):
    res = CellResult(arm="dt", task="pong", seed=2, status="failed", message="ValueError: boom")
    cells._write(tmp_path, res)
    back = read_cell(tmp_path)
    assert back == replace(res, run_dir=str(tmp_path)) and back.normalized_mean is None and back.target is None


@pytest.mark.parametrize("text", [
    "{not json",                                                    # damaged
    "",                                                             # empty (not written atomically elsewhere)
    "[1, 2, 3]",                                                    # JSON, but not an object
    "null",
    json.dumps({"arm": "more3s", "task": "breakout"}),              # required fields missing
    json.dumps({**asdict(_finished()), "extra_field": 1}),          # a foreign schema
])
def test_damaged_or_foreign_cell_json_reads_as_none(tmp_path, text):
    (tmp_path / CELL_FILE).write_text(text)
    assert read_cell(tmp_path) is None


def test_undecodable_cell_json_reads_as_none(tmp_path):
    (tmp_path / CELL_FILE).write_bytes(b"\xff\xfe\x00garbage")
    assert read_cell(tmp_path) is None


def test_not_run_records_why_and_where(tmp_path):
    res = not_run(CELL, str(tmp_path), "needs pretrained weights")
    assert (res.arm, res.task, res.seed, res.status) == ("more3s", "breakout", 0, "not run")
    assert res.message == "needs pretrained weights"
    assert res.run_dir == str(tmp_path / "runs" / "breakout" / "more3s" / "seed0")
    defaults = {f.name: f.default for f in fields(CellResult) if f.name not in ("arm", "task", "seed", "status",
                                                                                  "message", "run_dir")}
    assert {k: getattr(res, k) for k in defaults} == defaults  # no score, no steps, no dataset
    assert not (tmp_path / "runs").exists()  # recorded, nothing written


def _no_training(monkeypatch, exc=None):
    calls = []

    def train(cfg):
        calls.append(cfg)
        if exc is not None:
            raise exc

    monkeypatch.setattr(more3s.train, "train", train)
    return calls


def test_finished_cell_is_returned_without_training(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch, AssertionError("trained a finished cell"))
    done = _finished(run_dir=str(CELL.run_dir(tmp_path)))
    cells._write(CELL.run_dir(tmp_path), done)
    assert run_cell(CELL, str(tmp_path)) == done
    assert calls == []


def test_a_failure_is_recorded_not_raised(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch, RuntimeError("loss is NaN at step 3"))
    res = run_cell(CELL, str(tmp_path), commit="deadbeef")
    assert len(calls) == 1 and calls[0].seed == 0
    run_dir = CELL.run_dir(tmp_path)
    assert (res.status, res.message, res.commit) == ("failed", "RuntimeError: loss is NaN at step 3", "deadbeef")
    assert res.dataset == "more3s/breakout/smoke-v0" and res.run_dir == str(run_dir)
    assert read_cell(run_dir) == res  # the failure is the cell's record ...
    assert "loss is NaN" in (run_dir / "error.log").read_text()  # ... with its traceback beside it
    again = run_cell(CELL, str(tmp_path))  # a failed cell is not 'finished': the next grid runs it again
    assert len(calls) == 2 and again.status == "failed"


def test_a_cell_runs_its_encoder_on_its_own_threads(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch, RuntimeError("stop after the config"))
    run_cell(CELL, str(tmp_path), threads=1)
    assert calls[0].encoder_threads == 1  # --jobs J cells share the cores: no cell takes them all to encode
    assert "encoder_threads" in cells.LAUNCH_FIELDS  # a launch detail, not a drift of a finished cell's config


def test_an_interrupt_leaves_no_cell_json(tmp_path, monkeypatch):
    _no_training(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_cell(CELL, str(tmp_path))
    assert read_cell(CELL.run_dir(tmp_path)) is None  # the next grid run resumes this cell
