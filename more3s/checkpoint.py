"""Atomic, verifiable training checkpoints with fallback to the previous one.

Layout: ``<run>/checkpoints/step_00001234/`` holding

* ``model.safetensors`` — the weights (safetensors: no pickle, loadable anywhere);
* ``state.pt`` — everything else needed for an exact resume: optimizer, LR scheduler, RNG states
  (python / numpy / torch / cuda) and sampler and memory state *per rank*, the step, and the model config
  the weights belong to (``model_config``, as nanoGPT's ``model_args``; more3s.run rebuilds the model from it);
* ``manifest.json`` — the step and the size and sha256 of both files, written last.

Each checkpoint directory is built in a temporary sibling and renamed into place (more3s.atomic),
so a killed job never leaves a half-written checkpoint that looks complete. Loading verifies the
manifest; a checkpoint whose files are missing, truncated or altered raises CorruptCheckpointError,
and :func:`load_latest` then falls back to the previous checkpoint, saying so. ``state.pt`` is a
pickle (numpy RNG state and sampler state are not plain tensors); it is only loaded after its
sha256 matched the manifest we wrote.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model, save_model

from more3s.atomic import atomic_dir, sha256_file

__all__ = [
    "CorruptCheckpointError", "Checkpoint", "checkpoint_dir", "save_checkpoint", "list_checkpoints",
    "verify_checkpoint", "load_checkpoint", "load_weights", "load_latest", "prune_checkpoints",
]

_STEP_RE = re.compile(r"^step_(\d{8,})$")
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST = "manifest.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint directory is incomplete, truncated or does not match its manifest."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]  # the contents of state.pt (optimizer, scheduler, rng, sampler, memory...)


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any],
                    keep: int | None = None) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; prune to the newest ``keep``."""
    root = Path(root)
    dest = checkpoint_dir(root, step)
    with atomic_dir(dest, overwrite=True) as tmp:
        save_model(model, str(tmp / MODEL_FILE), metadata={"step": str(step)})
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        manifest = {
            "step": step,
            "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                      for name in (MODEL_FILE, STATE_FILE)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if keep is not None:
        prune_checkpoints(root, keep)
    return dest


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune_checkpoints(root: str | Path, keep: int) -> None:
    if keep < 1:
        raise ValueError(f"keep={keep}: must keep at least one checkpoint")
    for _, path in list_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check the manifest against the files; return the manifest or raise CorruptCheckpointError."""
    path = Path(path)
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"checkpoint {path}: missing or unreadable {MANIFEST} ({e})") from e
    for name in (MODEL_FILE, STATE_FILE):
        f = path / name
        if name not in files or not f.is_file():
            raise CorruptCheckpointError(f"checkpoint {path}: {name} is missing")
        size = f.stat().st_size
        if size != files[name]["bytes"]:
            raise CorruptCheckpointError(
                f"checkpoint {path}: {name} has {size} bytes, manifest says {files[name]['bytes']} "
                "(truncated or partially written)")
        if sha256_file(f) != files[name]["sha256"]:
            raise CorruptCheckpointError(f"checkpoint {path}: {name} does not match its sha256")
    return manifest


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Verify and load one checkpoint; weights go into ``model`` (strict) when given."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        # Our own file, integrity-checked above; it holds numpy RNG / sampler state (not tensors only).
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt checkpoint
        raise CorruptCheckpointError(f"checkpoint {path}: {STATE_FILE} could not be loaded ({e})") from e
    if model is not None:
        load_weights(path, model, map_location)
    return Checkpoint(path=path, step=int(manifest["step"]), state=state)


def load_weights(path: str | Path, model: torch.nn.Module, map_location: str | torch.device = "cpu") -> None:
    """Load a checkpoint's weights into ``model`` (strict): ValueError naming what does not fit."""
    path = Path(path)
    try:
        missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=False, device=str(map_location))
    except Exception as e:  # noqa: BLE001
        raise CorruptCheckpointError(f"checkpoint {path}: weights could not be loaded ({e})") from e
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)} (different config?)")


def load_latest(root: str | Path, model: torch.nn.Module | None = None,
                map_location: str | torch.device = "cpu",
                log: Callable[[str], None] = print) -> Checkpoint | None:
    """Load the newest intact checkpoint, falling back past corrupt ones (each one logged).

    Returns None when there is no checkpoint at all; raises CorruptCheckpointError when there are
    checkpoints but none is intact.
    """
    ckpts = list_checkpoints(root)
    if not ckpts:
        return None
    errors = []
    for step, path in reversed(ckpts):
        try:
            return load_checkpoint(path, model, map_location)
        except CorruptCheckpointError as e:
            errors.append(str(e))
            log(f"WARNING: {e}; falling back to the previous checkpoint")
    raise CorruptCheckpointError(f"no intact checkpoint under {root}:\n  " + "\n  ".join(errors))
