"""The MORE-3S sequence model, whole, in one file: leaf modules -> block -> top model.

API::

    cfg = ModelConfig(d_enc=..., act_dim=A, discrete=True, backbone="dt-small", window=30, memory_steps=0)
    model = MoreModel(cfg, action_table)          # [A, d_enc] discrete | [A+1, d_enc] continuous (e_0, e_1..e_A)
    # (more3s.model.build_model(cfg, table) also loads GPT-2 weights for backbone="gpt2")
    out = model(states [B,K,d_enc], prev_actions [B,K] long | [B,K,A], rtg [B,K], timesteps [B,K],
                first=None [B,K] bool, mask=None [B,K] bool (True = real, LEFT padding),
                memory=None | Memory, actions=None [B,K] long | [B,K,A])
      -> ModelOutput(logits [B,K,A], state_pred [B,K,d_enc], memory, loss, metrics)
    mem = model.empty_memory(B)                   # stream training: out.memory feeds the next window
    cache = model.new_rollout_cache(N)            # RingKVCache with tokens_per_step * (window + memory) slots
    logits = model.step(cache, state_emb [N,d_enc], prev_action [N] | [N,A], rtg [N], timestep [N], first [N])
    model.forward_banded(...)       # the exact oracle of step(): full sequence, step-banded causal mask
    model.step_without_cache(...)   # the cache-less baseline: plain forward over the last S steps

Why it looks like this:

* Tokens: each step t is the block ``[a_{t-1}, s_t]`` (``[R_t, a_{t-1}, s_t]`` for ``rtg_mode="token"``), each
  token ``P(E(.)) + tau(t)``; a learned start token stands in for ``a_{-1}``. No position embedding: a token's
  index in the window means nothing, which is what makes sliding windows, memory and the ring cache exact.
* RTG (``rtg_mode="kv"``): in every layer and head ``K' = K + phi(R) W_k``, ``V' = V + phi(R) W_v``: inside
  ``more_attention`` when training (the fused kernel on CUDA, its reference on CPU), through the same
  ``attention.inject_rtg`` on the ring and banded paths. Other modes: ``embed`` adds a linear map of
  phi(R) to the step's tokens, ``token`` is DT's RTG token, ``none`` is behaviour cloning.
* Memory: per layer, the injected K'/V' of the last M steps of the same stream, detached (Transformer-XL style).
* Objective ``semantic``: the state token maps into the encoder space and scores actions by cosine similarity with
  the frozen action table's rows (centred on their mean) over a learned temperature (CE); the action token of
  step t predicts E_s(s_t) (MSE, weight lambda). ``mse``: both heads regress encoder vectors; actions decode as the nearest table row. ``linear``: a plain
  Linear(C, A) action head on the same tokens (the baseline of the semantic head). Continuous actions:
  tanh head + MSE, plus the same state MSE, whatever the objective.
* No attention dropout: the fused kernel has none (GPT-2 and DT have 0.1); residual and embedding dropout remain.
The ring cache it steps (``kv_cache.py``, over the ops of ``ring_ops.py``) sits beside it; the engine that drives
it (``more3s.rollout.engine``), the trainer and the GPT-2 weight mapping (``backbones.py``) live elsewhere.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from more3s.model.attention import inject_rtg, masked_attention, more_attention
from more3s.model.config import ModelConfig
from more3s.model.kv_cache import CacheBackend, RingKVCache, RingTensors

__all__ = ["MoreModel", "Memory", "ModelOutput", "rtg_features", "banded_attention_mask"]


# ----------------------------------------------------------------------------------------------------------------
# small pieces: RTG features, memory record, output record, masks


def rtg_features(rtg: torch.Tensor, scale: float, num_features: int) -> torch.Tensor:
    """phi(R): ``[..., F]`` float32; F = 1 is ``R / scale``, odd F > 1 appends sin/cos at frequencies pi * 2^j."""
    x = rtg.float() / scale  # [...]
    if num_features == 1:
        return x[..., None]
    freqs = math.pi * 2.0 ** torch.arange((num_features - 1) // 2, device=x.device, dtype=x.dtype)  # [F'/2]
    ang = x[..., None] * freqs  # [..., F'/2]
    return torch.cat([x[..., None], torch.sin(ang), torch.cos(ang)], dim=-1)  # [..., F]


@dataclass
class Memory:
    """Per-layer detached, RTG-injected K'/V' of the last memory steps of each stream.

    ``k[l], v[l]: [B, H, Mt, D]`` (Mt = tokens_per_step * memory_steps); ``mem_len: [B]`` int64, the valid slots
    are the LAST ``mem_len[b]`` of the Mt (the attention contract's convention).
    """

    k: tuple[torch.Tensor, ...]
    v: tuple[torch.Tensor, ...]
    mem_len: torch.Tensor

    def reset(self, mask: torch.Tensor) -> "Memory":
        """Forget the streams where ``mask [B]`` is True (a new episode starts there)."""
        if mask.shape != self.mem_len.shape or mask.dtype != torch.bool:
            raise ValueError(f"reset mask: expected bool {tuple(self.mem_len.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        return replace(self, mem_len=torch.where(mask, torch.zeros_like(self.mem_len), self.mem_len))

    def detach(self) -> "Memory":
        return Memory(tuple(t.detach() for t in self.k), tuple(t.detach() for t in self.v), self.mem_len)

    def to(self, device: torch.device | str) -> "Memory":
        return Memory(tuple(t.to(device) for t in self.k), tuple(t.to(device) for t in self.v), self.mem_len.to(device))


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, K, A]: discrete action scores | continuous: tanh action in [-1, 1]
    state_pred: torch.Tensor | None  # [B, K, d_enc]: the action token of step t predicts E_s(s_t) (standardized);
    # None when the model has no state loss
    memory: Memory | None = None  # the next window's memory (stream training)
    loss: torch.Tensor | None = None  # scalar, when targets were given
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # 0-dim, detached


def banded_attention_mask(first: torch.Tensor, mask: torch.Tensor, band_steps: int, tokens_per_step: int) -> torch.Tensor:
    """``[B, T, T]`` bool, T = K * tokens_per_step: token i (step s_i) sees real token j (step s_j) iff both belong to
    the same episode (episodes start where ``first``), ``s_i - band_steps < s_j <= s_i`` and ``j <= i``.

    This is what the ring cache gives a rollout."""
    B, K = first.shape
    n = tokens_per_step
    episode = torch.cumsum(first.long(), dim=1)  # [B, K] episode id per step
    step = torch.arange(K, device=first.device)  # [K]
    same_ep = episode[:, :, None] == episode[:, None, :]  # [B, K(query), K(key)]
    dist = step[:, None] - step[None, :]  # [K, K] query step - key step
    steps_ok = same_ep & (dist >= 0) & (dist < band_steps)  # [B, K, K]
    tok = steps_ok.repeat_interleave(n, dim=1).repeat_interleave(n, dim=2)  # [B, T, T]
    causal = torch.ones(K * n, K * n, dtype=torch.bool, device=first.device).tril()  # [T, T]
    key_real = mask.repeat_interleave(n, dim=1)  # [B, T]
    return tok & causal & key_real[:, None, :]


def _memory_order(mem_len: torch.Tensor, Mt: int, tok_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Mt]`` indices into (memory slots ++ window tokens) of the last Mt valid entries, in order: the valid
    memory slots are the last ``mem_len`` of the Mt, the window's real tokens follow its left padding."""
    slot_valid = torch.arange(Mt, device=tok_mask.device) >= (Mt - mem_len)[:, None]  # [B, Mt]
    valid = torch.cat([slot_valid, tok_mask], dim=1)  # [B, Mt+T]
    return torch.argsort(valid.to(torch.int8), dim=1, stable=True)[:, -Mt:]  # invalid first, valid in order


def _append_memory(mem: torch.Tensor, new: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Next memory ``[B, H, Mt, D]``: the entries ``order`` picks from (mem [B,H,Mt,D] ++ new [B,H,T,D]), detached."""
    B, H, Mt, D = mem.shape
    both = torch.cat([mem, new.detach().to(mem.dtype)], dim=2)  # [B, H, Mt+T, D]
    return both.gather(2, order[:, None, :, None].expand(B, H, Mt, D))


# ----------------------------------------------------------------------------------------------------------------
# leaf modules


class SelfAttention(nn.Module):
    """GPT-2 attention with RTG injected into K/V (per-layer W_k, W_v: [H, F, D]) and optional memory.

    Three ways to attend, one set of weights: ``more_attention`` (training: causal window + memory), an explicit
    ``attn_mask`` (the banded oracle), or a ``RingKVCache`` (rollouts: K/V computed once per token)."""

    w_k: nn.Parameter | None
    w_v: nn.Parameter | None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _, self.n_head, C = cfg.geometry
        self.head_dim = cfg.head_dim
        self.c_attn = nn.Linear(C, 3 * C, bias=cfg.bias)
        self.c_proj = nn.Linear(C, C, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.backend = cfg.attention_backend
        if cfg.rtg_mode == "kv":
            self.w_k = nn.Parameter(torch.empty(self.n_head, cfg.rtg_features, self.head_dim))
            self.w_v = nn.Parameter(torch.empty(self.n_head, cfg.rtg_features, self.head_dim))
        else:
            self.w_k = self.w_v = None

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, C] -> q, k, v [B, nh, T, hs] (no RTG)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        return q, k, v

    def rtg_weights(self, like: torch.Tensor, num_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_k, W_v) [nh, F, hs] in ``like``'s dtype; zeros without kv-mode RTG (zero weights are the identity)."""
        if self.w_k is None or self.w_v is None:
            zeros = like.new_zeros(self.n_head, num_features, self.head_dim)
            return zeros, zeros
        return self.w_k.to(like.dtype), self.w_v.to(like.dtype)

    def qkv_injected(self, x: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, K', V') [B, nh, T, hs] with K' = K + phi W_k, V' = V + phi W_v (plain K, V without kv-mode RTG):
        the K'/V' that ``more_attention`` computes (and returns) on the training path, by the same function."""
        if self.w_k is None or self.w_v is None:
            return self.qkv(x)
        B, T, _ = x.shape
        H = self.n_head
        qkv = self.c_attn(x).view(B, T, 3 * H, self.head_dim).transpose(1, 2)  # [B, 3 nh, T, hs]: q | k | v heads
        # K and V as one [B, 2 nh, T, hs] tensor with W = (W_k | W_v): one injection call (a rollout step is many
        # tiny ops), element for element the same arithmetic as two.
        w = torch.cat((self.w_k, self.w_v)).to(qkv.dtype)  # [2 nh, F, hs]
        kv = inject_rtg(qkv[:, H:], phi.to(qkv.dtype), w)
        return qkv[:, :H], kv[:, :H], kv[:, H:]

    def forward(self, x: torch.Tensor, phi: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                k_mem: torch.Tensor | None = None, v_mem: torch.Tensor | None = None,
                mem_len: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: RingKVCache | RingTensors | None = None, layer: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x [B, T, C], phi [B, T, F] -> (y [B, T, C], k' [B, nh, T, hs] | None, v' | None)."""
        B, T, C = x.shape
        k_inj = v_inj = None
        if cache is not None:  # rollout: append the new tokens' K'/V' to the ring and attend over it
            y = cache.attend(layer, *self.qkv_injected(x, phi))  # [B, nh, T, hs]
        elif attn_mask is not None:  # explicit mask (oracle): fully masked rows give 0
            q, k, v = self.qkv_injected(x, phi)
            y = masked_attention(q, k, v, attn_mask[:, None])  # [B, nh, T, hs]
        else:
            q, k, v = self.qkv(x)
            w_k, w_v = self.rtg_weights(q, phi.shape[-1])  # the contract always injects
            if k_mem is not None and v_mem is not None:  # memory may be kept wider than the activations
                k_mem, v_mem = k_mem.to(q.dtype), v_mem.to(q.dtype)
            y, k_inj, v_inj = more_attention(q, k, v, phi.to(q.dtype), w_k, w_v, k_mem=k_mem, v_mem=v_mem,
                                             mem_len=mem_len, key_padding_mask=key_padding_mask, backend=self.backend)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: [B, T, C]
        return self.resid_drop(self.c_proj(y)), k_inj, v_inj


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.geometry[2]
        self.c_fc = nn.Linear(C, 4 * C, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * C, C, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.drop(self.c_proj(self.gelu(self.c_fc(x))))
        return y


# ----------------------------------------------------------------------------------------------------------------
# block


class Block(nn.Module):
    """Pre-LN GPT-2 block; parameter names match GPT-2's (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, ...)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.geometry[2]
        self.ln_1 = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, phi: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                k_mem: torch.Tensor | None = None, v_mem: torch.Tensor | None = None,
                mem_len: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: RingKVCache | RingTensors | None = None, layer: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The arguments after ``phi`` go to ``SelfAttention.forward`` (which way to attend)."""
        y, k_inj, v_inj = self.attn(self.ln_1(x), phi, key_padding_mask, k_mem, v_mem, mem_len, attn_mask, cache, layer)
        x = x + y
        return x + self.mlp(self.ln_2(x)), k_inj, v_inj


class NatureCNN(nn.Module):
    """DT's Atari state encoder (Mnih et al. 2015): stacked grayscale frames (0..255) -> one C-wide token."""

    def __init__(self, frames: int, size: int, C: int):
        super().__init__()
        self.frames, self.size = frames, size
        conv = nn.Sequential(nn.Conv2d(frames, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                             nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
        n_flat = conv(torch.zeros(1, frames, size, size)).shape[-1]  # 3136 for 84x84
        self.net = nn.Sequential(conv, nn.Linear(n_flat, C), nn.Tanh())  # DT ends its CNN in tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]  # x: [..., frames * size * size], uint8 (training batches) or float (rollouts)
        # Channels-last input: oneDNN's convolutions run about 2x faster on CPU (forward and backward, one thread;
        # bench/test_train_throughput.py); the weights stay contiguous, so checkpoints do not change. The layout change
        # and the cast happen before the scaling, on the smallest tensor (uint8 in training).
        frames = x.reshape(-1, self.frames, self.size, self.size).contiguous(memory_format=torch.channels_last)
        y: torch.Tensor = self.net(frames.to(next(self.net.parameters()).dtype) / 255.0)  # [N, C]
        return y.reshape(*lead, -1)


# ----------------------------------------------------------------------------------------------------------------
# top model


class MoreModel(nn.Module):
    """The sequence model (module docstring): training ``forward``, the rollout ``step`` over a ``RingKVCache``,
    its exact oracle ``forward_banded`` and the cache-less baseline ``step_without_cache``."""

    pretrained_source: str | None = None  # where backbone weights came from (backbones.build_model); None: random
    action_table: torch.Tensor  # buffers (declared for the type checker)
    state_mean: torch.Tensor
    state_std: torch.Tensor

    def __init__(self, cfg: ModelConfig, action_table: torch.Tensor):
        super().__init__()
        rows = cfg.act_dim if cfg.discrete else cfg.act_dim + 1
        if not isinstance(action_table, torch.Tensor) or tuple(action_table.shape) != (rows, cfg.d_enc):
            got = tuple(action_table.shape) if isinstance(action_table, torch.Tensor) else type(action_table).__name__
            raise ValueError(f"action_table: expected a tensor of shape ({rows}, {cfg.d_enc}) "
                             f"({'A' if cfg.discrete else 'A+1 = e_0, e_1..e_A'} x d_enc), got {got}")
        self.config = cfg
        L, _, C = cfg.geometry
        self.register_buffer("action_table", action_table.detach().float().clone())  # frozen E_a, saved with the model
        # Per-dimension standardization of E_s (identity until set_state_normalization): a frozen encoder's state
        # embeddings share a large common vector, and the differences between states that decide the action are a
        # few percent of it (random-init LXMERT: |mean| 10.5 vs 0.45 per state). Saved with the weights, so training,
        # every rollout engine mode and the cache-less baseline see the same inputs; also the space of the next-state prediction target.
        self.register_buffer("state_mean", torch.zeros(cfg.d_enc))
        self.register_buffer("state_std", torch.ones(cfg.d_enc))
        self.embed_state = (NatureCNN(cfg.frame_stack, cfg.frame_size, C) if cfg.state_embedder == "nature_cnn"
                            else nn.Linear(cfg.d_enc, C))  # P_s
        self.embed_action = nn.Linear(cfg.d_enc, C)  # P_a
        self.start_token = nn.Parameter(torch.empty(C))  # stands in for P_a(E_a(a_{-1}))
        self.embed_timestep = nn.Embedding(cfg.max_timestep + 1, C)  # tau
        self.embed_rtg = nn.Linear(cfg.rtg_features, C) if cfg.rtg_mode in ("embed", "token") else None
        self.embed_ln = nn.LayerNorm(C, eps=cfg.layer_norm_eps)  # as DT: normalize the mixed token embeddings
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias)
        head_out = cfg.d_enc if cfg.discrete and cfg.objective != "linear" else cfg.act_dim
        # state token -> encoder space (semantic, mse) | logits (linear) | action (continuous)
        self.head_action = nn.Linear(C, head_out)
        # action token -> E_s of its step's state; none without a state loss (DT: pixels are not predicted)
        self.head_state = nn.Linear(C, cfg.d_enc) if cfg.state_loss_weight > 0 else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))  # learned 1/temperature
        self.apply(self._init_weights)
        nn.init.normal_(self.start_token, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * L))
            elif name.endswith(("attn.w_k", "attn.w_v")):
                nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            bias = getattr(module, "bias", None)
            if bias is not None:
                nn.init.zeros_(bias)

    @torch.no_grad()
    def set_state_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardize state embeddings with dataset statistics ``mean, std [d_enc]`` (std must be > 0)."""
        d = self.config.d_enc
        if not self.config.standardizes_states:
            raise ValueError(f"state normalization: the {self.config.state_embedder} state embedder reads pixels / 255 "
                             "and ignores it")
        for name, t in (("mean", mean), ("std", std)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (d,) or not torch.isfinite(t).all():
                raise ValueError(f"state normalization {name}: expected a finite tensor of shape ({d},)")
        if not (std > 0).all():
            raise ValueError("state normalization std: every entry must be > 0")
        self.state_mean.copy_(mean)
        self.state_std.copy_(std)

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype the model computes in (its weights')."""
        return self.embed_action.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the model lives (its buffers')."""
        return self.action_table.device

    def _norm_states(self, states: torch.Tensor) -> torch.Tensor:
        return (states.float() - self.state_mean) / self.state_std  # [..., d_enc] float32

    # ---- inputs -> tokens ------------------------------------------------------------------------------------

    def _embed(self, states: torch.Tensor, prev_actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
               first: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``x [B, K*n, C]`` and their RTG features ``phi [B, K*n, F]`` (n = tokens per step)."""
        cfg = self.config
        B, K = states.shape[:2]
        dtype = self.param_dtype
        if cfg.standardizes_states:
            s = self.embed_state(self._norm_states(states).to(dtype))  # [B, K, C]
        else:  # pixels, scaled by the CNN itself
            s = self.embed_state(states)  # [B, K, C]
        if cfg.discrete:  # P_a(E_a(a)) = row a of P_a(E_a): project the A table rows, not the B*K tokens
            idx = torch.where(first | ~mask, torch.zeros_like(prev_actions), prev_actions)  # unused slots -> row 0
            a = F.embedding(idx, self.embed_action(self.action_table.to(dtype)))  # [B, K, C]
        else:
            e_a = self.action_table[0] + prev_actions.to(self.action_table.dtype) @ self.action_table[1:]  # [B, K, d_enc]
            a = self.embed_action(e_a.to(dtype))  # [B, K, C]
        a = torch.where(first[..., None], self.start_token.to(dtype).expand_as(a), a)
        tau = self.embed_timestep(timesteps.clamp(0, cfg.max_timestep))  # [B, K, C]
        phi = rtg_features(rtg, cfg.rtg_scale, cfg.rtg_features).to(dtype)  # [B, K, F]
        tokens = [a + tau, s + tau]
        if cfg.rtg_mode == "token" and self.embed_rtg is not None:
            tokens = [self.embed_rtg(phi) + tau] + tokens  # [R_t, a_{t-1}, s_t]
        elif cfg.rtg_mode == "embed" and self.embed_rtg is not None:
            r = self.embed_rtg(phi)  # [B, K, C]
            tokens = [t + r for t in tokens]
        n = len(tokens)
        x = torch.stack(tokens, dim=2).reshape(B, K * n, -1)  # interleave steps: [B, K*n, C]
        return self.drop(self.embed_ln(x)), phi.repeat_interleave(n, dim=1)  # phi: [B, K*n, F]

    def _check(self, states: torch.Tensor, prev_actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
               first: torch.Tensor | None, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validates the inputs' shapes and dtypes; returns (first & mask, mask) with their defaults filled in."""
        cfg = self.config
        if states.dim() != 3 or states.shape[-1] != cfg.d_enc:
            raise ValueError(f"states: expected [B, K, {cfg.d_enc}], got {tuple(states.shape)}")
        B, K = states.shape[:2]
        if cfg.discrete:
            if tuple(prev_actions.shape) != (B, K) or prev_actions.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"prev_actions: expected int [B, K] = [{B}, {K}] (discrete), "
                                 f"got {prev_actions.dtype} {tuple(prev_actions.shape)}")
        elif tuple(prev_actions.shape) != (B, K, cfg.act_dim) or not prev_actions.is_floating_point():
            raise ValueError(f"prev_actions: expected float [B, K, A] = [{B}, {K}, {cfg.act_dim}] (continuous), "
                             f"got {prev_actions.dtype} {tuple(prev_actions.shape)}")
        for name, t in (("rtg", rtg), ("timesteps", timesteps)):
            if tuple(t.shape) != (B, K):
                raise ValueError(f"{name}: expected [B, K] = [{B}, {K}], got {tuple(t.shape)}")
        if first is None:
            first = timesteps == 0
        if mask is None:
            mask = torch.ones(B, K, dtype=torch.bool, device=states.device)
        for name, t in (("first", first), ("mask", mask)):
            if tuple(t.shape) != (B, K) or t.dtype != torch.bool:
                raise ValueError(f"{name}: expected bool [B, K] = [{B}, {K}], got {t.dtype} {tuple(t.shape)}")
        # Value checks need a host sync: done on the CPU only (as more_attention's mem_len check), never on a GPU.
        if K > 1 and mask.device.type == "cpu" and bool((mask[:, :-1] & ~mask[:, 1:]).any()):
            raise ValueError("mask: padding must be on the LEFT (a real step followed by a padded one)")
        return first & mask, mask

    # ---- heads and loss --------------------------------------------------------------------------------------

    def _action_head(self, h_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """State-token outputs [..., C] -> (latent z [..., d_enc | A], logits/action [..., A])."""
        cfg = self.config
        z = self.head_action(h_state)
        if not cfg.discrete:
            return z, torch.tanh(z)
        if cfg.objective == "linear":
            return z, z  # plain logits [..., A]
        table = self.action_table.to(z.dtype)  # [A, d_enc]
        if cfg.objective == "semantic":
            scale = self.logit_scale.exp().clamp(max=100.0)  # CLIP's cap keeps the temperature >= 0.01
            # Cosine to the rows' offsets from the table's centroid: a random-init encoder puts prompts that
            # differ in one word (RIGHT/LEFT) at cosine ~0.9, which caps the logit gap at (1 - 0.9)/temperature
            # and keeps the policy from being sure; the centred rows are ~0.3-0.6 apart and keep their geometry.
            table = table - table.mean(0, keepdim=True)  # [A, d_enc]
            logits: torch.Tensor = scale * F.normalize(z, dim=-1) @ F.normalize(table, dim=-1).T  # cosine / temp.
            return z, logits
        d2 = (z * z).sum(-1, keepdim=True) - 2 * z @ table.T + (table * table).sum(-1)  # squared distance [..., A]
        return z, -d2  # argmax = nearest row

    def _loss(self, z: torch.Tensor, logits: torch.Tensor, state_pred: torch.Tensor | None, states: torch.Tensor,
              actions: torch.Tensor, first: torch.Tensor, mask: torch.Tensor,
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        w = mask.to(logits.dtype)  # [B, K] action targets exist at every real step
        n_act = w.sum().clamp(min=1.0)
        metrics: dict[str, torch.Tensor] = {}
        if cfg.discrete:
            if tuple(actions.shape) != tuple(mask.shape) or actions.is_floating_point():
                raise ValueError(f"actions: expected int [B, K] = {list(mask.shape)}, got {actions.dtype} {tuple(actions.shape)}")
            tgt = torch.where(mask, actions, torch.zeros_like(actions)).long()  # [B, K]
            if cfg.objective in ("semantic", "linear"):
                per = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), reduction="none").view_as(w)
            else:  # regress the taken action's table row
                per = (z.float() - self.action_table[tgt]).pow(2).mean(-1)  # [B, K]
            correct = (logits.argmax(-1) == tgt).to(w.dtype)
            metrics["action_acc"] = ((correct * w).sum() / n_act).detach()
        else:
            if tuple(actions.shape) != tuple(logits.shape):
                raise ValueError(f"actions: expected float {list(logits.shape)}, got {tuple(actions.shape)}")
            per = (logits.float() - actions.float()).pow(2).mean(-1)  # [B, K]
        action_loss = (per * w).sum() / n_act
        if state_pred is None:  # no state head (state_loss_weight = 0)
            state_loss = torch.zeros((), device=logits.device)
        else:
            ws = (mask & ~first).to(logits.dtype)  # the start token follows no action: no state target
            per_s = (state_pred.float() - self._norm_states(states)).pow(2).mean(-1)  # [B, K], standardized space
            state_loss = (per_s * ws).sum() / ws.sum().clamp(min=1.0)
        loss = action_loss + cfg.state_loss_weight * state_loss
        metrics.update(loss=loss.detach(), action_loss=action_loss.detach(), state_loss=state_loss.detach())
        if cfg.discrete and cfg.objective == "semantic":
            metrics["temperature"] = (1.0 / self.logit_scale.exp().clamp(max=100.0)).detach()
        return loss, metrics

    def _outputs(self, h: torch.Tensor, K: int, states: torch.Tensor, actions: torch.Tensor | None,
                 first: torch.Tensor, mask: torch.Tensor, memory: Memory | None) -> ModelOutput:
        n = self.config.tokens_per_step
        h = h.view(h.shape[0], K, n, -1)  # [B, K, n, C]
        z, logits = self._action_head(h[:, :, -1])  # state token: last of the block
        state_pred = self.head_state(h[:, :, -2]) if self.head_state is not None else None  # a_{t-1} -> E_s(s_t)
        if actions is None:
            return ModelOutput(logits, state_pred, memory)
        loss, metrics = self._loss(z, logits, state_pred, states, actions, first, mask)
        return ModelOutput(logits, state_pred, memory, loss, metrics)

    # ---- training forward ------------------------------------------------------------------------------------

    def empty_memory(self, batch_size: int, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> Memory:
        cfg = self.config
        if cfg.memory_steps == 0:
            raise ValueError("empty_memory: this model has memory_steps=0")
        device = device or self.device
        dtype = dtype or self.param_dtype
        L, H, _ = cfg.geometry
        shape = (batch_size, H, cfg.tokens_per_step * cfg.memory_steps, cfg.head_dim)
        zeros = tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(L))
        return Memory(zeros, tuple(torch.zeros_like(t) for t in zeros), torch.zeros(batch_size, dtype=torch.long, device=device))

    def forward(self, states: torch.Tensor, prev_actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
                first: torch.Tensor | None = None, mask: torch.Tensor | None = None, memory: Memory | None = None,
                actions: torch.Tensor | None = None) -> ModelOutput:
        """One window per row (left-padded). With ``memory`` (from ``empty_memory`` or the previous window of the same
        streams) queries also see those K'/V' and the updated, detached memory is returned."""
        first, mask = self._check(states, prev_actions, rtg, timesteps, first, mask)
        B, K = states.shape[:2]
        n = self.config.tokens_per_step
        if K > 1 and mask.device.type == "cpu" and bool((first[:, 1:] & mask[:, :-1]).any()):
            raise ValueError("first: an episode starts after a real step of the same window; windows hold one "
                             "episode (use forward_banded for multi-episode sequences)")
        x, phi = self._embed(states, prev_actions, rtg, timesteps, first, mask)
        tok_mask = mask.repeat_interleave(n, dim=1)  # [B, K*n]
        if memory is not None:
            if self.config.memory_steps == 0:
                raise ValueError("memory: this model has memory_steps=0")
            if memory.mem_len.shape != (B,):
                raise ValueError(f"memory: built for batch {tuple(memory.mem_len.shape)}, window batch is {B}")
            memory = memory.reset(first.any(dim=1))  # a window that starts an episode starts empty
            order = _memory_order(memory.mem_len, memory.k[0].shape[2], tok_mask)  # [B, Mt], shared by all layers
        new_k, new_v = [], []
        for layer, block in enumerate(self.blocks):
            kw = {} if memory is None else dict(k_mem=memory.k[layer], v_mem=memory.v[layer], mem_len=memory.mem_len)
            x, k_inj, v_inj = block(x, phi, key_padding_mask=tok_mask, **kw)
            if memory is not None:
                new_k.append(_append_memory(memory.k[layer], k_inj, order))
                new_v.append(_append_memory(memory.v[layer], v_inj, order))
        if memory is not None:
            Mt = memory.k[0].shape[2]
            memory = Memory(tuple(new_k), tuple(new_v), (memory.mem_len + tok_mask.sum(1)).clamp(max=Mt))
        return self._outputs(self.ln_f(x), K, states, actions, first, mask, memory)

    def forward_banded(self, states: torch.Tensor, prev_actions: torch.Tensor, rtg: torch.Tensor,
                       timesteps: torch.Tensor, first: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       band_steps: int | None = None, actions: torch.Tensor | None = None,
                       attn_mask: torch.Tensor | None = None) -> ModelOutput:
        """Whole sequences with the step-banded causal mask (``banded_attention_mask``): what ``step`` computes,
        token by token, over the same stream (episodes may start anywhere in a row). ``attn_mask [B, T, T]``
        overrides the band (tests build other visibility patterns with it). ``attention.masked_attention``: the
        oracle, not fast."""
        first, mask = self._check(states, prev_actions, rtg, timesteps, first, mask)
        B, K = states.shape[:2]
        n = self.config.tokens_per_step
        if attn_mask is None:
            attn_mask = banded_attention_mask(first, mask, band_steps or self.config.context_steps, n)
        elif tuple(attn_mask.shape) != (B, K * n, K * n):
            raise ValueError(f"attn_mask: expected [B, T, T] = [{B}, {K * n}, {K * n}], got {tuple(attn_mask.shape)}")
        x, phi = self._embed(states, prev_actions, rtg, timesteps, first, mask)
        for block in self.blocks:
            x, _, _ = block(x, phi, attn_mask=attn_mask)
        return self._outputs(self.ln_f(x), K, states, actions, first, mask, None)

    # ---- rollouts --------------------------------------------------------------------------------------------

    def new_rollout_cache(self, batch_size: int, backend: CacheBackend = "auto",
                          device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RingKVCache:
        """A ``RingKVCache`` holding the last window + memory steps of ``batch_size`` environments
        (capacity ``tokens_per_step * (window + memory_steps)`` tokens: 2x, or 3x with ``rtg_mode="token"``).

        ``dtype`` defaults to the parameters' (cast the model, e.g. ``.half()``, rather than autocast ``step``:
        the ring requires K/V in its own dtype)."""
        cfg = self.config
        L, H, _ = cfg.geometry
        return RingKVCache(L, batch_size, H, cfg.tokens_per_step * cfg.context_steps, cfg.head_dim,
                           dtype=dtype or self.param_dtype, device=device or self.device,
                           backend=backend)

    @torch.inference_mode()  # no autograd bookkeeping at all: a few % of a ring step
    def step(self, cache: RingKVCache, state_emb: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor,
             timestep: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Append one block per environment and return the state token's prediction: ``[N, A]`` (discrete logits or
        continuous action). Resets the ring of the environments where ``first [N]`` (idempotent). No host syncs."""
        self._check_step(state_emb, prev_action, rtg, timestep, first)
        cache.reset(first)
        return self._step_blocks(cache, state_emb, prev_action, rtg, timestep, first)

    def compile_step(self, cache: RingKVCache) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor], torch.Tensor]:
        """``step`` over ``cache`` (same arguments after it, same result) as one ``torch.compile``'d graph, for CPU
        rollouts, where a step is many tiny ops and Python dispatch costs as much as the arithmetic. Inductor fuses
        the elementwise ops, folds and pre-packs the weights (``freezing``) and calls its kernels from C++
        (``cpp_wrapper``). Compiles here (tens of seconds; the ring is left empty). The weights are constants of
        the graph: a call after they changed raises, so build a new compiled step then. CUDA rollouts capture a CUDA
        graph instead (``RolloutEngine``)."""
        if cache.device.type != "cpu" or self.device.type != "cpu":
            raise ValueError(f"compile_step: CPU rollouts only (model on {self.device}, cache on {cache.device}); "
                             "on CUDA the rollout engine captures the step as a CUDA graph")
        if self.training:
            raise ValueError("compile_step: call model.eval() first (dropout would be compiled in)")
        if cache.dtype != self.param_dtype:
            raise ValueError(f"compile_step: cache dtype {cache.dtype} != model dtype {self.param_dtype}")
        cfg, ring, n, N = self.config, cache.unchecked, self.config.tokens_per_step, cache.config.batch_size

        def traced(state_emb: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor, timestep: torch.Tensor,
                   first: torch.Tensor) -> torch.Tensor:
            ring.reset(first)
            out = self._step_blocks(ring, state_emb, prev_action, rtg, timestep, first)
            ring.advance(n)
            return out

        # A code object of its own: dynamo caches graphs per code object and, with frozen weights, tells models
        # apart by their parameters' addresses only, so a graph compiled before an in-place update would be reused.
        traced = types.FunctionType(traced.__code__.replace(), traced.__globals__, traced.__name__, None,
                                    traced.__closure__)
        compiled = torch.compile(traced, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
        weights = [*self.parameters(), *self.buffers()]

        def version() -> int:  # in-place updates (optimizer steps, load_state_dict) bump every tensor's counter
            return sum(t._version for t in weights)

        act = torch.zeros(N, dtype=torch.long) if cfg.discrete else torch.zeros(N, cfg.act_dim)
        try:
            with torch.inference_mode(), torch._inductor.config.patch(freezing=True):  # dynamo reads it when tracing
                compiled(torch.zeros(N, cfg.d_enc, dtype=self.param_dtype), act, torch.zeros(N),
                         torch.zeros(N, dtype=torch.long), torch.ones(N, dtype=torch.bool))
        except Exception as e:  # inductor's errors are many kinds (a missing C++ compiler, a backend failure)
            raise RuntimeError(f"compile_step: torch.compile failed ({type(e).__name__}: {e}); inductor's CPU "
                               "backend needs a working C++ compiler. Use model.step (the eager ring) instead") from e
        ring.tokens.zero_()  # forget the compiling call
        frozen_at = version()

        def step(state_emb: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor, timestep: torch.Tensor,
                 first: torch.Tensor) -> torch.Tensor:
            self._check_step(state_emb, prev_action, rtg, timestep, first)
            if state_emb.shape[0] != N:
                raise ValueError(f"state_emb: {state_emb.shape[0]} environments, the cache holds {N}")
            if version() != frozen_at:
                raise RuntimeError("compile_step: the model's weights changed after this step was compiled (they "
                                   "are constants of its graph); build a new one with model.compile_step(cache)")
            # Contiguous inputs match the compiling call's guards; a call that fails them anyway (another dtype)
            # recompiles, still with frozen weights.
            with torch.inference_mode(), torch._inductor.config.patch(freezing=True):
                out: torch.Tensor = compiled(state_emb.contiguous(), prev_action.contiguous(), rtg.contiguous(),
                                             timestep.contiguous(), first.contiguous())
            return out

        return step

    def _check_step(self, state_emb: torch.Tensor, prev_action: torch.Tensor, rtg: torch.Tensor,
                    timestep: torch.Tensor, first: torch.Tensor) -> None:
        """Shapes and dtypes of one rollout step's inputs (``step``, ``compile_step``)."""
        cfg = self.config
        N = state_emb.shape[0]
        if state_emb.dim() != 2 or state_emb.shape[1] != cfg.d_enc:
            raise ValueError(f"state_emb: expected [N, {cfg.d_enc}], got {tuple(state_emb.shape)}")
        for name, t in (("rtg", rtg), ("timestep", timestep), ("first", first)):
            if tuple(t.shape) != (N,):
                raise ValueError(f"{name}: expected [N] = [{N}], got {tuple(t.shape)}")
        if first.dtype != torch.bool:
            raise ValueError(f"first: expected bool, got {first.dtype}")
        want = (N,) if cfg.discrete else (N, cfg.act_dim)
        if tuple(prev_action.shape) != want or prev_action.is_floating_point() == cfg.discrete:
            kind = "int" if cfg.discrete else "float"
            raise ValueError(f"prev_action: expected {kind} {list(want)}, got {prev_action.dtype} {tuple(prev_action.shape)}")

    def _step_blocks(self, ring: RingKVCache | RingTensors, state_emb: torch.Tensor, prev_action: torch.Tensor,
                     rtg: torch.Tensor, timestep: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """One block per environment through every layer over ``ring`` (already reset) -> ``[N, A]``."""
        x, phi = self._embed(state_emb[:, None], prev_action[:, None], rtg[:, None], timestep[:, None], first[:, None],
                             torch.ones_like(first)[:, None])  # [N, n, C], [N, n, F]
        for layer, block in enumerate(self.blocks):
            x, _, _ = block(x, phi, cache=ring, layer=layer)
        return self._action_head(self.ln_f(x[:, -1]))[1]  # the state token is the block's last

    @torch.inference_mode()
    def step_without_cache(self, states: torch.Tensor, prev_actions: torch.Tensor, rtg: torch.Tensor,
                           timesteps: torch.Tensor, first: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cache-less baseline: a plain forward over the last S steps [N, S, ...] -> the last state token's [N, A].

        Lean on purpose (an honest baseline): only the decision's head runs, on the last token; ``forward`` would
        also run both heads on every token of the window, ~15 % of this call at dt-small with d_enc 1536."""
        first, mask = self._check(states, prev_actions, rtg, timesteps, first, mask)
        x, phi = self._embed(states, prev_actions, rtg, timesteps, first, mask)
        tok_mask = mask.repeat_interleave(self.config.tokens_per_step, dim=1)  # [N, S*n]
        for block in self.blocks:
            x, _, _ = block(x, phi, key_padding_mask=tok_mask)
        return self._action_head(self.ln_f(x[:, -1]))[1]  # the state token is the last

    def predict_action(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy action from ``step``'s output: argmax index (discrete) or the action itself (continuous)."""
        return logits.argmax(-1) if self.config.discrete else logits
