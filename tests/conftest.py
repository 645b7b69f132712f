"""Shared fixtures for the tests that train: tiny collected Breakout and HalfCheetah datasets, an embedding cache root
and a seconds-long TrainConfig."""

import pytest

from more3s.config import TrainConfig


def _collect_once(tmp_path_factory, env: str, episodes: int, dataset_id: str, seed: int, max_steps: int) -> str:
    """A small ``mixed``-policy dataset under its own Minari root; returns the dataset directory."""
    from more3s.data import collect_dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp(f"minari_{env}")))
        return str(collect_dataset(env, "mixed", episodes, dataset_id, seed=seed, max_episode_steps=max_steps,
                                   progress=False))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """6 Breakout episodes of <= 24 steps from the mixed policy; returns the dataset directory."""
    return _collect_once(tmp_path_factory, "breakout", 6, "test/breakout-tiny-v0", seed=3, max_steps=24)


@pytest.fixture(scope="session")
def tiny_cheetah(tmp_path_factory):
    """4 HalfCheetah episodes of 20 steps from the mixed policy; returns the dataset directory."""
    return _collect_once(tmp_path_factory, "halfcheetah", 4, "test/cheetah-tiny-v0", seed=2, max_steps=20)


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


@pytest.fixture(scope="session")
def tiny():
    """The random-init lxmert-tiny encoder on CPU (shared by the encoder and encode-CLI tests)."""
    from more3s.encoder import load_encoder

    return load_encoder("lxmert-tiny", device="cpu")


class ZeroEncoder:
    """A state encoder of zeros: engine tests that script their environment need no LXMERT."""

    def __init__(self, d: int):
        self.d = d

    def embed_states(self, task, obs, prev):
        import torch

        return torch.zeros(len(obs), self.d)


@pytest.fixture
def zero_encoder():
    """The ZeroEncoder class (call it with the state width)."""
    return ZeroEncoder
