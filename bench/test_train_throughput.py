"""Training throughput of the MORE-3S model (forward + backward + AdamW step) per backbone and rtg_mode, on synthetic
cache-like inputs (fp16 state embeddings, d_enc=256 as the tiny encoder), with the peer that does the same job,
``transformers.DecisionTransformerModel`` (same width, depth and window; 3 tokens per step, CE on its action head),
measured in the same run. extra_info: tokens/s, env-steps/s, ``speedup_vs_hf_dt`` (optimizer steps/s over the
peer's, at the same batch and window) and ``speedup_vs_hf_dt_per_token`` (tokens/s over the peer's): the per-step
ratio flatters MORE-3S, whose steps have 2 tokens ([a_{t-1}, s_t]) to DT's 3 ([R_t, s_t, a_t]).

``test_nature_cnn_step``: DT-as-published's Atari state path (Nature CNN over 4 stacked 84x84 frames, forward +
backward + AdamW, the ``cpu`` grid's batch 32 x window 30), as the model runs it (uint8 pixels, channels-last) and as
a plain NCHW float network with the standardization pass it used to take (``speedup_vs_nchw_float``).

``test_train_step_threads_vs_one``: the default run's training step (d_enc 1280, batch 32, window 20 + memory 20) on
every core this process may use against one thread, same run (``speedup_vs_one_thread``).

Run: ``pytest bench/test_train_throughput.py --benchmark-only`` (one thread, few rounds: CPU runtime stays modest).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from more3s.config import TrainConfig
from more3s.model import ModelConfig, MoreModel
from more3s.model.model import NatureCNN

__all__: list[str] = []

D_ENC, ACTS, WINDOW = 256, 4, 30
# Batch per backbone: GPT-2 geometry (768 wide) is ~40x the work of dt-small per token on this CPU.
BATCH = {"dt-small": 16, "gpt2-6l-random": 2}
MODES = ("kv", "embed", "token", "none")
ROUNDS = 3


def _batch(B: int, seed: int = 0, window: int = WINDOW, d_enc: int = D_ENC):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, window, d_enc, generator=g).half()  # the embedding cache is fp16
    actions = torch.randint(0, ACTS, (B, window), generator=g)
    prev = torch.cat([torch.zeros(B, 1, dtype=torch.long), actions[:, :-1]], dim=1)
    rtg = torch.rand(B, window, generator=g).flip(1).cumsum(1).flip(1)
    timesteps = torch.arange(window).repeat(B, 1) + torch.randint(0, 500, (B, 1), generator=g)
    return states, prev, actions, rtg, timesteps


def _more3s_step(backbone: str, mode: str):
    torch.manual_seed(0)
    cfg = ModelConfig(d_enc=D_ENC, act_dim=ACTS, backbone=backbone, rtg_mode=mode, window=WINDOW, max_timestep=1000)
    model = MoreModel(cfg, torch.randn(ACTS, D_ENC)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    states, prev, actions, rtg, timesteps = _batch(BATCH[backbone])

    def step():
        out = model(states, prev, rtg, timesteps, actions=actions)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step, cfg.tokens_per_step


def _hf_dt_step(backbone: str):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    geometry = ModelConfig(d_enc=D_ENC, act_dim=ACTS, backbone=backbone)
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(state_dim=D_ENC, act_dim=ACTS, hidden_size=geometry.n_embd, n_layer=geometry.n_layer,
                                    n_head=geometry.n_head, max_ep_len=1001, n_positions=4 * WINDOW, action_tanh=False)
    model = DecisionTransformerModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    states, _, actions, rtg, timesteps = _batch(BATCH[backbone])
    states = states.float()
    onehot = F.one_hot(actions, ACTS).float()  # DT consumes action vectors
    mask = torch.ones(states.shape[:2], dtype=torch.long)

    def step():
        _, action_preds, _ = model(states=states, actions=onehot, rewards=None, returns_to_go=rtg[..., None],
                                   timesteps=timesteps, attention_mask=mask, return_dict=False)
        loss = F.cross_entropy(action_preds.flatten(0, 1), actions.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _median_seconds(fn, n: int = ROUNDS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@pytest.fixture(scope="module")
def peer_seconds():
    """The peer's median step time per backbone, measured once in this run (the baseline of the ratios)."""
    cache: dict[str, float] = {}

    def get(backbone: str) -> float:
        if backbone not in cache:
            cache[backbone] = _median_seconds(_hf_dt_step(backbone))
        return cache[backbone]

    return get


HF_DT_TOKENS_PER_STEP = 3  # DecisionTransformerModel: [R_t, s_t, a_t]


def _report(benchmark, backbone: str, tokens_per_step: int, peer: float) -> None:
    if benchmark.disabled:  # --benchmark-disable: the step ran once, nothing to report
        return
    sec = benchmark.stats.stats.median
    steps = BATCH[backbone] * WINDOW
    benchmark.extra_info.update(
        backbone=backbone, batch=BATCH[backbone], window=WINDOW, d_enc=D_ENC, tokens_per_step=tokens_per_step,
        tokens_per_s=steps * tokens_per_step / sec, env_steps_per_s=steps / sec,
        hf_dt_median_s=peer, hf_dt_tokens_per_s=steps * HF_DT_TOKENS_PER_STEP / peer,
        speedup_vs_hf_dt=peer / sec,
        speedup_vs_hf_dt_per_token=(peer / sec) * tokens_per_step / HF_DT_TOKENS_PER_STEP,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backbone", list(BATCH))
def test_train_step_more3s(benchmark, peer_seconds, backbone, mode):
    torch.set_num_threads(1)
    step, n = _more3s_step(backbone, mode)
    peer = peer_seconds(backbone)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["rtg_mode"] = mode
    _report(benchmark, backbone, n, peer)


@pytest.mark.parametrize("backbone", list(BATCH))
def test_train_step_hf_dt(benchmark, peer_seconds, backbone):
    torch.set_num_threads(1)
    step = _hf_dt_step(backbone)
    peer = peer_seconds(backbone)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _report(benchmark, backbone, HF_DT_TOKENS_PER_STEP, peer)


CNN_BATCH, CNN_WINDOW = 32, 30  # the cpu grid's dt-published Breakout cells


def _cnn_step(layout: str):
    torch.manual_seed(0)
    cnn = NatureCNN(frames=4, size=84, C=ModelConfig(d_enc=1, act_dim=ACTS).n_embd).train()  # dt-small's width
    opt = torch.optim.AdamW(cnn.parameters(), lr=6e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    d = 4 * 84 * 84
    pixels = torch.randint(0, 256, (CNN_BATCH, CNN_WINDOW, d), dtype=torch.uint8, generator=g)
    zero, one = torch.zeros(d), torch.ones(d)

    def forward() -> torch.Tensor:
        if layout == "channels_last_uint8":
            return cnn(pixels)
        standardized = (pixels.float() - zero) / one  # the identity standardization every state went through
        return cnn.net(standardized.reshape(-1, 4, 84, 84) / 255.0)

    def step():
        loss = forward().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@pytest.fixture(scope="module")
def nchw_float_seconds() -> float:
    torch.set_num_threads(1)
    return _median_seconds(_cnn_step("nchw_float"))


@pytest.mark.parametrize("layout", ["channels_last_uint8", "nchw_float"])
def test_nature_cnn_step(benchmark, nchw_float_seconds, layout):
    torch.set_num_threads(1)
    benchmark.pedantic(_cnn_step(layout), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if not benchmark.disabled:
        sec = benchmark.stats.stats.median
        benchmark.extra_info.update(layout=layout, frames_per_s=CNN_BATCH * CNN_WINDOW / sec,
                                    nchw_float_median_s=nchw_float_seconds,
                                    speedup_vs_nchw_float=nchw_float_seconds / sec)


# The main job's training step: the trainer's default batch, window and memory, and lxmert-tiny's d_enc (10 x 128).
MAIN_D_ENC = 1280
MAIN_BATCH, MAIN_WINDOW, MAIN_MEMORY = TrainConfig.batch_size, TrainConfig.window, TrainConfig.memory_steps
MAIN_ROUNDS = 10  # a step is ~0.2 s: thread timings need more rounds than the throughput rows


def _main_job_step():
    """One optimizer step of the default run's model, the detached memory carried from window to window as the stream
    sampler carries it."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_enc=MAIN_D_ENC, act_dim=ACTS, window=MAIN_WINDOW, memory_steps=MAIN_MEMORY, max_timestep=1000)
    model = MoreModel(cfg, torch.randn(ACTS, MAIN_D_ENC)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    states, prev, actions, rtg, timesteps = _batch(MAIN_BATCH, window=MAIN_WINDOW, d_enc=MAIN_D_ENC)
    first = torch.zeros(MAIN_BATCH, MAIN_WINDOW, dtype=torch.bool)  # mid-episode windows: none starts an episode
    memory = [model.empty_memory(MAIN_BATCH)]

    def step():
        out = model(states, prev, rtg, timesteps, first=first, memory=memory[0], actions=actions)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        memory[0] = out.memory.detach()

    return step


def test_train_step_threads_vs_one(benchmark):
    """The default run's training step on every core this process may use (torch's default, what ``make train`` now
    keeps) against one thread (what it used to set), same run."""
    from more3s.distributed import cores_per_process, torch_threads

    with torch_threads(1):
        one = _median_seconds(_main_job_step(), MAIN_ROUNDS)
    with torch_threads(None) as n:
        benchmark.pedantic(_main_job_step(), rounds=MAIN_ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: the step ran once, nothing to report
        return
    sec = benchmark.stats.stats.median
    benchmark.extra_info.update(threads=n, cores=cores_per_process(), batch=MAIN_BATCH, window=MAIN_WINDOW,
                                memory_steps=MAIN_MEMORY, d_enc=MAIN_D_ENC, one_thread_median_s=one,
                                steps_per_s=1 / sec, speedup_vs_one_thread=one / sec)
