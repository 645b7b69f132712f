"""What tells the policy how closely to copy the tracker: its context's actions, or the return it is asked for?

The trained policy's probability of the tracker's action follows the episode it reads: teacher-forced on the
training data it is 0.40 on episodes whose behaviour agreed with the tracker on 21 % of the steps and 0.88 on those
that agreed on 99 % (``python -m more3s.agreement``). Two inputs can tell it which kind of episode it is in: the
previous actions in its context (ε-random ones are visible there) and the return-to-go. This reads every training
episode teacher-forced (its own states, memory carried: ``more3s.probe.teacher_forced_probs``) under
four inputs, crossing

* actions: the episode's own (as recorded) or the tracker's clean ones (replayed from the RAM), and
* RTG: the episode's own or the evaluation's schedule (the run's best-episode target, less the clipped reward each
  step of the episode earned, as a rollout counts it),

and reports the mean p(tracker action) over the steps, in bands of the behaviour's agreement with the tracker. The
states stay the episode's own (where its random actions moved the paddle), so neither counterfactual is a clean
episode: it asks which input the policy reads its ε from. The "evaluation's RTG" column in the best bands is closest
to the protocol's situation (the best target, with a few mistakes of the policy's own in context); "both" in those
bands is the ceiling: what the best target buys on the expert's own states with a clean context.

    .venv/bin/python results/main-job/context/context.py --runs seed0=RUN0 seed1=RUN1 seed2=RUN2

writes ``NAME.json`` beside this file (or in ``--out DIR``) for each run, then prints the tables and draws
``context.png`` there; ``--plot-only`` redraws from the json files. The levers in ``levers-seed0/`` are training
seed 0 with one flag changed each (``python -m more3s.train --seed 0 --no-eval-at-end FLAG``), measured with
``--out levers-seed0``; ``levers-seed0/levers.txt`` lists each one's ceiling (both inputs swapped, the episodes
whose behaviour agrees on 95 % or more) beside the default's.
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
BANDS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.85), (0.85, 0.95), (0.95, 1.01))
CONDITIONS = {  # json key -> label
    "own_actions/own_rtg": "as recorded",
    "own_actions/eval_rtg": "evaluation's RTG",
    "tracker_actions/own_rtg": "tracker's actions in context",
    "tracker_actions/eval_rtg": "both",
}


def measure(run: str) -> dict:
    from more3s.data import load_episodes
    from more3s.data.facts import load_step_infos
    from more3s.data.policies import replay_tracker
    from more3s.encoder import CacheConfig, build_or_load_cache, load_encoder
    from more3s.probe import teacher_forced_probs
    from more3s.run import load_run_model

    model, info, ckpt = load_run_model(run, "cpu")
    episodes = load_episodes(info.dataset, lazy=True)
    infos = load_step_infos(info.dataset, max_episodes=len(episodes))
    if len(episodes) != info.episodes:
        raise ValueError(f"{run} trained on {info.episodes} episodes, {info.dataset} has {len(episodes)}")
    cache = build_or_load_cache(episodes, load_encoder(info.encoder), info.task, info.prompt_set,
                                config=CacheConfig(progress=False))
    target = float(max(info.targets))
    rows = []
    for i, (ep, inf) in enumerate(zip(episodes, infos)):
        T = len(ep)
        want = replay_tracker(info.task, inf["ram"][:T])
        own = np.asarray(ep.actions)
        clipped = np.clip(np.asarray(ep.rewards, np.float64), -1, 1)
        schedule = target - np.concatenate([[0.0], np.cumsum(clipped)[:-1]])  # the rollout's RTG at each step
        row = {"episode": i, "return": float(ep.raw_return), "behaviour": float(np.mean(own == want))}
        for a_name, acts in (("own", own), ("tracker", want)):
            for r_name, rtg in (("own", np.asarray(ep.rtg)), ("eval", schedule)):
                p = teacher_forced_probs(model, ep, cache, i, model.config.window, actions=acts, rtg=rtg)
                row[f"{a_name}_actions/{r_name}_rtg"] = float(p[np.arange(T), want].mean())
        rows.append(row)
        print(f"episode {i}: behaviour {row['behaviour']:.3f} " + " ".join(
            f"{k} {v:.3f}" for k, v in row.items() if "/" in k), flush=True)
    return {"run": run, "step": ckpt.step, "target": target, "episodes": rows}


def _band_means(rep: dict, key: str) -> list[float]:
    """Mean over the episodes of each behaviour band (NaN for an empty band)."""
    eps = rep["episodes"]
    return [float(np.mean([e[key] for e in eps if lo <= e["behaviour"] < hi]))
            if any(lo <= e["behaviour"] < hi for e in eps) else float("nan") for lo, hi in BANDS]


def format_table(name: str, rep: dict) -> str:
    eps = rep["episodes"]
    lines = [f"{name}: {rep['run']} (step {rep['step']}): mean p(tracker action) over each episode's steps, "
             f"teacher-forced; evaluation's RTG = target {rep['target']:g} less the clipped rewards earned",
             "behaviour agreement | episodes | " + " | ".join(CONDITIONS.values())]
    means = {k: _band_means(rep, k) for k in CONDITIONS}
    for b, (lo, hi) in enumerate(BANDS):
        n = sum(lo <= e["behaviour"] < hi for e in eps)
        lines.append(f"{lo:.2f}-{min(hi, 1):.2f}           | {n:8d} | " + " | ".join(
            f"{means[k][b]:.3f}".rjust(len(v)) for k, v in CONDITIONS.items()))
    lines.append(f"all                 | {len(eps):8d} | " + " | ".join(
        f"{np.mean([e[k] for e in eps]):.3f}".rjust(len(v)) for k, v in CONDITIONS.items()))
    return "\n".join(lines)


def plot(reports: dict[str, dict], path: Path) -> None:
    """p(tracker action) per behaviour band, one line per input, one marker per training seed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = np.arange(len(BANDS))
    for (key, label), colour in zip(CONDITIONS.items(), ("C0", "C1", "C2", "C3")):
        per_seed = np.array([_band_means(rep, key) for rep in reports.values()])  # [seeds, bands]
        ax.plot(x, np.nanmean(per_seed, 0), "-", color=colour, label=label)
        for row in per_seed:
            ax.plot(x, row, ".", color=colour, alpha=0.6)
    ax.plot(x, [np.mean([e["behaviour"] for rep in reports.values() for e in rep["episodes"]
                         if lo <= e["behaviour"] < hi]) for lo, hi in BANDS], "k--", label="the behaviour itself")
    ax.set_xticks(x, [f"{lo:.2f}-{min(hi, 1):.2f}" for lo, hi in BANDS])
    ax.set_xlabel("the training episode's agreement with the tracker (its behaviour)")
    ax.set_ylabel("policy's mean p(tracker action), teacher-forced")
    ax.set_title(f"What tells the policy how closely to copy: {', '.join(reports)}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[], metavar="NAME=RUN")
    ap.add_argument("--plot-only", action="store_true", help="tables and figure from the json files in --out")
    ap.add_argument("--out", type=Path, default=HERE, help="directory of the json files and context.png")
    args = ap.parse_args(argv)
    if not args.plot_only:
        if not args.runs:
            ap.error("give --runs NAME=RUN ... or --plot-only")
        from more3s.atomic import atomic_write_text

        for spec in args.runs:
            name, _, run = spec.partition("=")
            if not run:
                ap.error(f"--runs takes NAME=RUN, got {spec!r}")
            atomic_write_text(args.out / f"{name}.json", json.dumps(measure(run), indent=1) + "\n")
    reports = {f.stem: json.loads(f.read_text()) for f in sorted(args.out.glob("*.json"))}
    if not reports:
        raise SystemExit(f"no json files in {args.out}")
    print("\n\n".join(format_table(n, r) for n, r in reports.items()))
    plot(reports, args.out / "context.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
