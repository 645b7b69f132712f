"""What a state embedding keeps of the game: ``python -m more3s.probe --dataset D --encoder E``.

Scikit-learn probes on an episode-level held-out split (80/20 of the episodes, seeded), over feature sets:

* ``embedding`` — the cached state embedding the model trains on (``more3s.encoder.build_or_load_cache``);
* ``facts`` — the facts the scripted tracker reads, decoded from the RAM recorded with Atari data
  (``more3s.data.facts``: object positions and the ball's velocity; an off-screen value is 0 with an on-screen
  indicator beside it; a ball the frame hides keeps its position here, as the tracker knows it);
* ``ram`` — the console RAM (Atari), or ``obs`` — the observation (MuJoCo, where it is the ground truth).

Targets: every fact (Atari, scored only on steps where its object is on screen) or every observation
dimension (MuJoCo), by ridge regression (R² on the held-out episodes; the penalty by cross-validation over the
training episodes with the one-standard-error rule, see ``ProbeConfig.ridge_rule``); the behaviour action, by logistic
regression and a 2x128 MLP (accuracy, beside the majority class) for discrete actions, by ridge (R²)
for continuous ones. Features are standardized on the training episodes as the trainer standardizes
states. The action table's pairwise cosine similarities are reported too (the semantic head must tell its
rows apart), and ``--runs`` scores trained runs' held-out action accuracy side by side.

A dataset recorded without RAM still gets the ``embedding`` probes of the action, and the report names
the facts it cannot score.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from more3s.envs import PromptSet

__all__ = ["ProbeConfig", "FEATURE_SETS", "MIN_EPISODES", "split_episodes", "probe_features",
           "run_probe", "run_action_accuracy", "teacher_forced_probs", "format_report", "main"]

FEATURE_SETS = ("embedding", "facts", "ram", "obs")
MIN_EPISODES = 5  # an 80/20 episode split needs at least one held-out episode and four to fit on
TEST_FRACTION = 0.2
RIDGE_ALPHAS = tuple(10.0 ** np.arange(-2, 6))  # penalties on standardized features; CV over training episodes
RIDGE_FOLDS = 4
RidgeRule = Literal["one-se", "min"]  # how cross-validation picks the ridge penalty (ProbeConfig.ridge_rule)
RIDGE_RULES: tuple[RidgeRule, ...] = get_args(RidgeRule)
MLP_HIDDEN = (128, 128)


@dataclass
class ProbeConfig:
    dataset: str  # Minari id or directory (Atari data collected by more3s records RAM and facts)
    encoder: str = "lxmert-tiny"  # as for more3s.encode: a random-init name, a local directory or a hub id
    prompt_set: PromptSet = "original"  # action table used for the cosine report (and part of the cache key)
    seed: int = 0  # the episode split and the MLP's initialization
    features: tuple[str, ...] = ()  # subset of embedding, facts, ram, obs (default: all that apply)
    json: str | None = None  # write the report here (atomically)
    cache_dir: str | None = None  # embedding cache root (default: $MORE3S_CACHE or ~/.cache/more3s/embeddings)
    max_episodes: int | None = None
    progress: bool = False
    # Trained runs (run directories) to score side by side: held-out action accuracy, teacher-forced, on the
    # dataset's episodes after the ones each run trained on (train with --max-episodes N to hold the rest out).
    runs: tuple[str, ...] = ()
    # How cross-validation over the training episodes picks each ridge penalty: ``one-se`` (the largest penalty
    # whose mean validation error is within one standard error, over folds, of the smallest: the rule of
    # Breiman et al. and glmnet's lambda.1se) or ``min`` (the smallest mean error). With four folds the smallest
    # mean is noisy: on 40 episodes of Pong it picked a penalty of 0.1 whose folds' errors spread 0.5-3.3, and a
    # few held-out states unlike any in training were extrapolated by tens of pixels (ball x R² 0.984; 0.998
    # with the penalty one step up).
    ridge_rule: RidgeRule = "one-se"

    def __post_init__(self) -> None:
        if self.ridge_rule not in RIDGE_RULES:
            raise ValueError(f"ridge_rule must be {'|'.join(RIDGE_RULES)}, got {self.ridge_rule!r}")


def split_episodes(n_episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level 80/20 split: (train episode ids, test episode ids), both sorted."""
    if n_episodes < MIN_EPISODES:
        raise ValueError(f"the probe's episode split needs at least {MIN_EPISODES} episodes, the dataset has "
                         f"{n_episodes}; collect more (e.g. more3s.collect --episodes 10)")
    perm = np.random.default_rng(seed).permutation(n_episodes)
    n_test = max(1, int(round(TEST_FRACTION * n_episodes)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _standardize(x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension standardization with the training rows' statistics, the std floored at its median over
    dimensions, as the trainer standardizes state embeddings: a dimension that barely varies in training
    (a slot that is rarely filled) must not blow up on a held-out state."""
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = np.maximum(std, max(float(np.median(std)), 1e-6))
    return (x_tr - mean) / std, (x_te - mean) / std


def _ridge_r2(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
              groups: np.ndarray, joint: bool = False, rule: RidgeRule = "one-se") -> np.ndarray:
    """Held-out R² of ridge regression for each column of ``y`` [N, T] (targets observed on the same rows).

    Per target, the penalty is chosen by cross-validation over the training *episodes* (``groups``; leave-one-row-out
    would pick a penalty that memorizes neighbouring steps) by ``rule`` (``ProbeConfig.ridge_rule``), as
    ``GridSearchCV(Ridge())`` would choose it target by target (``min``). Ridge fits each column independently, so one
    multi-output fit per fold and penalty serves every target: the same choices and scores as T separate searches, in
    1/T of the fits. ``joint``: one penalty for all columns (a continuous action's dimensions, scored together)."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold

    T = y_tr.shape[1]
    if len(y_tr) < 2 or len(y_te) < 2:
        return np.full(T, np.nan)
    x_tr, x_te = _standardize(x_tr, x_te)
    folds = min(RIDGE_FOLDS, len(np.unique(groups)))
    fold_mse = np.zeros((folds, len(RIDGE_ALPHAS), T))  # each fold's validation MSE per penalty and target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-conditioned small penalties: CV rejects them, the score stands
        for k, (fit_rows, val_rows) in enumerate(GroupKFold(folds).split(x_tr, groups=groups)):
            for i, alpha in enumerate(RIDGE_ALPHAS):
                pred = Ridge(alpha=alpha).fit(x_tr[fit_rows], y_tr[fit_rows]).predict(x_tr[val_rows])
                fold_mse[k, i] = ((pred.reshape(len(val_rows), T) - y_tr[val_rows]) ** 2).mean(0)
        if joint:
            fold_mse = fold_mse.mean(2, keepdims=True)
        best = _pick_penalty(fold_mse, rule)
        if joint:
            best = np.full(T, best[0])
        r2 = np.full(T, np.nan)
        for i in np.unique(best):
            cols = np.flatnonzero(best == i)
            pred = Ridge(alpha=RIDGE_ALPHAS[i]).fit(x_tr, y_tr[:, cols]).predict(x_te).reshape(len(x_te), len(cols))
            for c, j in enumerate(cols):
                if np.var(y_te[:, j]) > 0:
                    r2[j] = r2_score(y_te[:, j], pred[:, c])
    return r2


def _pick_penalty(fold_mse: np.ndarray, rule: RidgeRule) -> np.ndarray:
    """fold_mse [folds, penalties (ascending), T] -> the chosen penalty's index per target [T].

    ``min``: the smallest mean error (the first of equals, as GridSearchCV ranks them). ``one-se``: the largest
    penalty whose mean error is within one standard error (over folds) of that minimum."""
    mean = fold_mse.mean(0)  # [P, T]
    best: np.ndarray = mean.argmin(0)  # [T]
    if rule == "min" or fold_mse.shape[0] < 2:
        return best
    cols = np.arange(mean.shape[1])
    se = fold_mse.std(0, ddof=1)[best, cols] / np.sqrt(fold_mse.shape[0])  # [T]
    within = mean <= (mean[best, cols] + se)[None]  # [P, T]
    largest: np.ndarray = len(mean) - 1 - np.argmax(within[::-1], axis=0)
    return largest


def _action_scores(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, groups: np.ndarray,
                   seed: int, discrete: bool, rule: RidgeRule = "one-se") -> dict[str, float]:
    if not discrete:  # one penalty and one score (the mean R²) over the action's dimensions
        r2 = _ridge_r2(x_tr, y_tr.reshape(len(y_tr), -1), x_te, y_te.reshape(len(y_te), -1), groups, joint=True,
                       rule=rule)
        return {"r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")}
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    x_tr, x_te = _standardize(x_tr, x_te)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the scores are what we report
        logreg = LogisticRegression(max_iter=500).fit(x_tr, y_tr)
        mlp = MLPClassifier(MLP_HIDDEN, max_iter=200, early_stopping=True, random_state=seed).fit(x_tr, y_tr)
    return {"accuracy": float(logreg.score(x_te, y_te)), "mlp_accuracy": float(mlp.score(x_te, y_te))}


def _facts_matrix(facts: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """Facts as features: value (0 off screen) and an on-screen indicator per fact -> [N, 2F]."""
    cols = []
    for k in names:
        v = facts[k]
        on = np.isfinite(v)
        cols += [np.where(on, v, 0.0), on.astype(np.float64)]
    return np.stack(cols, axis=1)


def probe_features(features: dict[str, np.ndarray], targets: dict[str, np.ndarray], actions: np.ndarray,
                   train: np.ndarray, episode: np.ndarray, seed: int, discrete: bool,
                   rule: RidgeRule = "one-se") -> dict[str, Any]:
    """Score every feature set on every target. ``train`` [N] bool marks training rows, ``episode`` [N] their
    episode; targets may hold NaN (not on screen), such rows are left out of that target's fit and score."""
    test = ~train
    out: dict[str, Any] = {}
    for name, x in features.items():
        facts: dict[str, dict[str, float]] = {}
        by_rows: dict[bytes, list[str]] = {}  # targets observed on the same rows are fit together
        for fact, y in targets.items():
            by_rows.setdefault(np.isfinite(y).tobytes(), []).append(fact)
        for names in by_rows.values():
            ok = np.isfinite(targets[names[0]])
            tr, te = train & ok, test & ok
            y = np.stack([targets[f] for f in names], axis=1)  # [N, T]
            for f, r2 in zip(names, _ridge_r2(x[tr], y[tr], x[te], y[te], episode[tr], rule=rule)):
                facts[f] = {"r2": float(r2)}
        facts = {f: facts[f] for f in targets}  # the targets' order
        entry: dict[str, Any] = {"facts": facts, "action": _action_scores(x[train], actions[train], x[test], actions[test],
                                                            episode[train], seed, discrete, rule)}
        if discrete:
            vals, counts = np.unique(actions[train], return_counts=True)
            entry["majority"] = float(np.mean(actions[test] == vals[np.argmax(counts)]))
        if targets:
            r2 = [v["r2"] for v in facts.values() if np.isfinite(v["r2"])]
            entry["facts_mean_r2"] = float(np.mean(r2)) if r2 else float("nan")
        out[name] = entry
    return out


def _cosines(table: np.ndarray) -> np.ndarray:
    t = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    out: np.ndarray = t @ t.T
    return out


def run_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Build (or reuse) the embedding cache of ``cfg.dataset`` and score the probes -> the report dict."""
    from more3s.data import load_episodes
    from more3s.data.facts import decode_facts, fact_names, load_step_infos
    from more3s.data.policies import replay_tracker
    from more3s.encoder import CacheConfig, build_or_load_cache, load_encoder
    from more3s.envs import action_prompts, get_task

    bad = [f for f in cfg.features if f not in FEATURE_SETS]
    if bad:
        raise ValueError(f"unknown feature set(s) {bad}; choose from {list(FEATURE_SETS)}")
    episodes = load_episodes(cfg.dataset, max_episodes=cfg.max_episodes, lazy=True)
    train_eps, test_eps = split_episodes(len(episodes), cfg.seed)  # fails before any encoding
    task = episodes[0].task
    if task is None:
        raise ValueError(f"{cfg.dataset}: cannot tell the task of this dataset; probes need a known task")
    spec = get_task(task)
    discrete = spec.action_kind == "discrete"
    encoder = load_encoder(cfg.encoder)
    cache = build_or_load_cache(episodes, encoder, task, cfg.prompt_set, cache_dir=cfg.cache_dir,
                                config=CacheConfig(progress=cfg.progress))

    # Rows: the state s_t of every step t < T (the state the action a_t was taken in).
    lengths = np.array([len(ep) for ep in episodes])
    ep_of_row = np.repeat(np.arange(len(episodes)), lengths)
    obs_rows = np.concatenate([cache.offsets[i] + np.arange(n) for i, n in enumerate(lengths)])
    train = np.isin(ep_of_row, train_eps)
    actions = np.concatenate([np.asarray(ep.actions) for ep in episodes])
    features: dict[str, np.ndarray] = {"embedding": np.asarray(cache.states[obs_rows], dtype=np.float32)}
    targets: dict[str, np.ndarray] = {}
    missing: list[str] = []
    expert: np.ndarray | None = None  # the scripted tracker's action per row (Atari data with RAM)
    if spec.family == "mujoco":
        obs = np.concatenate([np.asarray(ep.observations)[:-1] for ep in episodes]).astype(np.float64)
        features["obs"] = obs
        targets = {f"obs[{j}]": obs[:, j] for j in range(obs.shape[1])}
    else:
        names = fact_names(task)
        infos = load_step_infos(cfg.dataset, max_episodes=len(episodes))
        have = bool(infos) and all("ram" in inf and all(k in inf for k in names) for inf in infos)
        if have and names:
            # The expert's own action where the data's may be random: clean labels for what a policy must copy.
            expert = np.concatenate([replay_tracker(task, inf["ram"][:-1]) for inf in infos])
            # Targets: the recorded facts, off screen where the frame does not draw the object. Features: the
            # facts as the tracker reads them from the RAM, a ball the frame hides included.
            targets = {k: np.concatenate([inf[k][:-1] for inf in infos]).astype(np.float64) for k in names}
            read = [decode_facts(task, inf["ram"][:-1]) for inf in infos]
            features["facts"] = _facts_matrix({k: np.concatenate([r[k] for r in read]).astype(np.float64)
                                               for k in names}, names)
            features["ram"] = np.concatenate([inf["ram"][:-1] for inf in infos]).astype(np.float64)
        else:
            missing = list(names) if names else ["(no facts are decoded for this game)"]
    if cfg.features:
        unavailable = [f for f in cfg.features if f not in features]
        if unavailable:
            raise ValueError(f"feature set(s) {unavailable} not available for {cfg.dataset} "
                             f"(available: {list(features)})")
        features = {k: v for k, v in features.items() if k in cfg.features}

    scores = probe_features(features, targets, actions, train, ep_of_row, cfg.seed, discrete, cfg.ridge_rule)
    if expert is not None:
        for name, x in features.items():
            scores[name]["tracker_action"] = _action_scores(x[train], expert[train], x[~train], expert[~train],
                                                            ep_of_row[train], cfg.seed, discrete=True)
    report = {
        "dataset": cfg.dataset, "encoder": encoder.name, "task": task, "prompt_set": cfg.prompt_set,
        "seed": cfg.seed, "ridge_rule": cfg.ridge_rule, "d_enc": int(encoder.d_enc), "cache": str(cache.path),
        "split": {"train_episodes": train_eps.tolist(), "test_episodes": test_eps.tolist(),
                  "train_rows": int(train.sum()), "test_rows": int((~train).sum())},
        "features": scores,
    }
    if missing:
        report["missing_facts"] = missing
    labels = action_prompts(task, cfg.prompt_set) if discrete else \
        ["e_0", *action_prompts(task, cfg.prompt_set)]
    report["action_table"] = {"labels": (list(spec.action_names) if discrete else labels),
                              "cosine": np.round(_cosines(np.asarray(cache.action_table, np.float64)), 4).tolist()}
    if cfg.runs:
        report["runs"] = {r: run_action_accuracy(r, cfg.dataset, cfg.cache_dir) for r in cfg.runs}
    return report


def run_action_accuracy(run_dir: str | Path, dataset: str, cache_dir: str | None = None) -> dict[str, Any]:
    """Held-out action accuracy of a trained run (discrete actions): the model reads each held-out episode in
    consecutive windows (memory carried, as in stream training) with the data's states, actions and RTG, and
    its greedy action is compared with the behaviour action at every step."""
    import torch

    from more3s.data import load_episodes
    from more3s.encoder import CacheConfig, build_or_load_cache, load_encoder
    from more3s.envs import check_prompt_set
    from more3s.run import load_run_model

    model, info, _ = load_run_model(run_dir)
    episodes = load_episodes(dataset, lazy=True)
    n_train = info.episodes
    held = list(range(n_train, len(episodes)))
    if not held:
        raise ValueError(f"run {run_dir} trained on {n_train} episodes, {dataset} has no others to hold out; "
                         f"train with --max-episodes N < {len(episodes)}")
    if not model.config.discrete:
        raise ValueError(f"run {run_dir}: held-out action accuracy is for discrete actions")
    encoder = load_encoder(info.encoder)
    info.check_encoder(encoder, run_dir)
    cache = build_or_load_cache(episodes, encoder, info.task, check_prompt_set(info.prompt_set),
                                cache_dir=cache_dir, config=CacheConfig(progress=False))
    K, correct, total = model.config.window, 0, 0
    with torch.inference_mode():
        for i in held:
            correct_i, n_i = _episode_accuracy(model, episodes[i], cache, i, K)
            correct, total = correct + correct_i, total + n_i
    return {"objective": model.config.objective, "train_episodes": n_train, "heldout_episodes": held,
            "action_accuracy": correct / total}


def _episode_accuracy(model: Any, ep: Any, cache: Any, i: int, K: int) -> tuple[int, int]:
    """(correct greedy actions, steps) of episode ``i`` read in consecutive K-step windows, memory carried."""
    probs = teacher_forced_probs(model, ep, cache, i, K)
    return int((probs.argmax(-1) == np.asarray(ep.actions)).sum()), len(ep)


def teacher_forced_probs(model: Any, ep: Any, cache: Any, i: int, K: int, actions: np.ndarray | None = None,
                         rtg: np.ndarray | None = None) -> np.ndarray:
    """[T, A] action probabilities of a discrete-action model reading episode ``i`` (its cached states, the data's
    actions and RTG) in consecutive K-step windows, memory carried, as stream training reads it. ``actions`` /
    ``rtg`` [T] replace the data's (a counterfactual reading of the same states)."""
    import torch

    T = len(ep)
    rows = slice(int(cache.offsets[i]), int(cache.offsets[i]) + T)
    states = torch.from_numpy(np.asarray(cache.states[rows], np.float32))  # [T, d_enc]
    acts = torch.from_numpy(np.asarray(ep.actions if actions is None else actions)).long()  # [T]
    rtg_t = torch.from_numpy(np.asarray(ep.rtg if rtg is None else rtg, np.float32))  # [T]
    if len(acts) != T or len(rtg_t) != T:
        raise ValueError(f"actions and rtg must have the episode's {T} steps, got {len(acts)} and {len(rtg_t)}")
    memory = model.empty_memory(1) if model.config.memory_steps else None
    out = []
    with torch.inference_mode():
        for a in range(0, T, K):
            b = min(a + K, T)
            steps = torch.arange(a, b)
            o = model(states[None, a:b], acts[None, (steps - 1).clamp_min(0)], rtg_t[None, a:b], steps[None],
                      first=(steps == 0)[None], mask=torch.ones(1, b - a, dtype=torch.bool), memory=memory)
            memory = o.memory
            out.append(torch.softmax(o.logits[0].float(), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.act_dim), np.float32)


def _fmt(x: float | None) -> str:
    return "   -  " if x is None or not np.isfinite(x) else f"{x:6.3f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as text tables: R² per fact per feature set, action accuracy, table cosines."""
    feats = report["features"]
    names = list(feats)
    facts = list(next(iter(feats.values()))["facts"]) if feats else []
    lines = [f"probe of {report['dataset']} with {report['encoder']} (d_enc {report['d_enc']}); episodes "
             f"train {report['split']['train_episodes']}, held out {report['split']['test_episodes']} "
             f"({report['split']['test_rows']} steps); ridge penalty by the {report.get('ridge_rule', 'min')} rule"]
    if report.get("missing_facts"):
        lines.append("cannot score (no RAM recorded with this dataset): " + ", ".join(report["missing_facts"]))
    if len(facts) > 12:  # MuJoCo: summarize the observation's dimensions
        lines.append(f"{'features':>10} | mean R² | worst R² over {len(facts)} observation dimensions")
        for n in names:
            r2 = np.array([v["r2"] for v in feats[n]["facts"].values()], float)
            lines.append(f"{n:>10} | {_fmt(np.nanmean(r2))}  | {_fmt(np.nanmin(r2))}")
    elif facts:
        lines.append(f"{'R²':>10} | " + " | ".join(f"{f:>8}" for f in facts))
        for n in names:
            lines.append(f"{n:>10} | " + " | ".join(f"  {_fmt(feats[n]['facts'][f]['r2'])}" for f in facts))
    lines.append("behaviour action (held-out episodes):")
    for n in names:
        a = feats[n]["action"]
        if "accuracy" in a:
            lines.append(f"{n:>10} | logistic {_fmt(a['accuracy'])} | MLP {_fmt(a['mlp_accuracy'])} "
                         f"| majority {_fmt(feats[n]['majority'])}")
        else:
            lines.append(f"{n:>10} | ridge R² {_fmt(a['r2'])}")
    if any("tracker_action" in feats[n] for n in names):
        lines.append("the scripted tracker's action on the same steps (its clean labels: what a policy must copy):")
        for n in names:
            a = feats[n]["tracker_action"]
            lines.append(f"{n:>10} | logistic {_fmt(a['accuracy'])} | MLP {_fmt(a['mlp_accuracy'])}")
    tab = report["action_table"]
    cos = np.array(tab["cosine"])
    pairs = [(cos[i, j], tab["labels"][i], tab["labels"][j]) for i in range(len(cos)) for j in range(i)]
    pairs.sort(reverse=True)
    lines.append(f"action table ({report['prompt_set']}) cosine, most similar pairs first: "
                 + ", ".join(f"{a}/{b} {c:.3f}" for c, a, b in pairs[:6]))
    for run, r in report.get("runs", {}).items():
        lines.append(f"trained run {run} (objective {r['objective']}, {r['train_episodes']} training episodes): "
                     f"held-out action accuracy {r['action_accuracy']:.3f} on {len(r['heldout_episodes'])} episodes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import logging

    import tyro

    cfg = tyro.cli(ProbeConfig, args=argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_probe(cfg)
    except (OSError, ValueError) as e:
        print(f"more3s.probe: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if cfg.json:
        from more3s.atomic import write_json_report

        print(f"wrote {write_json_report(cfg.json, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
