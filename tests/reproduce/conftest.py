import pytest


@pytest.fixture
def tiny_breakout(_minari_root):
    """A 4-episode Breakout dataset of <= 30 steps (a local stand-in for a published one)."""
    from more3s.data import collect_dataset

    return collect_dataset("breakout", "mixed", 4, "test/breakout-standin-v0", seed=1, max_episode_steps=30,
                           progress=False)
