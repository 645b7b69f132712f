"""The claim logic on synthetic score tables with known answers: a clear win, a clear loss, an overlap."""

import pytest

from more3s.reproduce.claims import EQUIVALENCE_MARGIN, bootstrap_difference, evaluate_claims

WIN = {"more3s": [60.0, 62.0, 61.0], "dt": [40.0, 41.0, 39.0], "bc": [30.0, 32.0, 31.0],
       "embed-rtg": [20.0, 22.0, 21.0]}


def _verdicts(scores, pretrained=False):
    return {c.number: c.verdict for c in evaluate_claims(scores, pretrained)}


def test_clear_win_is_confirmed_and_the_interval_brackets_the_difference():
    d = bootstrap_difference({"breakout": WIN}, "more3s", "dt", ["breakout"])
    assert d.diff == pytest.approx(21.0)
    assert 0 < d.low <= d.diff <= d.high
    v = _verdicts({"breakout": WIN, "pong": WIN})
    assert v[1] == "confirmed" and v[2] == "confirmed"


def test_clear_loss_is_refuted():
    lose = {"more3s": [10.0, 11.0, 12.0], "dt": [40.0, 41.0, 42.0], "bc": [30.0, 31.0, 29.0],
            "embed-rtg": [50.0, 52.0, 51.0]}
    v = _verdicts({"breakout": lose})
    assert v[1] == "refuted" and v[2] == "refuted"


def test_overlap_is_inconclusive():
    overlap = {"more3s": [10.0, 50.0, 30.0], "dt": [20.0, 45.0, 25.0], "bc": [15.0, 40.0, 35.0],
               "embed-rtg": [12.0, 48.0, 28.0]}
    v = _verdicts({"breakout": overlap})
    assert v[1] == "inconclusive" and v[2] == "inconclusive"


def test_tasks_are_averaged_within_task_resampling():
    scores = {"a": {"x": [10.0, 10.0, 10.0], "y": [0.0, 0.0, 0.0]},
              "b": {"x": [0.0, 0.0, 0.0], "y": [4.0, 4.0, 4.0]}}
    d = bootstrap_difference(scores, "x", "y", ["a", "b"])
    assert d.diff == pytest.approx(3.0) and d.low == d.high == pytest.approx(3.0)


def test_memory_claim_with_and_without_the_seaquest_exception():
    helps = {"more3s": [50.0, 51.0, 52.0], "more3s-nomem": [30.0, 31.0, 29.0]}
    flat = {"more3s": [30.0, 31.0, 29.0], "more3s-nomem": [30.5, 30.0, 29.5]}
    res = {c.number: c for c in evaluate_claims({"breakout": helps, "pong": helps, "seaquest": flat}, False)}
    assert res[3].verdict == "confirmed"
    assert _verdicts({"breakout": helps, "pong": helps, "seaquest": helps})[3] == "refuted"
    hurts = {"more3s": [10.0, 11.0, 12.0], "more3s-nomem": [30.0, 31.0, 29.0]}
    assert _verdicts({"breakout": hurts, "pong": hurts})[3] == "refuted"
    only = {c.number: c for c in evaluate_claims({"breakout": helps}, False)}
    assert only[3].verdict == "confirmed" and "untested" in only[3].why


def test_prompt_sets_equivalence_margin():
    same = {"more3s": [30.0, 31.0, 29.0], "prompts-synonym": [30.5, 29.5, 30.0],
            "prompts-contextual": [29.0, 31.0, 30.0]}
    assert _verdicts({"breakout": same})[4] == "confirmed"
    far = dict(same, **{"prompts-synonym": [30 + 3 * EQUIVALENCE_MARGIN + d for d in (0.0, 1.0, -1.0)]})
    assert _verdicts({"breakout": far})[4] == "refuted"
    wide = dict(same, **{"prompts-synonym": [0.0, 60.0, 30.0]})
    assert _verdicts({"breakout": wide})[4] == "inconclusive"


def test_pretrained_claim_is_not_run_without_weights_and_judged_with_them():
    scores = {"breakout": {"pretrained": [60.0, 61.0, 62.0], "random": [20.0, 21.0, 22.0]}}
    res = {c.number: c for c in evaluate_claims(scores, pretrained_available=False)}
    assert res[5].verdict == "not run" and "pretrained" in res[5].why
    assert _verdicts(scores, pretrained=True)[5] == "confirmed"


def test_one_seed_is_inconclusive_and_absent_arms_are_not_run():
    res = {c.number: c for c in evaluate_claims({"breakout": {"more3s": [1.0], "bc": [2.0]}}, False)}
    assert res[1].verdict == "inconclusive" and "2 seeds" in res[1].why
    assert res[2].verdict == "not run" and "embed-rtg" in res[2].why
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_difference({"breakout": {"more3s": [1.0], "bc": [2.0, 3.0]}}, "more3s", "bc", ["breakout"])
