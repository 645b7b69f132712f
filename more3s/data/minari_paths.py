"""Where local Minari datasets live: an id's directory under ``MINARI_DATASETS_PATH``, and the ``data``
directory (the one holding ``metadata.json``) of a dataset given by path."""

from __future__ import annotations

from pathlib import Path

__all__ = ["dataset_path", "minari_dir"]


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


def minari_dir(source: str | Path) -> Path | None:
    """The ``data`` directory of a Minari dataset given as a path (the dataset's or its ``data``), or None."""
    p = Path(source)
    for cand in (p, p / "data"):
        if (cand / "metadata.json").is_file():
            return cand
    return None
