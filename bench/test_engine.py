"""Whole rollout engine, environment steps per second: Breakout, lxmert-tiny, 8 vector environments.

Everything a real evaluation runs per step is inside the timing: ALE steps, region extraction,
the frozen encoder, the model decision and the RTG bookkeeping. The model is the embedded default's
geometry (dt-small: width 128, 1 head, 6 layers; window 20 + memory 20 steps). Engines:

* ``ring``: model.step over the ring-buffer KV cache (the default of ``python -m more3s.evaluate``);
* ``ring_compiled``: the same with the step compiled (``--compile-step``), timed after its compile;
* ``banded``: the exact oracle, forward_banded over the last L*(S-1)+1 = 235 steps each step;
* ``window``: the cache-less DT-style baseline, a plain forward over the last S = 40 steps
  (``model.step_without_cache``).

Episodes are capped at 240 agent steps, so the banded engine's history fills. The oracle engine runs
once per session in a fixture (it is slow); each entry's extra_info carries env-steps/s, the share
of time spent in the encoder, and the speedup over the oracle measured in the same run
(reported, not asserted; compare the window and ring entries directly).
Run: ``pytest bench/test_engine.py --benchmark-only``.
"""

from __future__ import annotations

import time

import pytest
import torch

from more3s.encoder import load_encoder
from more3s.envs import get_task, make_vector_env
from more3s.model import ModelConfig, MoreModel
from more3s.rollout.engine import RolloutEngine

__all__: list[str] = []

N_ENVS, CAP, WINDOW, MEMORY = 8, 240, 20, 20


class _TimedEncoder:
    """Wraps the encoder to account the time spent embedding states."""

    def __init__(self, enc):
        self.enc, self.seconds = enc, 0.0

    def embed_states(self, *args):
        t = time.perf_counter()
        out = self.enc.embed_states(*args)
        self.seconds += time.perf_counter() - t
        return out


@pytest.fixture(scope="module")
def setup():
    enc = load_encoder("lxmert-tiny", device="cpu")
    torch.manual_seed(0)
    cfg = ModelConfig(d_enc=enc.d_enc, act_dim=get_task("breakout").action_dim, backbone="dt-small",
                      window=WINDOW, memory_steps=MEMORY, max_timestep=1000, dropout=0.0)
    model = MoreModel(cfg, enc.embed_actions("breakout").float()).eval()
    return model, enc


def _engine(model, enc, mode):
    """An engine over a timed encoder; ``ring_compiled`` is compiled here, by a short warm-up run, so that the
    entry times the steady state as the others do (the compile, 15-60 s once per engine, is not in it)."""
    timed = _TimedEncoder(enc)
    if mode != "ring_compiled":
        return RolloutEngine(model, timed, "breakout", mode=mode), timed
    engine = RolloutEngine(model, timed, "breakout", compile_step=True)
    venv = make_vector_env("breakout", N_ENVS, max_episode_steps=2)
    try:
        engine.run(venv, 10.0, N_ENVS, seed=0)
    finally:
        venv.close()
    return engine, timed


def _run(engine, timed):
    timed.seconds = 0.0
    venv = make_vector_env("breakout", N_ENVS, max_episode_steps=CAP)
    try:
        res = engine.run(venv, 10.0, N_ENVS, seed=0)
    finally:
        venv.close()
    return res, timed.seconds


@pytest.fixture(scope="module")
def baselines(setup):
    """The oracle engine, timed once (it is slow): its env-steps/s go into every entry."""
    model, enc = setup
    res, enc_s = _run(*_engine(model, enc, "banded"))
    return {"banded": res.steps_per_s, "banded_encoder_share": enc_s / res.wall_s}


@pytest.mark.parametrize("mode", ["window", "ring", "ring_compiled"])
def test_engine_env_steps_per_s(benchmark, setup, baselines, mode):
    model, enc = setup
    box = {}
    engine, timed = _engine(model, enc, mode)

    def go():
        box["res"], box["enc_s"] = _run(engine, timed)

    benchmark.pedantic(go, rounds=1, iterations=1, warmup_rounds=0)
    res = box["res"]
    benchmark.extra_info.update(
        mode=mode, envs=N_ENVS, env_steps=res.env_steps, env_steps_per_s=round(res.steps_per_s, 1),
        encoder_time_share=round(box["enc_s"] / res.wall_s, 3),
        banded_env_steps_per_s=round(baselines["banded"], 1),
        speedup_vs_banded=round(res.steps_per_s / baselines["banded"], 2),
        cache_backend=model.new_rollout_cache(1).backend if mode.startswith("ring") else None,
    )
    assert res.env_steps >= N_ENVS * 1 and len(res.returns) == N_ENVS


def test_engine_recording_overhead(benchmark, setup, tmp_path):
    """The ring engine recording every episode as a video (more3s.video: overlay drawing + H.264 encoding) against
    the same run unrecorded, measured side by side here; extra_info has both env-steps/s and their ratio."""
    from more3s.envs import action_prompts
    from more3s.video import EpisodeRecorder, decision_scores

    model, enc = setup
    task = get_task("breakout")

    def play(record: bool):
        rec = EpisodeRecorder(tmp_path, task, action_prompts("breakout"), target=10.0, seed=0, total_envs=N_ENVS,
                              count=N_ENVS, scores=decision_scores(model), log=lambda m: None) if record else None
        venv = make_vector_env("breakout", N_ENVS, max_episode_steps=CAP)
        try:
            return RolloutEngine(model, enc, "breakout").run(venv, 10.0, N_ENVS, seed=0, recorder=rec), rec
        finally:
            venv.close()

    plain, _ = play(False)
    box = {}
    benchmark.pedantic(lambda: box.update(zip(("res", "rec"), play(True))), rounds=1, iterations=1, warmup_rounds=0)
    res, rec = box["res"], box["rec"]
    frames = sum(e["length"] for e in rec.entries)
    benchmark.extra_info.update(
        envs=N_ENVS, videos=len(rec.entries), video_frames=frames,
        video_bytes=sum((tmp_path / e["video"]).stat().st_size for e in rec.entries),
        env_steps_per_s_recorded=round(res.steps_per_s, 1), env_steps_per_s_plain=round(plain.steps_per_s, 1),
        recorded_over_plain=round(res.steps_per_s / plain.steps_per_s, 3),
    )
    assert res.returns == plain.returns and len(rec.entries) == N_ENVS
