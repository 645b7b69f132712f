"""``encoder=auto``: a named encoder passes through, ``auto`` is the pretrained LXMERT when its weights are here
and the random-init tiny encoder, loudly, when they are not."""

import pytest
from huggingface_hub import constants

import more3s.encoder.resolve as resolve_mod
from more3s.encoder import FALLBACK_ENCODER, resolve_encoder
from more3s.encoder.lxmert import PRETRAINED_ID


def _availability(monkeypatch, present: bool) -> list[str]:
    """Make resolve.py's hf_available answer ``present``; returns the names it was asked about."""
    asked = []

    def fake(name):
        asked.append(name)
        return present

    monkeypatch.setattr(resolve_mod, "hf_available", fake)
    return asked


@pytest.mark.parametrize("name", ["lxmert-tiny", PRETRAINED_ID, "/some/local/lxmert", "Auto"])
def test_a_named_encoder_passes_through_without_a_lookup(monkeypatch, capsys, name):
    asked = _availability(monkeypatch, False)
    assert resolve_encoder(name) == name
    assert asked == []
    assert capsys.readouterr().err == ""


def test_auto_with_pretrained_weights_is_the_pretrained_id(monkeypatch, capsys):
    asked = _availability(monkeypatch, True)
    assert resolve_encoder("auto") == PRETRAINED_ID
    assert asked == [PRETRAINED_ID]
    assert capsys.readouterr().err == ""  # nothing to warn about


def test_auto_without_pretrained_weights_falls_back_loudly(monkeypatch, capsys):
    asked = _availability(monkeypatch, False)
    assert resolve_encoder("auto") == FALLBACK_ENCODER == "lxmert-tiny"
    assert asked == [PRETRAINED_ID]
    err = capsys.readouterr().err
    assert "!" * 100 in err
    assert f"pretrained {PRETRAINED_ID} is not available offline" in err
    assert "'lxmert-tiny'" in err and "NOT those of the paper's pretrained encoder" in err
    assert "--encoder /path/to/lxmert" in err  # says how to use real weights


def test_auto_with_an_empty_hub_cache_falls_back(tmp_path, monkeypatch, capsys):
    """The real availability check against a cache that holds nothing."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_encoder("auto") == FALLBACK_ENCODER
    assert "not available offline" in capsys.readouterr().err
