"""Shared fixtures for the trainer tests: one tiny collected Breakout dataset and embedding cache root."""

import os

import pytest

from more3s.config import TrainConfig


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """6 Breakout episodes of <= 24 steps from the mixed policy; returns the dataset directory."""
    from more3s.data import collect_dataset

    root = tmp_path_factory.mktemp("minari_train")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        path = collect_dataset("breakout", "mixed", 6, "test/breakout-tiny-v0", seed=3,
                               max_episode_steps=24, progress=False)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return str(path)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("emb_cache")


@pytest.fixture
def tiny_config(tiny_dataset, cache_root, tmp_path):
    """A seconds-long run: lxmert-tiny, a 2-layer width-32 dt-small, 4-step windows + 4 memory steps."""
    def make(**overrides) -> TrainConfig:
        base = dict(dataset=tiny_dataset, collect_if_missing=False, encoder="lxmert-tiny",
                    backbone="dt-small", n_layer=2, n_head=2, n_embd=32, window=4, memory_steps=4,
                    batch_size=4, max_steps=8, log_every=1, ckpt_every=4, keep_checkpoints=3,
                    progress=False, tensorboard=False, eval_at_end=False, device="cpu",
                    cache_dir=cache_root, out_dir=tmp_path / "runs", seed=7)
        base.update(overrides)
        return TrainConfig(**base).validate()
    return make
