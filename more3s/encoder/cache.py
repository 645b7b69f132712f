"""Content-addressed embedding cache: the frozen encoder runs once per dataset, never in training.

Key = sha256 of (dataset content fingerprint, encoder weights fingerprint and compute dtype, region
config with its projection seed, the output layout (slots), task, state caption, format version): everything a
state embedding depends on. The action prompt set is not in it: states never see the prompts, so the three prompt
sets share one set of state chunks and each has its own action table beside them. Layout under
``<cache_dir>/<key>/``::

    plan.json                 what is being built (key parts, rows, chunk size, d_enc)
    offsets.npy               [E+1] int64 row offsets of the episodes
    chunks/states_00000.npy   fp16 [<= chunk_rows, d_enc], rows of all observations of all episodes, flat
    chunks/states_00000.json  its sha256 and row range (written after the .npy; both atomically)
    action_table.<P>.npy/.json  fp32 [A (or A+1), d_enc] for prompt set P and its sha256 (one per prompt set used)
    meta.json                 written when the states are complete

``<cache_dir>/fingerprints.json`` memoizes the content digests of file-backed datasets (``dataset_fingerprint``).

Resumable: a chunk counts only when its .json exists and its checksum matches, so an interrupted run
continues at the first missing chunk; a corrupt or truncated chunk found on load is rebuilt when the
episodes and encoder are at hand (``build_or_load_cache``), else ``open_cache`` raises
``CacheCorruptError``. Each chunk is built under its own file lock, so two processes building the
same key share the work instead of corrupting it. Under ``torchrun`` (torch.distributed initialized)
rank r builds the chunks i with i % world == r; chunks are encoded in the same fixed batches
whichever process builds them, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
from filelock import FileLock

from more3s.atomic import atomic_path, atomic_write_text, sha256_file
from more3s.distributed import rank_and_world
from more3s.envs import PromptSet, check_prompt_set, get_task, state_caption

from .lxmert import FrozenLxmert
from .regions import Regions, sequence_slice

if TYPE_CHECKING:
    from more3s.data.frames import H5Frames

__all__ = [
    "FORMAT_VERSION", "CacheConfig", "EmbeddingCache", "ChunkedStates", "CacheCorruptError",
    "build_or_load_cache", "open_cache", "cache_key", "dataset_fingerprint", "default_cache_dir",
]

log = logging.getLogger(__name__)

# 2: regions smallest first with displacements, state/action slots; 3: MuJoCo com velocities scaled;
# 4: the prompt set left the key (states shared by the prompt sets, one action table per set)
FORMAT_VERSION = 4
FINGERPRINT_MEMO = "fingerprints.json"  # in the cache root, beside the <key> folders (see dataset_fingerprint)


class CacheCorruptError(RuntimeError):
    """A cache directory is incomplete or a chunk fails its checksum, and it cannot be rebuilt here."""


class EpisodeLike(Protocol):
    """What the cache reads of an episode (``more3s.data.Episode`` or any object alike): its observations
    [T+1, ...], an array or lazily read frames (``frames.H5Frames``); ``task`` too, when it has one."""

    @property
    def observations(self) -> np.ndarray: ...


@dataclass(frozen=True)
class CacheConfig:
    chunk_rows: int = 4096  # states per chunk file: the unit of resume, checksum and sharding
    batch_size: int | None = None  # states per encoder call (None: the encoder's own batch size)
    verify: bool = True  # checksum every chunk on load (reads the cache once; catches silent corruption)
    progress: bool = True  # tqdm bar with states/s (rank 0 only)

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ValueError(f"CacheConfig.chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"CacheConfig.batch_size must be >= 1, got {self.batch_size}")


def default_cache_dir() -> Path:
    """$MORE3S_CACHE, else ~/.cache/more3s/embeddings."""
    env = os.environ.get("MORE3S_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "more3s" / "embeddings"


def dataset_fingerprint(episodes: Sequence[EpisodeLike], memo_file: str | os.PathLike[str] | None = None) -> str:
    """blake2b over every episode's observations (dtype, shape, content digest): what the states are made of.

    Hashing reads every frame (about 1 GB/s, plus hdf5 decompression: minutes for a full Atari dataset).
    ``memo_file`` remembers the digests of file-backed episodes (``load_episodes(lazy=True)``) by the file's
    identity (inode, size, mtime_ns), as DVC and ccache do, so a cache hit on an unchanged dataset reads no
    frame; any write to the file re-hashes it. Lazy and in-memory episodes give the same fingerprint."""
    memo = _DigestMemo(Path(memo_file) if memo_file is not None else None)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"episodes={len(episodes)}".encode())
    for ep in episodes:
        obs = ep.observations
        h.update(f"|{np.dtype(obs.dtype).str}|{tuple(obs.shape)}|".encode())
        h.update(memo.digest(obs))
    memo.save()
    return h.hexdigest()


def _content_digest(obs: np.ndarray, rows_per_read: int = 256) -> bytes:
    """blake2b of an episode's observation bytes, read in slices (a lazy episode never sits in memory whole)."""
    h = hashlib.blake2b(digest_size=20)
    for a in range(0, len(obs), rows_per_read):
        h.update(np.ascontiguousarray(obs[a:a + rows_per_read]).reshape(-1).view(np.uint8).data)
    return h.digest()


class _DigestMemo:
    """Content digests of file-backed episodes, keyed by (file, hdf5 key) and trusted while the file's
    (inode, size, mtime_ns) are unchanged. A damaged memo is ignored and rewritten; writes are atomic."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, Any] = {}
        self.dirty = False
        if path is not None and path.exists():
            try:
                self.entries = dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                self.entries = {}  # a memo is only a shortcut: re-hash rather than fail

    def digest(self, obs: np.ndarray) -> bytes:
        src = getattr(obs, "path", None) if getattr(obs, "is_lazy_array", False) else None
        if self.path is None or src is None:
            return _content_digest(obs)
        st = os.stat(src)
        ident, name = [st.st_ino, st.st_size, st.st_mtime_ns], f"{os.path.realpath(src)}|{cast('H5Frames', obs).key}"
        entry = self.entries.get(name)
        if isinstance(entry, dict) and entry.get("file") == ident:
            try:
                return bytes.fromhex(entry["digest"])
            except (KeyError, TypeError, ValueError):
                pass
        d = _content_digest(obs)
        self.entries[name], self.dirty = {"file": ident, "digest": d.hex()}, True
        return d

    def save(self) -> None:
        if not self.dirty or self.path is None:  # (only a memo with a file gets dirty)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):  # merge with what other processes wrote meanwhile
                merged = _DigestMemo(self.path).entries
                merged.update(self.entries)
                merged = {k: v for k, v in merged.items() if os.path.exists(k.rsplit("|", 1)[0])}  # deleted files go
                atomic_write_text(self.path, json.dumps(merged, indent=0, sort_keys=True))
        except OSError as e:  # e.g. a read-only cache root: the next run hashes again, nothing is wrong
            log.warning("could not save dataset fingerprints to %s (%s); they will be recomputed next time",
                        self.path, e)
        self.dirty = False


def cache_key(dataset_fp: str, encoder: FrozenLxmert, task: str) -> tuple[str, dict[str, Any]]:
    """(key, parts): the key is sha256 of the canonical JSON of the parts (no prompt set: see the module doc)."""
    spec = get_task(task)
    parts = {
        "format": FORMAT_VERSION,
        "dataset": dataset_fp,
        "encoder": encoder.fingerprint,
        "encoder_dtype": str(encoder.dtype).removeprefix("torch."),
        "regions": encoder.config.regions.to_dict(),
        "layout": encoder.layout(),
        "task": spec.name,
        "caption": state_caption(spec.name),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return key, parts


# ---------------------------------------------------------------------------------------------
# The loaded cache
# ---------------------------------------------------------------------------------------------

class ChunkedStates:
    """A read-only ``[N_obs, d_enc]`` fp16 array over memory-mapped chunk files.

    Supports ``len``, ``shape``, ``dtype``, ``np.asarray``, and indexing by an int, a slice, or an
    integer array of any shape (``states[rows]`` with rows [B, K] -> [B, K, d_enc]), which is how
    the trainer gathers a batch.
    """

    def __init__(self, paths: Sequence[Path], chunk_rows: int, n_rows: int, d: int):
        self.chunk_rows, self.d = int(chunk_rows), int(d)
        self.chunks = [np.load(p, mmap_mode="r") for p in paths]
        self.shape = (int(n_rows), self.d)
        self.dtype = np.dtype(np.float16)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        flat = rows.reshape(-1).astype(np.int64)
        n = self.shape[0]
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"row index out of range for {n} states")
        out = np.empty((flat.size, self.d), np.float16)
        ch, r = np.divmod(flat, self.chunk_rows)
        for c in np.unique(ch):
            sel = ch == c
            out[sel] = self.chunks[c][r[sel]]
        return out.reshape(*rows.shape, self.d)

    def __getitem__(self, index: slice | npt.ArrayLike | tuple[Any, ...]) -> np.ndarray:
        """``index``: an int, a slice, an integer or boolean array, or a tuple of one of those and more axes."""
        idx, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(idx, slice):
            out = self._rows(np.arange(*idx.indices(self.shape[0])))
        elif isinstance(idx, (int, np.integer)):
            out = self._rows(np.asarray([idx]))[0]
        else:
            rows = np.asarray(idx)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if not np.issubdtype(rows.dtype, np.integer):
                raise TypeError(f"states index must be int, slice or integer array, got {rows.dtype}")
            out = self._rows(rows)
        return out[(Ellipsis, *rest)] if rest else out

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class EmbeddingCache:
    path: Path
    states: ChunkedStates  # [N_obs, d_enc] fp16
    offsets: np.ndarray  # [E+1] int64; episode i's observations are rows offsets[i] .. offsets[i+1]-1
    action_table: np.ndarray  # [A, d_enc] (discrete) or [A+1, d_enc] (continuous: e_0, e_1..e_A) fp32
    prompt_set: PromptSet  # whose action table this is
    meta: dict[str, Any] = field(default_factory=dict)
    hit: bool = False  # True when no state had to be encoded (a new prompt set's table is cheap)

    @property
    def num_episodes(self) -> int:
        return len(self.offsets) - 1

    def episode_states(self, i: int) -> np.ndarray:
        """All T_i+1 state embeddings of episode i: [T_i+1, d_enc] fp16."""
        return self.states[int(self.offsets[i]):int(self.offsets[i + 1])]

    def gather(self, episode: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """episode [B], steps [B, K] (a sampler's WindowBatch) -> [B, K, d_enc] fp16."""
        episode, steps = np.asarray(episode), np.asarray(steps)
        return self.states[self.offsets[episode][:, None] + steps]


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def _all_reduce_sum(value: int) -> int:
    """Sum of ``value`` over the ranks of the torch.distributed group (also a barrier)."""
    dev = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.int64, device=dev)
    torch.distributed.all_reduce(t)
    return int(t.item())


class _Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks = root / "chunks"
        self.locks = root / "locks"
        self.meta = root / "meta.json"
        self.plan = root / "plan.json"
        self.offsets = root / "offsets.npy"

    def table(self, prompt_set: PromptSet) -> Path:
        return self.root / f"action_table.{prompt_set}.npy"

    def chunk(self, i: int) -> Path:
        return self.chunks / f"states_{i:05d}.npy"

    def lock(self, name: str) -> FileLock:
        self.locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks / f"{name}.lock"))


def _save_npy(path: Path, arr: np.ndarray) -> str:
    """Atomically write ``arr`` as .npy, then its sidecar .json with the checksum; returns the sha256."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    digest = sha256_file(path)
    atomic_write_text(path.with_suffix(".json"),
                      json.dumps({"sha256": digest, "shape": list(arr.shape), "dtype": arr.dtype.str}))
    return digest


def _npy_ok(path: Path, shape: tuple[int, ...], dtype: npt.DTypeLike, verify: bool) -> bool:
    """True when ``path`` and its sidecar exist, the header matches, and (verify) the checksum does."""
    side = path.with_suffix(".json")
    if not path.exists() or not side.exists():
        return False
    try:
        info = json.loads(side.read_text())
        arr = np.load(path, mmap_mode="r")  # reads the header; raises on a truncated file
        if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype) or list(shape) != info["shape"]:
            return False
        return not verify or sha256_file(path) == info["sha256"]
    except (ValueError, OSError, KeyError, json.JSONDecodeError):
        return False


def _chunk_rows(i: int, chunk_rows: int, n_rows: int) -> tuple[int, int]:
    return i * chunk_rows, min(n_rows, (i + 1) * chunk_rows)


def _chunk_len(i: int, chunk_rows: int, n_rows: int) -> int:
    a, b = _chunk_rows(i, chunk_rows, n_rows)
    return b - a


def _encode_rows(encoder: FrozenLxmert, task: str, episodes: Sequence[EpisodeLike], offsets: np.ndarray,
                 start: int, stop: int, batch_size: int, on_batch: Callable[[int], None]) -> np.ndarray:
    """E_s of flat rows [start, stop): [stop-start, d_enc] fp16. Row 0 of an episode is its own previous frame.

    Each batch's rows of one episode are read as a sequence from the frame before the first (the regions of a
    sequence compute every frame once; frame pairs would compute each twice), then encoded together."""
    rows = np.arange(start, stop)
    ep = np.searchsorted(offsets, rows, side="right") - 1  # [n] episode of each row
    steps = rows - offsets[ep]  # [n] observation index inside the episode
    out = np.empty((len(rows), encoder.d_enc), np.float16)
    for s in range(0, len(rows), batch_size):
        e_b, t_b = ep[s:s + batch_size], steps[s:s + batch_size]
        parts = []
        for e in np.unique(e_b):  # one slice per episode touched by the batch
            t = t_b[e_b == e]
            frames, drop = sequence_slice(episodes[e].observations, int(t[0]), int(t[-1]) + 1)
            parts.append(encoder.regions(task, np.asarray(frames)).rows(drop))
        emb = encoder.embed_regions(task, Regions.cat(parts))  # [b, d_enc]
        out[s:s + len(t_b)] = emb.cpu().numpy().astype(np.float16)
        on_batch(len(t_b))
    return out


def _resolve_episodes(source: str | os.PathLike[str] | Iterable[EpisodeLike], task: str | None,
                      max_episodes: int | None) -> Sequence[EpisodeLike]:
    episodes: Sequence[EpisodeLike]
    if isinstance(source, (str, os.PathLike)):
        from more3s.data import load_episodes

        episodes = load_episodes(source, task=task, max_episodes=max_episodes, lazy=True)  # frames read on demand
    else:
        episodes = list(source)
        if max_episodes is not None:
            episodes = episodes[:max_episodes]
    if not episodes:
        raise ValueError(f"dataset {source if isinstance(source, (str, os.PathLike)) else '<episodes>'} "
                         "has no episodes")
    for i, ep in enumerate(episodes):
        if not hasattr(ep, "observations") or len(ep.observations) < 1:
            raise ValueError(f"episode {i} has no observations")
    return episodes


def _infer_task(episodes: Sequence[EpisodeLike], task: str | None) -> str:
    if task is not None:
        return get_task(task).name
    names = {name for ep in episodes if (name := getattr(ep, "task", None)) is not None}
    if len(names) != 1:
        raise ValueError(f"cannot infer the task from the episodes (found {sorted(names) or 'none'}); pass task=")
    return get_task(names.pop()).name


def open_cache(path: str | os.PathLike[str], prompt_set: PromptSet = "original", verify: bool = True) -> EmbeddingCache:
    """Open a complete cache directory (its states and ``prompt_set``'s action table) without an encoder; raise
    ``CacheCorruptError`` if it is not sound or holds no table for ``prompt_set``."""
    prompt_set = check_prompt_set(prompt_set)
    lay = _Layout(Path(path))
    if not lay.meta.exists():
        raise CacheCorruptError(f"{lay.root} is not a complete embedding cache (no meta.json)")
    meta = json.loads(lay.meta.read_text())
    n_rows, cr, d, n_chunks = meta["n_rows"], meta["chunk_rows"], meta["d_enc"], meta["n_chunks"]
    bad_chunks = [i for i in range(n_chunks)
                  if not _npy_ok(lay.chunk(i), (_chunk_len(i, cr, n_rows), d), np.float16, verify)]
    bad = [f"chunks {bad_chunks}"] if bad_chunks else []
    table = lay.table(prompt_set)
    if not table.exists() and not table.with_suffix(".json").exists():
        built = sorted(p.name.split(".")[1] for p in lay.root.glob("action_table.*.npy"))
        raise CacheCorruptError(
            f"embedding cache {lay.root} has no action table for prompt set {prompt_set!r} (it has {built or 'none'}); "
            f"build it with python -m more3s.encode --prompt-set {prompt_set} (the states are reused)")
    if not _npy_ok(table, tuple(meta["action_table_shape"]), np.float32, verify):
        bad.append(f"the action table ({prompt_set})")
    if bad:
        raise CacheCorruptError(
            f"embedding cache {lay.root}: {' and '.join(bad)} missing, truncated or failing the checksum; "
            "rebuild with build_or_load_cache(...) / python -m more3s.encode (it re-encodes only those), "
            "or delete the directory")
    offsets = np.load(lay.offsets)
    states = ChunkedStates([lay.chunk(i) for i in range(n_chunks)], cr, n_rows, d)
    return EmbeddingCache(path=lay.root, states=states, offsets=offsets, action_table=np.load(table),
                          prompt_set=prompt_set, meta=meta, hit=True)


def build_or_load_cache(source: str | os.PathLike[str] | Iterable[EpisodeLike], encoder: FrozenLxmert,
                        task: str | None = None, prompt_set: PromptSet = "original",
                        cache_dir: str | os.PathLike[str] | None = None, *,
                        config: CacheConfig | None = None, max_episodes: int | None = None,
                        on_chunk: Callable[[int], None] | None = None) -> EmbeddingCache:
    """Return the embedding cache of ``source`` under ``encoder``, building what is missing.

    ``source``: a dataset id/path for ``more3s.data.load_episodes``, or a list of episodes (objects
    with ``observations`` [T+1, ...] and ``task``). ``on_chunk(i)`` is called after chunk i is written
    (progress hooks, failure injection in tests). Under torch.distributed every rank must call this.
    """
    config = config or CacheConfig()
    prompt_set = check_prompt_set(prompt_set)
    episodes = _resolve_episodes(source, task, max_episodes)
    task = _infer_task(episodes, task)
    lengths = np.array([len(ep.observations) for ep in episodes], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [E+1]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key, parts = cache_key(dataset_fingerprint(episodes, root / FINGERPRINT_MEMO), encoder, task)
    job = _Build(_Layout(root / key), encoder, task, episodes, offsets, config)
    rank, world = rank_and_world()
    was_complete = job.lay.meta.exists()

    plan = _load_or_write_plan(job, {"key": key, "parts": parts, "n_rows": job.n_rows,
                                     "chunk_rows": config.chunk_rows, "d_enc": encoder.d_enc,
                                     "n_episodes": len(episodes)})
    cr = int(plan["chunk_rows"])
    n_chunks = -(-job.n_rows // cr)
    mine = [i for i in range(n_chunks) if i % world == rank]
    encoded = _encode_chunks(job, mine, cr, config.progress and rank == 0, on_chunk)
    table_shape = _write_action_table(job, prompt_set)
    if world > 1:
        encoded = _all_reduce_sum(encoded)  # also a barrier: every rank's chunks are written
    _mark_complete(job.lay, {**plan, "n_chunks": n_chunks, "action_table_shape": list(table_shape),
                             "encoder_name": encoder.name, "encoder_source": encoder.source,
                             "caption": parts["caption"], "task": task})
    if world > 1:
        torch.distributed.barrier()
    # Every chunk was checked just now (by its rank), so skip a second checksum pass.
    cache = open_cache(job.lay.root, prompt_set, verify=False)
    cache.hit = was_complete and encoded == 0
    return cache


@dataclass(frozen=True)
class _Build:
    """One build of a cache: what is encoded (the episodes of ``task``, flat rows at ``offsets``), by what, where."""

    lay: _Layout
    encoder: FrozenLxmert
    task: str
    episodes: Sequence[EpisodeLike]
    offsets: np.ndarray  # [E+1] int64
    config: CacheConfig

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])


def _load_or_write_plan(job: _Build, new_plan: dict[str, Any]) -> dict[str, Any]:
    """The build's plan, identical from every process: the first one writes it (and the offsets)."""
    lay = job.lay
    lay.root.mkdir(parents=True, exist_ok=True)
    with lay.lock("plan"):
        if lay.plan.exists():
            plan: dict[str, Any] = json.loads(lay.plan.read_text())
            if plan["n_rows"] != job.n_rows or plan["d_enc"] != job.encoder.d_enc:
                raise CacheCorruptError(f"{lay.plan} does not match this dataset/encoder; delete {lay.root}")
        else:
            plan = new_plan
            with atomic_path(lay.offsets) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, job.offsets)
            atomic_write_text(lay.plan, json.dumps(plan, indent=1))
    return plan


def _encode_chunks(job: _Build, mine: list[int], chunk_rows: int, progress: bool,
                   on_chunk: Callable[[int], None] | None) -> int:
    """Check each chunk of ``mine`` under its lock, encode the missing or broken ones; the rows encoded."""
    from tqdm.auto import tqdm

    lay, encoder, n_rows = job.lay, job.encoder, job.n_rows
    bs = job.config.batch_size or encoder.config.batch_size
    bar = tqdm(total=sum(_chunk_len(i, chunk_rows, n_rows) for i in mine), unit="state",
               unit_scale=True, desc=f"encode {job.task} ({encoder.name})",
               disable=not progress, dynamic_ncols=True)
    encoded = 0
    try:
        for i in mine:
            a, b = _chunk_rows(i, chunk_rows, n_rows)
            with lay.lock(f"chunk_{i:05d}"):
                if _npy_ok(lay.chunk(i), (b - a, encoder.d_enc), np.float16, job.config.verify):
                    bar.update(b - a)
                    continue
                arr = _encode_rows(encoder, job.task, job.episodes, job.offsets, a, b, bs, bar.update)
                _save_npy(lay.chunk(i), arr)
                encoded += b - a
            if on_chunk is not None:
                on_chunk(i)
    finally:
        bar.close()
    return encoded


def _write_action_table(job: _Build, prompt_set: PromptSet) -> tuple[int, ...]:
    """Encode ``prompt_set``'s action table, and write it unless a sound one is there; its shape."""
    with job.lay.lock(f"table_{prompt_set}"):
        table = job.encoder.embed_actions(job.task, prompt_set).cpu().numpy().astype(np.float32)
        if not _npy_ok(job.lay.table(prompt_set), table.shape, np.float32, job.config.verify):
            _save_npy(job.lay.table(prompt_set), table)
    return table.shape


def _mark_complete(lay: _Layout, meta: dict[str, Any]) -> None:
    """Write meta.json (the completion marker) unless another process did, stamped with the time."""
    with lay.lock("meta"):
        if not lay.meta.exists():
            meta = {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_text(lay.meta, json.dumps(meta, indent=1))
