"""Ground truth recorded beside the data, for probes of what a state embedding keeps.

Collection stores, per step of an episode (``T+1`` rows, aligned with the observations, reset
included — Minari's ``infos`` convention):

* Atari: ``ram`` [T+1, 128] uint8, the console RAM, and the decoded facts the scripted trackers read
  (``FACTS``), in screen pixels, float32, NaN on steps where the object is not on screen as an object of
  its own (the ball touching a same-coloured paddle or wall counts as off screen; with the frames, so does
  an object the frame does not draw: Breakout's ball inside a side wall or behind a brick keeps its RAM
  position but no pixel shows it, and so does Pong's opponent paddle above the top wall). The ball's
  velocity (``ball_vx``, ``ball_vy``, pixels per agent step) is the difference of consecutive steps
  where the ball is on screen in both.
* MuJoCo: nothing extra: the observation is the ground truth.

The RAM addresses are the trackers' (``more3s.data.policies``: one source of truth); the pixel offsets
were measured against the frames' object boxes and are re-checked by tests/data/test_facts.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .policies import BreakoutTracker, PongTracker

__all__ = ["FACTS", "RAM_BYTES", "decode_facts", "fact_names", "load_step_infos"]

RAM_BYTES = 128  # the Atari 2600's RAM
# The ball's colour per game and its box around the decoded centre pixel (x0, y0, x1, y1 offsets, x1/y1
# exclusive): Breakout's and Pong's balls are 2 x 4 pixels.
_BALL_COLOUR = {"breakout": (200, 72, 72), "pong": (236, 236, 236)}
_BALL_BOX = (-1, -2, 1, 2)
_BALL_AREA = 8
# Pong's paddles: (colour, centre column, box around (column, decoded y)). The RAM keeps a paddle's y where the
# walls hide all of it (the opponent's at y <= 27 is above the top wall; Pong's reset frame draws the game in other
# colours): such steps are off screen. Boxes measured on collected frames (4 x 16 pixels each).
_PADDLES: dict[str, dict[str, tuple[tuple[int, int, int], int, tuple[int, int, int, int]]]] = {
    "pong": {"paddle_y": ((92, 186, 92), 142, (-2, -8, 2, 8)), "enemy_y": ((213, 130, 74), 18, (-2, -10, 2, 6))},
}

# Facts per Atari task, in the order probes report them.
FACTS: dict[str, tuple[str, ...]] = {
    "breakout": ("paddle_x", "ball_x", "ball_y", "ball_vx", "ball_vy"),
    "pong": ("ball_x", "ball_y", "paddle_y", "enemy_y", "ball_vx", "ball_vy"),
}


def fact_names(task: str) -> tuple[str, ...]:
    """The facts recorded for ``task`` (empty for tasks whose observation is the ground truth)."""
    return FACTS.get(task, ())


def _velocity(pos: np.ndarray) -> np.ndarray:
    """[N] positions (NaN = off screen) -> [N] difference to the previous step (NaN unless both on screen)."""
    v = np.full_like(pos, np.nan)
    v[1:] = pos[1:] - pos[:-1]  # NaN propagates from either end
    return v


def decode_facts(task: str, ram: np.ndarray, frames: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """RAM of consecutive steps of one episode [N, 128] uint8 -> {fact: [N] float32 pixels, NaN off screen}.

    ``frames`` [N, H, W, 3] uint8 (the observations beside the RAM rows): the ball also counts as off screen
    where the frame draws none of it, or draws it touching an object of its colour, and a paddle where the frame
    draws none of it (``_drawn``)."""
    ram = np.asarray(ram)
    if ram.ndim != 2 or ram.shape[1] != RAM_BYTES:
        raise ValueError(f"ram must be [N, {RAM_BYTES}] (one row per step), got shape {ram.shape}")
    if frames is not None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] != len(ram) or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N={len(ram)}, H, W, 3] beside the RAM rows, got "
                             f"{frames.dtype} {frames.shape}")
    r = ram.astype(np.float32)
    if task == "breakout":
        b = BreakoutTracker
        by_ram = r[:, b.BALL_Y]
        # 0 = no ball in play; from row 187 on the ball touches the rows of the paddle, which shares its
        # colour: it is drawn as one object with the paddle (or has passed it).
        on = (by_ram > 0) & (by_ram + 11 < 187)
        out = {"paddle_x": r[:, b.PADDLE_X] - 39,  # centre pixel column
               "ball_x": np.where(on, r[:, b.BALL_X] - 48, np.nan),
               "ball_y": np.where(on, by_ram + 11, np.nan)}
    elif task == "pong":
        p = PongTracker
        bx, by = r[:, p.BALL_X] - 48, r[:, p.BALL_Y] - 12
        # Between the walls and not touching them (they share the ball's colour), inside the screen.
        on = (by > 36) & (by < 191) & (bx >= 0) & (bx < 160)
        out = {"ball_x": np.where(on, bx, np.nan), "ball_y": np.where(on, by, np.nan),
               "paddle_y": r[:, p.PADDLE_Y] - 5, "enemy_y": r[:, p.ENEMY_Y] - 5}
    else:
        raise ValueError(f"no RAM facts for task {task!r}; known: {sorted(FACTS)}")
    if frames is not None:
        hidden = ~_drawn(frames, out["ball_x"], out["ball_y"], _BALL_BOX, _BALL_COLOUR[task], _BALL_AREA)
        out["ball_x"] = np.where(hidden, np.nan, out["ball_x"])
        out["ball_y"] = np.where(hidden, np.nan, out["ball_y"])
        for fact, (colour, column, box) in _PADDLES.get(task, {}).items():
            y = out[fact]
            out[fact] = np.where(_drawn(frames, np.full_like(y, column), y, box, colour), y, np.nan)
    out["ball_vx"] = _velocity(out["ball_x"])
    out["ball_vy"] = _velocity(out["ball_y"])
    return {k: out[k].astype(np.float32) for k in FACTS[task]}


def _drawn(frames: np.ndarray, x: np.ndarray, y: np.ndarray, box: tuple[int, int, int, int],
           colour: tuple[int, int, int], max_pixels: int | None = None) -> np.ndarray:
    """[N] bool: the frame draws the object at (x, y): its ``box`` (x0, y0, x1, y1 offsets, x1/y1 exclusive),
    grown by one pixel, holds at least one pixel of its colour, and no more than ``max_pixels`` (more: a ball
    touching a same-coloured object). Steps with x or y NaN are False."""
    out = np.zeros(len(frames), bool)
    rgb = np.asarray(colour, np.uint8)
    x0, y0, x1, y1 = box
    for t in np.flatnonzero(np.isfinite(x) & np.isfinite(y)):  # a few pixels per step, not whole frames
        cx, cy = int(x[t]), int(y[t])
        win = frames[t, max(cy + y0 - 1, 0):max(cy + y1 + 1, 0), max(cx + x0 - 1, 0):max(cx + x1 + 1, 0)]
        n = int((win == rgb).all(-1).sum())
        out[t] = n >= 1 and (max_pixels is None or n <= max_pixels)
    return out


def load_step_infos(source: str | Path, max_episodes: int | None = None) -> list[dict[str, np.ndarray]]:
    """Per-episode step infos of a local Minari dataset (id or directory): [{key: [T+1, ...]}].

    Episodes recorded without infos give empty dicts; a D4RL file or a non-hdf5 Minari dataset gives
    an empty dict per episode as well (nothing recorded), never an error.
    """
    import h5py

    from .minari_paths import dataset_path, minari_dir

    p = Path(source)
    d = minari_dir(p) if p.exists() else minari_dir(dataset_path(str(source)))
    if d is None or not (d / "main_data.hdf5").exists():
        return []
    meta = json.loads((d / "metadata.json").read_text())
    n = int(meta["total_episodes"]) if max_episodes is None else min(int(meta["total_episodes"]), max_episodes)
    out = []
    with h5py.File(d / "main_data.hdf5", "r") as f:
        for i in range(n):
            g = f[f"episode_{i}"].get("infos")
            out.append({} if g is None else {k: g[k][()] for k in g if isinstance(g[k], h5py.Dataset)})
    return out
