"""Rollout step API: ``model.step`` with a ring KV cache over a multi-episode stream (resets, eviction) equals one
full forward with the step-banded causal mask (the rollout semantics: README, 'Rollouts'). Reference ring backend; float32 (the
ring's widest dtype), so the tolerance is float32's: the two paths sum in different orders."""

from __future__ import annotations

import pytest
import torch

from more3s.model import ring_ops
from more3s.model.kv_cache import RingKVCache

BACKENDS = ["reference", pytest.param("cpp", marks=pytest.mark.skipif(
    not ring_ops.has_kernel("cpu"), reason="more3s._C not built (pip install --no-build-isolation -e .)"))]


def _episode_stream(N: int, L: int, starts: list[list[int]], discrete: bool, make_inputs):
    inputs, _ = make_inputs(N, L, discrete=discrete, seed=3, dtype=torch.float32)
    first = torch.zeros(N, L, dtype=torch.bool)
    timesteps = torch.zeros(N, L, dtype=torch.long)
    for b, ss in enumerate(starts):
        first[b, ss] = True
        t = -1
        for i in range(L):
            t = 0 if first[b, i] else t + 1
            timesteps[b, i] = t
    inputs["timesteps"] = timesteps
    return inputs, first


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,discrete", [("kv", True), ("token", True), ("embed", False), ("none", True)])
def test_step_equals_banded_forward(make_model, make_inputs, mode, discrete, backend):
    model = make_model(rtg_mode=mode, discrete=discrete, window=3, memory_steps=2, rtg_features=3,
                       dtype=torch.float32)  # S = 5 steps
    N, L = 3, 13
    starts = [[0], [0, 4], [0, 7, 9]]  # one long episode (ring eviction), and resets at different steps
    inputs, first = _episode_stream(N, L, starts, discrete, make_inputs)
    cache = model.new_rollout_cache(N, backend=backend)
    assert isinstance(cache, RingKVCache) and cache.capacity == model.config.tokens_per_step * 5
    got = []
    for t in range(L):
        got.append(model.step(cache, inputs["states"][:, t], inputs["prev_actions"][:, t], inputs["rtg"][:, t],
                              inputs["timesteps"][:, t], first[:, t]))
    got = torch.stack(got, dim=1)  # [N, L, A]
    with torch.no_grad():
        want = model.forward_banded(**inputs, first=first).logits  # band = window + memory steps
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the band matters: a wider one differs once the ring has evicted (row 0 is one 13-step episode)
    with torch.no_grad():
        wide = model.forward_banded(**inputs, first=first, band_steps=L).logits
    assert not torch.allclose(wide[0, 5:], want[0, 5:])


def test_step_without_cache_equals_step_before_eviction(make_model, make_inputs):
    """Within the first S steps of an episode the ring holds the whole history: the cache-less baseline agrees."""
    model = make_model(window=3, memory_steps=2, dtype=torch.float32)
    S, N = 5, 2
    inputs, _ = make_inputs(N, S, dtype=torch.float32)
    cache = model.new_rollout_cache(N, backend="reference")
    first = inputs["timesteps"] == 0
    for t in range(S):
        logits = model.step(cache, inputs["states"][:, t], inputs["prev_actions"][:, t], inputs["rtg"][:, t],
                            inputs["timesteps"][:, t], first[:, t])
        rec = model.step_without_cache(**{k: v[:, : t + 1] for k, v in inputs.items()})
        torch.testing.assert_close(logits, rec, rtol=1e-5, atol=1e-5)
    assert model.predict_action(logits).shape == (N,)


def test_step_validates_inputs(make_model, make_inputs):
    model = make_model(window=2, dtype=torch.float32)
    cache = model.new_rollout_cache(2, backend="reference")
    s = torch.randn(2, 12)
    ok = dict(prev_action=torch.zeros(2, dtype=torch.long), rtg=torch.zeros(2),
              timestep=torch.zeros(2, dtype=torch.long), first=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="state_emb"):
        model.step(cache, s[:, :5], **ok)
    with pytest.raises(ValueError, match="rtg"):
        model.step(cache, s, **{**ok, "rtg": torch.zeros(3)})
    with pytest.raises(ValueError, match="prev_action"):
        model.step(cache, s, **{**ok, "prev_action": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="first"):
        model.step(cache, s, **{**ok, "first": torch.ones(2, dtype=torch.long)})


@pytest.mark.parametrize("kw", [dict(), dict(objective="mse"), dict(rtg_mode="token"), dict(discrete=False)])
def test_lean_step_without_cache_equals_full_forward(make_model, make_inputs, kw):
    """The cache-less baseline runs only the last token's action head; its decision is the full forward's."""
    model = make_model(window=5, **kw)
    discrete = kw.get("discrete", True)
    inputs, _ = make_inputs(3, 5, discrete=discrete, t0=2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False  # left padding
    got = model.step_without_cache(**inputs, mask=mask)
    with torch.no_grad():
        want = model(**inputs, mask=mask).logits[:, -1]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode,discrete,backend", [
    pytest.param("kv", True, "cpp", marks=BACKENDS[-1].marks), ("embed", False, "reference")])
def test_compiled_step_equals_step(make_model, make_inputs, mode, discrete, backend):
    """``compile_step`` (one inductor graph over the ring) decides as ``step`` does, through resets and eviction.
    Its weights are frozen into the graph: after an in-place update it refuses to run, and a new compiled step of
    the same model (same parameter addresses) decides with the new weights, not a cached graph's."""
    model = make_model(rtg_mode=mode, discrete=discrete, window=3, memory_steps=2, dtype=torch.float32)
    N, L = 3, 13
    inputs, first = _episode_stream(N, L, [[0], [0, 4], [0, 7, 9]], discrete, make_inputs)
    eager, ring = model.new_rollout_cache(N, backend=backend), model.new_rollout_cache(N, backend=backend)
    compiled = model.compile_step(ring)

    def both(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        args = (inputs["states"][:, t], inputs["prev_actions"][:, t], inputs["rtg"][:, t], inputs["timesteps"][:, t],
                first[:, t])
        return model.step(eager, *args), compiled(*args)

    for t in range(L):
        want, got = both(t)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(ring.tokens_seen, eager.tokens_seen)
    torch.testing.assert_close(ring.k, eager.k, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    with pytest.raises(RuntimeError, match="weights changed"):
        both(0)
    compiled = model.compile_step(ring)
    assert torch.equal(ring.tokens_seen, torch.zeros(N, dtype=torch.long))  # the compiling call left no trace
    eager.reset(torch.ones(N, dtype=torch.bool))
    for t in range(4):
        want, got = both(t)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compile_step_validates(make_model, make_inputs):
    model = make_model(window=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        model.compile_step(model.new_rollout_cache(2, backend="reference", dtype=torch.float16))
    with pytest.raises(ValueError, match="eval"):
        model.train().compile_step(model.new_rollout_cache(2, backend="reference"))
    step = model.eval().compile_step(model.new_rollout_cache(2, backend="reference"))
    ok = dict(prev_action=torch.zeros(3, dtype=torch.long), rtg=torch.zeros(3),
              timestep=torch.zeros(3, dtype=torch.long), first=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="environments"):  # checked before anything compiles
        step(torch.randn(3, 12), **ok)
    with pytest.raises(ValueError, match="state_emb"):
        step(torch.randn(2, 5), **{k: v[:2] for k, v in ok.items()})
