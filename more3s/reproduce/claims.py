"""The paper's five claims as tests on a score table, each with a verdict and the numbers behind it.

The unit of evidence is a training seed: a cell's score is its mean normalized score over evaluation episodes,
and differences between arms are bootstrapped over seeds (scipy.stats.bootstrap, each arm's seeds resampled
independently; with several tasks, resampled within each task and the per-task differences averaged), 95 %
percentile intervals. Verdicts, fixed before any score was seen:

* "A beats B": confirmed when the interval of mean(A) - mean(B) lies above 0, refuted when it lies below 0,
  inconclusive when it straddles 0.
* "X makes little difference" (prompt sets): confirmed when the interval lies inside +-EQUIVALENCE_MARGIN
  normalized points, refuted when it excludes 0 and reaches beyond the margin, inconclusive otherwise.
* Fewer than 2 seeds in an arm, or a missing arm: not run / inconclusive, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["Difference", "ClaimResult", "bootstrap_difference", "evaluate_claims", "EQUIVALENCE_MARGIN",
           "CONFIDENCE"]

CONFIDENCE = 0.95
EQUIVALENCE_MARGIN = 5.0  # normalized points: "barely matters" means within +-5 of the original prompt set
_RESAMPLES = 9999

# scores[task][arm] = per-seed scores (normalized, mean over that seed's evaluation episodes)
Scores = Mapping[str, Mapping[str, Sequence[float]]]


@dataclass
class Difference:
    """mean(A) - mean(B) over the tasks given, with its bootstrap interval."""

    a: str
    b: str
    tasks: list[str]
    diff: float
    low: float
    high: float
    seeds: dict[str, tuple[int, int]]  # task -> (seeds of A, seeds of B)

    def text(self) -> str:
        return f"{self.a} − {self.b} = {self.diff:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


@dataclass
class ClaimResult:
    number: int
    claim: str
    verdict: str  # confirmed | refuted | inconclusive | not run
    why: str
    differences: list[Difference] = field(default_factory=list)


def bootstrap_difference(scores: Scores, a: str, b: str, tasks: Sequence[str], seed: int = 0) -> Difference:
    """The task-averaged difference mean(A) - mean(B) and its bootstrap interval over seeds."""
    samples, counts = [], {}
    for t in tasks:
        xa = np.asarray(scores[t][a], dtype=np.float64)
        xb = np.asarray(scores[t][b], dtype=np.float64)
        if xa.size < 2 or xb.size < 2:
            raise ValueError(f"{t}: {a} has {xa.size} seed(s), {b} has {xb.size}; a bootstrap over seeds "
                             "needs at least 2 in each")
        samples += [xa, xb]
        counts[t] = (int(xa.size), int(xb.size))

    def statistic(*xs: np.ndarray, axis: int = -1) -> np.ndarray:
        diffs = [np.mean(xs[i], axis=axis) - np.mean(xs[i + 1], axis=axis) for i in range(0, len(xs), 2)]
        return np.asarray(np.mean(diffs, axis=0))

    point = float(statistic(*samples))
    if all(np.ptp(x) == 0 for x in samples):  # no spread anywhere: the interval is the point
        low = high = point
    else:
        res = stats.bootstrap(samples, statistic, n_resamples=_RESAMPLES, confidence_level=CONFIDENCE,
                              method="percentile", vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Difference(a, b, list(tasks), point, low, high, counts)


def _tasks_with(scores: Scores, *arms: str) -> list[str]:
    return [t for t in scores if all(len(scores[t].get(arm, ())) >= 2 for arm in arms)]


def _missing(number: int, claim: str, scores: Scores, a: str, bs: Sequence[str]) -> ClaimResult:
    """No task has >= 2 seeds of both sides: inconclusive if the arms ran (too few seeds), else not run."""
    ran = [arm for arm in (a, *bs) if any(arm in s for s in scores.values())]
    if len(ran) >= 2 and a in ran:
        return ClaimResult(number, claim, "inconclusive",
                           f"{', '.join(ran)} ran, but no task has >= 2 seeds of {a} and of {', '.join(bs)}")
    return ClaimResult(number, claim, "not run", f"no seeds of {', '.join(x for x in (a, *bs) if x not in ran)}")


def _beats(number: int, claim: str, scores: Scores, a: str, bs: Sequence[str],
           tasks: Sequence[str] | None = None) -> ClaimResult:
    diffs, missing = [], []
    for b in bs:
        ts = [t for t in (tasks if tasks is not None else scores) if t in _tasks_with(scores, a, b)]
        if ts:
            diffs.append(bootstrap_difference(scores, a, b, ts))
        else:
            missing.append(b)
    if not diffs:
        return _missing(number, claim, scores, a, bs)
    signs = ["above" if d.low > 0 else "below" if d.high < 0 else "across" for d in diffs]
    verdict = ("confirmed" if all(s == "above" for s in signs) and not missing else
               "refuted" if any(s == "below" for s in signs) else "inconclusive")
    why = "; ".join(f"{d.text()} over {', '.join(d.tasks)}" for d in diffs)
    if missing:
        why += f"; not run against {', '.join(missing)} (no seeds)"
    return ClaimResult(number, claim, verdict, why, diffs)


def _memory_claim(scores: Scores) -> ClaimResult:
    claim = "Long-term memory helps on most games, but not on Seaquest."
    tasks = _tasks_with(scores, "more3s", "more3s-nomem")
    if not tasks:
        return _missing(3, claim, scores, "more3s", ["more3s-nomem"])
    per_task = {t: bootstrap_difference(scores, "more3s", "more3s-nomem", [t]) for t in tasks}
    others = [t for t in tasks if t.split("-", 1)[0] != "seaquest"]
    helped = [t for t in others if per_task[t].low > 0]
    hurt = [t for t in others if per_task[t].high < 0]
    why = "; ".join(f"{t}: {d.text()}" for t, d in per_task.items())
    if not others:
        verdict = "inconclusive"
    elif len(helped) > len(others) / 2:
        verdict = "confirmed"
    elif len(hurt) >= len(others) / 2:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    sea = [t for t in tasks if t.split("-", 1)[0] == "seaquest"]
    if sea and per_task[sea[0]].low > 0 and verdict == "confirmed":
        verdict, why = "refuted", why + " (memory helps on Seaquest too, against the claim's exception)"
    if not sea:
        why += "; Seaquest not in the grid, so the exception is untested"
    return ClaimResult(3, claim, verdict, why, list(per_task.values()))


def _equivalence_claim(scores: Scores) -> ClaimResult:
    claim = "The action prompt set (original / synonym / contextual) makes little difference."
    diffs = []
    for other in ("prompts-synonym", "prompts-contextual"):
        tasks = _tasks_with(scores, "more3s", other)
        if tasks:
            diffs.append(bootstrap_difference(scores, other, "more3s", tasks))
    if not diffs:
        return _missing(4, claim, scores, "more3s", ["prompts-synonym", "prompts-contextual"])
    m = EQUIVALENCE_MARGIN
    inside = all(-m <= d.low and d.high <= m for d in diffs)
    beyond = any((d.low > 0 or d.high < 0) and (d.low > m or d.high < -m) for d in diffs)
    verdict = "confirmed" if inside else "refuted" if beyond else "inconclusive"
    why = "; ".join(f"{d.text()} over {', '.join(d.tasks)}" for d in diffs) + f" (equivalence margin ±{m:g})"
    return ClaimResult(4, claim, verdict, why, diffs)


def evaluate_claims(scores: Scores, pretrained_available: bool) -> list[ClaimResult]:
    """The five claims' verdicts from ``scores[task][arm] = per-seed scores``."""
    out = [
        _beats(1, "MORE-3S beats Decision Transformer and behaviour cloning.", scores, "more3s",
               [b for b in ("dt-published", "dt", "bc") if any(b in s for s in scores.values())] or ["dt", "bc"]),
        _beats(2, "RTG injected into attention K/V beats RTG as a linear map at the embedding stage.",
               scores, "more3s", ["embed-rtg"]),
        _memory_claim(scores),
        _equivalence_claim(scores),
    ]
    claim5 = "Pretrained encoder weights beat random-init ones."
    if not pretrained_available:
        out.append(ClaimResult(5, claim5, "not run", "needs pretrained LXMERT weights on disk (none here); "
                               "no number from a random model is labelled pretrained"))
    else:
        out.append(_beats(5, claim5, scores, "pretrained", ["random"]))
    return out
