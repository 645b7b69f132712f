"""The frozen LXMERT wrapper: shapes, the composed forward against LxmertModel, action tables,
tokenizer checks, pretrained loading from a directory, and the GPU fast path against fp32 eager."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from more3s.encoder import (
    EncoderNotFoundError, TokenizerError, build_tokenizer, check_tokenizer, load_encoder,
    project_texts, region_projection,
)
from more3s.envs import PROMPT_SETS, get_task, state_caption


def test_frozen_and_shapes(tiny, breakout_frames, cheetah_run):
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.model.training  # frozen: train() keeps eval mode (no dropout)
    e = tiny.embed_states("breakout", breakout_frames[:9])
    assert e.shape == (9, tiny.d_enc) == (9, 128 * (2 + 8)) and e.dtype == torch.float32  # pooled, mean, 8 slots
    assert torch.isfinite(e).all() and not e.requires_grad
    m = tiny.embed_states("halfcheetah", cheetah_run[0])
    assert m.shape == (13, tiny.d_enc) and torch.isfinite(m).all()
    assert (m[:, 128 * 9:] == 0).all() and (m[:, 128 * 8:128 * 9] != 0).any()  # 7 bodies: slots 8.. are empty
    assert tiny.name == "lxmert-tiny" and len(tiny.fingerprint) == 40


def test_composed_forward_equals_lxmert_model(tiny, breakout_frames):
    """The fast path (folded projection, cached caption) computes exactly what LxmertModel computes."""
    frames = breakout_frames[:6]
    r = tiny.regions("breakout", frames)
    ours = tiny.embed_regions("breakout", r)
    P = torch.tensor(region_projection(r.feats.shape[-1], tiny.model.config.visual_feat_dim, 0))
    tok = tiny.tokenizer([state_caption("breakout")] * len(frames), return_tensors="pt")
    mask = torch.from_numpy(r.mask)
    with torch.no_grad():
        out = tiny.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                         visual_feats=torch.from_numpy(r.feats) @ P, visual_pos=torch.from_numpy(r.boxes),
                         visual_attention_mask=mask.float())
    vis_mean = (out.vision_output * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    slots = torch.from_numpy(r.slots)  # [N, 8] region per slot, -1 = empty
    slotted = out.vision_output[torch.arange(len(frames))[:, None], slots.clamp_min(0)] * (slots >= 0)[..., None]
    ref = torch.cat([out.pooled_output, vis_mean, slotted.flatten(1)], -1)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_rollout_fast_path_matches_sequence(tiny, breakout_frames):
    seq = tiny.embed_states("breakout", breakout_frames[:12])  # row t pairs with row t-1
    step = tiny.embed_states("breakout", breakout_frames[5:8], breakout_frames[4:7])  # 3 envs, one step
    torch.testing.assert_close(step, seq[5:8], atol=1e-5, rtol=1e-5)
    # the previous frame matters: a different previous frame gives a different embedding
    other = tiny.embed_states("breakout", breakout_frames[5:6], breakout_frames[5:6])
    assert not torch.allclose(other, seq[5:6], atol=1e-4)


def test_embeddings_do_not_depend_on_the_thread_count(tiny, breakout_frames, cheetah_run):
    """The cache key leaves out the thread count the encoder ran with (``encoder_threads``): the same states must
    come out bit for bit, whatever the count (regions split over threads, LXMERT's matmuls on several cores)."""
    from more3s.distributed import torch_threads

    runs = []
    for n in (1, 2):
        with torch_threads(n):
            runs.append((tiny.embed_states("breakout", breakout_frames[:24]),
                         tiny.embed_states("halfcheetah", cheetah_run[0])))
    for one, two in zip(*runs):
        assert torch.equal(one, two)


def test_action_tables(tiny):
    for task in ("breakout", "seaquest"):
        t = tiny.embed_actions(task)
        A = get_task(task).action_dim
        assert t.shape == (A, tiny.d_enc)
        assert torch.cdist(t, t)[~torch.eye(A, dtype=torch.bool)].min() > 1e-3  # one distinct row per action
    tables = [tiny.embed_actions("breakout", ps) for ps in PROMPT_SETS]
    assert not torch.allclose(tables[0], tables[1]) and not torch.allclose(tables[1], tables[2])
    # continuous: e_0 plus one row per action dimension (the model forms E_a(a) = e_0 + sum_i a_i e_i)
    c = tiny.embed_actions("halfcheetah")
    assert c.shape == (7, tiny.d_enc)
    with pytest.raises(ValueError, match="prompt set"):
        tiny.embed_actions("breakout", "poetic")


def test_offline_vocabulary_covers_every_prompt():
    tok = build_tokenizer()
    unk = tok.get_vocab()["[UNK]"]
    for text in project_texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids and unk not in ids, text


def test_empty_tokenizer_is_an_error(tmp_path):
    from transformers import BertTokenizer

    five = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])})
    with pytest.raises(TokenizerError, match="only 5 tokens"):
        check_tokenizer(five, "unc-nlp/lxmert-base-uncased")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *map(str, range(200))])}
    with pytest.raises(TokenizerError, match=r"every token .* \[UNK\]"):
        check_tokenizer(BertTokenizer(vocab=vocab), "digits-only")
    # the same check on the user's path: a saved model whose tokenizer directory holds an empty vocabulary
    from transformers import LxmertConfig, LxmertModel

    LxmertModel(LxmertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1,
                             x_layers=1, r_layers=1, vocab_size=5)).save_pretrained(tmp_path)
    five.save_pretrained(tmp_path)
    with pytest.raises(TokenizerError):
        load_encoder(str(tmp_path), device="cpu")


def test_missing_pretrained_is_an_error_or_a_loud_fallback(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the hub id is unreachable
    with pytest.raises((EncoderNotFoundError, TokenizerError)):
        load_encoder("unc-nlp/lxmert-base-uncased", device="cpu")
    with pytest.raises(EncoderNotFoundError, match="does not exist"):
        load_encoder(str(tmp_path / "no-such-dir"), device="cpu")
    with caplog.at_level(logging.WARNING, logger="more3s.encoder.lxmert"):
        enc = load_encoder("unc-nlp/lxmert-base-uncased", device="cpu", fallback="lxmert-tiny")
    assert enc.name == "lxmert-tiny" and "fallback" in enc.source
    assert "FALLING BACK" in caplog.text and "RANDOM-INIT" in caplog.text
    with pytest.raises(ValueError, match="fallback"):
        load_encoder("lxmert-tiny", fallback="gpt2")


def test_pretrained_directory_round_trip(tiny, tmp_path, monkeypatch, breakout_frames, caplog):
    """Save a small LXMERT + tokenizer, load it back the way users load pretrained weights (offline)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="more3s.encoder.lxmert"):
        enc = load_encoder(str(tmp_path), device="cpu")
    assert "pretrained LXMERT loaded from" in caplog.text
    assert enc.fingerprint == tiny.fingerprint  # the same weights and vocabulary
    assert enc.tokenizer(state_caption("pong"))["input_ids"] == tiny.tokenizer(state_caption("pong"))["input_ids"]
    torch.testing.assert_close(enc.embed_states("breakout", breakout_frames[:4]),
                               tiny.embed_states("breakout", breakout_frames[:4]), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_matches_fp32(dtype, tiny, breakout_frames, cheetah_run):
    """The numerics of the GPU path's dtype, on this CPU: fp16 / bf16 weights and activations keep every
    embedding within cosine 0.999 of fp32 (the GPU test adds CUDA graphs and CUDA's kernels)."""
    low = load_encoder("lxmert-tiny", device="cpu", dtype=dtype)
    assert low.dtype == dtype and low.fingerprint == tiny.fingerprint
    for task, obs in (("breakout", breakout_frames), ("halfcheetah", cheetah_run[0])):
        a, b = low.embed_states(task, obs), tiny.embed_states(task, obs)
        assert a.dtype == torch.float32  # the API returns float32 whatever the compute dtype
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item() >= 0.999, task
    tbl = torch.nn.functional.cosine_similarity(low.embed_actions("breakout"), tiny.embed_actions("breakout"))
    assert tbl.min().item() >= 0.999


def test_graph_buckets_pad_and_split_like_the_eager_path(tiny, breakout_frames, monkeypatch):
    """The CUDA-graph runner's bookkeeping (smallest bucket >= n, padded rows, batches over the largest bucket
    in pieces, static buffers reused) on this CPU, with an eager twin standing in for capture and replay."""
    import dataclasses

    from more3s.encoder.lxmert import _GraphRunner

    monkeypatch.setattr(tiny, "config", dataclasses.replace(tiny.config, graph_buckets=(1, 4, 8)))
    spec = get_task("breakout")
    recorded = []

    class EagerTwin(_GraphRunner):
        def _record(self, feats, boxes, mask, slots):
            recorded.append(feats.shape[0])
            out = torch.empty(feats.shape[0], tiny.d_enc, dtype=tiny.dtype)
            return (lambda: out.copy_(tiny._state_core(self.spec, feats, boxes, mask, slots))), out

    regions = tiny.regions("breakout", breakout_frames)
    feats, boxes, mask, slots = (torch.from_numpy(np.ascontiguousarray(x)) for x in (
        regions.feats, regions.boxes, regions.mask, regions.slots))
    feats, boxes = feats.to(tiny.dtype), boxes.to(tiny.dtype)
    runner = EagerTwin(tiny, spec, feats.shape[1], feats.shape[2])
    with torch.inference_mode():
        ref = tiny._state_core(spec, feats, boxes, mask, slots).float()  # [41, d_enc], one eager batch
        for n in (1, 3, 8, 19, 41):  # exact bucket, padded bucket, full bucket, 8 + 8 + 3, 5 pieces
            torch.testing.assert_close(runner(feats[:n], boxes[:n], mask[:n], slots[:n]), ref[:n],
                                       atol=1e-5, rtol=1e-5)
    assert recorded == [1, 4, 8]  # one capture per bucket, then replays


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["lxmert-tiny", "lxmert-base-random"])
def test_gpu_fp16_cuda_graphs_match_fp32_eager(name, breakout_frames, cheetah_run):
    fast = load_encoder(name, device="cuda")  # fp16 + CUDA graphs (the defaults on CUDA)
    ref = load_encoder(name, device="cuda", dtype=torch.float32, cuda_graphs=False)
    assert fast.cuda_graphs and fast.dtype == torch.float16 and fast.fingerprint == ref.fingerprint
    for task, obs in (("breakout", breakout_frames), ("halfcheetah", cheetah_run[0])):
        for n in (1, 5, 16, len(obs)):  # bucket sizes, a padded bucket, the whole run
            a = fast.embed_states(task, obs[:n])
            b = ref.embed_states(task, obs[:n])
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
            assert cos.min().item() >= 0.999, (task, n, cos.min().item())
        again = fast.embed_states(task, obs[:5])  # replaying a captured graph is deterministic
        torch.testing.assert_close(again, fast.embed_states(task, obs[:5]), atol=0, rtol=0)
    tbl = torch.nn.functional.cosine_similarity(fast.embed_actions("breakout"), ref.embed_actions("breakout"))
    assert tbl.min().item() >= 0.999
