"""Episode videos: the game as the policy played it, with the decision written on every frame.

Every MORE-3S action is a sentence, so a frame can say what the agent chose and how sure it was: the step, the
remaining RTG, the reward, the chosen action's prompt (from the run's prompt set) and its score against the
runner-up (cosine for the semantic head; continuous actions show the action vector and the joint pushed
hardest). ``EpisodeRecorder`` is the rollout engine's recording hook (``RolloutEngine.run(recorder=...)``): it
only reads what was played and draws no random numbers, so recorded and unrecorded evaluations play the same
episodes. Videos are MP4 (H.264 through imageio-ffmpeg's bundled ffmpeg) or GIF (Pillow) where no ffmpeg can
be found, written to a hidden temp file and renamed into place when the episode ends, each with a JSON log of
its steps beside it. Atari frames are the observations as played; MuJoCo frames are rendered offscreen
(``render_mode="rgb_array"``, ``MUJOCO_GL=egl``), and where that fails the evaluation goes on without videos
and says why. ``best_episode_strip`` picks frames of the best recorded episode for report.png.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from more3s.atomic import atomic_path, atomic_write_text
from more3s.envs import ATARI_FRAMESKIP, TaskSpec

if TYPE_CHECKING:
    from more3s.report import FrameStrip

__all__ = [
    "FrameLayout", "VideoWriter", "EpisodeRecorder", "mp4_available", "render_kwargs",
    "decision_scores", "decision_lines", "best_episode_strip", "prune_videos", "expand_bare_flag",
]

ATARI_HZ = 60.0  # the console's frame rate; an agent step spans ATARI_FRAMESKIP frames
MIN_WIDTH = 480  # small frames (Atari: 160 wide) are scaled up, nearest-neighbour, to at least this
MACRO_BLOCK = 16  # H.264 wants sides divisible by 16 (imageio-ffmpeg would otherwise resize, blurring the text)
FONT_SIZE = 15
TEXT_ROWS = 5  # status + action sentence (<= 2 rows) + score (<= 2 rows): a fixed panel keeps the frame size fixed
STRIP_FRAMES = 8  # frames of the best episode in report.png
FALLBACK_FPS = 30.0  # for an env whose metadata gives no render_fps


# --- the frame: game on top, the decision's text below -----------------------------------------------------
@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no font files needed


@functools.lru_cache(maxsize=4096)
def _wrap(text: str, width: int, size: int) -> tuple[str, ...]:
    """Greedy word wrap to ``width`` pixels (a single over-long word gets a row of its own); cached, since the
    same sentences come back every few steps."""
    font = _font(size)
    rows: list[str] = []
    for word in text.split():
        if rows and font.getlength(rows[-1] + " " + word) <= width:
            rows[-1] += " " + word
        else:
            rows.append(word)
    return tuple(rows) or ("",)


@functools.lru_cache(maxsize=4096)
def _text_row(text: str, width: int, height: int, size: int) -> np.ndarray:
    """One row of white-on-black text as a [height, width] uint8 mask (cached like ``_wrap``)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).text((6, 2), text, fill=255, font=_font(size))
    return np.asarray(img)


@dataclass(frozen=True)
class FrameLayout:
    """Where things go in a video frame: the game (scaled by an integer factor) at the top left, a text panel
    of ``TEXT_ROWS`` rows under it; both sides padded to multiples of ``MACRO_BLOCK``."""

    game_h: int  # the raw frame's size
    game_w: int
    scale: int
    font_size: int = FONT_SIZE

    @classmethod
    def for_frame(cls, frame: np.ndarray) -> "FrameLayout":
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"video frame: expected uint8 [H, W, 3], got {frame.dtype} {tuple(frame.shape)}")
        h, w = frame.shape[:2]
        return cls(h, w, max(1, -(-MIN_WIDTH // w)))

    @property
    def row_h(self) -> int:
        return self.font_size + 4

    @property
    def game_size(self) -> tuple[int, int]:
        return self.game_h * self.scale, self.game_w * self.scale  # (h, w) in video pixels

    @property
    def size(self) -> tuple[int, int]:
        gh, gw = self.game_size
        h = gh + TEXT_ROWS * self.row_h + 8
        return -(-h // MACRO_BLOCK) * MACRO_BLOCK, -(-gw // MACRO_BLOCK) * MACRO_BLOCK  # (H, W)

    def compose(self, frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
        """The video frame [H, W, 3] uint8: ``frame`` scaled up, ``lines`` wrapped into the panel under it (rows
        past ``TEXT_ROWS`` are cut, the last one marked with an ellipsis)."""
        if frame.shape != (self.game_h, self.game_w, 3):
            raise ValueError(f"video frame: expected {(self.game_h, self.game_w, 3)} like the episode's first "
                             f"frame, got {tuple(frame.shape)}")
        H, W = self.size
        gh, gw = self.game_size
        h, w, k = self.game_h, self.game_w, self.scale
        out = np.zeros((H, W, 3), np.uint8)
        out[:gh, :gw] = np.broadcast_to(frame[:, None, :, None], (h, k, w, k, 3)).reshape(gh, gw, 3)  # nearest
        rows = [r for line in lines for r in _wrap(line, W - 12, self.font_size)]
        if len(rows) > TEXT_ROWS:
            rows = rows[:TEXT_ROWS - 1] + [rows[TEXT_ROWS - 1] + " ..."]
        for i, row in enumerate(rows):
            top = gh + 2 + i * self.row_h
            out[top:top + self.row_h] = _text_row(row, W, self.row_h, self.font_size)[:, :, None]
        return out


# --- the decision's words ---------------------------------------------------------------------------------
def decision_scores(model: Any) -> tuple[str, float] | None:
    """(name, divisor) turning the engine's discrete logits into the head's scores: the semantic head's logits are
    cosine / temperature; the mse head's are minus the squared distance to each action embedding. None for
    continuous actions (the logits are the action)."""
    cfg = model.config
    if not cfg.discrete:
        return None
    if cfg.objective == "semantic":
        return "cos", float(model.logit_scale.detach().exp().clamp(max=100.0))  # the cap the head applies
    return "-dist^2", 1.0


def decision_lines(task: TaskSpec, prompts: Sequence[str], *, t: int, rtg: float, reward: float, ret: float,
                   action: Any, scores: np.ndarray | None = None, score_name: str = "cos") -> list[str]:
    """The text drawn on a frame (and logged beside the video): status, the chosen action's sentence, and its
    score against the runner-up (the best other action) or, for continuous actions, the action vector."""
    lines = [f"step {t} | RTG {rtg:.1f} | reward {reward:+.3g} | return {ret:.1f}"]
    if task.action_kind == "discrete":
        a = int(action)
        lines.append(f"{task.action_names[a]}: {prompts[a]}")
        if scores is not None and len(scores) > 1:
            others = np.delete(np.arange(len(scores)), a)
            b = int(others[np.argmax(scores[others])])
            lines.append(f"{score_name} {scores[a]:.3f} vs runner-up {scores[b]:.3f} "
                         f"({task.action_names[b]}: {prompts[b]})")
    else:
        vec = np.asarray(action, dtype=np.float64).reshape(-1)
        i = int(np.argmax(np.abs(vec)))
        lines.append(f"hardest: {prompts[i]} ({vec[i]:+.2f})")
        lines.append("action [" + " ".join(f"{x:+.2f}" for x in vec) + "]")
    return lines


# --- writing ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def mp4_available() -> bool:
    """True when imageio-ffmpeg finds an ffmpeg binary (its wheel bundles one)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return True
    except (ImportError, RuntimeError):
        return False


class VideoWriter:
    """One video, streamed frame by frame to a hidden temp file beside ``stem.mp4`` (or ``stem.gif``) and renamed
    onto it by ``close()``; ``abort()`` (or an error) leaves nothing behind. MP4 through imageio-ffmpeg; GIF (where
    no ffmpeg exists) through Pillow, which keeps the episode's frames in memory until ``close()``."""

    def __init__(self, stem: str | os.PathLike[str], fps: float, fmt: str | None = None):
        self.format = fmt or ("mp4" if mp4_available() else "gif")
        if self.format not in ("mp4", "gif"):
            raise ValueError(f"video format {self.format!r}: expected 'mp4' or 'gif'")
        if not fps > 0:
            raise ValueError(f"video fps must be > 0, got {fps}")
        self.path = Path(stem).with_suffix("." + self.format)
        self.fps = float(fps)
        self.frames = 0
        self._stack = contextlib.ExitStack()  # holds atomic_path: leaving it without an error publishes the file
        self._tmp = self._stack.enter_context(atomic_path(self.path, suffix="." + self.format))
        self._gif: list[Any] = []  # PIL images
        self._mp4 = None
        if self.format == "mp4":
            import imageio.v2 as iio

            self._mp4 = iio.get_writer(self._tmp, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                                       quality=8, pixelformat="yuv420p", macro_block_size=MACRO_BLOCK,
                                       output_params=["-preset", "veryfast"])  # ~1.5x faster, same size here

    def append(self, frame: np.ndarray) -> None:
        if self._mp4 is not None:
            self._mp4.append_data(frame)
        else:
            from PIL import Image

            self._gif.append(Image.fromarray(frame).quantize(colors=256))  # 1 byte per pixel while held
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and rename it into place; returns its path."""
        try:
            if self.frames == 0:
                raise ValueError(f"video {self.path}: no frames to write")
            if self._mp4 is not None:
                self._mp4.close()
            else:
                first, *rest = self._gif
                first.save(self._tmp, format="GIF", save_all=True, append_images=rest,
                           duration=round(1000.0 / self.fps), loop=0)
        except BaseException:
            self.abort()
            raise
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the temp file; ``path`` is left as it was."""
        if self._mp4 is not None:
            with contextlib.suppress(Exception):
                self._mp4.close()
            self._mp4 = None
        self._gif = []
        err = RuntimeError("video aborted")
        self._stack.__exit__(type(err), err, None)  # atomic_path's cleanup path: removes the temp file


# --- the engine hook --------------------------------------------------------------------------------------
def render_kwargs(task: TaskSpec) -> dict[str, Any]:
    """Extra ``make_env`` arguments for recording: MuJoCo renders offscreen (``MUJOCO_GL=egl`` unless the user
    chose another backend); Atari observations are the frames already."""
    if task.family != "mujoco":
        return {}
    os.environ.setdefault("MUJOCO_GL", "egl")
    return {"render_mode": "rgb_array"}


def _fps(task: TaskSpec, venv: Any) -> float:
    if task.family == "atari":
        return ATARI_HZ / ATARI_FRAMESKIP  # real time: 15 agent steps per second
    envs = getattr(venv, "envs", None)
    meta = envs[0].metadata if envs else getattr(venv, "metadata", {})
    return float(meta.get("render_fps") or FALLBACK_FPS)  # gymnasium's MuJoCo: 1 / dt, i.e. real time


class EpisodeRecorder:
    """Records the first ``count`` episodes of one engine run (one RTG target, one seed) as videos under
    ``out_dir``: ``rtg<target>_seed<seed>_ep<k>.mp4`` (or ``.gif``) and ``.json``, the log of its steps.

    Episode numbering follows the engine's quotas: environment g (of ``total_envs``) plays episodes g,
    g + total_envs, g + 2 total_envs, ..., so "the first N episodes" are the same ones however the
    environments are split over processes. ``scores``: ``decision_scores(model)``. ``entries`` lists the
    finished videos; ``note`` says why there are none when frames could not be had.
    """

    def __init__(self, out_dir: str | os.PathLike[str], task: TaskSpec, prompts: Sequence[str], *, target: float,
                 seed: int, total_envs: int, count: int,
                 scores: tuple[str, float] | None = None, prompt_set: str = "",
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)):
        if count < 0 or total_envs < 1:
            raise ValueError(f"recorder: count must be >= 0 and total_envs >= 1 (got {count}, {total_envs})")
        if len(prompts) != task.action_dim:
            raise ValueError(f"recorder: {len(prompts)} prompts for {task.name}'s {task.action_dim} actions")
        self.out_dir, self.task, self.prompts = Path(out_dir), task, list(prompts)
        self.target, self.seed, self.G, self.count = float(target), int(seed), int(total_envs), int(count)
        self.scores, self.prompt_set, self.log = scores, prompt_set, log
        self.entries: list[dict[str, Any]] = []
        self.note = ""
        self._ordinal: dict[int, int] = {}  # global env -> episodes it has finished
        self._open: dict[int, dict[str, Any]] = {}  # global env -> the recording in progress
        self._fps = 0.0  # frames per second, from the first venv seen

    def _wanted(self, env_ids: np.ndarray) -> list[int]:
        """Local indices of the environments whose current episode is one to record."""
        if self.note:
            return []
        return [i for i, g in enumerate(env_ids) if self._ordinal.get(int(g), 0) * self.G + int(g) < self.count]

    def frames(self, venv: Any, obs: Any, env_ids: np.ndarray) -> list[np.ndarray | None] | None:
        """Before ``venv.step``: the frames the decision saw, for the environments being recorded (else None)."""
        want = self._wanted(env_ids)
        if not want:
            return None
        self._fps = self._fps or _fps(self.task, venv)
        out: list[np.ndarray | None] = [None] * len(env_ids)
        if self.task.family == "atari":
            for i in want:
                out[i] = obs[i]
            return out
        try:
            envs = getattr(venv, "envs", None)
            shots = [envs[i].render() for i in want] if envs else [venv.render()[i] for i in want]
            if any(s is None for s in shots):
                raise RuntimeError("render() returned None (the env was not made with render_mode='rgb_array')")
        except Exception as e:  # noqa: BLE001 - any renderer failure: the evaluation goes on without videos
            self.note = (f"no video frames for {self.task.name}: rendering failed ({type(e).__name__}: {e}). "
                         f"MuJoCo renders offscreen with MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset)')}; "
                         "on a headless machine that needs EGL (MUJOCO_GL=egl). The scores are unaffected.")
            self.log(f"video: {self.note}")
            self.close()
            return None
        for i, shot in zip(want, shots):
            out[i] = np.ascontiguousarray(shot, dtype=np.uint8)
        return out

    def record(self, frames: Sequence[np.ndarray | None] | None, env_ids: np.ndarray, action: np.ndarray,
               logits: Any, reward: np.ndarray, rtg: np.ndarray, timestep: np.ndarray,
               done: np.ndarray) -> None:
        """After ``venv.step``: draw this step's decision on its frame; finish the videos of ended episodes."""
        if frames is None:
            return
        logits_np = None
        for i, frame in enumerate(frames):
            if frame is None:
                continue
            g = int(env_ids[i])
            rec = self._open.get(g)
            if rec is None:
                rec = self._open[g] = self._start(g, frame)
            scores = None
            if self.scores is not None:
                if logits_np is None:
                    logits_np = logits.float().cpu().numpy()  # [N, A]; only on steps that draw a frame
                scores = logits_np[i].astype(np.float64) / self.scores[1]
            act = action[i].tolist()
            rec["ret"] += float(reward[i])
            lines = decision_lines(self.task, self.prompts, t=int(timestep[i]), rtg=float(rtg[i]),
                                   reward=float(reward[i]), ret=rec["ret"], action=act, scores=scores,
                                   score_name=self.scores[0] if self.scores else "")
            rec["writer"].append(rec["layout"].compose(frame, lines))
            rec["steps"].append({"t": int(timestep[i]), "rtg": float(rtg[i]), "reward": float(reward[i]),
                                 "action": act, "text": lines})
            if done[i]:
                self._finish(g)
        for j in np.flatnonzero(done):  # every environment's episode count, recorded or not
            self._ordinal[int(env_ids[j])] = self._ordinal.get(int(env_ids[j]), 0) + 1

    def _start(self, g: int, frame: np.ndarray) -> dict[str, Any]:
        k = self._ordinal.get(g, 0) * self.G + g
        rtg = np.format_float_positional(self.target, trim="-")  # 12.0 -> "12", 3600.5 -> "3600.5", all digits
        stem = self.out_dir / f"rtg{rtg}_seed{self.seed}_ep{k:02d}"
        layout = FrameLayout.for_frame(frame)
        return {"episode": k, "env": g, "layout": layout, "ret": 0.0, "steps": [],
                "writer": VideoWriter(stem, self._fps)}

    def _finish(self, g: int) -> None:
        rec = self._open.pop(g)
        writer: VideoWriter = rec["writer"]
        layout: FrameLayout = rec["layout"]
        path, log_path = writer.path, writer.path.with_suffix(".json")
        entry = {"video": path.name, "log": log_path.name, "target": self.target, "seed": self.seed,
                 "episode": rec["episode"], "env": g, "return": rec["ret"], "length": len(rec["steps"])}
        log = {**entry, "task": self.task.name, "prompt_set": self.prompt_set, "fps": writer.fps,
               "frame_size": list(layout.size), "game_size": list(layout.game_size), "steps": rec["steps"]}
        atomic_write_text(log_path, json.dumps(log, indent=1) + "\n")  # first: a visible video has its log
        try:
            writer.close()
        except BaseException:
            log_path.unlink(missing_ok=True)
            raise
        self.entries.append(entry)

    def close(self) -> None:
        """Abort recordings still in progress (an interrupted run): no partial video is left."""
        for rec in self._open.values():
            rec["writer"].abort()
        self._open.clear()


# --- after the evaluation -----------------------------------------------------------------------------------
def prune_videos(video_dir: str | os.PathLike[str], entries: Sequence[dict[str, Any]]) -> None:
    """Remove videos and logs in ``video_dir`` that ``entries`` (this evaluation's) do not list: an earlier
    evaluation's, which would otherwise pass for this one's."""
    keep = {e[k] for e in entries for k in ("video", "log")}
    for f in Path(video_dir).glob("rtg*_seed*_ep*.*"):
        if f.suffix in (".mp4", ".gif", ".json") and f.name not in keep:
            f.unlink(missing_ok=True)


def best_episode_strip(video_dir: str | os.PathLike[str], entries: Sequence[dict[str, Any]],
                       n: int = STRIP_FRAMES) -> FrameStrip | None:
    """A more3s.report.FrameStrip of ``n`` evenly spaced frames (game area only) of the recorded episode with
    the highest return (ties: the lowest target, seed, episode), each labelled with its action's words; None
    when nothing was recorded. Frames are decoded from the video itself: what the strip shows is what was saved."""
    import imageio.v3 as iio

    from more3s.report import FrameStrip

    if not entries:
        return None
    best = min(entries, key=lambda e: (-e["return"], e["target"], e["seed"], e["episode"]))
    video_dir = Path(video_dir)
    log = json.loads((video_dir / best["log"]).read_text())
    steps = log["steps"]
    idx = sorted({int(i) for i in np.linspace(0, len(steps) - 1, min(n, len(steps))).round()})
    gh, gw = log["game_size"]
    frames, labels = [], []
    for j, frame in enumerate(iio.imiter(video_dir / best["video"])):
        if j in idx:
            frames.append(np.asarray(frame)[:gh, :gw, :3])
            labels.append(f"t={steps[j]['t']}: {steps[j]['text'][1]}")
        if j >= idx[-1]:
            break
    if len(frames) != len(idx):
        raise ValueError(f"{video_dir / best['video']}: decoded {j + 1} frames, its log has {len(steps)} steps")
    title = (f"best recorded episode: RTG target {best['target']:g}, seed {best['seed']}, episode "
             f"{best['episode']}: return {best['return']:g} in {best['length']} steps ({best['video']})")
    return FrameStrip(frames=frames, labels=labels, title=title)


def expand_bare_flag(argv: Sequence[str], flag: str, value: str) -> list[str]:
    """``--video`` given without a number means ``--video VALUE`` (the parser itself wants a value)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == flag and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out.insert(i + 1, value)
    return out
