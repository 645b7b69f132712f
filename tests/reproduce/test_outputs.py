"""The grid's outputs from synthetic cells: scores.csv's columns and rows, the per-task scores, the markdown table
(finished, failed and not-run arms) and the scores plot."""

import csv
import math
import re
from dataclasses import fields

import pytest

from more3s.reproduce.cells import CellResult
from more3s.reproduce.outputs import format_raw_by_seed, format_table, plot_scores, scores_by_task, write_scores_csv

ARMS = ("more3s", "dt", "pretrained", "bc")


def _ok(arm, seed, norm, raw, task="breakout", **kw):
    return CellResult(arm=arm, task=task, seed=seed, status="ok", dataset=f"more3s/{task}/x-v0",
                      normalized_mean=norm, normalized_std=1.0, raw_mean=raw, raw_std=0.5, episodes=4,
                      target=90.0, protocol="last checkpoint (step 8)", behaviour_mean=kw.pop("beh", 5.0),
                      behaviour_best=kw.pop("best", 9.0), steps=8, **kw)


@pytest.fixture
def results():
    return [
        _ok("more3s", 1, 20.0, 4.0),
        _ok("more3s", 0, 10.0, 2.0),
        CellResult(arm="dt", task="breakout", seed=0, status="failed", message="RuntimeError: loss is NaN"),
        CellResult(arm="pretrained", task="breakout", seed=0, status="not run", message="needs LXMERT weights"),
        _ok("dt", 0, 7.0, 1.5, task="pong", beh=-20.0, best=-18.0),
    ]


def test_scores_csv_has_a_column_per_field_and_a_row_per_cell(tmp_path, results):
    path = tmp_path / "scores.csv"
    write_scores_csv(path, results)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [f.name for f in fields(CellResult)]
    assert [(r["arm"], r["task"], r["seed"], r["status"]) for r in rows] == [
        ("more3s", "breakout", "1", "ok"), ("more3s", "breakout", "0", "ok"), ("dt", "breakout", "0", "failed"),
        ("pretrained", "breakout", "0", "not run"), ("dt", "pong", "0", "ok")]  # the order given
    assert float(rows[0]["normalized_mean"]) == 20.0 and float(rows[4]["behaviour_mean"]) == -20.0
    assert rows[2]["normalized_mean"] == "" and rows[2]["target"] == ""  # None is an empty cell
    assert rows[2]["message"] == "RuntimeError: loss is NaN"
    assert rows[3]["episodes"] == "0"


def test_empty_scores_csv_is_just_the_header(tmp_path):
    path = tmp_path / "scores.csv"
    write_scores_csv(path, [])
    assert path.read_text().splitlines() == [",".join(f.name for f in fields(CellResult))]


def test_scores_by_task_keeps_finished_finite_scores_in_seed_order(results):
    nan = _ok("bc", 0, math.nan, 0.0)
    unscored = _ok("bc", 1, None, 0.0)
    assert scores_by_task([*results, nan, unscored]) == {
        "breakout": {"more3s": [10.0, 20.0]},  # seed 0 first although given second
        "pong": {"dt": [7.0]},
    }
    assert scores_by_task([]) == {}


def test_table_per_task_with_finished_failed_and_not_run_arms(results):
    table = format_table(results, ARMS)
    assert table.index("### breakout") < table.index("### pong")  # tasks sorted
    breakout, pong = table.split("### pong")
    assert "Dataset `more3s/breakout/x-v0`; protocol: last checkpoint (step 8)." in breakout
    assert "Behaviour data (raw return): mean 5.0, best episode 9.0." in breakout
    row = re.search(r"^\| more3s \| 2 \| 15\.0 ± 5\.0 \| \[([\d.]+), ([\d.]+)\] \| 3\.0 \| s0: 2\.0, s1: 4\.0 \|$",
                    breakout, re.M)
    assert row, breakout
    lo, hi = float(row[1]), float(row[2])
    assert 10.0 <= lo <= 15.0 <= hi <= 20.0  # a percentile interval of the mean lies within the seeds
    assert "| dt | 0 | failed: RuntimeError: loss is NaN | | | |" in breakout
    assert "| pretrained | 0 | not run: needs LXMERT weights | | | |" in breakout
    assert "| bc |" not in table  # an arm with no cell at all has no row
    assert "Failed: dt seed 0: RuntimeError: loss is NaN" in breakout
    assert "not run" not in pong and "Failed" not in pong
    assert "| dt | 1 | 7.0 ± 0.0 | — | 1.5 | s0: 1.5 |" in pong  # one seed: no interval
    assert "Behaviour data (raw return): mean -20.0, best episode -18.0." in pong


def test_table_arm_rows_follow_the_given_arm_order(results):
    table = format_table(results, ("pretrained", "dt", "more3s"))
    breakout = table.split("### pong")[0]
    assert breakout.index("| pretrained |") < breakout.index("| dt |") < breakout.index("| more3s |")


def test_table_equal_seeds_and_long_messages():
    rows = [_ok("more3s", 0, 4.0, 1.0, best=None), _ok("more3s", 1, 4.0, 1.0, best=None),
            CellResult(arm="dt", task="breakout", seed=0, status="failed", message="x" * 300)]
    table = format_table(rows, ("more3s", "dt"))
    assert "| more3s | 2 | 4.0 ± 0.0 | [4.0, 4.0] | 1.0 | s0: 1.0, s1: 1.0 |" in table
    assert "best episode —." in table  # no best return recorded
    assert f"| dt | 0 | failed: {'x' * 120} | | | |" in table  # the row's message is cut at 120 characters
    assert f"Failed: dt seed 0: {'x' * 300}" in table  # the full message below


def test_table_of_a_task_without_a_finished_cell():
    rows = [CellResult(arm="dt", task="qbert", seed=0, status="not run", message="the grid has not reached it yet")]
    table = format_table(rows, ("dt",))
    assert "### qbert" in table and "| dt | 0 | not run: the grid has not reached it yet | | | |" in table
    assert "Dataset" not in table and "Behaviour data" not in table


def test_raw_by_seed_has_an_arm_per_row_and_a_task_per_column(results):
    extra = [_ok("more3s", 2, 30.0, 1234.5, task="pong", beh=-20.0, best=None)]
    table = format_raw_by_seed([*results, *extra], ("bc", "dt", "more3s", "pretrained"))
    assert table.splitlines() == [
        "| arm | breakout (data: mean 5.0, best 9.0) | pong (data: mean -20.0, best -18.0) |",
        "|---|---|---|",
        "| `dt` | — | s0: 1.5 |",  # breakout's dt cell failed: no number
        "| `more3s` | s0: 2.0, s1: 4.0 | s2: 1,234.5 |",  # seeds in order, whichever finished
    ]  # bc has no cell and pretrained did not run: no row
    assert format_raw_by_seed(results[2:4], ("dt", "pretrained")) == ""  # nothing finished: nothing to show


def test_plot_scores_writes_a_png(tmp_path, results):
    path = tmp_path / "scores.png"
    assert plot_scores(path, results, ARMS) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left beside it


def test_plot_scores_without_a_finished_cell_still_writes_a_png(tmp_path):
    path = tmp_path / "empty.png"
    plot_scores(path, [CellResult(arm="dt", task="pong", seed=0, status="failed")], ARMS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
