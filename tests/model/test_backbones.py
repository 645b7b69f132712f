"""GPT-2 weight mapping: a saved (random, small) GPT2Model loaded into MoreModel's blocks reproduces GPT-2's hidden
states on the same input embeddings, with RTG and memory switched off. GPT-2 adds position embeddings (wpe) to its
inputs and MORE-3S has none, so the saved model's wpe is zeroed: then GPT2Model(inputs_embeds=x) runs exactly the
blocks we copy. Missing weights fall back loudly or raise, never silently."""

from __future__ import annotations

import logging

import pytest
import torch

from more3s.model import ModelConfig, build_model


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_head=4, n_layer=3, n_positions=64, vocab_size=16,
                                bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        gpt2.wpe.weight.zero_()  # no position embedding: the comparison then covers the blocks alone
        for p in gpt2.parameters():  # GPT-2 init leaves LayerNorms at (1, 0): perturb so the mapping is tested
            p.add_(0.05 * torch.randn_like(p))
        gpt2.wpe.weight.zero_()
    path = tmp_path_factory.mktemp("gpt2-small-random")
    gpt2.save_pretrained(path)
    return path, gpt2.eval()


def _cfg(path, **kw):
    return ModelConfig(d_enc=10, act_dim=3, backbone="gpt2", n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                       backbone_path=str(path), **kw)


@pytest.mark.parametrize("mode", ["none", "kv"])
def test_gpt2_blocks_match_hidden_states(saved_gpt2, mode):
    path, gpt2 = saved_gpt2
    model = build_model(_cfg(path, rtg_mode=mode, require_pretrained=True), torch.randn(3, 10)).eval()
    assert model.pretrained_source == str(path)
    if mode == "kv":  # RTG switched off: zero injection weights
        for block in model.blocks:
            block.attn.w_k.data.zero_()
            block.attn.w_v.data.zero_()
    x = torch.randn(2, 7, 32)  # token embeddings [B, T, C]
    with torch.no_grad():
        ref = gpt2(inputs_embeds=x, output_hidden_states=True).hidden_states  # embeddings, after block 1, 2, 3(+ln_f)
        phi = torch.randn(2, 7, 1)
        h = x
        for block in model.blocks:  # the training path: more_attention (reference backend on the CPU)
            h, _, _ = block(h, phi, key_padding_mask=None)
        torch.testing.assert_close(h, ref[2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.ln_f(h), gpt2.ln_f(ref[2]), rtol=1e-5, atol=1e-5)


def test_missing_weights_fall_back_loudly(tmp_path, caplog):
    missing = tmp_path / "no-gpt2-here"
    with caplog.at_level(logging.WARNING, logger="more3s.model.backbones"):
        model = build_model(_cfg(missing), torch.randn(3, 10))
    assert model.pretrained_source is None
    assert any("FALLING BACK" in r.getMessage() and "no-gpt2-here" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="no-gpt2-here"):
        build_model(_cfg(missing, require_pretrained=True), torch.randn(3, 10))


def test_geometry_mismatch_is_an_error(saved_gpt2):
    path, _ = saved_gpt2
    cfg = ModelConfig(d_enc=10, act_dim=3, backbone="gpt2", n_layer=4, n_head=4, n_embd=32, backbone_path=str(path))
    with pytest.raises(ValueError, match="n_layer"):
        build_model(cfg, torch.randn(3, 10))
    cfg = ModelConfig(d_enc=10, act_dim=3, backbone="gpt2", n_layer=2, n_head=2, n_embd=32, backbone_path=str(path))
    with pytest.raises(ValueError, match="n_head"):
        build_model(cfg, torch.randn(3, 10))


def test_random_backbones_do_not_touch_gpt2(caplog):
    with caplog.at_level(logging.WARNING):
        model = build_model(ModelConfig(d_enc=10, act_dim=3, backbone="dt-small", n_layer=1), torch.randn(3, 10))
    assert model.pretrained_source is None and not caplog.records
