"""Lazy image observations: the frames of one episode left in their hdf5 file, read on demand.

A full Atari dataset does not fit in memory (500k RGB frames are ~50 GB), so
``load_episodes(..., lazy=True)`` puts an ``H5Frames`` in ``Episode.observations``: slicing reads
(and decompresses) only the requested rows; ``np.asarray`` reads all.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

__all__ = ["H5Frames"]


class H5Frames:
    """Lazily read image observations of one episode ([T+1, H, W, C] uint8 in an hdf5 file).

    Reads like a read-only array (``shape``, ``dtype``, ``ndim``, ``len``, indexing, ``np.asarray``). File
    handles are cached per process (re-opened after a fork, e.g. in DataLoader workers, and when the file
    was replaced).
    """

    is_lazy_array = True
    # (pid, path) -> (open h5py.File, (inode, size, mtime) of the file it opened)
    _handles: ClassVar[dict[tuple[int, str], tuple[Any, tuple[int, int, int]]]] = {}

    def __init__(self, path: str | os.PathLike[str], key: str, shape: tuple[int, ...], dtype: npt.DTypeLike):
        self.path, self.key = str(path), key
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _ds(self) -> Any:
        """The h5py dataset, through this process's cached handle."""
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

    def __getitem__(self, idx: Any) -> np.ndarray:
        out: np.ndarray
        if isinstance(idx, np.ndarray) and idx.dtype != bool:  # h5py wants sorted unique indices
            uniq, inv = np.unique(idx, return_inverse=True)
            out = self._ds()[uniq][inv.reshape(idx.shape)]
        else:
            out = self._ds()[idx]
        return out

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        out: np.ndarray = self._ds()[()]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"H5Frames({self.path}:{self.key}, shape={self.shape}, dtype={self.dtype})"
