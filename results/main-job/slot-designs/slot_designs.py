"""Which regions should fill the state vector's slots? The tracker's action from the raw slot features.

For each slot design: the raw region features (before the projection and LXMERT) of the slotted regions, concatenated
and standardized, and a 2x256 MLP trained to predict the scripted tracker's action (replayed from the recorded RAM:
clean labels) on episodes 0-31 of `more3s/breakout/mixed-v1`, scored on the held-out episodes 32-39, overall and by
where the ball is (on screen as an object of its own; in play but drawn with the paddle; not in play). The last two
rows (the orders chosen since) were run alone, by name, and appended to the output.

    .venv/bin/python results/main-job/slot-designs/slot_designs.py [NAME ...] > results/main-job/slot-designs/slot_designs.txt
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from more3s.data.facts import decode_facts, load_step_infos
from more3s.data.load import load_episodes
from more3s.data.policies import BreakoutTracker, replay_tracker
from more3s.encoder.regions import RegionConfig, atari_regions

DATASET, EPISODES, TRAIN = "more3s/breakout/mixed-v1", 40, 32
PREVIOUS = RegionConfig(slots=16, bottom_slots=0, split_bars=False)
# name: (region config, which of its slots). BOTTOM_FIRST: the bottom slots' order these designs were measured with.
BOTTOM_FIRST = dict(bottom_order="lowest")
WIDE = RegionConfig(slots=16, bottom_slots=4, **BOTTOM_FIRST)  # size 0-7, bottom-first 8-11, colour 12-15
CHOSEN_BEFORE = RegionConfig(bottom_slots=3, **BOTTOM_FIRST)  # size 0-3, bottom-first 4-6, colour 7
DESIGNS = {
    "previous: 8 by size + 8 by colour": (PREVIOUS, None),
    "8 by size + 4 by colour + 4 bottom-first, no split": (
        RegionConfig(slots=16, bottom_slots=4, split_bars=False, **BOTTOM_FIRST), None),
    "the same, bars split": (WIDE, None),
    "12: 6 by size + 4 bottom-first + 2 by colour": (WIDE, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]),
    "6: 3 by size + 3 bottom-first": (WIDE, [0, 1, 2, 8, 9, 10]),
    "8: 4 by size + 3 bottom-first + 1 by colour (chosen)": (CHOSEN_BEFORE, None),
    "2: the ball's and the paddle's slots alone": (CHOSEN_BEFORE, [0, 6]),
    "8: 4 by size + the 4 lowest, largest first (chosen next)": (RegionConfig(bottom_order="largest"), None),
    "8: 4 by size + the 4 lowest by colour, then largest (chosen last)": (RegionConfig(), None),
}


def main() -> None:
    eps = load_episodes(DATASET, max_episodes=EPISODES, lazy=True)
    infos = load_step_infos(DATASET, max_episodes=EPISODES)
    frames = [np.asarray(ep.observations)[:len(ep.actions)] for ep in eps]
    ram = [inf["ram"][:len(f)] for inf, f in zip(infos, frames)]
    y = np.concatenate([replay_tracker("breakout", r) for r in ram])
    episode = np.concatenate([np.full(len(f), i) for i, f in enumerate(frames)])
    # 0: the ball on screen as an object of its own; 1: in play but drawn with the paddle; 2: no ball in play
    where = np.concatenate([np.where(r[:, BreakoutTracker.BALL_Y] == 0, 2,
                                     np.where(np.isnan(decode_facts("breakout", r)["ball_x"]), 1, 0)) for r in ram])
    train = episode < TRAIN
    print(f"{DATASET}: episodes 0-{TRAIN - 1} to fit, {TRAIN}-{EPISODES - 1} held out ({(~train).sum()} steps); "
          f"held-out share on screen / with the paddle / no ball: "
          + " / ".join(f"{(where[~train] == k).mean():.2f}" for k in range(3)))
    cache: dict[RegionConfig, list] = {}
    only = sys.argv[1:]  # name substrings: run these designs alone
    for name, (cfg, pick) in DESIGNS.items():
        if only and not any(o in name for o in only):
            continue
        t0 = time.perf_counter()
        if cfg not in cache:
            cache[cfg] = [atari_regions(f, None, cfg) for f in frames]
        rows = []
        for r in cache[cfg]:
            slots = r.slots if pick is None else r.slots[:, pick]
            x = np.take_along_axis(r.feats, np.maximum(slots, 0)[..., None], 1) * (slots >= 0)[..., None]
            rows.append(x.reshape(len(x), -1))
        x = np.concatenate(rows)
        scale = StandardScaler().fit(x[train])
        mlp = MLPClassifier((256, 256), random_state=0, max_iter=200).fit(scale.transform(x[train]), y[train])
        ok = mlp.predict(scale.transform(x[~train])) == y[~train]
        parts = " / ".join(f"{ok[where[~train] == k].mean():.3f}" for k in range(3))
        print(f"{name:<56} width {x.shape[1]:>5}  accuracy {ok.mean():.3f}  (on screen / with paddle / no ball: "
              f"{parts})  {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
