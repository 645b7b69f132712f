"""The grid's outputs: scores.csv (a row per cell), table.md (per task and arm), claims.md, scores.png."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import asdict, fields
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from more3s.atomic import atomic_path, atomic_write_text

from .cells import CellResult
from .claims import CONFIDENCE, EQUIVALENCE_MARGIN, ClaimResult

__all__ = ["write_scores_csv", "scores_by_task", "format_table", "format_raw_by_seed", "format_claims", "plot_scores"]


def write_scores_csv(path: Path, results: Sequence[CellResult]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[f.name for f in fields(CellResult)])
    w.writeheader()
    for r in results:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    atomic_write_text(path, buf.getvalue())


def scores_by_task(results: Sequence[CellResult]) -> dict[str, dict[str, list[float]]]:
    """scores[task][arm] = per-seed normalized scores of the finished cells (seed order)."""
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for r in sorted(results, key=lambda r: (r.task, r.arm, r.seed)):
        if r.status == "ok" and r.normalized_mean is not None and math.isfinite(r.normalized_mean):
            out[r.task].setdefault(r.arm, []).append(float(r.normalized_mean))
    return dict(out)


def _behaviour_cell(cells: Sequence[CellResult]) -> CellResult | None:
    """The first cell that recorded its task's behaviour data (every cell of a task reads the same data)."""
    return next((r for r in cells if r.behaviour_mean is not None), None)


def _mean_interval(x: np.ndarray) -> str:
    if x.size < 2:
        return "—"
    if np.ptp(x) == 0:
        return f"[{x[0]:.1f}, {x[0]:.1f}]"
    ci = stats.bootstrap((x,), np.mean, n_resamples=9999, confidence_level=CONFIDENCE, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval
    return f"[{ci.low:.1f}, {ci.high:.1f}]"


def format_table(results: Sequence[CellResult], arms: Sequence[str]) -> str:
    """Markdown: per task, each arm's normalized score (mean ± std over seeds, 95 % bootstrap interval of the
    mean), its raw return, and the behaviour data's mean and best raw return beside."""
    lines = []
    for task in sorted({r.task for r in results}):
        rows = [r for r in results if r.task == task]
        ok = [r for r in rows if r.status == "ok"]
        beh = _behaviour_cell(ok)
        lines += [f"### {task}", ""]
        if ok:
            lines.append(f"Dataset `{ok[0].dataset}`; protocol: {ok[0].protocol}.")
        if beh is not None:
            best = "—" if beh.behaviour_best is None else f"{beh.behaviour_best:.1f}"
            lines.append(f"Behaviour data (raw return): mean {beh.behaviour_mean:.1f}, best episode {best}.")
        lines += ["", "| arm | seeds | normalized score (mean ± std over seeds) | 95 % interval of the mean | "
                  "raw return (mean over seeds) | raw return per seed |", "|---|---|---|---|---|---|"]
        for arm in arms:
            mine = [r for r in ok if r.arm == arm]
            if not mine:
                other = next((r for r in rows if r.arm == arm), None)
                if other is not None:
                    lines.append(f"| {arm} | 0 | {other.status}: {other.message[:120]} | | | |")
                continue
            x = np.asarray([r.normalized_mean for r in mine], dtype=np.float64)
            raw = np.asarray([r.raw_mean for r in mine], dtype=np.float64)
            lines.append(f"| {arm} | {len(mine)} | {x.mean():.1f} ± {x.std():.1f} | {_mean_interval(x)} | "
                         f"{raw.mean():.1f} | {_per_seed(mine)} |")
        failed = [r for r in rows if r.status == "failed"]
        for r in failed:
            lines.append(f"\nFailed: {r.arm} seed {r.seed}: {r.message}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _per_seed(cells: Sequence[CellResult]) -> str:
    return ", ".join(f"s{r.seed}: {r.raw_mean:,.1f}" for r in sorted(cells, key=lambda r: r.seed))


def format_raw_by_seed(results: Sequence[CellResult], arms: Sequence[str]) -> str:
    """Markdown: one row per arm, one column per task, each finished seed's raw return (the view a reader
    compares with the paper's tables, which report raw Atari scores); the behaviour data's mean and best head
    each column."""
    ok = [r for r in results if r.status == "ok" and r.raw_mean is not None]
    tasks = sorted({r.task for r in ok})
    if not tasks:
        return ""
    heads = []
    for task in tasks:
        beh = _behaviour_cell([r for r in ok if r.task == task])
        if beh is None:
            heads.append(task)
        else:
            best = "" if beh.behaviour_best is None else f", best {beh.behaviour_best:,.1f}"
            heads.append(f"{task} (data: mean {beh.behaviour_mean:,.1f}{best})")
    lines = ["| arm | " + " | ".join(heads) + " |", "|---" * (len(tasks) + 1) + "|"]
    for arm in arms:
        row = [_per_seed([r for r in ok if r.arm == arm and r.task == task]) or "—" for task in tasks]
        if any(c != "—" for c in row):
            lines.append(f"| `{arm}` | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def format_claims(claims: Sequence[ClaimResult]) -> str:
    lines = ["| # | claim | verdict | evidence |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.number} | {c.claim} | **{c.verdict}** | {c.why} |")
    lines += ["", f"Test: the difference of mean normalized scores between arms, with a {CONFIDENCE:.0%} percentile "
              "bootstrap interval over training seeds (each arm's seeds resampled independently; over several tasks "
              "resampled within each task and the per-task differences averaged). Confirmed: the interval lies on "
              f"the claimed side of 0; refuted: on the other side; inconclusive: it contains 0. Claim 4 (little "
              f"difference) is confirmed when the interval lies within ±{EQUIVALENCE_MARGIN:g} normalized points."]
    return "\n".join(lines) + "\n"


def plot_scores(path: Path, results: Sequence[CellResult], arms: Sequence[str]) -> Path:
    """Per task one panel: arms as bars (mean over seeds), the seeds as dots, the behaviour data's mean dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = scores_by_task(results)
    tasks = sorted(scores) or ["(no finished cell)"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 3.2 * len(tasks)), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        present = [a for a in arms if a in scores.get(task, {})]
        for i, arm in enumerate(present):
            x = np.asarray(scores[task][arm])
            ax.bar(i, x.mean(), color=f"C{i % 10}", alpha=0.6)
            ax.scatter(np.full(x.size, i) + np.linspace(-0.15, 0.15, x.size), x, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(present)), present, rotation=45, ha="right", fontsize=8)
        ax.axhline(0, color="0.5", lw=0.8)
        beh = next((r.behaviour_mean for r in results if r.task == task and r.behaviour_mean is not None), None)
        if beh is not None:
            from more3s.envs import normalized_score

            ax.axhline(normalized_score(task.split("-", 1)[0], beh), color="k", ls="--", lw=1, label="behaviour data")
            ax.legend(fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("normalized score")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
