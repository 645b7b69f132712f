"""Shared setup for tests/ and bench/: one thread, offline hub, interpreter Triton on CPU, temp Minari root."""

import os

# Must be set before torch / triton / minari are imported anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MORE3S_STRICT_CUDA_GRAPH", "1")  # a CUDA-graph capture that falls back is an error here

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton runs here only in its interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _minari_root(tmp_path_factory, monkeypatch):
    """Every test writes Minari datasets under its own temp root, never ~/.minari."""
    root = tmp_path_factory.mktemp("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    yield root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
