"""ModelConfig (more3s.model.config): named geometries, derived sizes, the dict round trip and the choice tuples."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from more3s.model.config import OBJECTIVES, RTG_MODES, STATE_EMBEDDERS, ModelConfig, Objective, RtgMode, StateEmbedder


def test_config_geometry_and_roundtrip():
    cfg = ModelConfig(d_enc=8, act_dim=3, backbone="gpt2-6l-random", rtg_mode="token", memory_steps=4)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.head_dim) == (6, 12, 768, 64)
    assert cfg.tokens_per_step == 3 and cfg.context_steps == 34
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    small = ModelConfig(d_enc=8, act_dim=3)
    assert (small.n_layer, small.n_head, small.n_embd) == (6, 1, 128)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**dataclasses.asdict(small), "lr": 1.0})


def test_choice_tuples_are_their_literals():
    assert RTG_MODES == get_args(RtgMode) == ("kv", "embed", "token", "none")
    assert OBJECTIVES == get_args(Objective) == ("semantic", "mse", "linear")
    assert STATE_EMBEDDERS == get_args(StateEmbedder) == ("linear", "nature_cnn")
