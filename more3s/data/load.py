"""``load_episodes``: the one entry point for reading offline data, whatever the source.

A source is a local Minari id or dataset directory (``minari_reader``), a remote Minari id (fetched only
when online: ``remote``; offline it fails in well under a second with instructions) or a D4RL-style hdf5
file (``d4rl``). Every reader validates every field, naming the file and the field on bad input.
"""

from __future__ import annotations

import os
from pathlib import Path

from more3s.envs import get_task

from . import remote
from .d4rl import read_d4rl
from .episode import Episode
from .minari_paths import dataset_path, minari_dir
from .minari_reader import read_minari

__all__ = ["load_episodes"]

_D4RL_SUFFIXES = (".hdf5", ".h5", ".hdf")


def load_episodes(source: str | os.PathLike[str], *, task: str | None = None,
                  max_episodes: int | None = None, lazy: bool = False) -> list[Episode]:
    """Load episodes from a Minari id or directory, a remote Minari id, or a D4RL hdf5 file.

    ``task`` (e.g. 'breakout') sets reward clipping for the RTG and is checked against the data's
    action space; when None it is inferred from the Minari metadata / env spec or the file name.
    ``lazy=True`` leaves raw uint8 image observations of hdf5 Minari datasets on disk
    (``H5Frames``: sliceable, ``np.asarray``-able) instead of reading every frame into memory.
    """
    if task is not None:
        task = get_task(task).name
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
    label = str(source)
    p = Path(source)
    if p.exists():
        if p.is_file():
            if p.suffix.lower() not in _D4RL_SUFFIXES:
                raise ValueError(f"{p}: unsupported file type; expected a D4RL .hdf5 file or a "
                                 f"Minari dataset directory")
            return read_d4rl(p, task, max_episodes)
        d = minari_dir(p)
        if d is None:
            raise ValueError(f"{p}: directory holds no Minari dataset (no metadata.json in it or "
                             f"in its data/ subdirectory)")
        return read_minari(d, label, task, max_episodes, lazy)
    if label.lower().endswith(_D4RL_SUFFIXES[:2]):
        raise FileNotFoundError(f"{label}: no such D4RL hdf5 file")
    d = minari_dir(dataset_path(label))  # dataset_path validates the id's form
    if d is None:
        d = remote.download(label)
    return read_minari(d, label, task, max_episodes, lazy)
