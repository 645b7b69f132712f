"""Collect a Minari dataset by running a behaviour policy in a task's environment.

The library half of ``python -m more3s.collect`` (the trainer also calls ``collect_dataset`` to
build its default Breakout dataset when it is missing). Episodes stream to disk through
``MinariWriter`` (atomic, lossless, compressed; see writer.py), so memory stays flat even for the long
episodes a good tracker plays. Each episode gets its own seed, drawn from ``seed``, for both the env
reset and the policy's randomness: a collection is reproducible from (env, policy, episodes, seed,
max_episode_steps).

Atari episodes also record, per step, the console RAM and the facts decoded from it (``facts.py``) in
the Minari ``infos``: ground truth for ``python -m more3s.probe``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from more3s import __version__
from more3s.envs import TaskSpec, atari_ram, get_task, make_env

from .facts import FACTS, decode_facts
from .minari_paths import dataset_path
from .policies import Policy, make_policy
from .remote import published_reason
from .writer import MinariWriter

__all__ = ["collect_dataset"]


def _recreatable_spec(spec: EnvSpec | None) -> EnvSpec | None:
    """The env spec minus any wrapper that records no constructor args (gym cannot rebuild those),
    so that ``MinariDataset.recover_environment()`` works on our datasets. more3s' own NoopStart
    records its args and is kept."""
    if spec is None:
        return None
    keep = tuple(w for w in spec.additional_wrappers if w.kwargs is not None)
    return dataclasses.replace(spec, additional_wrappers=keep)


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[list[bool]]:
    """Make Ctrl-C / SIGTERM reliably stop the collection loop.

    CPython raises KeyboardInterrupt at the next bytecode, which can be inside a weakref callback or a
    ``__del__`` run by the garbage collector; there the exception is printed and dropped, and the loop
    would run on. The handler therefore also sets a flag that the step loop polls. Outside the main
    thread (no signal handlers there) the flag simply stays False.
    """
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        flag[0] = True
        raise KeyboardInterrupt(f"collection interrupted by {signal.Signals(signum).name}")

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, prev in old.items():
        if prev is not signal.SIG_IGN:  # respect a shell that ignores the signal (nohup, background jobs)
            signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, prev in old.items():
            signal.signal(sig, prev)


def _check_request(spec: TaskSpec, policy: str, episodes: int, dataset_id: str, max_episode_steps: int | None,
                   overwrite: bool) -> Path:
    """Refuse a collection before anything runs: bad counts, a published or taken id. Returns the destination."""
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    dest = dataset_path(dataset_id)
    why = published_reason(dataset_id)
    if why:
        raise ValueError(f"dataset id {dataset_id!r} is reserved for published data ({why}): more3s never writes "
                         f"its own collections under it. Choose a local id such as "
                         f"'more3s/{spec.name}/{policy.split(':')[0]}-v0'; for the published dataset run "
                         f"`minari download {dataset_id}` on a machine with internet.")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"Minari dataset {dataset_id!r} already exists at {dest}; "
                              f"choose another id or pass overwrite=True (--overwrite)")
    return dest


def _metadata(spec: TaskSpec, policy: str, episodes: int, seed: int, max_episode_steps: int | None,
              noop_max: int | None, description: str | None) -> dict[str, Any]:
    return {
        "algorithm_name": f"more3s.collect --policy {policy}",
        "author": {"more3s"},
        "code_permalink": "more3s/data/collect.py",
        "description": description or (
            f"{spec.name}: {episodes} episodes of behaviour policy {policy!r} (seed {seed}). "
            "Observations are lossless; 'rewards' are RAW rewards (clip to [-1, 1] for DT-style "
            "Atari training)."),
        # Provenance (more3s.data.dataset_provenance): targets, evaluation caps and reports follow it.
        "more3s": {"collected_by": "more3s", "version": __version__, "task": spec.name, "policy": policy,
                   "seed": int(seed),
                   "max_episode_steps": max_episode_steps, "noop_max": noop_max,
                   "rewards": "raw; clipped = clip(rewards, -1, 1)"},
    }


def _run_episode(gym_env: gym.Env[Any, Any], pol: Policy, writer: MinariWriter, ep_seed: int, *,
                 facts_task: str | None, interrupted: list[bool], policy: str) -> dict[str, float]:
    """One episode from reset to its end into ``writer``; with ``facts_task`` the RAM and its facts go along."""
    obs, _ = gym_env.reset(seed=ep_seed)
    attrs = dict(pol.reset(gym_env, np.random.default_rng(ep_seed)))
    writer.begin_episode(obs, seed=ep_seed)
    # With facts_task: the RAM and the frame beside each observation (the facts check that the frame draws the ball).
    rams: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    if facts_task is not None:
        rams.append(atari_ram(gym_env).copy())
        frames.append(np.array(obs))
    done = False
    while not done:
        if interrupted[0]:  # a KeyboardInterrupt swallowed by a GC callback still stops us
            raise KeyboardInterrupt("collection interrupted")
        action = pol.act(obs, gym_env)
        obs, reward, term, trunc, _ = gym_env.step(action)
        writer.add_step(action, obs, float(reward), bool(term), bool(trunc))
        if facts_task is not None:
            rams.append(atari_ram(gym_env).copy())
            frames.append(np.array(obs))
        done = term or trunc
    attrs["policy"] = getattr(pol, "name", policy)
    infos = None
    if facts_task is not None:
        ram = np.stack(rams)  # [T+1, 128] uint8, row t beside observation t
        infos = {"ram": ram, **decode_facts(facts_task, ram, np.stack(frames))}
    return writer.end_episode(attrs, infos)


def collect_dataset(env: str, policy: str, episodes: int, dataset_id: str, seed: int = 0,
                    max_episode_steps: int | None = None, *, overwrite: bool = False,
                    progress: bool = True, noop_max: int | None = None,
                    description: str | None = None) -> Path:
    """Run ``policy`` for ``episodes`` episodes of ``env`` and write Minari dataset ``dataset_id``.

    ``max_episode_steps`` caps episode length (a truncation); ``noop_max`` overrides Atari's 30
    no-op starts. Returns the dataset directory (``$MINARI_DATASETS_PATH/<id>``). The returns of
    the episodes are stored in the metadata under ``more3s.returns``.
    """
    spec = get_task(env)  # unknown env -> ValueError naming the known tasks
    dest = _check_request(spec, policy, episodes, dataset_id, max_episode_steps, overwrite)
    gym_env = make_env(spec, max_episode_steps=max_episode_steps, noop_max=noop_max)
    meta = _metadata(spec, policy, episodes, seed, max_episode_steps, noop_max, description)
    try:
        pol = make_policy(spec, policy, gym_env)  # unknown policy -> ValueError listing the choices
        writer = MinariWriter(dataset_id, gym_env.observation_space, gym_env.action_space,
                              env_spec=_recreatable_spec(gym_env.spec), metadata=meta, overwrite=overwrite)
    except BaseException:
        gym_env.close()
        raise
    facts_task = spec.name if spec.name in FACTS else None  # other games' RAM is not interpreted
    seeds = np.random.SeedSequence(seed).generate_state(episodes, dtype=np.uint32)
    returns: list[float] = []
    lengths: list[int] = []
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"collect {spec.name}/{policy}", unit="ep", disable=not progress)
    try:
        with _interrupt_flag() as interrupted, writer:
            for i in range(episodes):
                stats = _run_episode(gym_env, pol, writer, int(seeds[i]), facts_task=facts_task,
                                     interrupted=interrupted, policy=policy)
                returns.append(stats["raw_return"])
                lengths.append(int(stats["length"]))
                bar.update(1)
                bar.set_postfix(ret=f"{stats['raw_return']:.1f}", len=int(stats["length"]))
            meta["more3s"].update(returns=returns, lengths=lengths,
                                  seconds=round(time.perf_counter() - t0, 2))
            writer.metadata = meta
    finally:
        bar.close()
        gym_env.close()
    return dest
