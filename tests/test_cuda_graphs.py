"""more3s.cuda_graphs: the one capture failure policy (a warning and eager execution, or an error when strict).
Capture itself needs a GPU: tests/rollout/test_engine.py and tests/encoder/test_lxmert.py run it there."""

import pytest

from more3s import cuda_graphs


def _broken() -> object:
    raise RuntimeError("operation not permitted when stream is capturing")


def test_failed_capture_warns_and_falls_back_unless_strict(monkeypatch):
    with pytest.warns(RuntimeWarning, match="capture of the thing failed .*running eager steps"):
        assert cuda_graphs.try_capture(_broken, "the thing", strict=False) is None
    with pytest.raises(RuntimeError, match="MORE3S_STRICT_CUDA_GRAPH=1 makes that an error"):
        cuda_graphs.try_capture(_broken, "the thing", strict=True)
    assert cuda_graphs.try_capture(lambda: 7, "the thing", strict=True) == 7


def test_strict_default_follows_the_environment(monkeypatch):
    assert cuda_graphs.strict_default()  # the test suite sets MORE3S_STRICT_CUDA_GRAPH=1
    with pytest.raises(RuntimeError, match="strict"):
        cuda_graphs.try_capture(_broken, "the thing")
    monkeypatch.setenv(cuda_graphs.STRICT_ENV, "0")
    assert not cuda_graphs.strict_default()
    with pytest.warns(RuntimeWarning):
        assert cuda_graphs.try_capture(_broken, "the thing") is None
