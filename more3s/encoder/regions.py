"""Regions: what LXMERT's vision stream sees of a state.

LXMERT was pretrained on 36 Faster R-CNN boxes per image, each a feature vector plus a normalized box.
We have no detector for Atari or MuJoCo, so regions are built from what the state itself says:

* Atari (``objects``): connected components of non-background colour on the RGB frame, up to 36,
  smallest box first. Each region's raw feature holds its box, centroid, area, colour, two small
  grey crops of its box (current and previous frame) and its displacement from the matching object
  of the previous frame: crops alone do not make motion linearly readable, a displacement does.
  A sprite touching an object of its own colour (Breakout's ball on its paddle) is split from it when the
  two form stacked solid bars. A frame with no objects gets one whole-frame region.
* MuJoCo (``bodies``): one region per robot body, placed by forward kinematics (mujoco) from the
  observation, with the body's pose and velocities and its own joints' positions and velocities as
  features. Gymnasium v5 observations exclude the root x position, so qpos[0] is set to 0: bodies
  are placed relative to the root.
* Any other image env (``grid``): a 6x6 grid of cells with the same crop features as objects.

Raw features of size F_raw map to LXMERT's ``visual_feat_dim`` by a fixed Gaussian projection drawn
from ``RegionConfig.projection_seed``; the seed is part of the embedding cache key. ``Regions.slots``
names the regions whose encoder outputs form the state vector's per-object slots (``RegionConfig.slots``),
in stable orders (by size; the lowest regions by colour, then size; by colour), so that an object keeps its place in the
state vector from frame to frame.

Everything is vectorized over a batch of frames: for each colour present in the batch, one
``scipy.ndimage.label`` call labels all frames at once (the structuring element does not connect
frames; labelling per colour keeps touching objects of different colours apart); per-region
statistics come from ``ndimage.find_objects`` and ``np.bincount`` over the labelled pixels. Large batches
can also be split over threads (``extract_regions(..., workers=k)``). A sequence computes each frame's components
once; a rollout, whose previous frames are the last step's current frames, does the same through a
``ComponentMemo`` the encoder keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Sequence, cast, get_args

import numpy as np
from scipy import ndimage

from more3s.envs import TaskSpec, get_task

__all__ = [
    "RegionConfig", "Regions", "extract_regions", "sequence_slice", "atari_regions", "grid_regions", "mujoco_regions",
    "region_projection", "image_feature_dim", "ComponentMemo", "MAX_BODIES", "MIN_FRAMES_PER_WORKER",
    "ImageMode", "IMAGE_MODES", "BottomOrder", "BOTTOM_ORDERS", "RegionKind",
]

MAX_BODIES = 16  # width of the body one-hot in MuJoCo features (gymnasium's robots have <= 13 bodies)
MAX_BODY_JOINTS = 3  # joints per body in MuJoCo features (a planar root has 3: x, z, pitch)
# Velocities (the bodies' com velocities and the joint velocities: rad/s, m/s, |v| up to ~10-20) are divided by this,
# so that every MuJoCo feature is ~1: unscaled, the com velocities dominated each region's projected vector, whose
# layer norm then squeezed the joint angles into directions a linear probe barely reads (mean R² over the observation
# 0.95 with them unscaled, 0.999 scaled: HalfCheetah and Hopper, 10 x 300-step mixed data, 2 episodes held out).
VELOCITY_SCALE = 10.0

# Motion of an object between the previous and the current frame (``_displacement``): the match is the
# nearest object of the same colour and box size (within MATCH_SIZE_TOL px, sprites keep their size) no
# farther than MATCH_MAX_PX (Atari balls move <= ~10 px per agent step); displacements are divided by
# MOTION_SCALE_PX so that they enter the encoder on the scale of the other features (~1).
MATCH_SIZE_TOL = 2
MATCH_MAX_PX = 32
MOTION_SCALE_PX = 4.0

# A sprite touching an object of its own colour is drawn as one component with it (Breakout's ball on its paddle or
# on the red brick row, Pong's ball on a wall). A component of at most SPLIT_MAX_BARS stacked solid bars (each row one
# run of pixels, the run's ends changing from bar to bar) no larger than SPLIT_MAX_BOX pixels is split into its bars.
# Digits and other drawn shapes have rows of two runs or more bars, and stay whole.
SPLIT_MAX_BARS = 3
SPLIT_MAX_BOX = 4096

# Luminance weights (ITU-R BT.601) for the grey crops.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Labels frames of a [N, H, W] stack independently: 8-connected inside a frame, nothing across frames.
_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True


ImageMode = Literal["auto", "objects", "grid"]  # how image states become regions (auto: objects for Atari)
IMAGE_MODES: tuple[ImageMode, ...] = get_args(ImageMode)
BottomOrder = Literal["colour", "largest", "lowest"]  # the order of the lowest regions in their slots
BOTTOM_ORDERS: tuple[BottomOrder, ...] = get_args(BottomOrder)
RegionKind = Literal["objects", "grid", "bodies"]  # what a Regions batch holds


@dataclass(frozen=True)
class RegionConfig:
    max_regions: int = 36  # LXMERT's pretraining used 36 detector boxes per image
    grid: int = 6  # grid fallback: grid x grid cells (6x6 = 36, the same count as objects)
    crop: int = 6  # each region's box is resampled to crop x crop grey pixels, per frame
    min_area: int = 1  # components smaller than this (pixels) are dropped; Atari balls are ~2x4
    image_mode: ImageMode = "auto"  # auto: objects for Atari, grid otherwise
    # MuJoCo view window in metres (x_min, z_min, x_max, z_max), relative to the root's x:
    # wide enough for halfcheetah (~1 m long) and tall enough for walker2d/hopper (~1.25 m).
    mujoco_view: tuple[float, float, float, float] = (-1.5, -0.5, 1.5, 2.0)
    projection_seed: int = 0
    # Regions whose encoder outputs form the state vector's slots (``Regions.slots``), in stable orders:
    # Atari objects give half by size (smallest box first: the ball, then the other sprites), ``bottom_slots``
    # from the lowest regions (a bottom-row paddle keeps a slot while bricks break above it) and the rest by colour
    # (packed RGB, then size); bodies and grid cells come in their fixed order.
    # 8 = 4 + 4 holds Breakout's ball (size slot 0) and paddle (the first of the 4 lowest, beside the walls' feet
    # and a lost ball), Pong's ball (size slot 0) and paddles (bottom slots 0 and 1) and every MuJoCo body; every
    # further slot is a distractor to a learner (the tracker's action from the raw slots, held out: 0.916 with 8,
    # 0.895 with 16).
    slots: int = 8
    # Breakout's paddle sat in size slots 3-11 and colour slots 3-8 as bricks broke (12 episodes of mixed data);
    # among the lowest it keeps one slot. 0 = the 16-slot design (half by size, half by colour).
    bottom_slots: int = 4
    # How the lowest ``bottom_slots`` regions are ordered in their slots: by colour (packed RGB), then largest box
    # first — a sprite keeps its colour where its size changes (a Pong paddle clipped at a wall, a wall that joins
    # the lowest when the ball is gone), so each paddle keeps one slot; ``largest`` (the design before: largest box
    # first) or ``lowest`` (the one before that, where a ball lost below the paddle pushed it out of 3 bottom slots).
    bottom_order: BottomOrder = "colour"
    # Split sprites from touching objects of their colour (``_split_stacked_bars``); False = the previous design.
    split_bars: bool = True
    # Drop the console's HMOVE bars: black, 8 px wide at the left edge (Pong draws one on its top row in every
    # frame). Not an object; as small as the ball, it took the ball's size slot on frames where the ball was
    # drawn partly. False = the design before.
    drop_hmove_bars: bool = True
    # A flat bar (wider than tall) split from below a wider bar, within its columns, is the foot of a taller object
    # the wider one is drawn over: Breakout's paddle at the far right covers the top of the right wall's foot, of its
    # colour (7 % of the default data's frames). The foot's box runs up through the wider bar
    # (``_split_stacked_bars``), so it keeps its size and its size slot; cut to its visible 8 x 2 pixels it became the
    # second smallest object and shifted the size slots after the ball, a layout rare enough that a held-out probe
    # read the ball's x hundreds of pixels off. A ball (taller than wide) under a wall or brick of its colour, or on
    # the paddle, keeps its own box. False = the design before.
    keep_feet: bool = True

    def __post_init__(self) -> None:
        if self.max_regions < 1 or self.grid < 1 or self.crop < 1 or self.min_area < 1:
            raise ValueError(f"RegionConfig sizes must be >= 1, got {self}")
        if self.slots < 0 or self.slots % 2:
            raise ValueError(f"RegionConfig.slots must be an even number >= 0, got {self.slots}")
        if not 0 <= self.bottom_slots <= self.slots // 2:
            raise ValueError(f"RegionConfig.bottom_slots must be in [0, slots/2 = {self.slots // 2}], "
                             f"got {self.bottom_slots}")
        if self.bottom_order not in BOTTOM_ORDERS:
            raise ValueError(f"RegionConfig.bottom_order must be {'|'.join(BOTTOM_ORDERS)}, got {self.bottom_order!r}")
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"RegionConfig.image_mode must be {'|'.join(IMAGE_MODES)}, got {self.image_mode!r}")
        x0, z0, x1, z1 = self.mujoco_view
        if not (x1 > x0 and z1 > z0):
            raise ValueError(f"RegionConfig.mujoco_view must be (x_min, z_min, x_max, z_max), got {self.mujoco_view}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mujoco_view"] = list(self.mujoco_view)
        return d


@dataclass(frozen=True)
class Regions:
    feats: np.ndarray  # [N, R, F_raw] float32
    boxes: np.ndarray  # [N, R, 4] float32 (x1, y1, x2, y2) in [0, 1]
    mask: np.ndarray  # [N, R] bool, True = real region (padding is zero)
    kind: RegionKind
    slots: np.ndarray  # [N, S] int64: the region in each slot of the state vector, -1 = empty

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def rows(self, start: int, stop: int | None = None) -> Regions:
        """The regions of states ``start .. stop-1``."""
        return Regions(self.feats[start:stop], self.boxes[start:stop], self.mask[start:stop], self.kind,
                       self.slots[start:stop])

    @staticmethod
    def cat(parts: Sequence[Regions]) -> Regions:
        """The states of ``parts`` (one kind, one region count) in order."""
        if not parts or len({(p.kind, p.feats.shape[1:], p.slots.shape[1:]) for p in parts}) != 1:
            raise ValueError("Regions.cat needs one or more parts of one kind and shape")
        return Regions(feats=np.concatenate([p.feats for p in parts]), boxes=np.concatenate([p.boxes for p in parts]),
                       mask=np.concatenate([p.mask for p in parts]), kind=parts[0].kind,
                       slots=np.concatenate([p.slots for p in parts]))


def image_feature_dim(cfg: RegionConfig) -> int:
    """F_raw of image regions: box 4, centroid 2, area 2, colour 3, two crops, displacement 3, motion 1."""
    return 4 + 2 + 2 + 3 + 2 * cfg.crop * cfg.crop + 3 + 1


@functools.lru_cache(maxsize=32)
def _projection_cached(f_raw: int, out_dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, f_raw, out_dim])
    w: np.ndarray = (rng.standard_normal((f_raw, out_dim), dtype=np.float64) / np.sqrt(f_raw)).astype(np.float32)
    w.flags.writeable = False
    return w


def region_projection(f_raw: int, out_dim: int, seed: int = 0) -> np.ndarray:
    """The fixed projection [F_raw, out_dim] float32 (N(0, 1/F_raw) entries) for a seed; read-only."""
    if f_raw < 1 or out_dim < 1:
        raise ValueError(f"projection sizes must be >= 1, got f_raw={f_raw}, out_dim={out_dim}")
    return _projection_cached(int(f_raw), int(out_dim), int(seed))


# ---------------------------------------------------------------------------------------------
# Image regions
# ---------------------------------------------------------------------------------------------

def _check_frames(name: str, frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must be RGB frames [N, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 RGB frames, got dtype {frames.dtype}")
    return frames


def _pair_frames(observations: np.ndarray, prev_observations: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    obs = _check_frames("observations", observations)
    if prev_observations is None:
        # A sequence: the previous frame of step t is frame t-1; the first frame is its own previous.
        prev = np.concatenate([obs[:1], obs[:-1]], axis=0)
    else:
        prev = _check_frames("prev_observations", prev_observations)
        if prev.shape != obs.shape:
            raise ValueError(f"prev_observations shape {prev.shape} != observations shape {obs.shape}")
    return obs, prev


def _grey(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) @ _LUMA) * (1.0 / 255.0)  # [..., 3] uint8 -> [...] in [0, 1]


def _box_features(cfg: RegionConfig, obs: np.ndarray, prev: np.ndarray, pix: np.ndarray,
                  centroid: np.ndarray, area: np.ndarray, colour: np.ndarray,
                  mask: np.ndarray, moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features shared by objects and grid cells.

    obs, prev [N, H, W, 3] uint8; pix [N, R, 4] int pixel boxes (x1, y1, x2, y2), x2/y2 exclusive;
    centroid [N, R, 2] pixels; area [N, R] pixels; colour [N, R, 3] in [0, 1]; mask [N, R];
    moved [N, R, 3] displacement from the previous frame (``_displacement``; zeros for grid cells).
    Returns (feats, boxes).
    """
    N, H, W, _ = obs.shape
    R, c = pix.shape[1], cfg.crop
    x1, y1, x2, y2 = (pix[..., i].astype(np.float32) for i in range(4))
    # Sample crop x crop points at cell centres of the box (nearest pixel): [N, R, c]
    t = (np.arange(c, dtype=np.float32) + 0.5) / c
    ys = np.clip((y1[..., None] + (y2 - y1)[..., None] * t).astype(np.int64), 0, H - 1)
    xs = np.clip((x1[..., None] + (x2 - x1)[..., None] * t).astype(np.int64), 0, W - 1)
    n = np.arange(N)[:, None, None, None]
    # Grey only at the sampled points, not over whole frames.
    crop_cur = _grey(obs[n, ys[..., :, None], xs[..., None, :]])  # [N, R, c, c]
    crop_prev = _grey(prev[n, ys[..., :, None], xs[..., None, :]])  # [N, R, c, c]
    motion = np.abs(crop_cur - crop_prev).mean(axis=(2, 3))  # [N, R]
    boxes = np.stack([x1 / W, y1 / H, x2 / W, y2 / H], axis=-1).astype(np.float32)  # [N, R, 4]
    box_area = np.maximum((x2 - x1) * (y2 - y1), 1.0)
    feats = np.concatenate([
        boxes,
        centroid[..., 0:1] / W, centroid[..., 1:2] / H,
        (area / (H * W))[..., None],  # fraction of the frame
        (area / box_area)[..., None],  # fill ratio: 1 for bricks, < 1 for sprites
        colour,
        crop_cur.reshape(N, R, c * c),
        crop_prev.reshape(N, R, c * c),
        moved,
        motion[..., None],
    ], axis=-1).astype(np.float32)  # [N, R, F_raw]
    m = mask[..., None]
    return feats * m, boxes * m


def _background(packed: np.ndarray) -> np.ndarray:
    """Most frequent colour of each frame: [N, H, W] packed RGB -> [N]."""
    flat = np.sort(packed.reshape(packed.shape[0], -1), axis=1)  # [N, HW]
    N, P = flat.shape
    # Run starts of the sorted row; the longest run is the mode.
    starts = np.ones((N, P), dtype=bool)
    starts[:, 1:] = flat[:, 1:] != flat[:, :-1]
    r, col = np.nonzero(starts)  # row-major: runs in order within each row
    ends = np.empty_like(col)
    ends[:-1] = col[1:]
    ends[:-1][r[:-1] != r[1:]] = P  # the last run of a row ends at P
    ends[-1] = P
    lengths = ends - col
    order = np.lexsort((-lengths, r))  # per row, longest first (ties: smallest colour)
    first = np.ones(len(order), dtype=bool)
    first[1:] = r[order][1:] != r[order][:-1]
    best = order[first]
    return flat[r[best], col[best]]


Slices = list[tuple[slice, slice, slice]]  # ndimage.find_objects: (frame, rows, columns) per region id


def _split_stacked_bars(labels: np.ndarray, col_all: np.ndarray, slices: Slices
                        ) -> tuple[np.ndarray, Slices, dict[int, int]]:
    """Split each component made of 2..SPLIT_MAX_BARS stacked solid bars into its bars, in place in ``labels``
    [N, H, W] (bars after the first get new ids) -> (packed colour, bounding slices) of every region id, new ids
    appended: the bars' boxes come from the split itself, so the labels need no second pass. Third: ``feet``,
    {index into the slices: top row} of each flat bar below a wider bar that spans its columns, the row where its
    columns stop being solid above it (``RegionConfig.keep_feet``)."""
    feet: dict[int, int] = {}
    if not slices:
        return col_all, slices, feet
    hw = np.array([(s[1].stop - s[1].start, s[2].stop - s[2].start) for s in slices], np.int64).reshape(-1, 2)
    box = hw[:, 0] * hw[:, 1]
    area = np.bincount(labels.reshape(-1), minlength=len(col_all))[1:]  # one count beats a loop over solid boxes
    candidates = np.flatnonzero((area < box) & (box <= SPLIT_MAX_BOX) & (hw[:, 0] >= 2))
    slices = list(slices)
    new_colours: list[int] = []
    next_id = len(col_all)
    for i in candidates:
        frame, rows, cols = slices[i]
        view = labels[frame, rows, cols][0]  # [h, w] of the component's frame (a view: relabelled in place)
        m = view == i + 1
        runs = m[:, 0].astype(np.int64) + (m[:, 1:] & ~m[:, :-1]).sum(1)  # runs of pixels per row
        if (runs != 1).any():
            continue
        w = m.shape[1]
        ends = np.stack([m.argmax(1), w - m[:, ::-1].argmax(1)], 1)  # [h, 2] each row's run
        starts = np.flatnonzero((ends[1:] != ends[:-1]).any(1)) + 1  # first row of each bar after the first
        if not 1 <= len(starts) < SPLIT_MAX_BARS:
            continue
        bounds = [0, *starts.tolist(), m.shape[0]]
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            x0, x1 = int(ends[a:b, 0].min()), int(ends[a:b, 1].max())
            bar = (frame, slice(rows.start + a, rows.start + b), slice(cols.start + x0, cols.start + x1))
            if k == 0:  # the first bar keeps the component's id
                slices[i] = bar
                continue
            top = a  # a flat bar (wider than tall): up through the rows above whose run spans its columns
            while x1 - x0 > b - a and top > 0 and ends[top - 1, 0] <= x0 and ends[top - 1, 1] >= x1:
                top -= 1
            if top < a:
                feet[next_id - 1] = rows.start + top
            band = view[a:b]
            band[band == i + 1] = next_id
            slices.append(bar)
            new_colours.append(int(col_all[i + 1]))
            next_id += 1
    return (np.concatenate([col_all, np.array(new_colours, np.uint32)]) if new_colours else col_all), slices, feet


def _components(cfg: RegionConfig, obs: np.ndarray) -> dict[str, np.ndarray]:
    """Connected components of non-background colour of every frame, smallest box first within a frame.

    obs [N, H, W, 3] uint8 -> flat arrays over the components kept (at most ``cfg.max_regions`` per frame):
    frame, rank (slot), x1, y1, x2, y2 (pixel box, x2/y2 exclusive), cx, cy, area (pixels), col (packed RGB).
    """
    N, H, W, _ = obs.shape
    # Pack RGB into one 32-bit colour id per pixel: copy into 4-byte pixels and reinterpret.
    rgbx = np.zeros((N, H, W, 4), np.uint8)
    rgbx[..., :3] = obs
    packed = rgbx.view("<u4")[..., 0]  # [N, H, W]: R + G << 8 + B << 16 on any host (slot orders sort by it)
    bg = _background(packed)  # [N]
    fg = packed != bg[:, None, None]  # [N, H, W]
    # Components of one colour, labelled per colour present in the batch (Atari frames hold few
    # colours), each on the batch's bounding rows/columns of that colour, all frames in one call.
    labels = np.zeros((N, H, W), np.int32)  # 0 = background, else a global region id
    region_colour = [np.zeros(1, np.uint32)]
    n_regions = 0
    for c in np.unique(packed[fg]):
        m = packed == c  # [N, H, W]
        seen = m.any(axis=0)  # [H, W]
        rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
        ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        lab, n = ndimage.label(m[:, ys, xs], structure=_PLANE_8, output=np.int32)
        np.add(lab, n_regions, out=labels[:, ys, xs], where=lab > 0)
        region_colour.append(np.full(n, c, np.uint32))
        n_regions += n
    col_all = np.concatenate(region_colour)  # [G+1] packed colour of each region id
    slices = ndimage.find_objects(labels)  # bounding (frame, y, x) slices per region id, in C
    feet: dict[int, int] = {}
    if cfg.split_bars:
        col_all, slices, feet = _split_stacked_bars(labels, col_all, slices)
        n_regions = len(col_all) - 1
    if n_regions:
        bb = np.array([(s[0].start, s[1].start, s[1].stop, s[2].start, s[2].stop) for s in slices],
                      dtype=np.int64).reshape(-1, 5)  # [G, 5]
    else:
        bb = np.zeros((0, 5), np.int64)
    if cfg.keep_feet and feet:  # boxes only: area and centroid stay the visible pixels'
        bb[list(feet), 1] = list(feet.values())
    frame, y1, y2, x1, x2 = bb.T
    # Area and centroid from the foreground pixels alone (sums of integer coordinates: exact in float64).
    G1 = n_regions + 1
    at = np.flatnonzero(labels)  # flat indices of labelled pixels
    lab = labels.reshape(-1)[at]
    area = np.bincount(lab, minlength=G1)[1:]  # [G]
    cx = np.bincount(lab, weights=at % W, minlength=G1)[1:] / np.maximum(area, 1) + 0.5
    cy = np.bincount(lab, weights=at // W % H, minlength=G1)[1:] / np.maximum(area, 1) + 0.5
    c = dict(frame=frame, x1=x1, y1=y1, x2=x2, y2=y2, cx=cx, cy=cy, area=area, col=col_all[1:])
    keep = area >= cfg.min_area
    if cfg.drop_hmove_bars:
        keep &= ~((c["x1"] == 0) & (c["x2"] == 8) & (c["col"] == 0))  # packed (0, 0, 0) = black
    c = {k: v[keep] for k, v in c.items()}
    # The stable slot order: smallest box first (sprites - ball, paddles - before digits, walls and brick
    # rows), ties by colour, then left to right, then top to bottom. A sprite keeps its slot from frame to
    # frame while larger objects come and go, so per-slot encoder outputs keep its position decodable.
    box = (c["x2"] - c["x1"]) * (c["y2"] - c["y1"])
    order = np.lexsort((c["y1"], c["x1"], c["col"], box, c["frame"]))
    c = {k: v[order] for k, v in c.items()}
    first_of_frame = np.searchsorted(c["frame"], np.arange(N))
    rank = np.arange(len(c["frame"])) - first_of_frame[c["frame"]]
    sel = rank < cfg.max_regions
    c = {k: v[sel] for k, v in c.items()}
    c["rank"] = rank[sel]
    # The second stable order of the slots: by colour, then box size, then position.
    box = (c["x2"] - c["x1"]) * (c["y2"] - c["y1"])
    c["colour_rank"] = _rank_in_frame(np.lexsort((c["y1"], c["x1"], box, c["col"], c["frame"])), c["frame"], N)
    # The third: the frame's ``cfg.bottom_slots`` lowest regions (by centroid), ordered by ``cfg.bottom_order``.
    low = _rank_in_frame(np.lexsort((c["cx"], -c["cy"], c["frame"])), c["frame"], N)
    if cfg.bottom_order != "lowest":
        keys = (-c["cy"], c["cx"], -box) + ((c["col"],) if cfg.bottom_order == "colour" else ())
        low = _rank_in_frame(np.lexsort(keys + (low >= cfg.bottom_slots, c["frame"])), c["frame"], N)
    c["bottom_rank"] = low
    return c


def _rank_in_frame(order: np.ndarray, frame: np.ndarray, N: int) -> np.ndarray:
    """Each component's place within its frame in ``order`` (a permutation sorted by frame first)."""
    fr = frame[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(fr)) - np.searchsorted(fr, np.arange(N))[fr]
    return rank


def _displacement(cur: dict[str, np.ndarray], prev: dict[str, np.ndarray], N: int, R: int) -> np.ndarray:
    """Motion of each current object: its centroid minus that of the nearest previous-frame object of the same
    colour and (within MATCH_SIZE_TOL pixels) the same box size, no farther than MATCH_MAX_PX.

    -> [N, R, 3]: (dx, dy) in pixels / MOTION_SCALE_PX, and 1 when matched (0, 0, 0 otherwise)."""
    def table(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # -> per-frame padded [N, R, 5] (cx, cy, w, h, colour) and mask [N, R]
        t = np.zeros((N, R, 5), np.float64)
        m = np.zeros((N, R), bool)
        t[c["frame"], c["rank"]] = np.stack([c["cx"], c["cy"], c["x2"] - c["x1"], c["y2"] - c["y1"],
                                             c["col"].astype(np.float64)], -1)
        m[c["frame"], c["rank"]] = True
        return t, m

    a, am = table(cur)
    b, bm = table(prev)
    d = np.hypot(a[:, :, None, 0] - b[:, None, :, 0], a[:, :, None, 1] - b[:, None, :, 1])  # [N, R, R]
    same = (a[:, :, None, 4] == b[:, None, :, 4]) & bm[:, None, :] \
        & (np.abs(a[:, :, None, 2] - b[:, None, :, 2]) + np.abs(a[:, :, None, 3] - b[:, None, :, 3]) <= MATCH_SIZE_TOL)
    d = np.where(same & (d <= MATCH_MAX_PX), d, np.inf)
    j = d.argmin(-1)  # [N, R]
    ok = np.isfinite(np.take_along_axis(d, j[..., None], -1)[..., 0]) & am
    pb = np.take_along_axis(b, j[..., None], 1)  # [N, R, 5]
    out = np.zeros((N, R, 3), np.float32)
    out[..., 0] = np.where(ok, a[..., 0] - pb[..., 0], 0.0) / MOTION_SCALE_PX
    out[..., 1] = np.where(ok, a[..., 1] - pb[..., 1], 0.0) / MOTION_SCALE_PX
    out[..., 2] = ok
    return out


class ComponentMemo:
    """The components of the current frames of the last ``atari_regions`` call, for the next call's previous frames.

    In a rollout each environment's previous frame is the frame it showed one step before: kept here, its
    components are not computed twice. A previous frame is taken from the memo only where its pixels equal the
    remembered frame of its row (one memcmp per row; a reset or any other frame is computed), under the same
    RegionConfig, so the regions are those without a memo. Not thread-safe: one memo per caller (``part`` gives
    each slice of a threaded batch its own).
    """

    def __init__(self) -> None:
        self._frames: np.ndarray | None = None  # [N, H, W, 3] the last call's current frames
        self._comps: dict[str, np.ndarray] = {}
        self._cfg: RegionConfig | None = None
        self._parts: dict[tuple[int, int], ComponentMemo] = {}

    def part(self, start: int, stop: int) -> ComponentMemo:
        """The memo of rows ``start .. stop-1`` of a batch split over threads."""
        return self._parts.setdefault((start, stop), ComponentMemo())

    def recall(self, prev: np.ndarray, cfg: RegionConfig) -> np.ndarray:
        """[N] bool: rows whose previous frame is the remembered current frame of that row."""
        f = self._frames
        if f is None or self._cfg != cfg or f.shape != prev.shape:
            return np.zeros(len(prev), bool)
        return np.array([np.array_equal(a, b) for a, b in zip(prev, f)], bool)

    def components(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The remembered components of ``rows`` (frame = the row)."""
        keep = np.isin(self._comps["frame"], rows)
        return {k: v[keep] for k, v in self._comps.items()}

    def remember(self, obs: np.ndarray, comps: dict[str, np.ndarray], cfg: RegionConfig) -> None:
        self._frames, self._comps, self._cfg = obs.copy(), comps, cfg


def atari_regions(observations: np.ndarray, prev_observations: np.ndarray | None = None,
                  cfg: RegionConfig | None = None, memo: ComponentMemo | None = None) -> Regions:
    """Objects as connected components of non-background colour, up to ``cfg.max_regions``, smallest first,
    each with its displacement from the matching object of the previous frame.

    ``memo`` (frame pairs only): previous frames that were the last call's current frames reuse their components.
    """
    cfg = cfg or RegionConfig()
    sequence = prev_observations is None
    obs, prev = _pair_frames(observations, prev_observations)
    N, H, W, _ = obs.shape
    R = cfg.max_regions
    if sequence:  # the previous frame of row t is row t-1 (row 0 its own): components once, shifted
        comps = _components(cfg, obs)
        prev_comps = {k: v[comps["frame"] < N - 1] for k, v in comps.items()}
        prev_comps["frame"] = prev_comps["frame"] + 1
        first = {k: v[comps["frame"] == 0] for k, v in comps.items()}
        prev_comps = {k: np.concatenate([first[k], prev_comps[k]]) for k in comps}
    else:
        known = memo.recall(prev, cfg) if memo is not None else np.zeros(N, bool)
        todo = np.flatnonzero(~known)
        both = _components(cfg, np.concatenate([obs, prev[todo]]))
        is_cur = both["frame"] < N
        comps = {k: v[is_cur] for k, v in both.items()}
        prev_comps = {k: v[~is_cur] for k, v in both.items()}
        prev_comps["frame"] = todo[prev_comps["frame"] - N]
        if known.any():  # rows are looked up by (frame, slot) below: their order does not matter
            assert memo is not None
            old = memo.components(np.flatnonzero(known))
            prev_comps = {k: np.concatenate([prev_comps[k], old[k]]) for k in comps}
        if memo is not None:
            memo.remember(obs, comps, cfg)
    f, k = comps["frame"], comps["rank"]
    pix = np.zeros((N, R, 4), np.int64)
    cen = np.zeros((N, R, 2), np.float32)
    ar = np.zeros((N, R), np.float32)
    colour = np.zeros((N, R, 3), np.float32)
    mask = np.zeros((N, R), bool)
    pix[f, k] = np.stack([comps["x1"], comps["y1"], comps["x2"], comps["y2"]], axis=-1)
    cen[f, k] = np.stack([comps["cx"], comps["cy"]], axis=-1)
    ar[f, k] = comps["area"]
    rgb = np.ascontiguousarray(comps["col"].astype("<u4")).view(np.uint8).reshape(-1, 4)[:, :3]
    colour[f, k] = rgb / np.float32(255.0)
    mask[f, k] = True
    moved = _displacement(comps, prev_comps, N, R)  # [N, R, 3]
    # Slots: [0, half) by size, [half, half + n_bottom) from the lowest, the rest by colour.
    half, n_bottom = cfg.slots // 2, cfg.bottom_slots
    slots = np.full((N, cfg.slots), -1, np.int64)
    for rank, start, n in ((k, 0, half), (comps["bottom_rank"], half, n_bottom),
                           (comps["colour_rank"], half + n_bottom, half - n_bottom)):
        sel = rank < n
        slots[f[sel], start + rank[sel]] = k[sel]  # regions are stored smallest first
    # A frame without objects (blank screen) gets one whole-frame region, so attention has a target.
    empty = ~mask.any(axis=1)
    if empty.any():
        pix[empty, 0] = (0, 0, W, H)
        cen[empty, 0] = (W / 2, H / 2)
        ar[empty, 0] = H * W
        colour[empty, 0] = obs[empty].reshape(int(empty.sum()), -1, 3).mean(axis=1) / 255.0
        mask[empty, 0] = True
        if cfg.slots:
            slots[empty, 0] = 0
    feats, boxes = _box_features(cfg, obs, prev, pix, cen, ar, colour, mask, moved)
    return Regions(feats=feats, boxes=boxes, mask=mask, kind="objects", slots=slots)


def _fixed_slots(cfg: RegionConfig, N: int, n_regions: int) -> np.ndarray:
    """Slots of regions that come in a fixed order (grid cells, bodies): the first ``cfg.slots`` of them."""
    row = np.full(cfg.slots, -1, np.int64)
    n = min(cfg.slots, n_regions)
    row[:n] = np.arange(n)
    return np.broadcast_to(row, (N, cfg.slots)).copy()


def grid_regions(observations: np.ndarray, prev_observations: np.ndarray | None = None,
                 cfg: RegionConfig | None = None) -> Regions:
    """A grid x grid tiling of the frame (the fallback for any image env); every cell is real."""
    cfg = cfg or RegionConfig()
    obs, prev = _pair_frames(observations, prev_observations)
    N, H, W, _ = obs.shape
    g = cfg.grid
    xe = np.round(np.linspace(0, W, g + 1)).astype(np.int64)
    ye = np.round(np.linspace(0, H, g + 1)).astype(np.int64)
    x1, y1 = np.meshgrid(xe[:-1], ye[:-1])  # [g, g] row-major: cell (row, col)
    x2, y2 = np.meshgrid(xe[1:], ye[1:])
    pix = np.broadcast_to(np.stack([x1, y1, x2, y2], -1).reshape(1, g * g, 4), (N, g * g, 4))
    # Mean colour per cell: sums over row bands, then column bands.
    X1, Y1, X2, Y2 = (pix[0, :, i] for i in range(4))
    sums = np.add.reduceat(np.add.reduceat(obs, ye[:-1], axis=1, dtype=np.int64), xe[:-1], axis=2)  # [N, g, g, 3]
    area = ((X2 - X1) * (Y2 - Y1)).astype(np.float32)  # [R]
    colour = (sums.reshape(N, g * g, 3) / np.maximum(area, 1)[None, :, None] / 255.0).astype(np.float32)
    cen = np.broadcast_to(np.stack([(X1 + X2) / 2, (Y1 + Y2) / 2], -1).astype(np.float32), (N, g * g, 2))
    mask = np.ones((N, g * g), bool)
    feats, boxes = _box_features(cfg, obs, prev, pix, cen,
                                 np.broadcast_to(area, (N, g * g)), colour, mask, np.zeros((N, g * g, 3), np.float32))
    return Regions(feats=feats, boxes=boxes, mask=mask, kind="grid", slots=_fixed_slots(cfg, N, g * g))


# ---------------------------------------------------------------------------------------------
# MuJoCo regions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Robot:
    model: Any  # mujoco.MjModel
    nq: int
    nv: int
    radius: np.ndarray  # [nbody-1] bounding radius of each body's geoms (metres)
    qpos_idx: np.ndarray  # [nbody-1, MAX_BODY_JOINTS] qpos address of each body's joints, -1 = none
    qvel_idx: np.ndarray  # [nbody-1, MAX_BODY_JOINTS] dof address of each body's joints, -1 = none


@functools.lru_cache(maxsize=8)
def _robot(task_name: str) -> _Robot:
    from more3s.envs import make_env

    env = make_env(task_name)
    try:
        model = cast(Any, env.unwrapped).model
    finally:
        env.close()
    radius = np.zeros(model.nbody - 1, np.float64)
    for b in range(1, model.nbody):
        a, n = model.body_geomadr[b], model.body_geomnum[b]
        if n > 0:
            radius[b - 1] = float(np.max(model.geom_rbound[a:a + n]))
    radius = np.maximum(radius, 0.05)  # a body without geoms still gets a visible box
    qpos_idx = np.full((model.nbody - 1, MAX_BODY_JOINTS), -1, np.int64)
    qvel_idx = np.full((model.nbody - 1, MAX_BODY_JOINTS), -1, np.int64)
    for b in range(1, model.nbody):
        a, n = model.body_jntadr[b], model.body_jntnum[b]
        if n > MAX_BODY_JOINTS:
            raise ValueError(f"{task_name!r}: body {b} has {n} joints, more than MAX_BODY_JOINTS={MAX_BODY_JOINTS}")
        for i in range(n):
            qpos_idx[b - 1, i] = model.jnt_qposadr[a + i]
            qvel_idx[b - 1, i] = model.jnt_dofadr[a + i]
    return _Robot(model=model, nq=int(model.nq), nv=int(model.nv), radius=radius, qpos_idx=qpos_idx,
                  qvel_idx=qvel_idx)


_MJ_DATA = threading.local()  # one MjData per (thread, task): MjData is not thread-safe


def _mj_data(task_name: str, robot: _Robot) -> Any:
    import mujoco

    cache = getattr(_MJ_DATA, "cache", None)
    if cache is None:
        cache = _MJ_DATA.cache = {}
    if task_name not in cache:
        cache[task_name] = mujoco.MjData(robot.model)
    return cache[task_name]


def mujoco_regions(task: str | TaskSpec, observations: np.ndarray, cfg: RegionConfig | None = None) -> Regions:
    """One region per robot body (world excluded), placed by forward kinematics from the observation."""
    import mujoco

    cfg = cfg or RegionConfig()
    spec = get_task(task)
    if spec.family != "mujoco":
        raise ValueError(f"mujoco_regions needs a MuJoCo task, got {spec.name!r}")
    obs = np.asarray(observations)
    if obs.ndim != 2 or obs.shape[1] != spec.obs_dim:
        raise ValueError(f"observations for {spec.name!r} must be [N, {spec.obs_dim}], got shape {obs.shape}")
    if not np.issubdtype(obs.dtype, np.number):
        raise TypeError(f"observations must be numeric, got dtype {obs.dtype}")
    robot = _robot(spec.name)
    nq, nv = robot.nq, robot.nv
    if spec.obs_dim != nq - 1 + nv:
        raise ValueError(f"{spec.name!r}: obs_dim {spec.obs_dim} != nq-1+nv = {nq - 1 + nv}")
    nb = robot.model.nbody - 1
    if nb > MAX_BODIES:
        raise ValueError(f"{spec.name!r} has {nb} bodies, more than MAX_BODIES={MAX_BODIES}")
    N = obs.shape[0]
    data = _mj_data(spec.name, robot)
    xpos = np.empty((N, nb, 3))
    xquat = np.empty((N, nb, 4))
    cvel = np.empty((N, nb, 6))
    obs64 = obs.astype(np.float64)
    for i in range(N):  # one C call chain per state; no per-pixel or per-body Python work
        data.qpos[0] = 0.0  # v5 observations exclude the root x position
        data.qpos[1:] = obs64[i, :nq - 1]
        data.qvel[:] = obs64[i, nq - 1:]
        mujoco.mj_kinematics(robot.model, data)
        mujoco.mj_comPos(robot.model, data)
        mujoco.mj_comVel(robot.model, data)
        xpos[i] = data.xpos[1:]
        xquat[i] = data.xquat[1:]
        cvel[i] = data.cvel[1:] / VELOCITY_SCALE
    x_min, z_min, x_max, z_max = cfg.mujoco_view
    u = (xpos[..., 0] - x_min) / (x_max - x_min)  # [N, nb] left-to-right
    v = (z_max - xpos[..., 2]) / (z_max - z_min)  # [N, nb] top-to-bottom, as image rows
    ru = robot.radius / (x_max - x_min)
    rv = robot.radius / (z_max - z_min)
    boxes = np.clip(np.stack([u - ru, v - rv, u + ru, v + rv], axis=-1), 0.0, 1.0).astype(np.float32)
    onehot = np.zeros((N, nb, MAX_BODIES), np.float64)
    onehot[:, np.arange(nb), np.arange(nb)] = 1.0
    qpos = np.concatenate([np.zeros((N, 1)), obs64[:, :nq - 1]], axis=1)  # [N, nq], root x = 0 as above
    qvel = obs64[:, nq - 1:]  # [N, nv]
    jq = np.where(robot.qpos_idx >= 0, qpos[:, robot.qpos_idx.clip(0)], 0.0)  # [N, nb, MAX_BODY_JOINTS]
    jv = np.where(robot.qvel_idx >= 0, qvel[:, robot.qvel_idx.clip(0)], 0.0) / VELOCITY_SCALE
    feats = np.concatenate([xpos, xquat, cvel, onehot, jq, jv], axis=-1).astype(np.float32)  # [N, nb, F_raw]
    return Regions(feats=feats, boxes=boxes, mask=np.ones((N, nb), bool), kind="bodies",
                   slots=_fixed_slots(cfg, N, nb))


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

MIN_FRAMES_PER_WORKER = 4  # below this a thread hand-off costs more than it saves


def sequence_slice(frames: Any, start: int, stop: int) -> tuple[Any, int]:
    """Rows ``start .. stop-1`` of a frame sequence read from one frame early, so that every row has its previous
    frame (row 0 of a sequence is its own): (the frames to read as a sequence, the leading rows to drop after)."""
    first = max(start - 1, 0)
    return frames[first:stop], start - first


def extract_regions(task: str | TaskSpec | None, observations: np.ndarray,
                    prev_observations: np.ndarray | None = None,
                    cfg: RegionConfig | None = None, workers: int = 1, memo: ComponentMemo | None = None) -> Regions:
    """Regions of a batch of states.

    ``observations`` [N, ...]: with ``prev_observations`` [N, ...] (same shape) the pairs are taken
    as given (the rollout path: current and previous frame of N envs); without, the batch is read
    as one sequence, the previous frame of row t is row t-1 and row 0 is its own previous frame.
    ``task`` None means an unknown image env (grid regions). MuJoCo ignores ``prev_observations``:
    velocities are in the observation.

    ``workers`` > 1 splits image batches over threads (numpy and scipy.ndimage release the GIL, and every
    frame's regions depend on that frame pair alone, so the result is identical): on a GPU machine the
    regions, not LXMERT's graph replay, are a rollout step's CPU cost.

    ``memo``: a ComponentMemo the caller keeps from step to step (Atari objects, frame pairs): each previous frame
    that was the last call's current frame reuses its components (the rollout path computes each frame once).
    """
    cfg = cfg or RegionConfig()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    spec = None if task is None else get_task(task)
    if spec is not None and spec.family == "mujoco":
        return mujoco_regions(spec, observations, cfg)
    mode = cfg.image_mode
    if mode == "auto":
        mode = "objects" if spec is not None and spec.family == "atari" else "grid"
    obs, prev = _pair_frames(observations, prev_observations)
    if mode != "objects" or prev_observations is None:
        memo = None

    def fn(o: np.ndarray, p: np.ndarray | None, m: ComponentMemo | None) -> Regions:
        return atari_regions(o, p, cfg, m) if mode == "objects" else grid_regions(o, p, cfg)

    k = min(int(workers), len(obs) // MIN_FRAMES_PER_WORKER)
    if k <= 1:
        return fn(obs, None if prev_observations is None else prev, memo)

    def part(a: int, b: int) -> Regions:
        if prev_observations is not None:
            return fn(obs[a:b], prev[a:b], None if memo is None else memo.part(a, b))
        frames, drop = sequence_slice(obs, a, b)
        return fn(frames, None, None).rows(drop)

    bounds = np.linspace(0, len(obs), k + 1).round().astype(int)
    with ThreadPoolExecutor(k, thread_name_prefix="more3s-regions") as pool:
        return Regions.cat(list(pool.map(part, bounds[:-1], bounds[1:])))
