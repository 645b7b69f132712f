"""DT as published (``--preset dt-published``, ``--encoder raw``): the CNN and observation paths train, and the ring
engine's decisions equal the banded oracle's."""

import dataclasses

import numpy as np
import pytest
import torch

from more3s.config import DT_PUBLISHED, config_from_dict, parse_args, preset_overrides
from more3s.encoder.raw import RawObservations
from more3s.envs import make_vector_env
from more3s.evaluate import load_run_model
from more3s.rollout.engine import RolloutEngine
from more3s.train import train


def _dt_config(tiny_config, env, dataset):
    base = tiny_config()
    cfg = config_from_dict(preset_overrides("dt-published", env), base)
    # the published geometry and batch, shrunk for a test: 2 layers, width 32, batch 4, 4-step windows
    return dataclasses.replace(cfg, env=env, dataset=dataset, n_layer=2, n_head=2, n_embd=32, batch_size=4,
                               window=4, max_steps=6, ckpt_every=6, preset="dt-published").validate()


def _ring_vs_banded(run_dir, env, steps=18):
    model, info, _ = load_run_model(run_dir)
    enc = RawObservations(env)
    out = {}
    for mode in ("ring", "banded"):
        venv = make_vector_env(env, 2, max_episode_steps=steps)
        try:
            out[mode] = RolloutEngine(model, enc, env, mode=mode, sample=True).run(venv, 3.0, 3, seed=5, record=True)
        finally:
            venv.close()
    ring, ref = out["ring"], out["banded"]
    assert len(ring.logits) == len(ref.logits) >= steps + 1  # an episode reset happened
    for r, a in zip(ring.logits, ref.logits):
        np.testing.assert_allclose(r, a, rtol=1e-4, atol=1e-4)
    for r, a in zip(ring.actions, ref.actions):  # discrete: the same draws from the same logits
        np.testing.assert_allclose(r, a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ring.returns, ref.returns, rtol=1e-4, atol=1e-3)  # MuJoCo amplifies 1e-6 action noise
    return model, info, ring


def test_atari_nature_cnn_trains_and_rolls_out(tiny_config, tiny_dataset):
    run = train(_dt_config(tiny_config, "breakout", tiny_dataset))
    model, info, ring = _ring_vs_banded(run, "breakout")
    cfg = model.config
    assert info["encoder"] == "raw" and cfg.state_embedder == "nature_cnn" and cfg.frame_stack == 4
    assert cfg.rtg_mode == "token" and cfg.memory_steps == 0 and cfg.objective == "linear"
    assert model.head_state is None and model.head_action.out_features == 4  # DT: linear logits, no state loss
    assert len({tuple(a.tolist()) for a in ring.actions}) > 1


def test_mujoco_observation_path_trains_and_rolls_out(tiny_config, tiny_cheetah):
    run = train(_dt_config(tiny_config, "halfcheetah", tiny_cheetah))
    model, info, _ = _ring_vs_banded(run, "halfcheetah")
    assert info["encoder"] == "raw" and model.config.state_embedder == "linear" and model.config.d_enc == 17
    assert float(model.state_std.min()) > 0 and not torch.equal(model.state_std, torch.ones(17))  # standardized


def test_preset_is_per_family_and_overridable():
    atari = parse_args(["--preset", "dt-published"])
    assert (atari.window, atari.batch_size, atari.n_head, atari.lr) == (30, 128, 8, 6e-4)
    pong = parse_args(["--preset", "dt-published", "--env", "pong", "--dataset", "x/pong-v0"])
    assert (pong.window, pong.batch_size) == (50, 512)
    hopper = parse_args(["--preset", "dt-published", "--env", "hopper", "--dataset", "x/h-v0", "--lr", "3e-4"])
    assert (hopper.n_layer, hopper.grad_clip, hopper.lr, hopper.encoder) == (3, 0.25, 3e-4, "raw")
    assert DT_PUBLISHED["mujoco"]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="choose one of"):
        preset_overrides("dt-2021", "breakout")
