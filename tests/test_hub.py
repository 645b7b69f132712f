"""Whether pretrained weights load offline: a local directory, or a snapshot in a (fake) Hugging Face cache; and
the loud notice printed when a fallback changes what the scores mean."""

import pytest
from huggingface_hub import constants

from more3s.hub import hf_available, loud

REPO_ID = "org-x/model-y"
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache that try_to_load_from_cache reads (it looks up constants.HF_HUB_CACHE per call)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _snapshot(cache, files=("config.json", "model.safetensors"), repo_id=REPO_ID, no_exist=()):
    """Lay out ``models--ORG--NAME`` with refs/main -> REV and ``files`` in snapshot REV; ``no_exist`` files are
    recorded as known to be absent (``.no_exist/REV/<file>``)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for f in files:
        (snap / f).write_text("{}" if f.endswith(".json") else "weights")
    for f in no_exist:
        (repo / ".no_exist" / REV).mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / REV / f).touch()
    return snap


def test_local_directory_needs_its_config(tmp_path):
    d = tmp_path / "lxmert"
    d.mkdir()
    (d / "model.safetensors").write_text("weights")
    assert not hf_available(str(d))  # weights without a config.json do not load
    (d / "config.json").write_text("{}")
    assert hf_available(str(d))
    assert hf_available(d)  # a Path works as well as a str


def test_local_directory_is_judged_by_its_config_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert hf_available(str(tmp_path))  # a directory is a local checkpoint: the weights file is not looked for


def test_local_config_json_that_is_a_directory_does_not_count(tmp_path):
    (tmp_path / "config.json").mkdir()
    assert not hf_available(str(tmp_path))


def test_empty_cache_is_not_available(hub_cache):
    assert not hf_available(REPO_ID)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_cached_snapshot_with_config_and_weights_is_available(hub_cache, weights):
    _snapshot(hub_cache, files=("config.json", weights))
    assert hf_available(REPO_ID)


def test_cached_snapshot_without_weights_is_not_available(hub_cache):
    _snapshot(hub_cache, files=("config.json", "tokenizer.json"))
    assert not hf_available(REPO_ID)


def test_cached_snapshot_without_config_is_not_available(hub_cache):
    _snapshot(hub_cache, files=("model.safetensors",))
    assert not hf_available(REPO_ID)


def test_snapshot_of_another_repo_does_not_count(hub_cache):
    _snapshot(hub_cache, repo_id="org-x/other")
    assert not hf_available(REPO_ID)
    assert hf_available("org-x/other")


def test_snapshot_not_named_by_refs_main_does_not_count(hub_cache):
    snap = _snapshot(hub_cache)
    (snap.parents[1] / "refs" / "main").write_text("f" * 40)  # main now points at a revision not downloaded
    assert not hf_available(REPO_ID)


def test_weights_known_absent_fall_back_to_the_other_format(hub_cache):
    _snapshot(hub_cache, files=("config.json", "pytorch_model.bin"), no_exist=("model.safetensors",))
    assert hf_available(REPO_ID)


def test_config_known_absent_is_not_available(hub_cache):
    _snapshot(hub_cache, files=("model.safetensors",), no_exist=("config.json",))
    assert not hf_available(REPO_ID)  # the cache's "known not to exist" marker is no config


def test_weights_known_absent_in_both_formats_is_not_available(hub_cache):
    _snapshot(hub_cache, files=("config.json",), no_exist=("model.safetensors", "pytorch_model.bin"))
    assert not hf_available(REPO_ID)


def test_loud_frames_the_message_on_stderr(capsys):
    loud("the fallback changes the scores")
    out, err = capsys.readouterr()
    assert out == ""
    bar = "!" * 100
    assert err == f"{bar}\n!! the fallback changes the scores\n{bar}\n"
