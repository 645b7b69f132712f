"""Where local Minari datasets live: ids validated, the data directory found from either level."""

import numpy as np
import pytest

from more3s.data import dataset_path
from more3s.data.minari_paths import minari_dir

from .conftest import small_minari


def test_dataset_path_lies_under_the_root_and_validates_the_id(_minari_root):
    assert dataset_path("tst/ok-v0") == _minari_root / "tst" / "ok-v0"
    for bad in ("tst/no_version", "x/y", "tst/bad id-v0"):
        with pytest.raises(ValueError, match="bad dataset id"):
            dataset_path(bad)


def test_minari_dir_finds_the_metadata(tmp_path):
    path = small_minari("tst/dir-v0", np.random.default_rng(0))
    assert minari_dir(path) == minari_dir(path / "data") == path / "data"
    assert minari_dir(tmp_path) is None
