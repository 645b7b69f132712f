"""Offline data: the second stop of the data flow (envs -> data -> encoder -> model -> rollout ->
train / evaluate -> report). One module per job:

* ``episode.py``        the ``Episode`` record and its return-to-go (``make_episode``, ``compute_rtg``), and the
  best episodes by return (``best_episode_indices``: DT's %BC; ``training_episode_indices``: a run's);
* ``load.py``           ``load_episodes``: one entry point for every source, dispatching to
  ``minari_reader.py`` (Minari datasets, and the provenance more3s records: ``dataset_provenance``),
  ``d4rl.py`` (D4RL hdf5 files) and ``remote.py`` (the Minari remote: ``is_online``, ``published_reason``);
* ``minari_paths.py``   where local Minari datasets live (``dataset_path``);
* ``frames.py``         ``H5Frames``: image observations left on disk and read on demand;
* ``writer.py``         ``MinariWriter``: episodes streamed into a new Minari dataset, published atomically;
* ``sampler.py``        window and stream samplers over episode lengths;
* ``policies.py``, ``sac.py``  behaviour policies; ``collect.py`` runs one into a dataset (``collect_dataset``);
* ``facts.py``          ground truth decoded from Atari RAM, recorded beside the data for probes.

Optional dependencies stay lazy: stable-baselines3 (the ``[collect]`` extra) is imported only by the
SAC policies (more3s.data.sac), and Minari / h5py only when a dataset is read or written.
"""

from .collect import collect_dataset
from .d4rl import D4RL_KEYS
from .episode import Episode, best_episode_indices, compute_rtg, make_episode, training_episode_indices
from .frames import H5Frames
from .load import load_episodes
from .minari_paths import dataset_path
from .minari_reader import dataset_provenance
from .policies import POLICY_HELP, make_policy
from .remote import PUBLISHED_NAMESPACES, is_online, published_reason
from .sampler import StreamSampler, WindowBatch, WindowSampler
from .writer import MinariWriter

__all__ = [
    # records
    "Episode", "best_episode_indices", "training_episode_indices", "compute_rtg", "make_episode",
    # reading
    "load_episodes", "H5Frames", "dataset_path", "D4RL_KEYS", "dataset_provenance",
    # the Minari remote
    "is_online", "published_reason", "PUBLISHED_NAMESPACES",
    # writing
    "MinariWriter",
    # samplers
    "WindowSampler", "StreamSampler", "WindowBatch",
    # collection
    "collect_dataset", "make_policy", "POLICY_HELP",
]
