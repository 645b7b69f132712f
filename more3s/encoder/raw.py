"""``--encoder raw``: Decision Transformer's own inputs, for the "DT as published" baseline.

No frozen encoder: Atari frames become 84x84 grayscale images that the model's Nature CNN reads 4 at a time
(stacked, trained end to end), and a MuJoCo observation is passed as it is (the trainer standardizes it with the
dataset's mean/std and the model embeds it linearly). Actions get one-hot rows, so the model's action projection
is DT's learned action embedding. These features are cheap, so they are computed from the episodes at training
time instead of being cached; the rollout engine calls ``embed_states`` like it calls the frozen LXMERT.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from more3s.envs import TaskSpec, get_task

__all__ = ["RAW_ENCODER", "RawObservations", "RawFeatures", "ATARI_FRAME_SIZE", "ATARI_FRAME_STACK"]

RAW_ENCODER = "raw"
ATARI_FRAME_SIZE = 84  # DT / Mnih et al. 2015
ATARI_FRAME_STACK = 4
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as OpenCV's RGB2GRAY in DT's Atari preprocessing
_VERSION = 1  # bump when the features change: part of the fingerprint


@dataclass
class RawFeatures:
    """Per-step features of a whole dataset, laid out like the embedding cache the trainer otherwise reads."""

    states: np.ndarray  # [N_obs, d]: uint8 frames (Atari) or float16 observations (MuJoCo); episode-major
    offsets: np.ndarray  # [E+1] row of each episode's first observation
    action_table: np.ndarray  # [A, W] (discrete) or [A+1, W] (continuous: e_0 = 0, e_i = one-hot), W = model input
    path: str = "(raw observations: computed, not cached)"
    hit: bool = False


class RawObservations:
    """The raw-input 'encoder' of ``task`` (see the module docstring); frozen and deterministic like LXMERT."""

    name = RAW_ENCODER
    dtype = torch.float32

    def __init__(self, task: str | TaskSpec):
        self.task = get_task(task)
        self.atari = self.task.family == "atari"
        self.frame_stack = ATARI_FRAME_STACK if self.atari else 1
        self.d_step = ATARI_FRAME_SIZE ** 2 if self.atari else int(self.task.obs_dim or 0)
        self.d_enc = self.frame_stack * self.d_step  # the width the model reads per state token
        spec = f"raw-v{_VERSION}:{self.task.name}:{self.frame_stack}x{self.d_step}:luma{_LUMA}:area"
        self.fingerprint = hashlib.sha256(spec.encode()).hexdigest()

    def describe(self) -> str:
        what = (f"{ATARI_FRAME_STACK} stacked {ATARI_FRAME_SIZE}x{ATARI_FRAME_SIZE} grayscale frames"
                if self.atari else f"the {self.d_step}-d observation")
        return f"raw inputs ({what}), no frozen encoder"

    def features(self, observations: np.ndarray) -> np.ndarray:
        """[T, H, W, 3] uint8 frames -> [T, 84*84] uint8; [T, obs_dim] observations -> float16 (one step each)."""
        obs = np.asarray(observations)
        if not self.atari:
            if obs.ndim != 2 or obs.shape[1] != self.d_step:
                raise ValueError(f"raw {self.task.name} observations: expected [T, {self.d_step}], got {obs.shape}")
            return obs.astype(np.float16)
        if obs.ndim != 4 or obs.shape[-1] != 3 or obs.dtype != np.uint8:
            raise ValueError(f"raw {self.task.name} frames: expected uint8 [T, H, W, 3], got {obs.dtype} {obs.shape}")
        rgb = torch.from_numpy(np.ascontiguousarray(obs)).float()  # [T, H, W, 3]
        gray = (rgb @ torch.tensor(_LUMA))[:, None]  # [T, 1, H, W]
        small = F.interpolate(gray, size=(ATARI_FRAME_SIZE, ATARI_FRAME_SIZE), mode="area")  # as cv2 INTER_AREA
        return small.round().clamp(0, 255).to(torch.uint8).flatten(1).numpy()  # [T, 84*84]

    def embed_states(self, task: str | TaskSpec, observations: np.ndarray,
                     prev_observations: np.ndarray | None = None) -> torch.Tensor:
        """One step's features for N environments [N, d_step] (the engine stacks frames itself)."""
        return torch.from_numpy(self.features(observations).astype(np.float32))

    def action_table(self) -> np.ndarray:
        A, W = self.task.action_dim, self.d_enc
        if A > W:
            raise ValueError(f"raw {self.task.name}: {A} actions do not fit one-hot rows of width {W}")
        eye = np.eye(A, W, dtype=np.float32)
        return eye if self.task.action_kind == "discrete" else np.concatenate([np.zeros((1, W), np.float32), eye])

    def build(self, episodes: Sequence[Any], progress: bool = False) -> RawFeatures:
        """Features of every observation of ``episodes`` (T+1 each), episode after episode."""
        from tqdm.auto import tqdm

        rows = [self.features(ep.observations[:]) for ep in tqdm(episodes, desc="raw features", disable=not progress)]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        return RawFeatures(np.concatenate(rows), offsets, self.action_table())
