"""``encoder=auto``: the pretrained LXMERT when its weights are here, else the random-init tiny one, loudly."""

from __future__ import annotations

from more3s.hub import hf_available, loud

from .lxmert import PRETRAINED_ID

__all__ = ["FALLBACK_ENCODER", "resolve_encoder"]

FALLBACK_ENCODER = "lxmert-tiny"


def resolve_encoder(name: str) -> str:
    """'auto' -> pretrained LXMERT when available locally, else lxmert-tiny with a loud notice."""
    if name != "auto":
        return name
    if hf_available(PRETRAINED_ID):
        return PRETRAINED_ID
    loud(f"encoder=auto: pretrained {PRETRAINED_ID} is not available offline; using the random-init "
         f"'{FALLBACK_ENCODER}' encoder (128 wide). Scores are NOT those of the paper's pretrained encoder. "
         f"Put the weights in the Hugging Face cache or pass --encoder /path/to/lxmert to use them.")
    return FALLBACK_ENCODER
