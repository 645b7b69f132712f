"""State standardization: the model sees (E_s - mean) / std, in training and in rollouts alike."""

import pytest
import torch

from more3s.model import ModelConfig, MoreModel


def _model(d=12, A=4):
    torch.manual_seed(0)
    cfg = ModelConfig(d_enc=d, act_dim=A, n_layer=2, n_head=2, n_embd=16, window=4, max_timestep=32, dropout=0.0)
    return MoreModel(cfg, torch.randn(A, d)).eval()


def _inputs(B=2, K=4, d=12, A=4):
    g = torch.Generator().manual_seed(1)
    return dict(states=torch.randn(B, K, d, generator=g), prev_actions=torch.randint(0, A, (B, K), generator=g),
                rtg=torch.rand(B, K, generator=g) * 5, timesteps=torch.arange(K).expand(B, K).clone(),
                actions=torch.randint(0, A, (B, K), generator=g))


def test_statistics_shift_and_scale_cancel_exactly():
    """Moving the data by an offset and a per-dimension scale, with statistics to match, changes nothing."""
    model, x = _model(), _inputs()
    offset, scale = torch.randn(12) * 10, torch.rand(12) * 3 + 0.5
    base = model(**x)
    model.set_state_normalization(offset, scale)
    moved = model(**dict(x, states=x["states"] * scale + offset))
    torch.testing.assert_close(moved.logits, base.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(moved.loss, base.loss, rtol=1e-4, atol=1e-4)  # state target standardized too


def test_statistics_are_saved_with_the_weights_and_used_by_step():
    model, x = _model(), _inputs()
    model.set_state_normalization(torch.full((12,), 2.0), torch.full((12,), 3.0))
    clone = _model()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.state_std, model.state_std)
    cache = clone.new_rollout_cache(2)
    s = x["states"][:, 0]
    step = clone.step(cache, s, torch.zeros(2, dtype=torch.long), x["rtg"][:, 0], torch.zeros(2, dtype=torch.long),
                      torch.ones(2, dtype=torch.bool))
    full = clone(**{k: v[:, :1] for k, v in x.items() if k != "actions"}).logits[:, 0]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mean, std, msg", [
    (torch.zeros(11), torch.ones(12), "mean"),
    (torch.zeros(12), torch.zeros(12), "> 0"),
    (torch.full((12,), float("nan")), torch.ones(12), "finite"),
])
def test_bad_statistics_are_rejected(mean, std, msg):
    with pytest.raises(ValueError, match=msg):
        _model().set_state_normalization(mean, std)
