"""Report: behaviour statistics, data-derived targets, the table and the PNG."""

import imageio.v3 as iio
import numpy as np
import pytest

from more3s.envs import normalized_score
from more3s.report import (EvalReport, TargetResult, behaviour_stats, data_targets, format_table,
                           load_report, plot_report, read_metrics, save_report)


def test_behaviour_stats_and_targets():
    raw = [1.0, 4.0, 11.0, 30.0]
    train = [1.0, 2.0, 5.0, 9.0]
    b = behaviour_stats("breakout", raw, train)
    assert b.episodes == 4 and b.mean_return == pytest.approx(11.5)
    assert b.mean_normalized == pytest.approx(np.mean(normalized_score("breakout", raw)))
    assert b.best_train_return == 9.0 and b.p90_train_return == pytest.approx(np.percentile(train, 90))
    assert data_targets(b) == (9.0, pytest.approx(np.percentile(train, 90)))
    assert b.best_return == 30.0 and b.p90_return == pytest.approx(np.percentile(raw, 90))  # raw, beside
    same = behaviour_stats("breakout", [2.0, 2.0], [2.0, 2.0])
    assert data_targets(same) == (2.0,)
    with pytest.raises(ValueError, match="no episodes"):
        behaviour_stats("breakout", [], [])


def _report(behaviour):
    t = TargetResult(target=9.0, returns=[3.0, 5.0], normalized=list(normalized_score("breakout", [3.0, 5.0])),
                     lengths=[100, 120])
    return EvalReport(task="breakout", checkpoint="runs/x/checkpoints/step_00000010", step=10, engine="ring",
                      episodes_per_target=2, max_episode_steps=500, seeds=[1], targets=[t],
                      behaviour=behaviour, score_source="DT table", targets_source="from the data")


def test_table_names_checkpoint_cap_and_scores(tmp_path):
    rep = _report(behaviour_stats("breakout", [1.0, 4.0], [1.0, 3.0]))
    text = format_table(rep)
    assert "step_00000010" in text and "capped at 500" in text and "NOT the full-game" in text
    mean = np.mean(normalized_score("breakout", [3.0, 5.0]))
    assert f"{mean:.1f}" in text and "dataset" in text and "DT table" in text
    rep.max_episode_steps = None
    assert "full game" in format_table(rep)
    save_report(rep, tmp_path / "eval.json")
    back = load_report(tmp_path / "eval.json")
    assert back.targets[0].mean == pytest.approx(rep.targets[0].mean)
    assert back.behaviour == rep.behaviour


def test_plot_writes_png(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("step,loss,action_loss,state_loss\n1,2.0,1.5,0.5\n2,1.5,1.0,0.5\n3,1.2,,0.4\n")
    m = read_metrics(csv)
    assert list(m["step"]) == [1, 2, 3] and np.isnan(m["action_loss"][2])
    out = plot_report(tmp_path / "r.png", m, _report(None), title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_greedy_beside_and_distinct_trajectories(tmp_path):
    from dataclasses import replace

    rep = _report(None)
    rep.actions = "sampled"
    rep.targets[0].actions, rep.targets[0].distinct_trajectories = "sampled", 2
    rep.greedy = [replace(rep.targets[0], actions="greedy", returns=[8.0, 8.0], distinct_trajectories=1,
                          normalized=list(normalized_score("breakout", [8.0, 8.0])))]
    rep.cap_source = "the collection cap more3s recorded for this dataset (500 agent steps)"
    text = format_table(rep)
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("9.0")]
    assert len(lines) == 2 and "sampled" in lines[0] and "2 / 2" in lines[0]
    assert "greedy" in lines[1] and "1 / 2" in lines[1] and "8.0 ± 0.0" in lines[1]
    assert "softmax" in text and "same seeds" in text and "collection cap" in text
    save_report(rep, tmp_path / "eval.json")
    assert load_report(tmp_path / "eval.json").greedy[0].distinct_trajectories == 1


def test_plot_draws_eval_rows_as_a_curve(tmp_path, monkeypatch):
    import matplotlib.axes

    csv = tmp_path / "metrics.csv"
    csv.write_text("step,loss,eval/target,eval/normalized_mean,eval/normalized_std\n"
                   "1,2.0,,,\n2,1.5,,,\n2,,9.0,10.0,2.0\n2,,8.0,5.0,1.0\n4,1.0,,,\n4,,9.0,12.0,1.0\n4,,8.0,6.0,1.0\n")
    curves = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, **kw: curves.append((list(x), list(y))) or real(self, x, y, **kw))
    plot_report(tmp_path / "r.png", read_metrics(csv), _report(None))
    curves = [c for c in curves if len(c[0]) == 2]  # (the final-score bars draw error bars too)
    assert sorted(curves) == [([2, 4], [5.0, 6.0]), ([2, 4], [10.0, 12.0])]


def test_report_png_gains_a_frame_strip(tmp_path):
    from more3s.report import FrameStrip, plot_report

    frames = [np.full((60, 40, 3), 40 * i, np.uint8) for i in range(5)]
    plain = iio.imread(plot_report(tmp_path / "plain.png", {}, None))
    strip = FrameStrip(frames, [f"t={i}: move the paddle left" for i in range(5)], title="best recorded episode")
    with_strip = iio.imread(plot_report(tmp_path / "strip.png", {}, None, strip=strip))
    assert with_strip.shape[1] == plain.shape[1] and with_strip.shape[0] > plain.shape[0] * 1.5
    empty = iio.imread(plot_report(tmp_path / "empty.png", {}, None, strip=FrameStrip([], [])))
    assert empty.shape == plain.shape  # nothing recorded: the plain report


def test_plot_report_closes_its_figure_when_saving_fails(tmp_path, monkeypatch):
    """A failed savefig (disk full, bad path) must not leave the figure open in pyplot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from more3s.report import plot_report

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    plt.close("all")
    monkeypatch.setattr(Figure, "savefig", boom)
    metrics = {"step": np.array([1.0, 2.0]), "loss": np.array([1.0, 0.5])}
    with pytest.raises(OSError, match="disk full"):
        plot_report(tmp_path / "report.png", metrics, None)
    assert plt.get_fignums() == [], "the figure stayed open after savefig raised"
    assert not (tmp_path / "report.png").exists()
