"""Draws validation.png from the validation runs' metrics.csv and eval.json (run from the repo root:
`.venv/bin/python results/main-job/plot_validation.py`)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).parent
RUNS = {"v0-default": "v1 data (40 ep.), memory 20", "v2-mem60": "v1 data, memory 60",
        "v1-data80": "v2 data (80 ep.), memory 20 — the default", "v3-data80-mem60": "v2 data, memory 60",
        "v4-data80-3000": "v2 data, 3,000 steps"}

fig, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4.2))
for i, (run, label) in enumerate(RUNS.items()):
    rows = np.genfromtxt(HERE / "validation" / run / "metrics.csv", delimiter=",", names=True)
    acc = np.convolve(rows["action_acc"], np.ones(10) / 10, mode="valid")  # 100-step running mean
    curve.plot(rows["step"][9:], acc, label=label)
    ev = json.loads((HERE / "validation" / run / "eval.json").read_text())
    best = ev["targets"][0]
    bars.bar(i, np.mean(best["returns"]), yerr=np.std(best["returns"]), capsize=4)
    p90 = ev["behaviour"]["p90_return"]
    bars.hlines(p90, i - 0.4, i + 0.4, colors="k", linestyles="--")
curve.set(xlabel="optimizer step", ylabel="training action accuracy (100-step mean)",
          title="learning curves (training seed 0)")
curve.legend(fontsize=8)
bars.set_xticks(range(len(RUNS)), [label.split(" — ")[0].replace(", ", "\n") for label in RUNS.values()], fontsize=8)
bars.set(ylabel="raw return, best-episode target (mean ± std)",
         title="16 sampled episodes, evaluation seed 2000; dashed: data p90")
fig.tight_layout()
fig.savefig(HERE / "validation.png", dpi=100)
