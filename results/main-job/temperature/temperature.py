"""The softmax-temperature diagnostic: how the main job's weights play when they hedge less (or more).

DT's protocol samples actions at temperature 1, and the reported scores are that. This asks what the same weights
do at other temperatures, on the validation seeds (2000, 3000; never the reported 1000), 16 sampled episodes each
at the best-episode target (the run's largest, from run.json). Resumable: every (run, temperature, seed) cell is written to scores.json when it ends.

    .venv/bin/python results/main-job/temperature/temperature.py --runs seed0=RUN0 seed1=RUN1 seed2=RUN2

then draws temperature.png and prints the table. ``--plot-only`` redraws from scores.json.
"""

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).parent
SCORES = HERE / "scores.json"


def _run_cells(runs: dict[str, str], temperatures: list[float], seeds: list[int]) -> dict:
    from more3s.atomic import atomic_write_text
    from more3s.evaluate import evaluate_run
    from more3s.run import RunInfo

    scores = json.loads(SCORES.read_text()) if SCORES.is_file() else {}
    for name, run in runs.items():
        info = RunInfo.read(run)
        target = max(info.targets)  # the data's best-episode return, as the protocol's primary target
        for t in temperatures:
            for seed in seeds:
                key = f"{name}/T{t:g}/eval{seed}"
                if key in scores:
                    continue
                rep = evaluate_run(run, episodes=16, targets=(target,), seeds=(seed,), greedy=False, temperature=t)
                row = rep.targets[0]
                scores[key] = {"run": name, "temperature": t, "eval_seed": seed, "target": row.target,
                               "returns": row.returns, "lengths": row.lengths,
                               "distinct": row.distinct_trajectories, "checkpoint": rep.checkpoint,
                               "p90_return": info.behaviour.p90_return}
                r = np.asarray(row.returns, float)
                print(f"{key}: {r.mean():.1f} ± {r.std():.1f}", flush=True)
                atomic_write_text(SCORES, json.dumps(scores, indent=1) + "\n")
    return scores


def _cells(scores: dict, run: str, t: float) -> list[dict]:
    """One run's cells at temperature ``t``, by evaluation seed."""
    return sorted((c for c in scores.values() if c["run"] == run and c["temperature"] == t),
                  key=lambda c: c["eval_seed"])


def _returns(scores: dict, run: str, t: float) -> np.ndarray:
    cells = _cells(scores, run, t)
    return np.concatenate([c["returns"] for c in cells]) if cells else np.array([])


def _table_and_plot(scores: dict) -> str:
    """A markdown table (per training seed: the two evaluation seeds' means, then the 32 episodes'; the mean and the
    median over all runs' episodes) and temperature.png (mean ± s.e. and median per training seed)."""
    p90 = next(iter(scores.values()))["p90_return"]
    runs = sorted({c["run"] for c in scores.values()})
    temps = sorted({c["temperature"] for c in scores.values()}, reverse=True)
    lines = ["| temperature | " + " | ".join(f"{r}: eval seed 2000 / 3000 → 32 episodes" for r in runs)
             + " | mean | median |", "|---|" + "---|" * (len(runs) + 2)]
    for t in temps:
        cells, everything = [], []
        for run in runs:
            per = [np.mean(c["returns"]) for c in _cells(scores, run, t)]
            both = _returns(scores, run, t)
            everything.append(both)
            cells.append(" / ".join(f"{m:.1f}" for m in per) + (f" → {both.mean():.1f}" if both.size else ""))
        total = np.concatenate(everything)
        lines.append(f"| {t:g}{' (DT protocol)' if t == 1 else ''} | " + " | ".join(cells)
                     + f" | **{total.mean():.1f}** | {np.median(total):.1f} |")
    fig, (ax_mean, ax_median) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for j, run in enumerate(runs):
        rs = [_returns(scores, run, t) for t in temps]
        x = np.asarray(temps) + (j - 1) * 0.012
        ax_mean.errorbar(x, [r.mean() for r in rs], yerr=[r.std(ddof=1) / np.sqrt(r.size) for r in rs], marker="o",
                         capsize=3, label=f"training {run}")
        ax_median.plot(x, [np.median(r) for r in rs], marker="o", label=f"training {run}")
    for ax, what in ((ax_mean, "mean ± s.e. (the protocol's statistic)"), (ax_median, "median")):
        ax.axhline(p90, color="k", linestyle="--", label=f"data p90 ({p90:.1f})")
        ax.set_xlabel("softmax temperature (1 = DT's protocol)")
        ax.set_title(f"{what}, 32 episodes per point", fontsize=9)
        ax.invert_xaxis()
    ax_mean.set_ylabel("raw return at the best-episode target")
    ax_median.legend(fontsize=8)
    fig.suptitle("The same weights sampled at other temperatures (validation seeds 2000, 3000)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "temperature.png", dpi=120)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="*", default=[], help="NAME=RUN_DIR pairs (the main job's training seeds)")
    ap.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.75, 0.5, 0.25])
    ap.add_argument("--seeds", nargs="+", type=int, default=[2000, 3000])
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.plot_only:
        scores = json.loads(SCORES.read_text())
    else:
        runs = dict(r.split("=", 1) for r in args.runs)
        if not runs:
            ap.error("--runs NAME=RUN_DIR ... (or --plot-only)")
        scores = _run_cells(runs, args.temperatures, args.seeds)
    print(_table_and_plot(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
