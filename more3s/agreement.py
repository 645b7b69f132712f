"""How closely a trained policy plays as the scripted expert of its data: ``python -m more3s.agreement --run R``.

A ``mixed`` Atari dataset is the scripted tracker with a share epsilon of random actions per episode, so its good
episodes are the tracker's: a policy beats them only by playing as the tracker plays. The tracker's action is a
function of the console RAM (``more3s.data.policies.replay_tracker``), so it can be read off at every step:

* **in play** — the policy plays the evaluation protocol (sampled actions, the run's primary target, its cap,
  the ring engine); at each step the tracker's action is read from the console, and the report gives how often the
  sampled action is the tracker's, how often the greedy one would have been, and the probability the policy gives
  it, in bands of the tracker's error (how far the paddle is from where the tracker wants it);
* **on the data** — per training episode, the behaviour's agreement with the tracker (1 - 3/4 epsilon on average)
  beside the model's, reading the episode teacher-forced (memory carried, as ``more3s.probe --runs`` reads it).

A policy whose greedy action leaves the tracker's on clear-cut steps cannot reach the tracker's returns; one
whose probability of it stays near the data's average agreement copies the mixture, not the expert.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AgreementConfig", "ERROR_BANDS", "in_play_agreement", "data_agreement", "format_agreement", "main"]

# Bands of the tracker's error |d| in pixels (paddle to where the tracker wants it); inside the dead zone it holds.
ERROR_BANDS: tuple[tuple[str, float, float], ...] = (
    ("|d| <= dead zone", 0.0, 1.0), ("1-2x dead zone", 1.0, 2.0), ("2-4x dead zone", 2.0, 4.0),
    ("> 4x dead zone", 4.0, np.inf))
NO_BALL = "no ball in play"


@dataclass
class AgreementConfig:
    run: Path
    """A training run directory (more3s.train) of an Atari task with a scripted tracker."""
    episodes: int = 16
    seed: int = 1000
    target: float | None = None
    """RTG target; None = the run's primary target (its data's best episode)."""
    temperature: float = 1.0
    """Softmax temperature of the sampled actions (and of p(tracker action)): 1 is DT's protocol, others a
    diagnostic (more3s.evaluate --temperature)."""
    num_envs: int = 8
    data: bool = True
    """Also read every training episode teacher-forced (the 'on the data' table)."""
    cache_dir: Path | None = None
    """Embedding cache root for the 'on the data' table (None: more3s.encoder.cache's default)."""
    json: Path | None = None


def _band(d: float) -> str:
    """The ERROR_BANDS name of an error ``d`` in dead zones."""
    return next(name for name, lo, hi in ERROR_BANDS if lo < d <= hi or (lo == 0 and d <= hi))


class _TrackerReader:
    """Rollout recorder: the tracker's action and error before each step, and the policy's choice after it."""

    def __init__(self, task: str, num_envs: int, quota: np.ndarray, temperature: float = 1.0):
        from more3s.data.policies import TRACKERS

        self.temperature = temperature
        self.trackers = [TRACKERS[task]() for _ in range(num_envs)]
        self.quota, self.done = quota, np.zeros(num_envs, np.int64)
        self.rows: list[tuple[str, int, int, int, float]] = []  # (band, tracker a, sampled a, greedy a, p(tracker a))

    def frames(self, venv: Any, obs: Any, env_ids: np.ndarray) -> list[tuple[int, str]]:
        from more3s.envs.make import atari_ram

        out = []
        for tracker, env in zip(self.trackers, venv.envs):
            ram = atari_ram(env)
            pos = tracker.positions(ram)
            band = NO_BALL if pos is None else _band(abs(tracker.track.peek(*pos)) / tracker.track.dead_zone)
            out.append((tracker.act_on_ram(ram), band))
        return out

    def record(self, frames: list[tuple[int, str]], env_ids: np.ndarray, action: np.ndarray, logits: Any,
               reward: np.ndarray, rtg: np.ndarray, timestep: np.ndarray, done: np.ndarray) -> None:
        from more3s.rollout.engine import sampling_probs

        probs = sampling_probs(logits, self.temperature).cpu().numpy()
        for i, (want, band) in enumerate(frames):
            if self.done[i] < self.quota[i]:  # episodes past an env's quota are not the protocol's
                self.rows.append((band, want, int(action[i]), int(probs[i].argmax()), float(probs[i, want])))
            if done[i]:
                self.done[i] += 1
                self.trackers[i].track.prev = None


def in_play_agreement(model: Any, encoder: Any, task: str, target: float, episodes: int, seed: int, cap: int | None,
                      num_envs: int = 8, temperature: float = 1.0) -> dict[str, Any]:
    """Play ``episodes`` sampled episodes at ``target`` (softmax ``temperature``) and score every step against the
    tracker's action."""
    from more3s.envs import make_vector_env
    from more3s.rollout.engine import RolloutEngine

    n = min(num_envs, episodes)
    quota = episodes // n + (np.arange(n) < episodes % n)
    reader = _TrackerReader(task, n, quota, temperature)
    engine = RolloutEngine(model, encoder, task, mode="ring", sample=True, temperature=temperature)
    venv = make_vector_env(task, n, max_episode_steps=cap)
    try:
        res = engine.run(venv, target, episodes, seed=seed, recorder=reader)
    finally:
        venv.close()
    rows = reader.rows
    bands: dict[str, list[tuple[int, int, int, float]]] = defaultdict(list)
    for band, want, sampled, greedy, p in rows:
        bands[band].append((want, sampled, greedy, p))

    def score(r: list[tuple[int, int, int, float]]) -> dict[str, float]:
        a = np.array(r, dtype=np.float64)
        return {"steps": len(r), "sampled": float(np.mean(a[:, 1] == a[:, 0])),
                "greedy": float(np.mean(a[:, 2] == a[:, 0])), "p_tracker": float(np.mean(a[:, 3]))}

    order = [name for name, _, _ in ERROR_BANDS] + [NO_BALL]
    return {"target": float(target), "episodes": len(res.returns), "seed": int(seed), "temperature": float(temperature),
            "return_mean": float(np.mean(res.returns)), "return_std": float(np.std(res.returns)),
            "length_mean": float(np.mean(res.lengths)),
            "all": score([r[1:] for r in rows]), "bands": {b: score(bands[b]) for b in order if bands[b]}}


def data_agreement(model: Any, run_info: Any, cache_dir: str | Path | None = None, *,
                   max_episodes: int | None = None, top_percent: float = 100.0) -> list[dict[str, float]]:
    """Per training episode: return, the behaviour's and the model's (teacher-forced, greedy) agreement with the
    tracker, and the model's mean probability of the tracker's action. ``max_episodes`` and ``top_percent`` are the
    run's (its config): they pick the episodes it trained on, as training did."""
    from more3s.data import load_episodes, training_episode_indices
    from more3s.data.facts import load_step_infos
    from more3s.data.policies import replay_tracker
    from more3s.encoder import CacheConfig, build_or_load_cache, load_encoder
    from more3s.probe import teacher_forced_probs

    loaded = load_episodes(run_info.dataset, lazy=True, max_episodes=max_episodes)
    all_infos = load_step_infos(run_info.dataset, max_episodes=len(loaded))
    if not all_infos or any("ram" not in inf for inf in all_infos):
        raise ValueError(f"{run_info.dataset}: no RAM recorded with this dataset; the tracker cannot be replayed")
    index = training_episode_indices(loaded, top_percent)
    if len(index) != run_info.episodes:
        raise ValueError(f"{run_info.dataset}: {len(index)} episodes selected, the run trained on "
                         f"{run_info.episodes} (the dataset changed since?)")
    episodes, infos = [loaded[j] for j in index], [all_infos[j] for j in index]
    cache = build_or_load_cache(episodes, load_encoder(run_info.encoder), run_info.task, run_info.prompt_set,
                                cache_dir=cache_dir, config=CacheConfig(progress=False))
    out = []
    for i, (j, ep, inf) in enumerate(zip(index, episodes, infos)):  # i: the cache's episode, j: the dataset's
        want = replay_tracker(run_info.task, inf["ram"][:len(ep)])
        probs = teacher_forced_probs(model, ep, cache, i, model.config.window)
        out.append({"episode": j, "return": float(ep.raw_return), "steps": len(ep),
                    "behaviour": float(np.mean(np.asarray(ep.actions) == want)),
                    "model_greedy": float(np.mean(probs.argmax(-1) == want)),
                    "model_p_tracker": float(np.mean(probs[np.arange(len(ep)), want]))})
    return out


def format_agreement(report: dict[str, Any]) -> str:
    p = report["in_play"]
    temperature = p.get("temperature", 1.0)
    hot = "" if temperature == 1 else f" at softmax temperature {temperature:g} (a diagnostic: DT's protocol is 1)"
    lines = [f"{report['run']} (step {report['step']}) on {report['task']}: {p['episodes']} sampled episodes{hot} at "
             f"target {p['target']:g}, seed {p['seed']}: raw return {p['return_mean']:.1f} ± {p['return_std']:.1f}, "
             f"length {p['length_mean']:.0f}",
             "agreement with the tracker's action in play:",
             f"{'steps':>28} | {'share':>5} | sampled | greedy | p(tracker action)"]
    total = p["all"]["steps"]
    for name, s in [("all", p["all"]), *p["bands"].items()]:
        lines.append(f"{name:>28} | {s['steps'] / total:5.2f} |  {s['sampled']:.3f}  | {s['greedy']:.3f}  | "
                     f"{s['p_tracker']:.3f}")
    if report.get("data"):
        lines.append("on the training episodes (teacher-forced), by the behaviour's agreement with the tracker:")
        lines.append(f"{'behaviour':>9} | {'return':>6} | model greedy | model p(tracker action)")
        for r in sorted(report["data"], key=lambda r: r["behaviour"]):
            lines.append(f"{r['behaviour']:9.3f} | {r['return']:6.1f} | {r['model_greedy']:12.3f} | "
                         f"{r['model_p_tracker']:.3f}")
    return "\n".join(lines)


def run_agreement(cfg: AgreementConfig) -> dict[str, Any]:
    from more3s.data.policies import TRACKERS
    from more3s.encoder import load_encoder
    from more3s.evaluate import resolve_cap
    from more3s.rollout.engine import check_temperature
    from more3s.run import load_run_model

    if cfg.episodes < 1 or cfg.num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {cfg.episodes} and {cfg.num_envs}")
    check_temperature(cfg.temperature)
    model, info, ckpt = load_run_model(cfg.run, "cpu")
    if info.task not in TRACKERS:
        raise ValueError(f"run {cfg.run} is on {info.task!r}; a scripted tracker exists for {', '.join(TRACKERS)}")
    encoder = load_encoder(info.encoder, device="cpu")
    info.check_encoder(encoder, cfg.run)
    cap, _ = resolve_cap("run", info)
    target = float(info.targets[0]) if cfg.target is None else float(cfg.target)
    report: dict[str, Any] = {"run": str(cfg.run), "step": ckpt.step, "task": info.task,
                              "in_play": in_play_agreement(model, encoder, info.task, target, cfg.episodes, cfg.seed,
                                                           cap, cfg.num_envs, cfg.temperature)}
    if cfg.data:
        from more3s.config import load_config_file
        from more3s.run import RunPaths

        trained = load_config_file(RunPaths(Path(cfg.run)).config_json)
        report["data"] = data_agreement(model, info, cfg.cache_dir, max_episodes=trained.max_episodes,
                                        top_percent=trained.top_percent)
    return report


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(AgreementConfig, args=argv)
    try:
        report = run_agreement(cfg)
    except (OSError, ValueError) as e:
        print(f"more3s.agreement: error: {e}", file=sys.stderr)
        return 2
    print(format_agreement(report))
    if cfg.json:
        from more3s.atomic import write_json_report

        print(f"wrote {write_json_report(cfg.json, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
