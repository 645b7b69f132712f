"""Checkpoints: atomic layout, exact round trip, pruning, corruption detection and fallback."""

import pytest
import torch

from more3s.checkpoint import (CorruptCheckpointError, list_checkpoints, load_checkpoint, load_latest,
                               save_checkpoint)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))


def _save(root, step, seed, keep=None):
    m = _model(seed)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 5)).sum().backward()
    opt.step()
    return m, save_checkpoint(root, step, m, {"optimizer": opt.state_dict(), "extra": [1, 2]}, keep=keep)


def test_round_trip_is_exact_and_leaves_no_temp_files(tmp_path):
    m, path = _save(tmp_path, 7, seed=0)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors", "state.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000007"]  # no .partial leftovers
    fresh = _model(1)
    ck = load_checkpoint(path, fresh)
    assert ck.step == 7 and ck.state["extra"] == [1, 2] and "optimizer" in ck.state
    for a, b in zip(m.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, seed=step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


@pytest.mark.parametrize("damage", ["truncate_model", "truncate_state", "flip_byte", "no_manifest"])
def test_corrupt_newest_falls_back_to_previous(tmp_path, damage):
    _, _ = _save(tmp_path, 1, seed=1)
    m2, p2 = _save(tmp_path, 2, seed=2)
    if damage == "truncate_model":
        f = p2 / "model.safetensors"
        f.write_bytes(f.read_bytes()[:50])
    elif damage == "truncate_state":
        f = p2 / "state.pt"
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "flip_byte":
        f = p2 / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        (p2 / "manifest.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="step_00000002"):
        load_checkpoint(p2, _model(0))
    logs = []
    fresh = _model(5)
    ck = load_latest(tmp_path, fresh, log=logs.append)
    assert ck.step == 1
    assert len(logs) == 1 and "falling back" in logs[0] and "step_00000002" in logs[0]
    ref = _model(1)  # what step 1 saved started from seed 1; compare against the file itself
    load_checkpoint(ck.path, ref)
    for a, b in zip(ref.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_all_corrupt_is_an_error_and_empty_is_none(tmp_path):
    assert load_latest(tmp_path / "none") is None
    _, p = _save(tmp_path, 3, seed=3)
    (p / "state.pt").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="no intact checkpoint"):
        load_latest(tmp_path, _model(0), log=lambda m: None)


def test_wrong_model_is_a_clear_error(tmp_path):
    _, p = _save(tmp_path, 1, seed=1)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(p, torch.nn.Linear(5, 7))
