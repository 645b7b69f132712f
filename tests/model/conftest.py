"""Fixtures for the model tests: tiny configs and random, cache-like inputs (float64 for exact comparisons)."""

from __future__ import annotations

import pytest
import torch

from more3s.model import ModelConfig, MoreModel

D_ENC, ACTS = 12, 5


def tiny_model(seed: int = 0, discrete: bool = True, dtype=torch.float64, **kw) -> MoreModel:
    """A 2-layer, 2-head, width-16 model in eval mode (no dropout), float64 unless told."""
    base = dict(d_enc=D_ENC, act_dim=ACTS, discrete=discrete, n_layer=2, n_head=2, n_embd=16, window=4,
                max_timestep=64, dropout=0.0)
    base.update(kw)
    torch.manual_seed(seed)
    cfg = ModelConfig(**base)
    table = torch.randn(ACTS if discrete else ACTS + 1, D_ENC)
    return MoreModel(cfg, table).to(dtype).eval()


def random_inputs(B: int, K: int, discrete: bool = True, seed: int = 1, dtype=torch.float64, t0: int = 0):
    """states [B,K,d_enc], prev_actions, rtg [B,K], timesteps [B,K] (t0, t0+1, ...), actions (targets)."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, K, D_ENC, generator=g, dtype=dtype)
    if discrete:
        actions = torch.randint(0, ACTS, (B, K), generator=g)
        prev = torch.randint(0, ACTS, (B, K), generator=g)
    else:
        actions = torch.rand(B, K, ACTS, generator=g, dtype=dtype) * 2 - 1
        prev = torch.rand(B, K, ACTS, generator=g, dtype=dtype) * 2 - 1
    rtg = torch.randn(B, K, generator=g, dtype=dtype) * 3
    timesteps = torch.arange(t0, t0 + K).repeat(B, 1)
    return dict(states=states, prev_actions=prev, rtg=rtg, timesteps=timesteps), actions


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture
def make_inputs():
    return random_inputs
