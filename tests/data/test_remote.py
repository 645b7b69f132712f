"""The Minari remote: offline answers come at once, and a dataset that cannot be fetched says how to get it."""

import time

import minari
import pytest

from more3s.data import is_online, load_episodes, published_reason


def test_remote_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="offline") as e:
        load_episodes("mujoco/halfcheetah/medium-v0")
    assert time.perf_counter() - t0 < 5.0
    assert "minari download mujoco/halfcheetah/medium-v0" in str(e.value)
    assert "more3s.collect" in str(e.value)


def test_remote_download_failure_is_explained(monkeypatch):
    """Online but the download fails: the error still says how to get the data."""
    import more3s.data.remote as remote

    monkeypatch.setattr(remote, "is_online", lambda *a, **k: True)

    def fail(dataset_id):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(minari, "download_dataset", fail)
    with pytest.raises(FileNotFoundError, match="download failed: hub unreachable"):
        load_episodes("mujoco/hopper/medium-v0")


def test_is_online_probe_is_quick(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_online() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.perf_counter()
    # a non-routable address (TCP may still connect through a transparent proxy): no HTTPS answer
    assert is_online("https://10.255.255.1", timeout=0.5) is False
    assert time.perf_counter() - t0 < 5.0


def test_remote_listing_only_when_online(monkeypatch):
    import more3s.data.remote as io

    calls = []

    def listing(**kw):
        calls.append(kw)
        return {"someone/listed-v0": {}}

    monkeypatch.setattr(minari, "list_remote_datasets", listing)
    assert published_reason("someone/listed-v0") is None and calls == []  # HF_HUB_OFFLINE=1: never asked
    monkeypatch.setattr(io, "is_online", lambda timeout=2.0: True)
    assert "remote lists" in published_reason("someone/listed-v0")
    assert published_reason("someone/other-v0") is None
