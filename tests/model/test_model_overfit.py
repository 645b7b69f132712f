"""The model learns: on a tiny dataset of random "encoded" states and random actions it memorizes the actions
(training accuracy far above chance, or a small action error for continuous actions) in a few dozen AdamW steps."""

from __future__ import annotations

import pytest
import torch

from more3s.model import ModelConfig, MoreModel


@pytest.mark.parametrize("discrete,objective", [(True, "semantic"), (True, "mse"), (False, "semantic")],
                         ids=["semantic", "mse", "continuous"])
def test_overfits_tiny_dataset(discrete, objective):
    torch.manual_seed(0)
    B, K, A, d_enc, steps = 16, 8, 6, 32, 80
    cfg = ModelConfig(d_enc=d_enc, act_dim=A, discrete=discrete, objective=objective, n_layer=2, n_head=2,
                      n_embd=64, window=K, max_timestep=64, dropout=0.0)
    model = MoreModel(cfg, torch.randn(A if discrete else A + 1, d_enc))
    states = torch.randn(B, K, d_enc).half()  # as the embedding cache stores them
    if discrete:
        actions = torch.randint(0, A, (B, K))
        prev = torch.cat([torch.zeros(B, 1, dtype=torch.long), actions[:, :-1]], dim=1)
    else:
        actions = torch.rand(B, K, A) * 1.6 - 0.8
        prev = torch.cat([torch.zeros(B, 1, A), actions[:, :-1]], dim=1)
    rtg = torch.rand(B, K).flip(1).cumsum(1).flip(1)  # decreasing returns-to-go
    timesteps = torch.arange(K).repeat(B, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    start = model(states, prev, rtg, timesteps, actions=actions).metrics
    for _ in range(steps):
        out = model(states, prev, rtg, timesteps, actions=actions)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    m = {k: v.item() for k, v in out.metrics.items()}
    if discrete:
        assert m["action_acc"] > 0.9, f"accuracy {m['action_acc']:.2f} (chance {1 / A:.2f}, init {start['action_acc']:.2f})"
    else:
        assert m["action_loss"] < 0.1 * start["action_loss"].item(), (m, start)
    # the next-state head learns too (random states have unit variance)
    assert m["state_loss"] < 0.85 * start["state_loss"].item(), (m, start)
