"""Deterministic synthetic anomaly dataset written as H.264 videos in the folder format.

Normal frames show a smooth, slowly panning texture with a few small grey blobs walking
around. An anomalous video shows, over one interval covering 10-40% of its frames, a large,
saturated class-specific signature (explosion: expanding orange/yellow disc with flashes;
fighting: two red blobs whirling around each other; robbery: a big black rectangle sweeping
across; vandalism: flickering green/magenta stripes; ...). Layout::

    OUT/videos/<Class>/<id>.mp4
    OUT/train.txt, OUT/test.txt      "<Class>/<id>.mp4" per line
    OUT/annotations.txt              UCF temporal format, every test video
    OUT/train_intervals.txt          true intervals of the training videos (diagnostics only)
"""

from __future__ import annotations

import math
import multiprocessing
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom
from tqdm import tqdm

from tpwng.files import atomic_path, write_lines

NORMAL_DIR = "Normal"
MIN_FRACTION, MAX_FRACTION = 0.10, 0.40


@dataclass
class SyntheticSpec:
    """Size and content of a synthetic dataset."""

    train_normal: int = 24
    train_per_class: int = 6
    test_normal: int = 12
    test_per_class: int = 4
    classes: tuple[str, ...] = ("explosion", "fighting", "robbery", "vandalism")
    width: int = 160
    height: int = 120
    fps: float = 25.0
    min_frames: int = 240
    max_frames: int = 480
    seed: int = 0

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)  # a YAML list is fine too

    def validate(self) -> None:
        """Raise ValueError on an unusable spec."""
        counts = (self.train_normal, self.train_per_class, self.test_normal, self.test_per_class)
        if min(counts) < 0 or self.seed < 0:
            raise ValueError("synthetic video counts and seed must be >= 0")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError("synthetic classes must be a non-empty list without repeats")
        unknown = [c for c in self.classes if c not in SIGNATURES]
        if unknown:
            raise ValueError(f"no synthetic signature for class(es) {unknown}; "
                             f"available: {', '.join(sorted(SIGNATURES))}")
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ValueError("synthetic width and height must be even and >= 32")
        if not self.fps > 0:
            raise ValueError("synthetic fps must be > 0")
        if not 10 <= self.min_frames <= self.max_frames:
            raise ValueError("synthetic frame counts need 10 <= min_frames <= max_frames")


def class_dir_name(name: str) -> str:
    """Folder name of a prompt class: ``road accidents`` -> ``RoadAccidents``."""
    return "".join(part.capitalize() for part in name.split())


# --------------------------------------------------------------------------- signatures
#
# A signature paints onto a float32 (H, W, 3) frame in place. It receives the frame, the
# frame index within the anomalous interval, the per-video parameters drawn by its setup
# function, and the pixel grids.

Grid = tuple[np.ndarray, np.ndarray]


def _disc(grid: Grid, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = grid
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _fill(frame: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float]) -> None:
    np.copyto(frame, np.asarray(colour, np.float32), where=mask[..., None])


def _explosion_setup(rng: np.random.Generator, w: int, h: int) -> dict:
    return {"cx": rng.uniform(0.3, 0.7) * w, "cy": rng.uniform(0.35, 0.65) * h,
            "period": int(rng.integers(18, 30)), "phase": int(rng.integers(0, 18))}


def _explosion(frame: np.ndarray, t: int, p: dict, grid: Grid, rng: np.random.Generator) -> None:
    h, w = frame.shape[:2]
    k = ((t + p["phase"]) % p["period"]) / p["period"]
    r = (0.33 + 0.32 * k) * h
    cx, cy = p["cx"] + rng.normal(0, 1.5), p["cy"] + rng.normal(0, 1.5)
    if k < 0.12:  # flash at the start of each burst
        frame *= 0.3
        frame += np.array([255, 235, 170], np.float32) * 0.7
    yy, xx = grid
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    _fill(frame, d2 <= r * r, (255, 150, 20))
    _fill(frame, d2 <= (0.55 * r) ** 2, (255, 235, 40))


def _fighting_setup(rng: np.random.Generator, w: int, h: int) -> dict:
    return {"cx": rng.uniform(0.35, 0.65) * w, "cy": rng.uniform(0.4, 0.6) * h,
            "angle": rng.uniform(0, 2 * math.pi), "spin": rng.choice([-1.0, 1.0])}


def _fighting(frame: np.ndarray, t: int, p: dict, grid: Grid, rng: np.random.Generator) -> None:
    h, w = frame.shape[:2]
    angle = p["angle"] + p["spin"] * 0.9 * t
    radius, orbit = 0.27 * h, 0.17 * w
    for sign, colour in ((1, (235, 20, 20)), (-1, (200, 0, 60))):
        jx, jy = rng.normal(0, 0.03 * w, size=2)
        _fill(frame, _disc(grid, p["cx"] + sign * orbit * math.cos(angle) + jx,
                           p["cy"] + sign * 0.6 * orbit * math.sin(angle) + jy, radius), colour)


def _robbery_setup(rng: np.random.Generator, w: int, h: int) -> dict:
    return {"x": rng.uniform(0, w), "speed": rng.uniform(0.06, 0.1) * w * rng.choice([-1, 1]),
            "top": rng.uniform(0.05, 0.3) * h}


def _robbery(frame: np.ndarray, t: int, p: dict, grid: Grid, rng: np.random.Generator) -> None:
    h, w = frame.shape[:2]
    rw, rh = int(0.45 * w), int(0.65 * h)
    span = w - rw
    pos = (p["x"] + p["speed"] * t) % (2 * span)  # bounce between the frame edges
    x0 = int(pos if pos <= span else 2 * span - pos)
    y0 = int(p["top"] + rng.normal(0, 1.0))
    y0 = min(max(y0, 0), h - rh)
    frame[y0:y0 + rh, x0:x0 + rw] = 8.0 + rng.uniform(0, 10)


def _vandalism_setup(rng: np.random.Generator, w: int, h: int) -> dict:
    rw, rh = int(0.62 * w), int(0.66 * h)
    return {"x0": int(rng.integers(0, w - rw + 1)), "y0": int(rng.integers(0, h - rh + 1)),
            "rw": rw, "rh": rh, "slope": rng.choice([-1, 0, 1])}


def _vandalism(frame: np.ndarray, t: int, p: dict, grid: Grid, rng: np.random.Generator) -> None:
    yy, xx = grid
    x0, y0, rw, rh = p["x0"], p["y0"], p["rw"], p["rh"]
    sub_y, sub_x = yy[y0:y0 + rh, x0:x0 + rw], xx[y0:y0 + rh, x0:x0 + rw]
    # wide stripes (wider than a ViT patch) in two saturated greens that do not average to grey
    stripe = ((sub_x + p["slope"] * sub_y + 3 * t) // 20).astype(np.int64)
    stripe -= stripe.min()
    lit = rng.random(int(stripe.max()) + 1) < 0.85  # flicker: each stripe on or off
    colours = np.array([(30, 240, 40), (20, 200, 255)], np.float32)
    region = frame[y0:y0 + rh, x0:x0 + rw]
    on = lit[stripe]
    region[on] = colours[(stripe[on] + t) % 2]


def _shooting_setup(rng: np.random.Generator, w: int, h: int) -> dict:
    return {"y": rng.uniform(0.2, 0.8) * h, "gun_x": rng.choice([0.1, 0.9]) * w}


def _shooting(frame: np.ndarray, t: int, p: dict, grid: Grid, rng: np.random.Generator) -> None:
    h, w = frame.shape[:2]
    yy, _ = grid
    for _ in range(4):  # cyan tracer bands
        y = rng.uniform(0, h)
        frame[np.abs(yy[:, 0] - y) < 0.05 * h] = (20, 230, 255)
    _fill(frame, _disc(grid, p["gun_x"], p["y"], (0.3 + 0.1 * (t % 3)) * h), (255, 255, 60))


def _arson_setup(rng: np.random.Generator, w: int, h: int) -> dict:
    return {"phase": rng.uniform(0, 2 * math.pi), "height": rng.uniform(0.4, 0.5)}


def _arson(frame: np.ndarray, t: int, p: dict, grid: Grid, rng: np.random.Generator) -> None:
    h, w = frame.shape[:2]
    yy, xx = grid
    top = h * (1 - p["height"]) + 0.08 * h * np.sin(xx[0] * 0.25 + 0.7 * t + p["phase"])
    top = top + rng.normal(0, 0.03 * h, size=w)
    _fill(frame, yy >= top[None, :], (230, 40, 0))
    _fill(frame, yy >= (top + 0.25 * h)[None, :], (255, 110, 0))


SIGNATURES: dict[str, tuple[Callable, Callable]] = {
    "explosion": (_explosion_setup, _explosion),
    "fighting": (_fighting_setup, _fighting),
    "robbery": (_robbery_setup, _robbery),
    "vandalism": (_vandalism_setup, _vandalism),
    "shooting": (_shooting_setup, _shooting),
    "arson": (_arson_setup, _arson),
}


# --------------------------------------------------------------------------- one video


@dataclass
class _Video:
    video_id: str
    class_name: str  # prompt name, "normal" for normal videos
    split: str
    frames: int
    interval: tuple[int, int] | None
    rng: np.random.Generator

    @property
    def class_dir(self) -> str:
        return NORMAL_DIR if self.class_name == "normal" else class_dir_name(self.class_name)

    @property
    def relative(self) -> str:
        return f"{self.class_dir}/{self.video_id}.mp4"


def _plan(spec: SyntheticSpec) -> list[_Video]:
    """Every video of the dataset with its length and interval, in list order."""
    videos = []
    for split_index, split in enumerate(("train", "test")):
        n_normal = spec.train_normal if split == "train" else spec.test_normal
        per_class = spec.train_per_class if split == "train" else spec.test_per_class
        groups = [(c, per_class) for c in spec.classes] + [("normal", n_normal)]
        for name, count in groups:
            class_key = zlib.crc32(name.encode())  # a class's videos ignore the other classes
            for i in range(count):
                rng = np.random.default_rng([spec.seed, split_index, class_key, i])
                n = int(rng.integers(spec.min_frames, spec.max_frames + 1))
                interval = None
                if name != "normal":
                    length = int(rng.integers(math.ceil(MIN_FRACTION * n),
                                              math.floor(MAX_FRACTION * n) + 1))
                    start = int(rng.integers(0, n - length + 1))
                    interval = (start, start + length)
                cls = NORMAL_DIR if name == "normal" else class_dir_name(name)
                videos.append(_Video(f"{cls}_{split}_{i:03d}", name, split, n, interval, rng))
    return videos


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (h, w): bicubic upsampling of a coarse random grid."""
    coarse = rng.random((h // cell + 4, w // cell + 4))
    fine = zoom(coarse, cell, order=3)
    fine = fine[cell:cell + h, cell:cell + w]
    fine -= fine.min()
    return fine / max(float(fine.max()), 1e-6)


def _frames(video: _Video, spec: SyntheticSpec) -> Iterator[np.ndarray]:
    """The video's frames as float32 RGB (H, W, 3), not yet clipped to [0, 255]."""
    rng, w, h = video.rng, spec.width, spec.height
    pan = max(4, w // 10)
    th, tw = h + 2 * pan, w + 2 * pan
    grey = 0.6 * _smooth_noise(rng, th, tw, 24) + 0.4 * _smooth_noise(rng, th, tw, 6)
    texture = (75 + 110 * grey)[..., None] * np.ones(3, np.float32)
    tint = rng.uniform(-14, 14, size=3) * _smooth_noise(rng, th, tw, 32)[..., None]
    texture = (texture + tint).astype(np.float32)
    pan_period = rng.uniform(150, 400, size=2)
    pan_phase = rng.uniform(0, 2 * math.pi, size=2)
    drift_period, drift_phase = rng.uniform(100, 300), rng.uniform(0, 2 * math.pi)

    n_blobs = int(rng.integers(2, 6))
    pos = rng.uniform((0, 0), (w, h), size=(n_blobs, 2))
    vel = rng.normal(0, 0.8, size=(n_blobs, 2))
    radius = rng.uniform(0.03, 0.05, size=n_blobs) * h
    blob_grey = rng.uniform(70, 170, size=n_blobs)
    limits = np.array([w, h], np.float64)

    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = (grid[0], grid[1])
    params = None
    if video.interval is not None:
        setup, paint = SIGNATURES[video.class_name]
        params = setup(rng, w, h)

    for t in range(video.frames):
        ox = pan + int(round(pan * math.sin(2 * math.pi * t / pan_period[0] + pan_phase[0])))
        oy = pan + int(round(pan * math.sin(2 * math.pi * t / pan_period[1] + pan_phase[1])))
        gain = 1.0 + 0.08 * math.sin(2 * math.pi * t / drift_period + drift_phase)
        frame = texture[oy:oy + h, ox:ox + w] * np.float32(gain)

        vel = 0.9 * vel + rng.normal(0, 0.3, size=vel.shape)
        pos += vel
        outside = (pos < 0) | (pos > limits)  # bounce off the borders
        vel[outside] *= -1
        np.minimum(np.maximum(pos, 0, out=pos), limits, out=pos)
        for (bx, by), r, g in zip(pos, radius, blob_grey, strict=True):
            y0, y1 = max(int(by - r), 0), min(int(by + r) + 1, h)
            x0, x1 = max(int(bx - r), 0), min(int(bx + r) + 1, w)
            patch = (grid[0][y0:y1, x0:x1] - by) ** 2 + (grid[1][y0:y1, x0:x1] - bx) ** 2
            frame[y0:y1, x0:x1][patch <= r * r] = g

        if video.interval is not None and video.interval[0] <= t < video.interval[1]:
            paint(frame, t - video.interval[0], params, grid, rng)
        yield frame


# BT.601 limited-range RGB -> YCbCr, the default that decoders assume for SD video.
_YCC = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0],
                 [112.0, -93.786, -18.214]], np.float32) / 255


def _to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """Planar yuv420p (H * 3/2, W) uint8 of a float RGB frame (faster than swscale here)."""
    h, w = rgb.shape[:2]
    p = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    np.clip(p, 0, 255, out=p)
    n, c = h * w, h * w // 4
    out = np.empty(n + 2 * c, np.float32)
    m = _YCC
    out[:n] = (m[0, 0] * p[0] + m[0, 1] * p[1] + m[0, 2] * p[2] + 16.5).ravel()
    q = (p[:, 0::2, 0::2] + p[:, 1::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 1::2]) * 0.25
    out[n:n + c] = (m[1, 0] * q[0] + m[1, 1] * q[1] + m[1, 2] * q[2] + 128.5).ravel()
    out[n + c:] = (m[2, 0] * q[0] + m[2, 1] * q[1] + m[2, 2] * q[2] + 128.5).ravel()
    return out.astype(np.uint8).reshape(h * 3 // 2, w)


def write_video(path: Path, frames: Iterator[np.ndarray], spec: SyntheticSpec) -> None:
    """Encode frames as H.264 (yuv420p) MP4, written durably (temporary name, then rename)."""
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=Fraction(spec.fps).limit_denominator(1001),
            options={"crf": "23", "preset": "ultrafast", "g": "32", "threads": "1"},
        )
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        for array in frames:
            frame = av.VideoFrame.from_ndarray(_to_yuv420p(array), format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))




def _annotation_line(video: _Video) -> str:
    start, end = video.interval if video.interval is not None else (-1, -1)
    return f"{video.video_id}  {video.class_dir}  {start}  {end}  -1  -1"


def _render(job: tuple[_Video, SyntheticSpec, Path]) -> None:
    video, spec, path = job
    write_video(path, _frames(video, spec), spec)


def generate(out_root: Path, spec: SyntheticSpec, progress: bool = True, jobs: int = 1) -> None:
    """Write the synthetic dataset described by ``spec`` below ``out_root``.

    ``jobs`` > 1 renders videos in that many worker processes; the output does not depend on
    it. Videos are written first and the lists last, so an interrupted run leaves no lists
    pointing at missing videos.
    """
    spec.validate()
    out_root = Path(out_root)
    videos = _plan(spec)
    work = []
    for video in videos:
        directory = out_root / "videos" / video.class_dir
        directory.mkdir(parents=True, exist_ok=True)
        work.append((video, spec, directory / f"{video.video_id}.mp4"))
    bar = tqdm(total=len(work), desc="synthetic videos", unit="video", disable=not progress)
    with bar:
        if jobs <= 1:
            for job in work:
                _render(job)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                for _ in pool.map(_render, work):
                    bar.update()
    train = [v for v in videos if v.split == "train"]
    test = [v for v in videos if v.split == "test"]
    write_lines(out_root / "train.txt", [v.relative for v in train])
    write_lines(out_root / "test.txt", [v.relative for v in test])
    write_lines(out_root / "annotations.txt", [_annotation_line(v) for v in test])
    write_lines(out_root / "train_intervals.txt", [_annotation_line(v) for v in train])
