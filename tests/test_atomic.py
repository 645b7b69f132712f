"""Atomic writes: files and directories appear complete or not at all, and a failed block leaves nothing."""

from __future__ import annotations

import threading

import pytest

import more3s.atomic as atomic
from more3s.atomic import atomic_dir, atomic_path, atomic_write_text, sha256_file


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_atomic_path_publishes_only_on_success(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "one")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert dest.read_text() == "one" and _siblings(dest) == []
    assert sha256_file(dest) == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "two-renames"])
def test_atomic_dir_overwrite(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # an OS without RENAME_EXCHANGE
    dest = tmp_path / "ds"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(dest):
            pass
    with pytest.raises(RuntimeError):  # a failed rebuild keeps the old version and leaves no temp
        with atomic_dir(dest, overwrite=True) as tmp:
            (tmp / "v").write_text("half")
            raise RuntimeError("interrupted")
    assert (dest / "v").read_text() == "1" and _siblings(dest) == []
    with atomic_dir(dest, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w").write_text("x")
    assert (dest / "v").read_text() == "2" and (dest / "sub" / "w").read_text() == "x"
    assert _siblings(dest) == []  # neither the old version nor a temp is left behind


def test_exchange_swaps_and_dest_is_never_absent(tmp_path):
    """RENAME_EXCHANGE on this filesystem: the swap happens, and a reader polling through many overwrites
    always finds a complete directory (with the two-rename fallback it can find none)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    if not atomic._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"

    dest = tmp_path / "ds"
    with atomic_dir(dest) as tmp:
        (tmp / "v").write_text("0")
    missing, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            if not (dest / "v").exists():
                missing.append(1)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            with atomic_dir(dest, overwrite=True) as tmp:
                (tmp / "v").write_text(str(i))
    finally:
        stop.set()
        t.join()
    assert not missing and (dest / "v").read_text() == "199"


def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path):
    """Not mkstemp's 0600: results written atomically are readable by whoever could read a plain file."""
    import stat

    from more3s.atomic import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.json").stat().st_mode) != 0o600


def test_json_report_makes_its_folders_and_expands_home(tmp_path, monkeypatch):
    import json

    from more3s.atomic import write_json_report

    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_json_report("~/deep/er/report.json", {"score": 1.5, "nan": float("nan")})
    assert path == tmp_path / "deep" / "er" / "report.json"
    back = json.loads(path.read_text())
    assert back["score"] == 1.5 and back["nan"] != back["nan"]  # NaN survives (probe scores may be NaN)
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left beside it
