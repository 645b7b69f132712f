"""The final report of a run: a score table (stdout) and one PNG (learning curve + scores).

Scores are reported honestly (DESIGN §6, what users of DT-style code ask for): the normalized
score of every RTG target as mean ± std over evaluation episodes, computed from RAW returns with
the constants table of more3s.envs (its source printed under the table), next to the dataset's own
behaviour returns; the checkpoint evaluated and any episode-length cap are part of the output.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from more3s.atomic import atomic_path, atomic_write_text

__all__ = [
    "TargetResult", "EvalReport", "BehaviourStats", "FrameStrip", "behaviour_stats", "data_targets",
    "format_table", "read_metrics", "plot_report", "save_report", "load_report", "summary_dict",
]


@dataclass
class BehaviourStats:
    """The dataset's own returns: what the trained policy is compared against."""

    episodes: int
    mean_return: float  # raw return
    std_return: float
    mean_normalized: float
    std_normalized: float
    best_train_return: float  # in RTG units (clipped rewards for Atari)
    p90_train_return: float
    mean_train_return: float


@dataclass
class TargetResult:
    target: float  # RTG target (RTG units: clipped rewards for Atari)
    returns: list[float]  # raw returns per episode
    normalized: list[float]  # normalized score per episode
    lengths: list[int]  # agent steps per episode
    train_returns: list[float] = field(default_factory=list)  # returns in RTG units

    @property
    def mean(self) -> float:
        return float(np.mean(self.normalized)) if self.normalized else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.normalized)) if self.normalized else math.nan


@dataclass
class EvalReport:
    task: str
    checkpoint: str
    step: int
    engine: str
    episodes_per_target: int
    max_episode_steps: int | None  # None = full-game protocol
    seeds: list[int]
    targets: list[TargetResult]
    behaviour: BehaviourStats | None = None
    score_source: str = ""
    targets_source: str = ""
    wall_s: float = 0.0
    steps_per_s: float = 0.0
    actions: str = "greedy"  # "sampled" (softmax, DT's Atari protocol) or "greedy"
    processes: int = 1  # torchrun processes that shared the episodes
    videos: list[dict[str, Any]] = field(default_factory=list)  # recorded episodes (more3s.video), under videos/
    video_note: str = ""  # why videos were asked for but not made (e.g. no offscreen rendering)


@dataclass
class FrameStrip:
    """Frames of one episode for the bottom row of report.png, each with a label (its action's words)."""

    frames: list[np.ndarray]  # [H, W, 3] uint8 each
    labels: list[str]
    title: str = ""


def behaviour_stats(task: str, raw_returns: Sequence[float],
                    train_returns: Sequence[float]) -> BehaviourStats:
    """Mean ± std of the dataset's raw and normalized returns, plus its best / p90 RTG-unit returns."""
    from more3s.envs import normalized_score

    raw = np.asarray(raw_returns, dtype=np.float64)
    tr = np.asarray(train_returns, dtype=np.float64)
    if raw.size == 0:
        raise ValueError("behaviour_stats: the dataset has no episodes")
    norm = np.asarray(normalized_score(task, raw), dtype=np.float64).reshape(-1)
    return BehaviourStats(
        episodes=int(raw.size), mean_return=float(raw.mean()), std_return=float(raw.std()),
        mean_normalized=float(norm.mean()), std_normalized=float(norm.std()),
        best_train_return=float(tr.max()), p90_train_return=float(np.percentile(tr, 90)),
        mean_train_return=float(tr.mean()),
    )


def data_targets(stats: BehaviourStats) -> tuple[float, ...]:
    """DESIGN §4: for datasets without published targets, the best and 90th-percentile returns."""
    best, p90 = stats.best_train_return, stats.p90_train_return
    return (best,) if math.isclose(best, p90) else (best, p90)


# --- table ---------------------------------------------------------------------------------------------
def format_table(report: EvalReport) -> str:
    """A plain-text table (fixed width; readable in logs and CI output)."""
    cap = ("full game (ALE protocol)" if not report.max_episode_steps
           else f"capped at {report.max_episode_steps} agent steps per episode (NOT the full-game protocol)")
    lines = [
        f"Evaluation of {report.checkpoint} (step {report.step}) on {report.task}: "
        f"{report.episodes_per_target} episodes per target, engine={report.engine}, seeds={report.seeds}, "
        f"{report.actions} actions",
        f"Episodes {cap}.",
        "",
        f"{'RTG target':>12} | {'normalized score':>20} | {'raw return':>18} | {'length':>8}",
        f"{'-' * 12}-+-{'-' * 20}-+-{'-' * 18}-+-{'-' * 8}",
    ]
    for t in report.targets:
        raw = np.asarray(t.returns, dtype=np.float64)
        lines.append(f"{t.target:>12.1f} | {t.mean:>9.1f} ± {t.std:<8.1f} | "
                     f"{raw.mean():>8.1f} ± {raw.std():<7.1f} | {np.mean(t.lengths):>8.0f}")
    if report.behaviour is not None:
        b = report.behaviour
        lines.append(f"{'dataset':>12} | {b.mean_normalized:>9.1f} ± {b.std_normalized:<8.1f} | "
                     f"{b.mean_return:>8.1f} ± {b.std_return:<7.1f} | {'':>8}")
        lines.append("")
        lines.append(f"Dataset behaviour: {b.episodes} episodes; return in RTG units: mean "
                     f"{b.mean_train_return:.1f}, p90 {b.p90_train_return:.1f}, "
                     f"best {b.best_train_return:.1f}.")
    if report.targets_source:
        lines.append(f"RTG targets: {report.targets_source}.")
    if report.score_source:
        lines.append(f"Normalized score = 100 * (raw - random) / (reference - random); "
                     f"constants: {report.score_source}.")
    if report.wall_s:
        procs = f" on {report.processes} processes" if report.processes > 1 else ""
        lines.append(f"Evaluation took {report.wall_s:.1f} s{procs} ({report.steps_per_s:.0f} env steps/s).")
    return "\n".join(lines)


def save_report(report: EvalReport, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(asdict(report), indent=2) + "\n")


def load_report(path: str | Path) -> EvalReport:
    d = json.loads(Path(path).read_text())
    d["targets"] = [TargetResult(**t) for t in d["targets"]]
    if d.get("behaviour") is not None:
        d["behaviour"] = BehaviourStats(**d["behaviour"])
    return EvalReport(**d)


# --- plot ------------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """The metrics CSV as columns (float arrays; empty cells are NaN)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    cols = {}
    for key in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]))
            except (TypeError, ValueError):
                vals.append(math.nan)
        cols[key] = np.asarray(vals)
    return cols


def plot_report(out_png: str | Path, metrics: dict[str, np.ndarray], report: EvalReport | None,
                title: str = "", strip: FrameStrip | None = None) -> Path:
    """Learning curve (loss terms vs step) on the left, scores per target vs dataset on the right; with
    ``strip``, a row of frames under them (the best recorded evaluation episode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if strip is not None and strip.frames:
        fig = plt.figure(figsize=(11, 6.8))
        rows = fig.add_gridspec(2, 1, height_ratios=[4, 2.8])
        ax_l, ax_s = (fig.add_subplot(g) for g in rows[0].subgridspec(1, 2))
        _draw_strip(fig, rows[1], strip)
    else:
        fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(11, 4))
    if metrics and "step" in metrics:
        for key, style in (("loss", "-"), ("action_loss", "--"), ("state_loss", ":")):
            if key in metrics and np.isfinite(metrics[key]).any():
                ax_l.plot(metrics["step"], metrics[key], style, label=key)
        ax_l.set_xlabel("optimizer step")
        ax_l.set_ylabel("training loss")
        ax_l.set_yscale("log")
        ax_l.legend()
    ax_l.set_title("learning curve")
    if report is not None and report.targets:
        labels = [f"RTG {t.target:g}" for t in report.targets]
        means = [t.mean for t in report.targets]
        stds = [t.std for t in report.targets]
        if report.behaviour is not None:
            labels.append("dataset")
            means.append(report.behaviour.mean_normalized)
            stds.append(report.behaviour.std_normalized)
        colors = ["tab:blue"] * len(report.targets) + (["tab:gray"] if report.behaviour else [])
        ax_s.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=4)
        ax_s.set_xticks(range(len(labels)), labels)
        ax_s.axhline(0.0, color="k", lw=0.5)
        ax_s.set_ylabel("normalized score (mean ± std)")
        cap = "full game" if not report.max_episode_steps else f"<= {report.max_episode_steps} steps"
        ax_s.set_title(f"{report.task}, step {report.step}, {cap}")
    else:
        ax_s.set_title("no evaluation")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out_png


def _draw_strip(fig, cell, strip: FrameStrip) -> None:
    """The frames side by side in ``cell`` (a gridspec cell), each titled with its wrapped label."""
    import textwrap

    sub = cell.subgridspec(1, len(strip.frames), wspace=0.05)
    for i, (frame, label) in enumerate(zip(strip.frames, strip.labels)):
        ax = fig.add_subplot(sub[i])
        ax.imshow(frame, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(textwrap.fill(label, 24), fontsize=6.5)
    if strip.title:
        fig.text(0.5, 0.01, strip.title, ha="center", va="bottom", fontsize=8)


def summary_dict(report: EvalReport) -> dict[str, Any]:
    """Compact numbers for logs / TensorBoard: eval/<target>/normalized_mean etc."""
    out: dict[str, Any] = {}
    for t in report.targets:
        out[f"eval/target_{t.target:g}/normalized_mean"] = t.mean
        out[f"eval/target_{t.target:g}/normalized_std"] = t.std
        out[f"eval/target_{t.target:g}/return_mean"] = float(np.mean(t.returns))
    return out
