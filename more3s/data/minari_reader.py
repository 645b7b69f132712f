"""Reading Minari datasets (more3s' own collections or anyone's) into validated episodes, and the provenance
more3s recorded with its own.

hdf5 datasets are read directly with h5py, field by field, so that every bad input is named by file, episode
and field; image observations of raw (not JPEG) hdf5 datasets can stay on disk (``lazy``: ``H5Frames``).
Other Minari formats (arrow, parquet) go through Minari's own reader. The task, when not given, comes from
more3s' metadata, else the env spec, else the dataset id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from more3s.envs import TaskSpec, check_action_space, check_actions, get_task, guess_task

from .episode import EPISODE_FIELDS, Episode, make_episode
from .frames import H5Frames
from .minari_paths import dataset_path, minari_dir

__all__ = ["read_minari", "dataset_provenance"]



def dataset_provenance(source: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What more3s recorded when it collected ``source`` (the ``more3s`` metadata: policy, seed, episode cap,
    version), or None for a dataset more3s did not collect (a Minari dataset written by anyone else, a D4RL
    file). Targets, evaluation caps and reports follow this, never the dataset's name."""
    p = Path(source)
    if p.is_file():
        return None  # D4RL hdf5: never written by more3s
    d = minari_dir(p) if p.exists() else None
    if d is None and not p.exists():
        try:
            d = minari_dir(dataset_path(str(source)))
        except ValueError:
            return None
    if d is None:
        return None
    prov = _read_metadata(d / "metadata.json").get("more3s")
    return dict(prov) if isinstance(prov, dict) else None


def _read_metadata(meta_file: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file}: unreadable Minari metadata ({e})") from e
    return meta


def _task_from_metadata(meta: dict[str, Any]) -> str | None:
    """The task recorded by more3s, else the one the env spec's id or the dataset id names."""
    recorded = (meta.get("more3s") or {}).get("task")
    if recorded:
        return str(recorded)
    env_id = None
    if meta.get("env_spec"):
        try:
            env_id = json.loads(meta["env_spec"]).get("id")
        except (json.JSONDecodeError, AttributeError):
            env_id = None
    spec = guess_task(env_id) or guess_task(meta.get("dataset_id"))
    return spec.name if spec is not None else None


def read_minari(data_dir: Path, label: str, task: str | None, max_episodes: int | None,
                lazy: bool = False) -> list[Episode]:
    """Episodes of the Minari dataset whose ``data`` directory is ``data_dir`` (``label`` names it in errors)."""
    from minari.dataset.minari_storage import MinariStorage

    meta_file = data_dir / "metadata.json"
    meta = _read_metadata(meta_file)
    for key in ("data_format", "total_episodes"):
        if key not in meta:
            raise ValueError(f"{meta_file}: missing field {key!r}")
    if task is None:
        task = _task_from_metadata(meta)
    if meta["data_format"] != "hdf5":
        return _read_generic(data_dir, label, task, max_episodes)
    try:
        storage = MinariStorage.read(data_dir)
    except Exception as e:  # noqa: BLE001 - minari raises assorted types for bad metadata
        raise ValueError(f"{meta_file}: not a readable Minari dataset ({type(e).__name__}: {e})") from e
    spec = None if task is None else get_task(task)
    if spec is not None:
        check_action_space(spec, storage.action_space, f"{meta_file}")
    n = int(meta["total_episodes"])
    if max_episodes is not None:
        n = min(n, int(max_episodes))
    jpeg = bool(meta.get("jpeg_encoding", True))
    reader = _EpisodeReader(data_dir / "main_data.hdf5", int(meta["total_episodes"]), task, spec,
                            lazy=lazy and not jpeg, decode_jpeg=jpeg and _is_image(storage.observation_space))
    return reader.read(n)


class _EpisodeReader:
    """Episodes of one ``main_data.hdf5``, each field checked as it is read."""

    def __init__(self, h5: Path, total: int, task: str | None, spec: TaskSpec | None, *, lazy: bool,
                 decode_jpeg: bool):
        self.h5, self.total, self.task, self.spec = h5, total, task, spec
        self.lazy, self.decode_jpeg = lazy, decode_jpeg

    def read(self, n: int) -> list[Episode]:
        import h5py

        try:
            f = h5py.File(self.h5, "r")
        except OSError as e:
            raise ValueError(f"{self.h5}: cannot open hdf5 file (truncated or corrupt?): {e}") from e
        with f:
            return [self._episode(f, f"episode_{i}") for i in range(n)]

    def _episode(self, f: Any, key: str) -> Episode:
        h5 = self.h5
        if key not in f:
            raise ValueError(f"{h5}: missing group {key!r} (metadata says {self.total} episodes)")
        g = f[key]
        fields = {name: self._field(g, key, name) for name in EPISODE_FIELDS}
        if self.decode_jpeg:
            fields["observations"] = _decode_jpeg(fields["observations"], h5, key)
        ep = make_episode(**fields, task=self.task, source=f"{h5}: {key}")
        if self.spec is not None:
            check_actions(self.spec, ep.actions, f"{h5}: {key}")
        return ep

    def _field(self, g: Any, key: str, name: str) -> Any:
        """One step field of an episode: an array, or ``H5Frames`` for lazily read raw frames."""
        import h5py

        h5 = self.h5
        if name not in g:
            raise ValueError(f"{h5}: {key} is missing field {name!r}")
        d = g[name]
        if not isinstance(d, h5py.Dataset):
            raise ValueError(f"{h5}: {key}/{name} is a {type(d).__name__}; only Box/Discrete spaces are supported")
        if name == "observations" and self.lazy and d.dtype == np.uint8 and d.ndim >= 3:
            return H5Frames(h5, d.name, d.shape, d.dtype)
        try:
            return d[()]
        except OSError as e:
            raise ValueError(f"{h5}: field {key}/{name} cannot be read (truncated or corrupt?): {e}") from e


def _is_image(space: gym.Space[Any]) -> bool:
    from minari.dataset.minari_storage import is_image_space

    return bool(is_image_space(space))


def _decode_jpeg(encoded: Any, h5: Path, key: str) -> np.ndarray:
    import io

    from PIL import Image

    try:
        return np.stack([np.array(Image.open(io.BytesIO(bytes(b))), dtype=np.uint8) for b in encoded])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{h5}: field {key}/observations has undecodable JPEG frames: {e}") from e


def _read_generic(data_dir: Path, label: str, task: str | None, max_episodes: int | None) -> list[Episode]:
    """Non-hdf5 Minari formats (arrow, parquet) through Minari's own reader."""
    import minari

    ds = minari.MinariDataset(data_dir)
    spec = None if task is None else get_task(task)
    if spec is not None:
        check_action_space(spec, ds.action_space, str(data_dir))
    out = []
    for i, e in enumerate(ds.iterate_episodes()):
        if max_episodes is not None and i >= max_episodes:
            break
        ep = make_episode(e.observations, e.actions, e.rewards, e.terminations, e.truncations,
                          task=task, source=f"{label}: episode {i}")
        if spec is not None:
            check_actions(spec, ep.actions, f"{label}: episode {i}")
        out.append(ep)
    return out
