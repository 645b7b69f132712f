"""From tests/review/test_regressions.py (dissolved). BELONGS IN the mirrored test file of more3s/report.py
(today tests/train/test_report.py): move this test there at merge and delete this file."""

import numpy as np
import pytest


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
