"""MoreModel training forward: every rtg_mode trains, masks never leak the future, padding changes nothing,
the fused-contract path equals the explicit-mask oracle, bad input raises."""

from __future__ import annotations

import pytest
import torch

from more3s.model import ModelConfig, MoreModel, banded_attention_mask, rtg_features

MODES = ("kv", "embed", "token", "none")


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
@pytest.mark.parametrize("mode", MODES)
def test_rtg_modes_forward_backward(make_model, make_inputs, mode, discrete):
    model = make_model(discrete=discrete, rtg_mode=mode, dtype=torch.float32).train()
    inputs, actions = make_inputs(3, 4, discrete=discrete, dtype=torch.float32)
    inputs["states"] = inputs["states"].half()  # the cache stores fp16: the model casts
    out = model(**inputs, actions=actions)
    assert out.logits.shape == (3, 4, 5) and out.state_pred.shape == (3, 4, 12)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("embed_state.weight", "embed_action.weight", "blocks.0.attn.c_attn.weight", "head_action.weight",
                 "head_state.weight", "start_token"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    if mode == "kv":
        assert grads["blocks.1.attn.w_k"].abs().sum() > 0 and grads["blocks.0.attn.w_v"].abs().sum() > 0
    if mode in ("embed", "token"):
        assert grads["embed_rtg.weight"].abs().sum() > 0
    assert set(out.metrics) >= {"loss", "action_loss", "state_loss"}
    assert ("action_acc" in out.metrics) == discrete
    # RTG conditions the output in every mode but behaviour cloning
    model.eval()
    with torch.no_grad():
        a = model(**inputs).logits
        b = model(**{**inputs, "rtg": inputs["rtg"] + 5.0}).logits
    assert (not torch.allclose(a, b)) == (mode != "none")


def test_mse_objective_decodes_nearest_row(make_model, make_inputs):
    model = make_model(objective="mse")
    inputs, actions = make_inputs(2, 4)
    out = model(**inputs, actions=actions)
    assert torch.isfinite(out.loss) and "temperature" not in out.metrics
    lat = _latent(model, inputs)  # [2, 4, d_enc]: the state token's prediction of E_a(a_t)
    torch.testing.assert_close(out.logits, -torch.cdist(lat, model.action_table[None].expand(2, -1, -1)) ** 2)
    want = ((lat - model.action_table[actions]) ** 2).mean(-1).mean()  # the action term regresses the table row
    torch.testing.assert_close(out.metrics["action_loss"], want)
    nearest = torch.cdist(lat.flatten(0, 1), model.action_table).argmin(-1).view(2, 4)
    assert torch.equal(model.predict_action(out.logits), nearest)


def _latent(model, inputs):
    captured = {}
    hook = model.head_action.register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    return captured["z"]


@pytest.mark.parametrize("mode", MODES)
def test_future_never_leaks(make_model, make_inputs, mode):
    model = make_model(rtg_mode=mode)
    inputs, _ = make_inputs(2, 6)
    base = model(**inputs)
    t = 3
    # s_t and a_t (the next block's previous action): nothing before s_t's own token may move
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["states"][:, t] += 10.0
    changed["prev_actions"][:, t + 1] = (changed["prev_actions"][:, t + 1] + 1) % 5
    out = model(**changed)
    torch.testing.assert_close(out.logits[:, :t], base.logits[:, :t], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.state_pred[:, : t + 1], base.state_pred[:, : t + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(out.logits[:, t], base.logits[:, t])
    # R_t belongs to every token of block t (kv: both tokens' K/V; token: the R token leads the block)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["rtg"][:, t] -= 7.0
    out = model(**changed)
    torch.testing.assert_close(out.logits[:, :t], base.logits[:, :t], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.state_pred[:, :t], base.state_pred[:, :t], rtol=0, atol=1e-12)
    assert torch.allclose(out.logits[:, t], base.logits[:, t]) == (mode == "none")


@pytest.mark.parametrize("mode", ["kv", "embed"])
def test_left_padding_is_invisible(make_model, make_inputs, mode):
    model = make_model(rtg_mode=mode)
    inputs, actions = make_inputs(1, 5)
    ref = model(**inputs, actions=actions)
    pad = 3
    padded = {}
    for k, v in inputs.items():
        junk = torch.randint(0, 5, (1, pad, *v.shape[2:])) if not v.is_floating_point() else torch.randn(1, pad, *v.shape[2:], dtype=v.dtype) * 9
        padded[k] = torch.cat([junk, v], dim=1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)], dim=1)
    padded_actions = torch.cat([torch.randint(0, 5, (1, pad)), actions], dim=1)
    out = model(**padded, mask=mask, first=padded["timesteps"] == 0, actions=padded_actions)
    torch.testing.assert_close(out.logits[:, pad:], ref.logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.state_pred[:, pad:], ref.state_pred, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-10, atol=1e-10)  # padded steps carry no loss
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("mode", MODES)
def test_contract_path_equals_explicit_oracle(make_model, make_inputs, mode):
    """forward (more_attention, causal window) == forward_banded with a band covering the whole window."""
    model = make_model(rtg_mode=mode, rtg_features=3)
    inputs, _ = make_inputs(3, 5, t0=2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False
    a = model(**inputs, mask=mask)
    b = model.forward_banded(**inputs, mask=mask, band_steps=5)
    real = mask[..., None]
    torch.testing.assert_close(a.logits * real, b.logits * real, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.state_pred * real, b.state_pred * real, rtol=1e-10, atol=1e-10)


def test_banded_mask_semantics():
    first = torch.tensor([[True, False, False, True, False]])
    mask = torch.tensor([[True, True, True, True, True]])
    m = banded_attention_mask(first, mask, band_steps=2, tokens_per_step=2)  # [1, 10, 10]
    step = torch.arange(10) // 2
    for i in range(10):
        for j in range(10):
            si, sj = step[i].item(), step[j].item()
            same_ep = (si >= 3) == (sj >= 3)
            want = same_ep and j <= i and si - sj < 2
            assert m[0, i, j].item() == want, (i, j)


def test_rtg_fourier_features():
    r = torch.tensor([[0.0, 2.0, -4.0]])
    phi1 = rtg_features(r, 2.0, 1)
    torch.testing.assert_close(phi1[..., 0], r / 2)
    phi5 = rtg_features(r, 2.0, 5)
    assert phi5.shape == (1, 3, 5)
    torch.testing.assert_close(phi5[..., 0], r / 2)
    torch.testing.assert_close(phi5[..., 1], torch.sin(torch.pi * r / 2))
    torch.testing.assert_close(phi5[..., 4], torch.cos(2 * torch.pi * r / 2))


def test_bad_inputs_raise(make_model, make_inputs):
    model = make_model()
    inputs, actions = make_inputs(2, 4)
    with pytest.raises(ValueError, match="states"):
        model(**{**inputs, "states": inputs["states"][..., :5]})
    with pytest.raises(ValueError, match="prev_actions"):
        model(**{**inputs, "prev_actions": inputs["prev_actions"].double()})
    with pytest.raises(ValueError, match="rtg"):
        model(**{**inputs, "rtg": inputs["rtg"][:, :3]})
    right_padded = torch.ones(2, 4, dtype=torch.bool)
    right_padded[0, 3] = False
    with pytest.raises(ValueError, match="LEFT"):
        model(**inputs, mask=right_padded)
    mid_first = torch.zeros(2, 4, dtype=torch.bool)
    mid_first[1, 2] = True
    with pytest.raises(ValueError, match="one episode"):
        model(**inputs, first=mid_first)
    with pytest.raises(ValueError, match="actions"):
        model(**inputs, actions=actions[:, :2])
    with pytest.raises(ValueError, match="memory_steps=0"):
        model.empty_memory(2)
    with pytest.raises(ValueError, match="action_table"):
        MoreModel(model.config, torch.zeros(3, 12))
    for bad in (dict(rtg_mode="film"), dict(objective="ce"), dict(backbone="gpt3"), dict(rtg_features=2),
                dict(n_embd=30, n_head=4), dict(memory_steps=-1), dict(window=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ModelConfig(d_enc=12, act_dim=5, **bad)


def test_triton_attention_backend_matches_reference(make_model, make_inputs, monkeypatch):
    """The model on the fused kernel (interpreted on the CPU) equals the reference path, memory included."""
    model = make_model(rtg_mode="kv", memory_steps=2, dtype=torch.float32, n_layer=1)
    inputs, actions = make_inputs(2, 3, dtype=torch.float32)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    ref = model(**inputs, mask=mask, memory=model.empty_memory(2), actions=actions)
    for block in model.blocks:
        block.attn.backend = "triton"
    import more3s.kernels.more_attention as kernel

    calls = []
    real = kernel.more_attention_triton
    monkeypatch.setattr(kernel, "more_attention_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    tri = model(**inputs, mask=mask, memory=model.empty_memory(2), actions=actions)
    assert len(calls) == 1  # the kernel really ran (no fallback to the reference)
    torch.testing.assert_close(tri.logits, ref.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tri.memory.k[0], ref.memory.k[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tri.loss, ref.loss, rtol=1e-4, atol=1e-4)
