"""Offline data: episodes with RTG, Minari / D4RL loading, samplers, behaviour policies, collection.

Optional dependencies stay lazy: stable-baselines3 (the ``[collect]`` extra) is imported only by the
SAC policies (more3s.data.sac), and Minari / h5py only when a dataset is read or written.
"""

from .collect import collect_dataset
from .episode import Episode, compute_rtg, make_episode
from .io import (D4RL_KEYS, PUBLISHED_NAMESPACES, H5Frames, MinariWriter, dataset_path, dataset_provenance,
                 is_online, load_episodes, published_reason)
from .policies import POLICY_HELP, make_policy
from .sampler import StreamSampler, WindowBatch, WindowSampler

__all__ = [
    # records
    "Episode", "compute_rtg", "make_episode",
    # io
    "load_episodes", "MinariWriter", "H5Frames", "dataset_path", "is_online", "D4RL_KEYS",
    "dataset_provenance", "published_reason", "PUBLISHED_NAMESPACES",
    # samplers
    "WindowSampler", "StreamSampler", "WindowBatch",
    # collection
    "collect_dataset", "make_policy", "POLICY_HELP",
]
