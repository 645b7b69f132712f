"""Draws designs.png: the main job's score per state design and training seed (the protocol's 16 sampled episodes at
the best-episode target, evaluation seed 1000; mean ± one standard error), against the data's 90th percentile. Reads
each design's seed<S>/eval.json; the last column is the current design as `make train` now trains it (every core). Run from the repo root: `.venv/bin/python results/main-job/plot_designs.py`."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).parent
DESIGNS = {  # folder: label, oldest first
    "previous-design": "16 slots\n(size, colour)",
    "bottom-first-design": "8 slots,\n3 lowest first",
    "largest-first-design": "8 slots,\n4 lowest largest first",
    "colour-order-design": "8 slots,\n4 lowest by colour",
    ".": "the same, wall feet\nkeep their box (current)",
    "two-training-threads": "current, trained\non two threads",
}
SEEDS = (0, 1, 2)

fig, ax = plt.subplots(figsize=(9, 4.2))
p90 = None
for i, (folder, label) in enumerate(DESIGNS.items()):
    for j, seed in enumerate(SEEDS):
        report = json.loads((HERE / folder / f"seed{seed}" / "eval.json").read_text())
        best = max(report["targets"], key=lambda t: t["target"])  # the best-episode target
        returns = np.asarray(best["returns"], dtype=float)
        p90 = report["behaviour"]["p90_return"]
        ax.errorbar(i + (j - 1) * 0.18, returns.mean(), yerr=returns.std(ddof=1) / np.sqrt(len(returns)), fmt="o",
                    capsize=4, color=f"C{j}", label=f"training seed {seed}" if i == 0 else None)
ax.axhline(p90, color="k", linestyle="--", label=f"data p90 ({p90:.1f})")
ax.set_xticks(range(len(DESIGNS)), list(DESIGNS.values()), fontsize=8)
ax.set_ylabel("raw return, 16 sampled episodes (± s.e.)")
ax.set_title("Breakout main job by state design (best-episode target, evaluation seed 1000)", fontsize=10)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(HERE / "designs.png", dpi=120)
print(f"wrote {HERE / 'designs.png'}")
