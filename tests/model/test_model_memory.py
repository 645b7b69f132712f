"""Memory carried across the windows of a stream equals one long attention over the concatenated stream, where a
token of window w sees its own window causally plus the last M real steps before it (same episode only)."""

from __future__ import annotations

import pytest
import torch

from more3s.model import Memory


def _stream_oracle_mask(window_of: torch.Tensor, first: torch.Tensor, M: int, n: int) -> torch.Tensor:
    """[B, T, T] for the concatenated (padding-free) stream: window_of [B, L] = window index of each real step."""
    B, L = window_of.shape
    pos = torch.arange(L)
    episode = torch.cumsum(first.long(), dim=1)  # [B, L]
    # first real position of each step's window
    start = torch.stack([torch.stack([pos[window_of[b] == window_of[b, i]].min() for i in range(L)]) for b in range(B)])
    same = episode[:, :, None] == episode[:, None, :]  # [B, Lq, Lk]
    visible = same & (pos[None, None, :] <= pos[None, :, None]) & (pos[None, None, :] >= (start - M)[:, :, None])
    tok = visible.repeat_interleave(n, 1).repeat_interleave(n, 2)  # [B, T, T]
    return tok & torch.ones(L * n, L * n, dtype=torch.bool).tril()


@pytest.mark.parametrize("mode,M", [("kv", 3), ("token", 2), ("none", 5)])
def test_stream_memory_equals_long_attention(make_model, make_inputs, mode, M):
    K = 4
    model = make_model(rtg_mode=mode, memory_steps=M, window=K)
    n = model.config.tokens_per_step
    # two streams of 10 real steps in three windows of 4 (left padding where a window is short):
    #   row 0: one episode, windows of 2 (padded), 4, 4 real steps
    #   row 1: episode A over windows of 4 and 2 (padded) real steps, episode B starts with window 3 (4 steps)
    real_counts = [[2, 4, 4], [4, 2, 4]]
    starts = [[0, None, None], [0, None, 0]]  # timestep at the window's first real step: 0 = an episode begins
    full, _ = make_inputs(2, 10, t0=0)
    full["timesteps"] = torch.tensor([list(range(10)), list(range(6)) + list(range(4))])
    first_full = full["timesteps"] == 0
    window_of = torch.tensor([[0] * 2 + [1] * 4 + [2] * 4, [0] * 4 + [1] * 2 + [2] * 4])

    memory = model.empty_memory(2)
    got = {"logits": torch.zeros(2, 10, 5, dtype=torch.float64), "state_pred": torch.zeros(2, 10, 12, dtype=torch.float64)}
    cursor = [0, 0]
    for w in range(3):
        batch = {k: torch.zeros(2, K, *v.shape[2:], dtype=v.dtype) for k, v in full.items()}
        mask = torch.zeros(2, K, dtype=torch.bool)
        for b in range(2):
            c, r = cursor[b], real_counts[b][w]
            for k, v in full.items():
                batch[k][b, K - r:] = v[b, c:c + r]
            mask[b, K - r:] = True
        out = model(**batch, mask=mask, memory=memory)
        assert isinstance(out.memory, Memory) and not out.memory.k[0].requires_grad
        for b in range(2):
            c, r = cursor[b], real_counts[b][w]
            got["logits"][b, c:c + r] = out.logits[b, K - r:]
            got["state_pred"][b, c:c + r] = out.state_pred[b, K - r:]
            cursor[b] += r
        memory = out.memory
        # a window that starts an episode begins with empty memory; afterwards mem_len = min(Mt, real tokens seen)
    assert memory.mem_len.tolist() == [min(n * M, n * 10), min(n * M, n * 4)]

    oracle = model.forward_banded(**full, first=first_full, attn_mask=_stream_oracle_mask(window_of, first_full, M, n))
    torch.testing.assert_close(got["logits"], oracle.logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got["state_pred"], oracle.state_pred, rtol=1e-9, atol=1e-9)
    # and memory matters: without it the later windows differ
    plain = model.forward_banded(**full, first=first_full,
                                 attn_mask=_stream_oracle_mask(window_of, first_full, 0, n))
    assert not torch.allclose(plain.logits[0, 6:], oracle.logits[0, 6:])


def test_memory_gradients_stop_at_the_window(make_model, make_inputs):
    model = make_model(memory_steps=2).train()
    inputs, actions = make_inputs(2, 4)
    out1 = model(**inputs, memory=model.empty_memory(2), actions=actions)
    inputs2, actions2 = make_inputs(2, 4, seed=5, t0=4)
    out2 = model(**inputs2, memory=out1.memory, actions=actions2)
    out2.loss.backward()  # would fail ("backward through the graph a second time") or leak if memory kept a graph
    out1.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_memory_reset_and_shapes(make_model):
    model = make_model(memory_steps=3, rtg_mode="token")
    mem = model.empty_memory(4)
    assert len(mem.k) == 2 and mem.k[0].shape == (4, 2, 9, 8) and mem.mem_len.tolist() == [0] * 4
    mem = Memory(mem.k, mem.v, torch.tensor([9, 4, 0, 2]))
    assert mem.reset(torch.tensor([True, False, False, True])).mem_len.tolist() == [0, 4, 0, 0]
    with pytest.raises(ValueError, match="reset mask"):
        mem.reset(torch.tensor([1, 0, 0, 1]))
