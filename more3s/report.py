"""The final report of a run: a score table (stdout) and one PNG (learning curve + scores).

Scores are reported honestly (what users of DT-style code ask for): the normalized
score of every RTG target as mean ± std over evaluation episodes, computed from RAW returns with
the constants table of more3s.envs (its source printed under the table), next to the dataset's own
behaviour returns; the checkpoint evaluated, any episode-length cap and where it came from, how the
actions were chosen (sampled rows with greedy rows from the same seeds beside them) and how many
*distinct* trajectories each row averages (a deterministic game played greedily replays one) are part of
the output. ``eval/`` rows logged during training (--eval-every) are drawn as a score-vs-step curve.
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
    "TargetResult", "EvalReport", "BehaviourStats", "FrameStrip", "behaviour_stats", "data_targets", "unique_targets",
    "format_table", "read_metrics", "plot_report", "save_report", "load_report", "summary_dict", "EVAL_FIELDS",
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
    best_return: float | None = None  # raw; None in files written before it was recorded
    p90_return: float | None = None


@dataclass
class TargetResult:
    target: float  # RTG target (RTG units: clipped rewards for Atari)
    returns: list[float]  # raw returns per episode
    normalized: list[float]  # normalized score per episode
    lengths: list[int]  # agent steps per episode
    train_returns: list[float] = field(default_factory=list)  # returns in RTG units
    actions: str = "greedy"  # how this row's actions were chosen: "sampled" (softmax) or "greedy"
    trajectory_digests: list[str] = field(default_factory=list)  # per episode: digest of its action sequence
    distinct_trajectories: int = 0  # distinct action sequences among the episodes (1 = one sample, whatever N)

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
    actions: str = "greedy"  # of ``targets``: "sampled" (softmax, DT's Atari protocol) or "greedy"
    processes: int = 1  # torchrun processes that shared the episodes
    greedy: list[TargetResult] = field(default_factory=list)  # greedy rows beside sampled ones, same seeds
    cap_source: str = ""  # where max_episode_steps came from (the dataset's provenance, or given)
    dtype: str = ""  # dtype of the rollout model step
    dataset: str = ""  # the training dataset and its provenance (who collected it, how)
    videos: list[dict[str, Any]] = field(default_factory=list)  # recorded episodes (more3s.video), under videos/
    video_note: str = ""  # why videos were asked for but not made (e.g. no offscreen rendering)
    reads_rtg: bool = True  # False: the policy ignores the target (behaviour cloning); rows name none
    temperature: float = 1.0  # of the sampled actions' softmax: 1 is DT's protocol, anything else a diagnostic


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
        mean_train_return=float(tr.mean()), best_return=float(raw.max()),
        p90_return=float(np.percentile(raw, 90)),
    )


def data_targets(stats: BehaviourStats) -> tuple[float, ...]:
    """For datasets without published targets, the best and 90th-percentile returns."""
    return unique_targets((stats.best_train_return, stats.p90_train_return))


def unique_targets(targets: Sequence[float]) -> tuple[float, ...]:
    """Targets in order, each once (equal up to float rounding counts as equal): every target is evaluated once."""
    out: list[float] = []
    for t in targets:
        if not any(math.isclose(float(t), u, rel_tol=1e-9, abs_tol=1e-9) for u in out):
            out.append(float(t))
    return tuple(out)


# --- table ---------------------------------------------------------------------------------------------
def format_table(report: EvalReport) -> str:
    """A plain-text table (fixed width; readable in logs and CI output)."""
    if not report.max_episode_steps:
        cap = "full game (the task's full protocol)"
    else:
        cap = f"capped at {report.max_episode_steps} agent steps per episode (NOT the full-game protocol)"
    if report.cap_source:
        cap += f"; {report.cap_source}"
    sampled = ("actions sampled from the policy's softmax (DT's Atari protocol)" if report.temperature == 1 else
               f"actions sampled from the policy's softmax at temperature {report.temperature:g} (a DIAGNOSTIC, "
               f"not DT's protocol, which samples at 1)")
    how = {"sampled": sampled, "greedy": "greedy actions"}.get(report.actions, f"{report.actions} actions")
    if report.greedy:
        how += ", greedy actions from the same seeds beside"
    lines = [
        f"Evaluation of {report.checkpoint} (step {report.step}) on {report.task}: "
        f"{report.episodes_per_target} episodes per target, engine={report.engine}, seeds={report.seeds}"
        + (f", model step in {report.dtype}" if report.dtype else ""),
        f"{how[0].upper()}{how[1:]}.",
        f"Episodes {cap}.",
        "",
        f"{'RTG target':>12} | {'actions':<7} | {'normalized score':>20} | {'raw return':>18} | {'length':>8} | "
        f"{'distinct':>9}",
        f"{'-' * 12}-+-{'-' * 7}-+-{'-' * 20}-+-{'-' * 18}-+-{'-' * 8}-+-{'-' * 9}",
    ]
    greedy = {g.target: g for g in report.greedy}
    for t in report.targets:
        for row in (t, greedy.get(t.target)):
            if row is None:
                continue
            raw = np.asarray(row.returns, dtype=np.float64)
            target = f"{row.target:>12.1f}" if report.reads_rtg else f"{'not read':>12}"
            lines.append(f"{target} | {row.actions:<7} | {row.mean:>9.1f} ± {row.std:<8.1f} | "
                         f"{raw.mean():>8.1f} ± {raw.std():<7.1f} | {np.mean(row.lengths):>8.0f} | "
                         f"{f'{row.distinct_trajectories} / {len(row.returns)}':>9}")
    if report.behaviour is not None:
        b = report.behaviour
        lines.append(f"{'dataset':>12} | {'':<7} | {b.mean_normalized:>9.1f} ± {b.std_normalized:<8.1f} | "
                     f"{b.mean_return:>8.1f} ± {b.std_return:<7.1f} | {'':>8} | {b.episodes:>9}")
    lines.append("")
    lines.append("distinct = distinct (action, reward) sequences among a row's episodes: 1 is one trajectory "
                 "replayed, not a sample.")
    if report.behaviour is not None:
        b = report.behaviour
        lines.append(f"Dataset behaviour: {b.episodes} episodes; return in RTG units: mean "
                     f"{b.mean_train_return:.1f}, p90 {b.p90_train_return:.1f}, "
                     f"best {b.best_train_return:.1f}"
                     + (f"; raw return: p90 {b.p90_return:.1f}, best {b.best_return:.1f}."
                        if b.p90_return is not None and b.best_return is not None else "."))
    if report.dataset:
        lines.append(f"Dataset: {report.dataset}.")
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
    d["greedy"] = [TargetResult(**t) for t in d.get("greedy", [])]
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


EVAL_FIELDS = ("eval/target", "eval/normalized_mean", "eval/normalized_std", "eval/return_mean",
               "eval/distinct", "eval/episodes")  # metrics.csv columns of the --eval-every rows


def plot_report(out_png: str | Path, metrics: dict[str, np.ndarray], report: EvalReport | None,
                title: str = "", strip: FrameStrip | None = None) -> Path:
    """Learning curve (loss terms vs step), score vs step when ``eval/`` rows were logged, final scores per target;
    with ``strip``, a row of frames under them (the best recorded evaluation episode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = metrics.get("eval/target") if metrics else None
    has_curve = evals is not None and np.isfinite(evals).any()
    n_panels, width = (3, 16) if has_curve else (2, 11)
    if strip is not None and strip.frames:
        fig = plt.figure(figsize=(width, 6.8))
        rows = fig.add_gridspec(2, 1, height_ratios=[4, 2.8])
        panels = rows[0].subgridspec(1, n_panels)
        axes = [fig.add_subplot(panels[0, i]) for i in range(n_panels)]
        _draw_strip(fig, rows[1], strip)
    else:
        fig, axes = plt.subplots(1, n_panels, figsize=(width, 4))
    ax_l, ax_s = axes[0], axes[-1]
    if metrics and "step" in metrics:
        for key, style in (("loss", "-"), ("action_loss", "--"), ("state_loss", ":")):
            if key in metrics and np.isfinite(metrics[key]).any():
                ok = np.isfinite(metrics[key])  # eval rows leave the loss cells empty
                ax_l.plot(metrics["step"][ok], metrics[key][ok], style, label=key)
        ax_l.set_xlabel("optimizer step")
        ax_l.set_ylabel("training loss")
        ax_l.set_yscale("log")
        ax_l.legend()
    ax_l.set_title("learning curve")
    if has_curve and evals is not None and metrics is not None:
        ax_c = axes[1]
        for target in np.unique(evals[np.isfinite(evals)]):
            rows = evals == target
            ax_c.errorbar(metrics["step"][rows], metrics["eval/normalized_mean"][rows],
                          yerr=metrics["eval/normalized_std"][rows], marker="o", capsize=3, label=f"RTG {target:g}")
        ax_c.set_xlabel("optimizer step")
        ax_c.set_ylabel("normalized score (mean ± std)")
        ax_c.set_title("score during training (--eval-every; curves only)")
        ax_c.legend()
    if report is not None and report.targets:
        def label(row: TargetResult) -> str:
            return f"RTG {row.target:g}" if report.reads_rtg else "no RTG"

        labels = [label(t) for t in report.targets]
        means = [t.mean for t in report.targets]
        stds = [t.std for t in report.targets]
        colors = ["tab:blue"] * len(report.targets)
        for g in report.greedy:
            labels.append(f"{label(g)}\ngreedy")
            means.append(g.mean)
            stds.append(g.std)
            colors.append("tab:orange")
        if report.behaviour is not None:
            labels.append("dataset")
            means.append(report.behaviour.mean_normalized)
            stds.append(report.behaviour.std_normalized)
            colors.append("tab:gray")
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


def _draw_strip(fig: Any, cell: Any, strip: FrameStrip) -> None:
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
    """Compact numbers for logs / TensorBoard: eval/<target>/normalized_mean etc. (greedy rows: greedy_*)."""
    out: dict[str, Any] = {}
    for prefix, rows in (("", report.targets), ("greedy_", report.greedy)):
        for t in rows:
            out[f"eval/target_{t.target:g}/{prefix}normalized_mean"] = t.mean
            out[f"eval/target_{t.target:g}/{prefix}normalized_std"] = t.std
            out[f"eval/target_{t.target:g}/{prefix}return_mean"] = float(np.mean(t.returns))
            out[f"eval/target_{t.target:g}/{prefix}distinct_trajectories"] = t.distinct_trajectories
    return out
