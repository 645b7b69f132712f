"""Reading and writing offline datasets: Minari (local or remote) and D4RL hdf5 files.

Writing (``MinariWriter``) uses Minari's storage layer directly rather than ``DataCollector`` (which
pulls in jax) or ``create_dataset_from_buffers`` (which holds every episode in memory and cannot
compress): episodes stream into ``main_data.hdf5`` in Minari's own layout, so plain
``minari.load_dataset(id)`` reads them with no help from more3s. Choices, and why:

* frames are stored raw (``jpeg_encoding=False`` in the metadata): Minari JPEG-encodes HWC uint8
  images by default, which is lossy; we want byte-exact frames;
* every array is gzip-compressed (level 1, chunks of up to 16 rows): Atari frames are mostly
  background, so 1,000 RGB frames take ~1.3 MB instead of ~100 MB, and h5py decompresses
  transparently for any reader;
* ``rewards`` holds the RAW rewards; the clipped rewards DT trains on are derivable
  (``np.clip(rewards, -1, 1)``, ``Episode.clipped_rewards``); each episode's attributes also record
  ``raw_return``, ``clipped_return`` and the behaviour policy (e.g. its epsilon);
* the dataset is built in a hidden sibling directory and renamed into place when complete, so an
  interrupted collection never leaves a dataset that Minari lists or loads.

Reading (``load_episodes``) accepts a local Minari id, a Minari dataset directory, a remote Minari
id (downloaded only when online; offline it fails in well under a second with instructions) or a
D4RL-style hdf5 file, and validates every field, naming the file and the field on bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from more3s.atomic import atomic_dir
from more3s.envs import TaskSpec, get_task

from .episode import Episode, make_episode

__all__ = ["MinariWriter", "H5Frames", "load_episodes", "is_online", "dataset_path", "D4RL_KEYS",
           "PUBLISHED_NAMESPACES", "published_reason", "dataset_provenance"]

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_COMPRESSION = dict(compression="gzip", compression_opts=1)  # see module docstring
_CHUNK_ROWS = 16
_FLUSH_STEPS = 256  # steps buffered in memory before they are appended to the file


# Top-level namespaces of the datasets Farama publishes on the Minari remote (checked case-insensitively, always:
# offline the remote cannot be listed). A local id under one of them would pass home-made data for published data.
PUBLISHED_NAMESPACES = ("atari", "mujoco", "d4rl", "minigrid")
_REMOTE_LIST_TIMEOUT_S = 5.0


def _remote_ids(timeout: float = _REMOTE_LIST_TIMEOUT_S) -> set[str]:
    """Ids the Minari remote lists (empty when offline, under HF_HUB_OFFLINE, or after ``timeout`` seconds)."""
    import threading

    if not is_online(timeout=min(timeout, 2.0)):
        return set()
    found: list[set[str]] = []

    def fetch() -> None:
        try:
            import minari

            found.append({str(k) for k in minari.list_remote_datasets(latest_version=False)})
        except Exception:  # noqa: BLE001 - any hub error means "nothing listed"
            pass

    t = threading.Thread(target=fetch, daemon=True)  # minari has no timeout of its own
    t.start()
    t.join(timeout)
    return found[0] if found else set()


def published_reason(dataset_id: str, *, check_remote: bool = True) -> str | None:
    """Why ``dataset_id`` names (or could name) a published Minari dataset, or None: its namespace is one Farama
    publishes under, or (online only) the Minari remote lists it. more3s never collects under such an id."""
    top = dataset_id.strip("/").split("/", 1)[0].lower()
    if "/" in dataset_id.strip("/") and top in PUBLISHED_NAMESPACES:
        return f"its namespace {top + '/'!r} is one Farama publishes Minari datasets under"
    if check_remote and dataset_id in _remote_ids():
        return "the Minari remote lists it"
    return None


def dataset_provenance(source: str | os.PathLike) -> dict[str, Any] | None:
    """What more3s recorded when it collected ``source`` (the ``more3s`` metadata: policy, seed, episode cap,
    version), or None for a dataset more3s did not collect (a Minari dataset written by anyone else, a D4RL
    file). Targets, evaluation caps and reports follow this, never the dataset's name."""
    p = Path(source)
    if p.is_file():
        return None  # D4RL hdf5: never written by more3s
    d = _minari_dir(p) if p.exists() else None
    if d is None and not p.exists():
        try:
            d = _minari_dir(dataset_path(str(source)))
        except ValueError:
            return None
    if d is None:
        return None
    try:
        meta = json.loads((d / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{d / 'metadata.json'}: unreadable Minari metadata ({e})") from e
    prov = meta.get("more3s")
    return dict(prov) if isinstance(prov, dict) else None


def dataset_path(dataset_id: str) -> Path:
    """Directory of a local Minari dataset id (under ``MINARI_DATASETS_PATH``); validates the id."""
    from minari.dataset.minari_dataset import DATASET_ID_RE
    from minari.storage.datasets_root_dir import get_dataset_path

    m = DATASET_ID_RE.fullmatch(dataset_id)
    if not m or m.group("version") is None:
        raise ValueError(f"bad dataset id {dataset_id!r}: Minari ids look like "
                         f"'namespace/name-v0' (letters, digits, '-' and '_'; the namespace is "
                         f"optional but at least 2 characters; the -vN version is required)")
    return Path(get_dataset_path(dataset_id))


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


class _Appender:
    """A resizable, chunked, compressed hdf5 dataset grown by blocks of rows."""

    def __init__(self, group, name: str, row_shape: tuple[int, ...], dtype):
        self.ds = group.create_dataset(
            name, shape=(0, *row_shape), maxshape=(None, *row_shape), dtype=dtype,
            chunks=(_CHUNK_ROWS, *row_shape), **_COMPRESSION)
        self.rows: list[np.ndarray] = []

    def add(self, row) -> None:
        self.rows.append(np.asarray(row, dtype=self.ds.dtype))

    def flush(self) -> None:
        if self.rows:
            block = np.stack(self.rows)  # [n, *row_shape]
            n0 = self.ds.shape[0]
            self.ds.resize((n0 + len(block), *self.ds.shape[1:]))
            self.ds[n0:] = block
            self.rows.clear()


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

    def __init__(self, dataset_id: str, observation_space: gym.Space, action_space: gym.Space, *,
                 env_spec=None, metadata: dict[str, Any] | None = None, overwrite: bool = False):
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
        self._stack: contextlib.ExitStack | None = None
        self._file = None
        self._ep: dict[str, Any] | None = None
        self.total_episodes = 0
        self.total_steps = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> "MinariWriter":
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

    def __enter__(self) -> "MinariWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
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
    def begin_episode(self, observation, seed: int | None = None) -> None:
        if self._file is None:
            raise RuntimeError("MinariWriter is not open")
        if self._ep is not None:
            raise RuntimeError("begin_episode() called twice without end_episode()")
        g = self._file.create_group(f"episode_{self.total_episodes}")
        g.attrs["id"] = self.total_episodes
        if seed is not None:
            g.attrs["seed"] = int(seed)
        osp, asp = self.observation_space, self.action_space
        a_shape, a_dtype = ((), np.int64) if isinstance(asp, gym.spaces.Discrete) else \
            (asp.shape, asp.dtype)
        self._ep = {
            "group": g, "steps": 0, "raw": 0.0, "clip": 0.0,
            "observations": _Appender(g, "observations", osp.shape, osp.dtype),
            "actions": _Appender(g, "actions", a_shape, a_dtype),
            "rewards": _Appender(g, "rewards", (), np.float64),
            "terminations": _Appender(g, "terminations", (), bool),
            "truncations": _Appender(g, "truncations", (), bool),
        }
        self._ep["observations"].add(observation)

    def add_step(self, action, observation, reward: float, terminated: bool, truncated: bool) -> None:
        ep = self._ep
        if ep is None:
            raise RuntimeError("add_step() called outside an episode")
        ep["actions"].add(action)
        ep["observations"].add(observation)
        ep["rewards"].add(reward)
        ep["terminations"].add(terminated)
        ep["truncations"].add(truncated)
        ep["steps"] += 1
        ep["raw"] += float(reward)
        ep["clip"] += float(np.clip(reward, -1.0, 1.0))
        if ep["steps"] % _FLUSH_STEPS == 0:
            self._flush()

    def _flush(self) -> None:
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            self._ep[key].flush()

    def end_episode(self, attrs: dict[str, Any] | None = None,
                    infos: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """Close the episode; ``infos`` are per-step arrays of T+1 rows (Minari's convention: reset included)."""
        ep = self._ep
        if ep is None:
            raise RuntimeError("end_episode() called outside an episode")
        self._flush()
        g = ep["group"]
        gi = g.create_group("infos")  # Minari reads an empty group as infos == {}
        for k, v in (infos or {}).items():
            v = np.asarray(v)
            if v.shape[:1] != (ep["steps"] + 1,):
                raise ValueError(f"infos[{k!r}] must have {ep['steps'] + 1} rows (steps + 1), got shape {v.shape}")
            gi.create_dataset(k, data=v, chunks=(min(len(v), 256), *v.shape[1:]), **_COMPRESSION)
        g.attrs["total_steps"] = ep["steps"]
        stats = {"raw_return": ep["raw"], "clipped_return": ep["clip"], "length": ep["steps"]}
        g.attrs["raw_return"] = ep["raw"]
        g.attrs["clipped_return"] = ep["clip"]
        for k, v in (attrs or {}).items():
            g.attrs[k] = v
        self.total_episodes += 1
        self.total_steps += ep["steps"]
        self._ep = None
        return stats


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


class H5Frames:
    """Lazily read image observations of one episode ([T+1, H, W, C] uint8 in an hdf5 file).

    A full Atari dataset does not fit in memory (500k RGB frames are ~50 GB), so
    ``load_episodes(..., lazy=True)`` returns these in ``Episode.observations``: slicing reads
    (and decompresses) only the requested rows; ``np.asarray`` reads all. File handles are cached
    per process (re-opened after a fork, e.g. in DataLoader workers).
    """

    is_lazy_array = True
    _handles: dict[tuple[int, str], Any] = {}

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype):
        self.path, self.key = str(path), key
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _ds(self):
        import h5py

        k = (os.getpid(), self.path)
        st = os.stat(self.path)
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)  # a dataset rewritten in place (atomic rename) is a new file
        f, f_ident = H5Frames._handles.get(k, (None, None))
        if f is None or not f.id.valid or f_ident != ident:
            if f is not None and f.id.valid:
                f.close()
            f = h5py.File(self.path, "r")
            H5Frames._handles[k] = (f, ident)
        return f[self.key]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, np.ndarray) and idx.dtype != bool:  # h5py wants sorted unique indices
            uniq, inv = np.unique(idx, return_inverse=True)
            return self._ds()[uniq][inv.reshape(idx.shape)]
        return self._ds()[idx]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._ds()[()]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"H5Frames({self.path}:{self.key}, shape={self.shape}, dtype={self.dtype})"


def is_online(url: str = "https://huggingface.co", timeout: float = 2.0) -> bool:
    """Fast hub reachability probe: False at once under HF_HUB_OFFLINE=1, else one HTTPS request.

    A bare TCP connect is not enough: sandboxes with transparent proxies accept any connection.
    Any HTTP answer (even an error status) means online; a failed TLS handshake, DNS lookup or a
    timeout means offline. Minari's own downloader would instead retry for ~20 s.
    """
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _task_from_spec(env_spec_json: str | None) -> str | None:
    if not env_spec_json:
        return None
    try:
        env_id = json.loads(env_spec_json).get("id")
    except (json.JSONDecodeError, AttributeError):
        return None
    return _task_from_name(env_id)


def _task_from_name(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return get_task(name).name
    except ValueError:
        pass
    low = name.lower().replace("-", "").replace("_", "")
    for task in _all_tasks():
        if task.name in low:
            return task.name
    return None


def _all_tasks() -> list[TaskSpec]:
    from more3s.envs import TASKS

    return list(TASKS.values())


def _check_action_space(source: str, space: gym.Space, task: str | None) -> None:
    if task is None:
        return
    spec = get_task(task)
    if spec.action_kind == "discrete":
        ok = isinstance(space, gym.spaces.Discrete) and int(space.n) == spec.action_dim
    else:
        ok = isinstance(space, gym.spaces.Box) and tuple(space.shape) == (spec.action_dim,)
    if not ok:
        raise ValueError(f"{source}: field 'action_space' is {space}, which does not match task "
                         f"{spec.name!r} ({spec.action_kind}, {spec.action_dim} actions)")


def _check_actions(source: str, ep: Episode, task: str | None) -> None:
    if task is None:
        return
    spec = get_task(task)
    a = ep.actions
    if spec.action_kind == "discrete":
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{source}: field 'actions' has shape {a.shape} dtype {a.dtype}, but "
                             f"task {spec.name!r} has discrete actions")
        if a.size and (a.min() < 0 or a.max() >= spec.action_dim):
            raise ValueError(f"{source}: field 'actions' has values outside [0, {spec.action_dim}) "
                             f"for task {spec.name!r}")
    elif a.ndim != 2 or a.shape[1] != spec.action_dim:
        raise ValueError(f"{source}: field 'actions' has shape {a.shape}, but task {spec.name!r} "
                         f"has {spec.action_dim}-dimensional continuous actions")


def _minari_dir(source: str | Path) -> Path | None:
    """The ``data`` directory of a Minari dataset given as a path, or None."""
    p = Path(source)
    for cand in (p, p / "data"):
        if (cand / "metadata.json").is_file():
            return cand
    return None


def _load_minari_dir(data_dir: Path, label: str, task: str | None,
                     max_episodes: int | None, lazy: bool = False) -> list[Episode]:
    import h5py
    from minari.dataset.minari_storage import MinariStorage

    meta_file = data_dir / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_file}: unreadable Minari metadata ({e})") from e
    for key in ("data_format", "total_episodes"):
        if key not in meta:
            raise ValueError(f"{meta_file}: missing field {key!r}")
    if task is None:
        task = (meta.get("more3s") or {}).get("task") or _task_from_spec(meta.get("env_spec")) \
            or _task_from_name(meta.get("dataset_id"))
    if meta["data_format"] != "hdf5":
        return _load_minari_generic(data_dir, label, task, max_episodes)
    h5 = data_dir / "main_data.hdf5"
    try:
        storage = MinariStorage.read(data_dir)
    except Exception as e:  # noqa: BLE001 - minari raises assorted types for bad metadata
        raise ValueError(f"{meta_file}: not a readable Minari dataset ({type(e).__name__}: {e})") from e
    _check_action_space(f"{meta_file}", storage.action_space, task)
    n = int(meta["total_episodes"])
    if max_episodes is not None:
        n = min(n, int(max_episodes))
    jpeg = bool(meta.get("jpeg_encoding", True))
    episodes = []
    try:
        f = h5py.File(h5, "r")
    except OSError as e:
        raise ValueError(f"{h5}: cannot open hdf5 file (truncated or corrupt?): {e}") from e
    with f:
        for i in range(n):
            key = f"episode_{i}"
            if key not in f:
                raise ValueError(f"{h5}: missing group {key!r} (metadata says "
                                 f"{meta['total_episodes']} episodes)")
            g = f[key]
            fields = {}
            for name in ("observations", "actions", "rewards", "terminations", "truncations"):
                if name not in g:
                    raise ValueError(f"{h5}: {key} is missing field {name!r}")
                if not isinstance(g[name], h5py.Dataset):
                    raise ValueError(f"{h5}: {key}/{name} is a {type(g[name]).__name__}; only "
                                     f"Box/Discrete spaces are supported")
                d = g[name]
                if (name == "observations" and lazy and not jpeg and d.dtype == np.uint8
                        and d.ndim >= 3):
                    fields[name] = H5Frames(h5, d.name, d.shape, d.dtype)
                    continue
                try:
                    fields[name] = d[()]
                except OSError as e:
                    raise ValueError(f"{h5}: field {key}/{name} cannot be read "
                                     f"(truncated or corrupt?): {e}") from e
            if jpeg and _is_image(storage.observation_space):
                fields["observations"] = _decode_jpeg(fields["observations"], h5, key)
            ep = make_episode(**fields, task=task, source=f"{h5}: {key}")
            _check_actions(f"{h5}: {key}", ep, task)
            episodes.append(ep)
    return episodes


def _is_image(space: gym.Space) -> bool:
    from minari.dataset.minari_storage import is_image_space

    return is_image_space(space)


def _decode_jpeg(encoded, h5: Path, key: str) -> np.ndarray:
    import io

    from PIL import Image

    try:
        return np.stack([np.array(Image.open(io.BytesIO(bytes(b))), dtype=np.uint8) for b in encoded])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{h5}: field {key}/observations has undecodable JPEG frames: {e}") from e


def _load_minari_generic(data_dir: Path, label: str, task: str | None,
                         max_episodes: int | None) -> list[Episode]:
    """Non-hdf5 Minari formats (arrow, parquet) through Minari's own reader."""
    import minari

    ds = minari.MinariDataset(data_dir)
    _check_action_space(str(data_dir), ds.action_space, task)
    out = []
    for i, e in enumerate(ds.iterate_episodes()):
        if max_episodes is not None and i >= max_episodes:
            break
        ep = make_episode(e.observations, e.actions, e.rewards, e.terminations, e.truncations,
                          task=task, source=f"{label}: episode {i}")
        _check_actions(f"{label}: episode {i}", ep, task)
        out.append(ep)
    return out


def _load_d4rl(path: Path, task: str | None, max_episodes: int | None) -> list[Episode]:
    """D4RL hdf5 (flat arrays, episodes split at terminals | timeouts).

    D4RL stores no final observation per episode; it is taken from ``next_observations`` when the
    file has them, else the episode's last observation is repeated (and flagged in no way other
    than this docstring: it is never used as a training input for the last action's state).
    """
    import h5py

    if task is None:
        task = _task_from_name(path.stem)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot open hdf5 file (truncated or corrupt?): {e}") from e
    with f:
        missing = [k for k in D4RL_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path}: missing D4RL field(s) {missing}; a D4RL file has "
                             f"{list(D4RL_KEYS)} (found {sorted(f.keys())})")
        data = {}
        for k in (*D4RL_KEYS, "next_observations"):
            if k in f:
                try:
                    data[k] = f[k][()]
                except OSError as e:
                    raise ValueError(f"{path}: field {k!r} cannot be read (truncated or corrupt?): "
                                     f"{e}") from e
    n = len(data["rewards"])
    for k, v in data.items():
        if np.ndim(v) == 0 or len(v) != n:
            raise ValueError(f"{path}: field {k!r} has {np.shape(v)[:1]} rows, expected {n} "
                             f"(length of 'rewards')")
    for k in ("observations", "rewards", "next_observations", "actions"):
        if k in data and np.issubdtype(data[k].dtype, np.floating) and not np.all(np.isfinite(data[k])):
            rows = np.unique(np.nonzero(~np.isfinite(data[k]))[0])[:5].tolist()
            raise ValueError(f"{path}: field {k!r} has NaN/inf values (rows {rows})")
    if task is not None:
        spec = get_task(task)
        a = data["actions"]
        if spec.action_kind == "continuous" and (a.ndim != 2 or a.shape[1] != spec.action_dim):
            raise ValueError(f"{path}: field 'actions' has shape {a.shape}, but task {spec.name!r} "
                             f"has {spec.action_dim}-dimensional actions")
        if spec.obs_dim is not None and (data["observations"].ndim != 2
                                         or data["observations"].shape[1] != spec.obs_dim):
            raise ValueError(f"{path}: field 'observations' has shape {data['observations'].shape}, "
                             f"but task {spec.name!r} has {spec.obs_dim}-dimensional observations")
    ends = np.flatnonzero(data["terminals"].astype(bool) | data["timeouts"].astype(bool))
    if n and (len(ends) == 0 or ends[-1] != n - 1):
        ends = np.append(ends, n - 1)  # a trailing unfinished episode counts as truncated
    episodes, start = [], 0
    for end in ends:
        if max_episodes is not None and len(episodes) >= max_episodes:
            break
        sl = slice(start, end + 1)
        obs = data["observations"][sl]
        last = data["next_observations"][end] if "next_observations" in data else obs[-1]
        term = data["terminals"][sl].astype(bool)
        trunc = data["timeouts"][sl].astype(bool) & ~term
        if not term[-1] and not trunc[-1]:
            trunc[-1] = True
        ep = make_episode(np.concatenate([obs, last[None]]), data["actions"][sl], data["rewards"][sl],
                          term, trunc, task=task, source=f"{path}: episode {len(episodes)}")
        _check_actions(f"{path}: episode {len(episodes)}", ep, task)
        episodes.append(ep)
        start = end + 1
    return episodes


def _remote_help(dataset_id: str, why: str) -> str:
    return (f"Minari dataset {dataset_id!r} is not available locally (looked under "
            f"{dataset_path(dataset_id)}), and {why}. To get it: on a machine with internet run "
            f"`minari download {dataset_id}` and copy the directory to $MINARI_DATASETS_PATH "
            f"(default ~/.minari/datasets), or collect a local dataset with "
            f"`python -m more3s.collect --env ENV --policy POLICY --episodes N --dataset-id ID`, "
            f"or pass a D4RL hdf5 file path.")


def load_episodes(source: str | os.PathLike, *, task: str | None = None,
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
            if p.suffix.lower() not in (".hdf5", ".h5", ".hdf"):
                raise ValueError(f"{p}: unsupported file type; expected a D4RL .hdf5 file or a "
                                 f"Minari dataset directory")
            return _load_d4rl(p, task, max_episodes)
        d = _minari_dir(p)
        if d is None:
            raise ValueError(f"{p}: directory holds no Minari dataset (no metadata.json in it or "
                             f"in its data/ subdirectory)")
        return _load_minari_dir(d, label, task, max_episodes, lazy)
    if label.lower().endswith((".hdf5", ".h5")):
        raise FileNotFoundError(f"{label}: no such D4RL hdf5 file")
    local = dataset_path(label)  # validates the id's form
    d = _minari_dir(local)
    if d is None:
        if not is_online():
            raise FileNotFoundError(_remote_help(label, "this machine is offline "
                                                 "(HF_HUB_OFFLINE=1 or no route to the hub)"))
        import minari

        try:
            minari.download_dataset(label)
        except Exception as e:  # noqa: BLE001 - network / hub errors of every kind
            raise FileNotFoundError(_remote_help(label, f"the download failed: {e}")) from e
        d = _minari_dir(local)
        if d is None:
            raise FileNotFoundError(_remote_help(label, "the download produced no dataset"))
    return _load_minari_dir(d, label, task, max_episodes, lazy)
