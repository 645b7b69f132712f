"""A run's training curves: metrics.csv (one row per logged step, ``eval/`` rows for --eval-every) and
optional TensorBoard scalars, truncated back to the checkpoint's step when a run resumes."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from more3s.atomic import atomic_write_text
from more3s.report import EVAL_FIELDS, EvalReport, summary_dict
from more3s.run import RunPaths

__all__ = ["METRIC_FIELDS", "MetricsLog"]

METRIC_FIELDS = ("step", "loss", "action_loss", "state_loss", "action_acc", "temperature", "lr",
                 "grad_norm", "samples_per_s", "elapsed_s", *EVAL_FIELDS)


class MetricsLog:
    """metrics.csv (append, flushed per row) + optional TensorBoard; truncated to a step on resume."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None):
        paths = RunPaths(Path(run_dir))
        self.path = paths.metrics
        if resume_step is not None and self.path.is_file():
            # Rows written after the checkpoint by the killed run are replayed by this one; a row the kill
            # cut short (no newline yet, or missing fields) is dropped, not parsed.
            text = self.path.read_text()
            whole = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            rows = [r for r in csv.DictReader(whole.splitlines())
                    if (r.get("step") or "").isdigit() and None not in r.values() and int(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif not self.path.is_file():
            self._rewrite([])
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=METRIC_FIELDS)
        self.tb: Any = None  # a torch.utils.tensorboard.SummaryWriter
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(paths.tensorboard), purge_step=resume_step + 1 if resume_step else None)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def write(self, row: Mapping[str, float | None]) -> None:
        self._w.writerow({k: (repr(float(v)) if k != "step" else int(v)) if v is not None else ""
                          for k, v in row.items() if k in METRIC_FIELDS})
        self._f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(f"train/{k}", float(v), global_step=int(row["step"] or 0))

    def write_eval(self, report: EvalReport) -> None:
        """One ``eval/`` row per target of an --eval-every evaluation (TensorBoard: eval/target_<R>/...)."""
        for t in report.targets:
            self._w.writerow({"step": int(report.step), "eval/target": repr(float(t.target)),
                              "eval/normalized_mean": repr(t.mean), "eval/normalized_std": repr(t.std),
                              "eval/return_mean": repr(float(np.mean(t.returns))),
                              "eval/distinct": t.distinct_trajectories, "eval/episodes": len(t.returns)})
        self._f.flush()
        if self.tb is not None:
            for k, v in summary_dict(report).items():
                self.tb.add_scalar(k, float(v), global_step=int(report.step))

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()
