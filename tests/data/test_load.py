"""load_episodes' dispatch: what it refuses before any reader runs (the readers' own checks are tested beside
them: test_minari_reader.py, test_d4rl.py, test_remote.py)."""

import numpy as np
import pytest

from more3s.data import load_episodes

from .conftest import small_minari


def test_files_that_are_not_d4rl(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        load_episodes(tmp_path / "missing.hdf5")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_episodes(other)


def test_bad_directories_ids_tasks_and_counts(tmp_path):
    small_minari("tst/six-v0", np.random.default_rng(4), n_actions=6)
    with pytest.raises(ValueError, match="no Minari dataset"):
        load_episodes(tmp_path)
    with pytest.raises(ValueError, match="bad dataset id"):
        load_episodes("tst/no_version")
    with pytest.raises(ValueError, match="unknown env"):
        load_episodes("tst/six-v0", task="tetris")
    with pytest.raises(ValueError, match="max_episodes"):
        load_episodes("tst/six-v0", max_episodes=0)
