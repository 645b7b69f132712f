"""Reading D4RL-style hdf5 files: flat arrays of all steps, split into episodes at ``terminals | timeouts``.

Every field is checked (present, readable, one row per step, finite, shaped for the task) and a bad one is
named with the file. The task, when not given, is guessed from the file name (``halfcheetah-medium-v2.hdf5``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from more3s.envs import TaskSpec, check_actions, get_task, guess_task

from .episode import Episode, make_episode

__all__ = ["D4RL_KEYS", "read_d4rl"]

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def read_d4rl(path: Path, task: str | None, max_episodes: int | None) -> list[Episode]:
    """Episodes of a D4RL hdf5 file.

    D4RL stores no final observation per episode; it is taken from ``next_observations`` when the
    file has them, else the episode's last observation is repeated (and flagged in no way other
    than this docstring: it is never used as a training input for the last action's state).
    """
    if task is None:
        guessed = guess_task(path.stem)
        task = guessed.name if guessed is not None else None
    data = _read_arrays(path)
    spec = None if task is None else get_task(task)
    _check_arrays(path, data, spec)
    return _split_episodes(path, data, task, spec, max_episodes)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot open hdf5 file (truncated or corrupt?): {e}") from e
    with f:
        missing = [k for k in D4RL_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path}: missing D4RL field(s) {missing}; a D4RL file has "
                             f"{list(D4RL_KEYS)} (found {sorted(f.keys())})")
        data = {}
        for k in (*D4RL_KEYS, "next_observations"):
            if k in f:
                try:
                    data[k] = f[k][()]
                except OSError as e:
                    raise ValueError(f"{path}: field {k!r} cannot be read (truncated or corrupt?): "
                                     f"{e}") from e
    return data


def _check_arrays(path: Path, data: dict[str, np.ndarray], spec: TaskSpec | None) -> None:
    """One row per step in every field, finite floats, and (with a task) actions and observations of its size."""
    n = len(data["rewards"])
    for k, v in data.items():
        if np.ndim(v) == 0 or len(v) != n:
            raise ValueError(f"{path}: field {k!r} has {np.shape(v)[:1]} rows, expected {n} "
                             f"(length of 'rewards')")
    for k in ("observations", "rewards", "next_observations", "actions"):
        if k in data and np.issubdtype(data[k].dtype, np.floating) and not np.all(np.isfinite(data[k])):
            rows = np.unique(np.nonzero(~np.isfinite(data[k]))[0])[:5].tolist()
            raise ValueError(f"{path}: field {k!r} has NaN/inf values (rows {rows})")
    if spec is None:
        return
    a, obs = data["actions"], data["observations"]
    if spec.action_kind == "continuous" and (a.ndim != 2 or a.shape[1] != spec.action_dim):
        raise ValueError(f"{path}: field 'actions' has shape {a.shape}, but task {spec.name!r} "
                         f"has {spec.action_dim}-dimensional actions")
    if spec.obs_dim is not None and (obs.ndim != 2 or obs.shape[1] != spec.obs_dim):
        raise ValueError(f"{path}: field 'observations' has shape {obs.shape}, "
                         f"but task {spec.name!r} has {spec.obs_dim}-dimensional observations")


def _split_episodes(path: Path, data: dict[str, np.ndarray], task: str | None, spec: TaskSpec | None,
                    max_episodes: int | None) -> list[Episode]:
    n = len(data["rewards"])
    ends = np.flatnonzero(data["terminals"].astype(bool) | data["timeouts"].astype(bool))
    if n and (len(ends) == 0 or ends[-1] != n - 1):
        ends = np.append(ends, n - 1)  # a trailing unfinished episode counts as truncated
    episodes: list[Episode] = []
    start = 0
    for end in ends.tolist():
        if max_episodes is not None and len(episodes) >= max_episodes:
            break
        sl = slice(start, end + 1)
        obs = data["observations"][sl]
        last = data["next_observations"][end] if "next_observations" in data else obs[-1]
        term = data["terminals"][sl].astype(bool)
        trunc = data["timeouts"][sl].astype(bool) & ~term
        if not term[-1] and not trunc[-1]:
            trunc[-1] = True
        source = f"{path}: episode {len(episodes)}"
        ep = make_episode(np.concatenate([obs, last[None]]), data["actions"][sl], data["rewards"][sl],
                          term, trunc, task=task, source=source)
        if spec is not None:
            check_actions(spec, ep.actions, source)
        episodes.append(ep)
        start = end + 1
    return episodes
