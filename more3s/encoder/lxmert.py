"""The frozen LXMERT encoder: states and actions into one semantic space.

State embedding ``E_s(s) = LXMERT(regions of s, state caption)`` ->
``concat(pooled [CLS] output, masked mean of the vision outputs, vision outputs of S slotted regions)``
(S = ``RegionConfig.slots``; the regions module fills the slots in stable orders, so a sprite keeps its
slot; an empty slot is zero), so ``d_enc = (S + 2) * hidden``. The mean alone loses which object is where
(with random-init weights positions and motion are gone: ``python -m more3s.probe``); the slots keep them.
Action embedding: LXMERT's language stream on the action prompt alone ->
``concat(pooled [CLS], masked mean of the prompt's token outputs, outputs of its first S word pieces)``
(the same layout and width, so actions and states can be compared); one table per (task, prompt set).
Continuous actions: rows ``e_0, e_1 .. e_A`` and ``E_a(a) = e_0 + sum_i a_i e_i`` (the model combines them).

Weights: ``unc-nlp/lxmert-base-uncased`` (or a local directory holding a saved LXMERT and its
tokenizer) through ``from_pretrained``: a local directory, the Hugging Face cache, or the hub when
online. Named random-init configurations: ``lxmert-tiny`` (128 wide, 2/2/2 layers, 2 heads) and
``lxmert-base-random`` (the default config) with an offline vocabulary (``tokenizer.py``). Which one
ran is logged (random init at WARNING level); a missing pretrained model is an error unless a
fallback is named, and then the fallback is logged as a warning.

The forward pass is composed from LXMERT's own submodules rather than ``LxmertModel.forward`` so that
(1) the fixed projection of raw region features to ``visual_feat_dim`` folds into ``visn_fc``
(``x P W^T = x (P W^T)``: one small matmul instead of a 2048-wide one), (2) the caption's language
layers, which never see the image, run once per task instead of once per state, and (3) the state
path has static shapes and no host synchronization, so on CUDA it is captured in CUDA graphs over
fixed batch buckets (fp16 by default; ``more3s.cuda_graphs``): a rollout step of N envs is one graph replay.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from more3s import cuda_graphs
from more3s.envs import PromptSet, TaskSpec, action_prompts, base_action_prompt, get_task, state_caption

from .regions import ComponentMemo, RegionConfig, Regions, extract_regions, region_projection
from .tokenizer import build_tokenizer, check_tokenizer, tokenizer_fingerprint

if TYPE_CHECKING:
    from transformers import LxmertModel, PreTrainedTokenizerBase

__all__ = [
    "PRETRAINED_ID", "RANDOM_CONFIGS", "EncoderConfig", "FrozenLxmert", "load_encoder", "EncoderNotFoundError",
]

log = logging.getLogger(__name__)

PRETRAINED_ID = "unc-nlp/lxmert-base-uncased"  # the hub id of the pretrained LXMERT (the one place it is written)
# Named random-init configurations (LxmertConfig overrides; vocab_size comes from the offline vocabulary).
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "lxmert-tiny": dict(hidden_size=128, num_attention_heads=2, intermediate_size=512,
                        l_layers=2, x_layers=2, r_layers=2),
    "lxmert-base-random": {},  # LxmertConfig defaults: 768 wide, 9/5/5 layers, 12 heads
}


class EncoderNotFoundError(FileNotFoundError):
    """Pretrained weights or tokenizer not found locally, in the HF cache, or on the hub."""


@dataclass(frozen=True)
class EncoderConfig:
    regions: RegionConfig = field(default_factory=RegionConfig)
    batch_size: int = 64  # states per eager forward (bounds activation memory on CPU)
    # CUDA graph batch buckets: a batch of n runs in the smallest bucket >= n (padded), so every
    # rollout batch size replays a captured graph; larger batches run in max-bucket pieces.
    graph_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    init_seed: int = 0  # weights of the random-init configurations

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"EncoderConfig.batch_size must be >= 1, got {self.batch_size}")
        if not self.graph_buckets or any(b < 1 for b in self.graph_buckets):
            raise ValueError(f"EncoderConfig.graph_buckets must be positive sizes, got {self.graph_buckets}")


# Config fields that say where or how a model was saved, not what it computes.
_CONFIG_NOT_WEIGHTS = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"}


def _weights_fingerprint(model: LxmertModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """blake2b of every parameter/buffer (name, dtype, shape, bytes), the config and the vocabulary.

    Content only: the same weights loaded from the hub, the HF cache or a local copy agree.
    """
    h = hashlib.blake2b(digest_size=20)
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_NOT_WEIGHTS}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()


def _state_fingerprint(weights: str, config: EncoderConfig) -> str:
    """The weights' fingerprint folded with the state design (regions, slot orders): a run trained on one design's
    embeddings is refused by an encoder of another, even where the two give vectors of the same width."""
    h = hashlib.blake2b(weights.encode(), digest_size=20)
    h.update(json.dumps(config.regions.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


# One captured bucket: (replay, static feats, boxes, mask, slots, static output).
_Graph = tuple[Callable[[], Any], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class _GraphRunner:
    """CUDA graphs of the state path for one (task, R, F_raw), one per batch bucket, captured lazily."""

    def __init__(self, enc: "FrozenLxmert", spec: TaskSpec, R: int, F: int):
        self.enc, self.spec, self.R, self.F = enc, spec, R, F
        self.graphs: dict[int, _Graph] = {}

    def _capture(self, b: int) -> _Graph:
        enc, dev, dt = self.enc, self.enc.device, self.enc.dtype
        feats = torch.zeros(b, self.R, self.F, device=dev, dtype=dt)  # [b, R, F]
        boxes = torch.zeros(b, self.R, 4, device=dev, dtype=dt)  # [b, R, 4]
        mask = torch.ones(b, self.R, device=dev, dtype=torch.bool)  # [b, R]
        slots = torch.full((b, enc.config.regions.slots), -1, device=dev, dtype=torch.long)  # [b, S]
        replay, out = self._record(feats, boxes, mask, slots)
        self.graphs[b] = (replay, feats, boxes, mask, slots, out)
        return self.graphs[b]

    def _record(self, feats: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                slots: torch.Tensor) -> tuple[Callable[[], Any], torch.Tensor]:
        """Capture the state path over these static input buffers -> (replay(), static output [b, d_enc]).
        (Tests replace this with an eager twin to check the bucketing and padding on a CPU.)"""
        return cuda_graphs.capture(lambda: self.enc._state_core(self.spec, feats, boxes, mask, slots), warmup=2)

    def __call__(self, feats: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                 slots: torch.Tensor) -> torch.Tensor:
        N = feats.shape[0]
        buckets = sorted(self.enc.config.graph_buckets)
        out = torch.empty(N, self.enc.d_enc, device=self.enc.device, dtype=torch.float32)
        for s in range(0, N, buckets[-1]):
            n = min(buckets[-1], N - s)
            b = next(x for x in buckets if x >= n)
            replay, f, bx, m, sl, o = self.graphs.get(b) or self._capture(b)
            f[:n].copy_(feats[s:s + n], non_blocking=True)
            bx[:n].copy_(boxes[s:s + n], non_blocking=True)
            m[:n].copy_(mask[s:s + n], non_blocking=True)
            sl[:n].copy_(slots[s:s + n], non_blocking=True)
            if n < b:  # padding rows: one real region each so no row is fully masked
                f[n:].zero_()
                bx[n:].zero_()
                m[n:].fill_(False)
                m[n:, 0] = True
                sl[n:].fill_(-1)
            replay()
            out[s:s + n] = o[:n].float()
        return out


class FrozenLxmert(nn.Module):
    """A frozen LXMERT with its tokenizer, region config and fixed region projection."""

    def __init__(self, model: LxmertModel, tokenizer: PreTrainedTokenizerBase, name: str, source: str, fingerprint: str,
                 config: EncoderConfig | None = None, cuda_graphs: bool = False):
        super().__init__()
        self.model = model.train(False)  # eval mode
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.source = source  # where the weights came from ("random init (seed 0)", a path, a hub id)
        self.fingerprint = fingerprint  # of the fp32 weights + vocabulary + state design; the cache key's encoder part
        self.config = config or EncoderConfig()
        self.cuda_graphs = bool(cuda_graphs)
        self.hidden = int(model.config.hidden_size)
        self.d_enc = (2 + self.config.regions.slots) * self.hidden
        self._fused: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # F_raw -> (W' [F, H], b [H])
        self._caption: dict[str, torch.Tensor] = {}  # task -> caption language states [1, L, H]
        self._graphs: dict[tuple[str, int, int], _GraphRunner] = {}
        self._regions_memo = ComponentMemo()  # a rollout's previous frames: components computed once per frame

    # -- properties ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        param: torch.Tensor = next(self.model.parameters())
        return param.device

    @property
    def dtype(self) -> torch.dtype:
        param: torch.Tensor = next(self.model.parameters())
        return param.dtype

    def train(self, mode: bool = True) -> FrozenLxmert:  # frozen: always eval (no dropout)
        return super().train(False)

    def describe(self) -> str:
        return (f"{self.name} ({self.source}; hidden {self.hidden}, d_enc {self.d_enc}, "
                f"{self.device}/{str(self.dtype).removeprefix('torch.')}, "
                f"cuda graphs {'on' if self.cuda_graphs else 'off'}, weights {self.fingerprint[:12]})")

    # -- building blocks -------------------------------------------------------------------------
    def _fused_visual(self, f_raw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """visn_fc with the fixed projection folded in: x P W^T + b = x (P W^T) + b."""
        if f_raw not in self._fused:
            fc = self.model.encoder.visn_fc.visn_fc
            P = torch.tensor(region_projection(f_raw, fc.in_features, self.config.regions.projection_seed))
            w = (P.double() @ fc.weight.detach().double().cpu().T)  # [F_raw, H], in fp64 then cast once
            self._fused[f_raw] = (w.to(self.device, self.dtype), fc.bias.detach().to(self.device, self.dtype))
        return self._fused[f_raw]

    def _lang_ext(self, attn: torch.Tensor) -> torch.Tensor:
        # [B, L] 1/0 -> additive [B, 1, 1, L]
        return (1.0 - attn[:, None, None, :].to(self.dtype)) * torch.finfo(self.dtype).min

    @torch.inference_mode()
    def _language(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Language stream alone: embeddings + language layers. -> (states [B, L, H], attn [B, L])."""
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)  # [B, L]
        attn = enc["attention_mask"].to(self.device)  # [B, L]
        h = self.model.embeddings(ids, torch.zeros_like(ids))  # [B, L, H]
        ext = self._lang_ext(attn)
        for layer in self.model.encoder.layer:
            h = layer(h, ext)[0]
        return h, attn

    def _caption_states(self, spec: TaskSpec) -> torch.Tensor:
        """The state caption after the language layers; it never sees the image, so once per task."""
        if spec.name not in self._caption:
            h, _ = self._language([state_caption(spec.name)])
            self._caption[spec.name] = h.clone()  # [1, L, H] (a single text has no padding)
        return self._caption[spec.name]

    def _state_core(self, spec: TaskSpec, feats: torch.Tensor, boxes: torch.Tensor,
                    mask: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """feats [B, R, F_raw], boxes [B, R, 4] (model dtype), mask [B, R] bool, slots [B, S] long (region per
        slot, -1 = empty) -> [B, d_enc] (model dtype).

        Static shapes, no host sync: capturable in a CUDA graph.
        """
        m = self.model
        B = feats.shape[0]
        w, b = self._fused_visual(feats.shape[-1])
        vf = m.encoder.visn_fc
        x = vf.visn_layer_norm(feats @ w + b)  # [B, R, H]
        y = vf.box_layer_norm(vf.box_fc(boxes))  # [B, R, H]
        v = (x + y) / 2  # [B, R, H] (LxmertVisualFeatureEncoder)
        vis_ext = (~mask)[:, None, None, :].to(self.dtype) * torch.finfo(self.dtype).min  # [B, 1, 1, R]
        lang = self._caption_states(spec).expand(B, -1, -1)  # [B, L, H]
        for layer in m.encoder.r_layers:
            v = layer(v, vis_ext)[0]
        for layer in m.encoder.x_layers:
            lang, v = layer(lang, None, v, vis_ext)[:2]
        pooled = m.pooler(lang)  # [B, H]
        return self._layout(pooled, v, mask, slots)  # [B, d_enc]

    def _layout(self, pooled: torch.Tensor, h: torch.Tensor, mask: torch.Tensor,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """pooled [B, H], element outputs h [B, n, H], mask [B, n], slots [B, S] (element per slot, -1 = empty;
        None = the first S elements) -> [pooled, masked mean, S slots] [B, (2 + S) * H]."""
        B, n, H = h.shape
        S = self.config.regions.slots
        mf = mask[..., None].to(h.dtype)  # [B, n, 1]
        h = h * mf  # padding elements are zero
        mean = h.sum(1) / mf.sum(1).clamp_min(1.0)  # [B, H]
        if slots is None:
            idx = torch.arange(S, device=h.device).expand(B, S)
            slots = torch.where(idx < n, idx, -1)  # [B, S]
        got = h.gather(1, slots.clamp_min(0).clamp_max(max(n - 1, 0))[..., None].expand(B, S, H))  # [B, S, H]
        got = got * (slots >= 0)[..., None].to(h.dtype)
        return torch.cat([pooled, mean, got.flatten(1)], dim=-1)

    def layout(self) -> dict[str, Any]:
        """What forms the state and action vectors (part of the embedding cache key with the region config)."""
        return {"outputs": "pooled+mean+slots", "slots": self.config.regions.slots}

    # -- public API ------------------------------------------------------------------------------
    def regions(self, task: str | TaskSpec, observations: np.ndarray,
                prev_observations: np.ndarray | None = None) -> Regions:
        # As many threads as torch's intra-op pool: the caller's CPU budget for the encoder.
        return extract_regions(task, observations, prev_observations, self.config.regions,
                               workers=torch.get_num_threads(), memo=self._regions_memo)

    @torch.inference_mode()
    def embed_regions(self, task: str | TaskSpec, regions: Regions) -> torch.Tensor:
        """Regions of N states -> [N, d_enc] float32 on the encoder's device."""
        spec = get_task(task)
        dev, dt = self.device, self.dtype
        feats = torch.from_numpy(np.ascontiguousarray(regions.feats)).to(dev, dt)  # [N, R, F]
        boxes = torch.from_numpy(np.ascontiguousarray(regions.boxes)).to(dev, dt)  # [N, R, 4]
        mask = torch.from_numpy(np.ascontiguousarray(regions.mask)).to(dev)  # [N, R]
        slots = torch.from_numpy(np.ascontiguousarray(regions.slots)).to(dev)  # [N, S]
        if self.cuda_graphs and dev.type == "cuda":
            key = (spec.name, feats.shape[1], feats.shape[2])
            runner = self._graphs.get(key)
            if runner is None:
                self._caption_states(spec)
                self._fused_visual(feats.shape[2])
                runner = self._graphs[key] = _GraphRunner(self, spec, feats.shape[1], feats.shape[2])
            return runner(feats, boxes, mask, slots)
        bs = self.config.batch_size
        out = [self._state_core(spec, feats[s:s + bs], boxes[s:s + bs], mask[s:s + bs], slots[s:s + bs]).float()
               for s in range(0, feats.shape[0], bs)]
        return torch.cat(out) if out else torch.empty(0, self.d_enc, device=dev)

    def embed_states(self, task: str | TaskSpec, observations: np.ndarray,
                     prev_observations: np.ndarray | None = None) -> torch.Tensor:
        """States -> E_s [N, d_enc] float32 on the encoder's device.

        ``observations`` [N, ...] with ``prev_observations`` [N, ...]: the rollout fast path (current and
        previous frames of N envs). Without ``prev_observations`` the batch is one sequence (row t's
        previous frame is row t-1). See ``regions.extract_regions``.
        """
        return self.embed_regions(task, self.regions(task, observations, prev_observations))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Language stream alone: texts -> [n, d_enc] float32 (pooled [CLS], mean and slots of the word pieces)."""
        if not texts:
            raise ValueError("embed_texts needs at least one text")
        h, attn = self._language(list(texts))  # [n, L, H], [n, L]
        pooled = self.model.pooler(h)  # [n, H]
        # Slots hold the word pieces after [CLS] (whose output the pooler already reads).
        return self._layout(pooled, h[:, 1:], attn[:, 1:].bool()).float()

    def embed_actions(self, task: str | TaskSpec, prompt_set: PromptSet = "original") -> torch.Tensor:
        """Action table: discrete [A, d_enc] (one row per action); continuous [A+1, d_enc] (e_0, e_1..e_A)."""
        spec = get_task(task)
        prompts = action_prompts(spec.name, prompt_set)
        if spec.action_kind == "continuous":
            prompts = [base_action_prompt(spec.name, prompt_set), *prompts]
        return self.embed_texts(prompts)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _random_init(name: str, seed: int) -> tuple[LxmertModel, PreTrainedTokenizerBase]:
    from transformers import LxmertConfig, LxmertModel

    tok = build_tokenizer()
    cfg = LxmertConfig(vocab_size=len(tok.get_vocab()), **RANDOM_CONFIGS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LxmertModel(cfg)
    return model, tok


def _load_pretrained(name_or_path: str) -> tuple[LxmertModel, PreTrainedTokenizerBase]:
    from transformers import AutoTokenizer, LxmertModel

    local = Path(name_or_path).expanduser()
    ref = str(local) if local.is_dir() else name_or_path
    if not local.is_dir() and (local.is_absolute() or name_or_path.startswith((".", "~"))):
        raise EncoderNotFoundError(f"encoder directory {name_or_path!r} does not exist")
    try:
        model = LxmertModel.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise EncoderNotFoundError(
            f"could not load LXMERT weights from {name_or_path!r} (a local directory, the Hugging Face "
            f"cache, or the hub when online): {e}. Download them once with "
            f"`hf download {PRETRAINED_ID}` (or save_pretrained into a directory and pass "
            f"its path), or use a random-init configuration: {', '.join(RANDOM_CONFIGS)}") from e
    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise EncoderNotFoundError(f"could not load the tokenizer of {name_or_path!r}: {e}") from e
    check_tokenizer(tok, name_or_path)
    return model, tok


def load_encoder(name_or_path: str = PRETRAINED_ID, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, *, config: EncoderConfig | None = None,
                 cuda_graphs: bool | None = None, fallback: str | None = None) -> FrozenLxmert:
    """Load a frozen encoder.

    ``name_or_path``: ``unc-nlp/lxmert-base-uncased`` (HF cache or hub), a local directory with a saved
    LXMERT and tokenizer, or a random-init name in ``RANDOM_CONFIGS``. ``device`` defaults to CUDA when
    available; ``dtype`` to fp32 on CPU and fp16 on CUDA; ``cuda_graphs`` to on for CUDA.
    ``fallback``: a random-init name to use (with a warning) when the pretrained model is missing;
    without it a missing model raises ``EncoderNotFoundError``.
    """
    config = config or EncoderConfig()
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"encoder dtype must be float32, float16 or bfloat16, got {dtype}")
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device, got {device}")
    if fallback is not None and fallback not in RANDOM_CONFIGS:
        raise ValueError(f"fallback must be one of {list(RANDOM_CONFIGS)}, got {fallback!r}")

    name = str(name_or_path)
    if name in RANDOM_CONFIGS:
        model, tok = _random_init(name, config.init_seed)
        source = f"random init, seed {config.init_seed}"
        log.warning("encoder %s: RANDOM-INIT LXMERT (no pretrained weights; offline vocabulary of %d tokens)",
                    name, len(tok.get_vocab()))
    else:
        try:
            model, tok = _load_pretrained(name)
            source = f"pretrained from {name}"
            log.info("encoder: pretrained LXMERT loaded from %s", name)
        except EncoderNotFoundError as e:
            if fallback is None:
                raise
            log.warning("encoder: pretrained %r unavailable (%s); FALLING BACK to random-init %s",
                        name, e, fallback)
            model, tok = _random_init(fallback, config.init_seed)
            log.warning("encoder %s: RANDOM-INIT LXMERT (no pretrained weights; offline vocabulary of %d "
                        "tokens)", fallback, len(tok.get_vocab()))
            name, source = fallback, f"random init, seed {config.init_seed} (fallback for {name_or_path})"
    model = model.float().train(False)  # type: ignore[no-untyped-call]  # fp32 (transformers' float() is untyped), eval
    fingerprint = _state_fingerprint(_weights_fingerprint(model, tok), config)
    model = model.to(device=device, dtype=dtype)
    enc = FrozenLxmert(model, tok, name, source, fingerprint, config, cuda_graphs=cuda_graphs)
    log.info("encoder ready: %s", enc.describe())
    return enc
