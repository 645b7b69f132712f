"""Writing offline datasets: ``MinariWriter`` streams episodes into a new Minari dataset.

It uses Minari's storage layer directly rather than ``DataCollector`` (which pulls in jax) or
``create_dataset_from_buffers`` (which holds every episode in memory and cannot compress): episodes stream
into ``main_data.hdf5`` in Minari's own layout, so plain ``minari.load_dataset(id)`` reads them with no help
from more3s. Choices, and why:

* frames are stored raw (``jpeg_encoding=False`` in the metadata): Minari JPEG-encodes HWC uint8
  images by default, which is lossy; we want byte-exact frames;
* every array is gzip-compressed (level 1, chunks of up to 16 rows): Atari frames are mostly
  background, so 1,000 RGB frames take ~1.3 MB instead of ~100 MB, and h5py decompresses
  transparently for any reader;
* ``rewards`` holds the RAW rewards; the clipped rewards DT trains on are derivable
  (``np.clip(rewards, -1, 1)``, as ``Episode.rtg`` does for Atari); each episode's attributes also record
  ``raw_return``, ``clipped_return`` and the behaviour policy (e.g. its epsilon);
* the dataset is built in a hidden sibling directory and renamed into place when complete, so an
  interrupted collection never leaves a dataset that Minari lists or loads.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from more3s.atomic import atomic_dir

from .episode import EPISODE_FIELDS
from .minari_paths import dataset_path

__all__ = ["MinariWriter"]

_COMPRESSION: dict[str, Any] = dict(compression="gzip", compression_opts=1)  # see module docstring
_CHUNK_ROWS = 16
_FLUSH_STEPS = 256  # steps buffered in memory before they are appended to the file


class _Appender:
    """A resizable, chunked, compressed hdf5 dataset grown by blocks of rows."""

    def __init__(self, group: Any, name: str, row_shape: tuple[int, ...], dtype: npt.DTypeLike | None):
        self.ds = group.create_dataset(
            name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=dtype,
            chunks=(_CHUNK_ROWS, *row_shape), **_COMPRESSION)
        self.rows: list[np.ndarray] = []

    def add(self, row: Any) -> None:
        self.rows.append(np.asarray(row, dtype=self.ds.dtype))

    def flush(self) -> None:
        if self.rows:
            block = np.stack(self.rows)  # [n, *row_shape]
            n0 = self.ds.shape[0]
            self.ds.resize((n0 + len(block), *self.ds.shape[1:]))
            self.ds[n0:] = block
            self.rows.clear()


@dataclass
class _OpenEpisode:
    """The episode being written: its hdf5 group, one appender per step field, running totals."""

    group: Any  # h5py.Group
    columns: dict[str, _Appender]
    steps: int = 0
    raw: float = 0.0  # sum of raw rewards
    clip: float = 0.0  # sum of rewards clipped to [-1, 1]

    def flush(self) -> None:
        for key in EPISODE_FIELDS:
            self.columns[key].flush()


class MinariWriter:
    """Stream episodes into a new Minari hdf5 dataset, published atomically on ``close()``.

    Usage::

        with MinariWriter("breakout/mixed-v0", env.observation_space, env.action_space,
                          env_spec=env.spec, metadata={...}) as w:
            w.begin_episode(obs0, seed=s)
            w.add_step(action, next_obs, reward, terminated, truncated)
            w.end_episode({"epsilon": 0.3})

    Leaving the block through an exception (or KeyboardInterrupt) deletes the partial directory.
    """

    def __init__(self, dataset_id: str, observation_space: gym.Space[Any], action_space: gym.Space[Any], *,
                 env_spec: gym.envs.registration.EnvSpec | None = None, metadata: dict[str, Any] | None = None,
                 overwrite: bool = False):
        for name, space in (("observation", observation_space), ("action", action_space)):
            if not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
                raise TypeError(f"MinariWriter supports Box/Discrete {name} spaces, got {space}")
        self.dataset_id = dataset_id
        self.dest = dataset_path(dataset_id)
        if self.dest.exists() and not overwrite:
            raise FileExistsError(f"Minari dataset {dataset_id!r} already exists at {self.dest}; "
                                  f"choose another id or pass overwrite=True")
        self.observation_space, self.action_space = observation_space, action_space
        self.env_spec, self.metadata, self.overwrite = env_spec, dict(metadata or {}), overwrite
        self._tmp: Path | None = None
        self._stack: contextlib.ExitStack[bool | None] | None = None
        self._file: Any = None  # the open h5py.File of main_data.hdf5
        self._ep: _OpenEpisode | None = None
        self.total_episodes = 0
        self.total_steps = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> MinariWriter:
        import h5py
        from minari.dataset.minari_storage import MinariStorage

        # atomic_dir builds in a hidden sibling (".<name>.XXXX.partial": Minari's listing skips
        # dot-directories) and renames it onto the id's directory only in close().
        self._stack = contextlib.ExitStack()
        try:
            self._tmp = self._stack.enter_context(atomic_dir(self.dest, overwrite=self.overwrite))
            data = self._tmp / "data"
            MinariStorage.new(data, observation_space=self.observation_space,
                              action_space=self.action_space, env_spec=self.env_spec,
                              jpeg_encoding=False)
            self._file = h5py.File(data / "main_data.hdf5", "a", track_order=True)
        except BaseException:
            # ``with`` never calls __exit__ when __enter__ raises: drop the temp directory now.
            self.abort()
            raise
        return self

    def __enter__(self) -> MinariWriter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far (the partial directory is deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._stack is not None:
            err = RuntimeError(f"collection of {self.dataset_id!r} aborted")
            self._stack.__exit__(type(err), err, None)  # atomic_dir removes its temp directory
            self._stack = None
        self._tmp = None

    def close(self) -> Path:
        """Finish metadata and publish the dataset under its id; returns its directory."""
        if self._file is None:
            raise RuntimeError("MinariWriter is not open")
        if self._ep is not None:
            self.abort()
            raise RuntimeError(f"{self.dataset_id!r}: close() inside an episode (call "
                               f"end_episode() first); the partial dataset was discarded")
        if self.total_episodes == 0:
            self.abort()
            raise ValueError(f"no episodes were written to {self.dataset_id!r}")
        try:
            return self._publish()
        except BaseException:
            self.abort()
            raise

    def _publish(self) -> Path:
        import minari
        from minari.dataset.minari_storage import MinariStorage

        if self._tmp is None or self._stack is None:
            raise RuntimeError("MinariWriter is not open")
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())
        self._file.close()
        self._file = None
        storage = MinariStorage.read(self._tmp / "data")
        meta = {"dataset_id": self.dataset_id, "minari_version": minari.__version__,
                "total_episodes": self.total_episodes, "total_steps": self.total_steps,
                "dataset_size": storage.get_size()}
        meta.update(self.metadata)
        storage.update_metadata(meta)
        self._stack.close()  # atomic rename onto the id's directory (replacing it if overwrite)
        self._stack, self._tmp = None, None
        return self.dest

    # -- episodes ----------------------------------------------------------------------------
    def begin_episode(self, observation: Any, seed: int | None = None) -> None:
        if self._file is None:
            raise RuntimeError("MinariWriter is not open")
        if self._ep is not None:
            raise RuntimeError("begin_episode() called twice without end_episode()")
        g = self._file.create_group(f"episode_{self.total_episodes}")
        g.attrs["id"] = self.total_episodes
        if seed is not None:
            g.attrs["seed"] = int(seed)
        osp, asp = self.observation_space, self.action_space
        a_shape: tuple[int, ...] = () if isinstance(asp, gym.spaces.Discrete) else tuple(asp.shape or ())
        a_dtype = np.int64 if isinstance(asp, gym.spaces.Discrete) else asp.dtype
        self._ep = _OpenEpisode(group=g, columns={
            "observations": _Appender(g, "observations", tuple(osp.shape or ()), osp.dtype),
            "actions": _Appender(g, "actions", a_shape, a_dtype),
            "rewards": _Appender(g, "rewards", (), np.float64),
            "terminations": _Appender(g, "terminations", (), bool),
            "truncations": _Appender(g, "truncations", (), bool),
        })
        self._ep.columns["observations"].add(observation)

    def add_step(self, action: Any, observation: Any, reward: float, terminated: bool, truncated: bool) -> None:
        ep = self._ep
        if ep is None:
            raise RuntimeError("add_step() called outside an episode")
        ep.columns["actions"].add(action)
        ep.columns["observations"].add(observation)
        ep.columns["rewards"].add(reward)
        ep.columns["terminations"].add(terminated)
        ep.columns["truncations"].add(truncated)
        ep.steps += 1
        ep.raw += float(reward)
        ep.clip += float(np.clip(reward, -1.0, 1.0))
        if ep.steps % _FLUSH_STEPS == 0:
            ep.flush()

    def end_episode(self, attrs: dict[str, Any] | None = None,
                    infos: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """Close the episode; ``infos`` are per-step arrays of T+1 rows (Minari's convention: reset included)."""
        ep = self._ep
        if ep is None:
            raise RuntimeError("end_episode() called outside an episode")
        ep.flush()
        g = ep.group
        gi = g.create_group("infos")  # Minari reads an empty group as infos == {}
        for k, v in (infos or {}).items():
            v = np.asarray(v)
            if v.shape[:1] != (ep.steps + 1,):
                raise ValueError(f"infos[{k!r}] must have {ep.steps + 1} rows (steps + 1), got shape {v.shape}")
            gi.create_dataset(k, data=v, chunks=(min(len(v), 256), *v.shape[1:]), **_COMPRESSION)
        g.attrs["total_steps"] = ep.steps
        stats = {"raw_return": ep.raw, "clipped_return": ep.clip, "length": ep.steps}
        g.attrs["raw_return"] = ep.raw
        g.attrs["clipped_return"] = ep.clip
        for k, v in (attrs or {}).items():
            g.attrs[k] = v
        self.total_episodes += 1
        self.total_steps += ep.steps
        self._ep = None
        return stats
