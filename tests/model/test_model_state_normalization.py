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


def _cnn_model():
    torch.manual_seed(0)
    cfg = ModelConfig(d_enc=4 * 84 * 84, act_dim=4, n_layer=1, n_head=2, n_embd=16, window=3, max_timestep=32,
                      dropout=0.0, state_embedder="nature_cnn", frame_stack=4, frame_size=84, rtg_mode="token",
                      objective="linear")
    return MoreModel(cfg, torch.eye(4, 4 * 84 * 84)).eval()


def test_the_cnn_reads_uint8_pixels_as_their_float_values_and_as_a_plain_nchw_network():
    """Training batches hold uint8 pixels, rollouts float ones; the CNN's channels-last input is a layout only."""
    model = _cnn_model()
    pixels = torch.randint(0, 256, (2, 3, 4 * 84 * 84), dtype=torch.uint8)
    as_uint8, as_float = model.embed_state(pixels), model.embed_state(pixels.float())
    plain = model.embed_state.net(pixels.float().reshape(-1, 4, 84, 84) / 255.0).reshape(2, 3, -1)  # NCHW
    torch.testing.assert_close(as_uint8, as_float, rtol=0, atol=0)
    torch.testing.assert_close(as_uint8, plain, rtol=1e-5, atol=1e-6)
    x = dict(prev_actions=torch.zeros(2, 3, dtype=torch.long), rtg=torch.ones(2, 3),
             timesteps=torch.arange(3).expand(2, 3).clone(), actions=torch.ones(2, 3, dtype=torch.long))
    torch.testing.assert_close(model(states=pixels, **x).logits, model(states=pixels.float(), **x).logits,
                               rtol=0, atol=0)
    assert all(p.is_contiguous() for p in model.parameters())  # checkpoints (safetensors) need contiguous weights


def test_the_cnn_refuses_state_statistics():
    with pytest.raises(ValueError, match="nature_cnn"):
        _cnn_model().set_state_normalization(torch.zeros(4 * 84 * 84), torch.ones(4 * 84 * 84))
