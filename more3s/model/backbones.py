"""Named backbones and the GPT-2 weight mapping.

``gpt2`` is the paper's backbone: the first ``n_layer`` (6) of GPT-2 small's 12 blocks, copied into
``MoreModel``'s blocks (whose parameter names follow GPT-2's). Weights come from
``GPT2Model.from_pretrained`` with a local directory, the Hugging Face cache or the hub (when online).
When they cannot be had, the model keeps its random init (the ``gpt2-6l-random`` geometry) and a
WARNING names what was tried; with ``require_pretrained`` it is an error instead. Never silent.

GPT-2's token and position embeddings (wte, wpe) are not used: MORE-3S tokens come from the encoder
through ``P_s``/``P_a``, and the model has no position embedding by design.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from more3s.model.config import BACKBONES, ModelConfig
from more3s.model.model import MoreModel

__all__ = ["BACKBONES", "build_model", "load_gpt2_weights"]

_log = logging.getLogger(__name__)


def _describe_source(name_or_path: str) -> str:
    if Path(name_or_path).is_dir():
        return f"local directory {name_or_path!r}"
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    where = "the Hugging Face cache (HF_HUB_OFFLINE=1: hub not tried)" if offline else "the Hugging Face cache, then the hub"
    return f"{name_or_path!r} from {where}"


@torch.no_grad()
def load_gpt2_weights(model: MoreModel, name_or_path: str = "gpt2", require: bool = False) -> bool:
    """Copy GPT-2's first ``model.config.n_layer`` blocks and its final LayerNorm into ``model``.

    Returns True when the weights were loaded; False after a logged fallback (random init kept);
    raises RuntimeError when ``require`` and the weights cannot be loaded, ValueError when the loaded
    GPT-2's geometry does not match the model's config.
    """
    from transformers import GPT2Model

    cfg = model.config
    source = _describe_source(name_or_path)
    try:
        gpt2 = GPT2Model.from_pretrained(name_or_path)
    except Exception as exc:  # OSError / ValueError / hub errors: all mean "not available here"
        msg = f"GPT-2 weights could not be loaded from {source}: {type(exc).__name__}: {exc}".strip()
        if require:
            raise RuntimeError(msg + " (require_pretrained=True)") from exc
        _log.warning("%s -- FALLING BACK to a random init (gpt2-6l-random geometry); set require_pretrained=True "
                     "to make this an error", msg)
        return False
    g = gpt2.config
    n_layer, n_head, n_embd = cfg.geometry
    mismatch = [f"{k}: gpt2 {a} vs config {b}" for k, a, b in (
        ("n_embd", g.n_embd, n_embd), ("n_head", g.n_head, n_head),
        ("layer_norm_epsilon", g.layer_norm_epsilon, cfg.layer_norm_eps)) if a != b]
    if g.n_layer < n_layer:
        mismatch.append(f"n_layer: gpt2 has {g.n_layer} < config {n_layer}")
    if g.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        mismatch.append(f"activation_function: gpt2 {g.activation_function!r}, model uses tanh-GELU")
    if not cfg.bias:
        mismatch.append("config.bias=False, but GPT-2 has biases")
    if mismatch:
        raise ValueError(f"GPT-2 from {source} does not fit this ModelConfig: " + "; ".join(mismatch))
    src = gpt2.state_dict()
    dst = model.state_dict()
    # GPT-2 stores its projections as Conv1D with weight [in, out]; nn.Linear wants [out, in].
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    names = ("ln_1.weight", "ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
             "mlp.c_fc.bias", "mlp.c_proj.bias") + conv1d
    for i in range(n_layer):
        for name in names:
            w = src[f"h.{i}.{name}"]
            dst[f"blocks.{i}.{name}"].copy_(w.t() if name in conv1d else w)
    dst["ln_f.weight"].copy_(src["ln_f.weight"])
    dst["ln_f.bias"].copy_(src["ln_f.bias"])
    _log.info("loaded GPT-2 blocks 0..%d and ln_f from %s", n_layer - 1, source)
    return True


def build_model(cfg: ModelConfig, action_table: torch.Tensor) -> MoreModel:
    """The model for ``cfg.backbone``: random init, plus GPT-2's weights for ``backbone="gpt2"``.

    ``model.pretrained_source`` records where backbone weights came from (None: random init).
    """
    model = MoreModel(cfg, action_table)
    model.pretrained_source = None
    if cfg.backbone == "gpt2" and load_gpt2_weights(model, cfg.backbone_path, require=cfg.require_pretrained):
        model.pretrained_source = cfg.backbone_path
    return model
