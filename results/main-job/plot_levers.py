"""Draws levers.png (the bottom-first design's levers, levers/) and levers-current-design.png (levers-current-design/:
the current design's levers and the %BC diagnostic) from the lever runs' evaluation tables (<arm>/eval-seed{2000,3000}.txt,
the sampled row at the best-episode target).
Run from the repo root: `.venv/bin/python results/main-job/plot_levers.py`."""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).parent
EPISODES = 16  # per evaluation seed
SAMPLED = re.compile(r"\|\s*sampled\s*\|[^|]*\|\s*([\d.]+) ± ([\d.]+)\s*\|")
P90 = 42.2  # the default data's raw 90th percentile (160 episodes: 42.0, 120: 42.0)
DESIGNS = {
    "levers": ("the bottom-first state design (training seed 0)", {
        "base": "default\n(80 ep., 1 head,\n1,500 steps)", "heads8": "8 heads", "heads8-lr6e-4": "8 heads,\nlr 6e-4",
        "steps3000": "3,000 steps", "data160": "160 episodes"}),
    "levers-current-design": ("the current state design", {
        "base": "default\n(seed 0)", "base-seed1": "default\n(seed 1)", "state-loss-0": "state MSE\nweight 0",
        "state-loss-0.1": "state MSE\nweight 0.1", "data-120-episodes": "120 episodes", "rtg-features-5": "RTG sin/cos\n(seed 0)",
        "rtg-features-5-seed1": "RTG sin/cos\n(seed 1)",
        "steps-2200": "2,200 steps,\n2 threads\n(seed 0)", "steps-2200-seed1": "2,200 steps,\n2 threads\n(seed 1)",
        "window-30": "window 30\n(seed 0)", "window-30-seed1": "window 30\n(seed 1)",
        "base-two-threads": "default,\n2 threads\n(seed 0)", "base-two-threads-seed1": "default,\n2 threads\n(seed 1)",
        "memory-drop-0.25": "memory drop\n0.25, 2 thr.\n(seed 0)",
        "memory-drop-0.25-seed1": "memory drop\n0.25, 2 thr.\n(seed 1)",
        "pbc10": "10 %BC\n(seed 0)", "pbc10-seed1": "10 %BC\n(seed 1)",
        "pbc25": "25 %BC\n(seed 0)", "pbc25-seed1": "25 %BC\n(seed 1)"}),
}


def draw(folder: str, title: str, arms: dict[str, str]) -> None:
    fig, ax = plt.subplots(figsize=(1.4 * len(arms) + 1, 4.2))
    for i, arm in enumerate(arms):
        for j, seed in enumerate((2000, 3000)):
            path = HERE / folder / arm / f"eval-seed{seed}.txt"
            if not path.exists():
                continue
            mean, std = map(float, SAMPLED.search(path.read_text()).groups())
            ax.errorbar(i + (j - 0.5) * 0.2, mean, yerr=std / np.sqrt(EPISODES), fmt="o", capsize=4,
                        color=f"C{j}", label=f"evaluation seed {seed}" if i == 0 else None)
    ax.axhline(P90, color="k", linestyle="--", label="data p90 (42.2)")
    ax.set_xticks(range(len(arms)), list(arms.values()), fontsize=8)
    ax.set(ylabel="raw return, best-episode target\n(mean ± standard error, 16 episodes)",
           title=f"levers on {title}, sampled actions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / f"{folder}.png", dpi=100)


for folder, (title, arms) in DESIGNS.items():
    draw(folder, title, arms)
