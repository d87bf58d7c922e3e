"""Video decoding with decord: probing, snippet sampling and chunked reading.

A snippet is `stride` consecutive frames (16 by convention); one frame is sampled per snippet.
Frames are read in bounded chunks so that memory does not grow with the video's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_MODES = ("center", "start")


class VideoError(RuntimeError):
    """A video cannot be read; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


def snippet_count(n_frames: int, stride: int = 16) -> int:
    """Snippets covering every frame: the last one may be partial."""
    return math.ceil(n_frames / stride)


def sample_indices(n_frames: int, stride: int = 16, mode: str = "center") -> np.ndarray:
    """Index of the frame sampled from each snippet.

    `center` takes the middle frame of the snippet's available frames (start + len // 2),
    `start` its first frame. A partial last snippet uses only the frames it has.
    """
    if mode not in SAMPLE_MODES:
        raise ValueError(f"sample mode must be one of {SAMPLE_MODES}, got {mode!r}")
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, n_frames, stride, dtype=np.int64)
    if mode == "start":
        return starts
    lengths = np.minimum(starts + stride, n_frames) - starts
    return starts + lengths // 2


def _open(path: str | Path, **kwargs):
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kwargs)
    except Exception as exc:  # noqa: BLE001 - decord raises its own error types
        raise VideoError(f"{path}: cannot be decoded as a video ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of a video."""
    vr = _open(path)
    n = len(vr)
    if n <= 0:
        raise VideoError(f"{path}: the video has no frames")
    try:
        h, w = vr[0].shape[:2]
    except Exception as exc:  # noqa: BLE001
        raise VideoError(f"{path}: first frame cannot be decoded ({_first_line(exc)})") from exc
    return VideoInfo(frames=n, fps=float(vr.get_avg_fps()), width=int(w), height=int(h))


def chunk_size_for(width: int, height: int, max_chunk: int, budget_bytes: int) -> int:
    """Frames per decode call so that one chunk stays within `budget_bytes`."""
    frame_bytes = max(1, width * height * 3)
    return max(1, min(max_chunk, budget_bytes // frame_bytes))


def read_frames(
    path: str | Path, indices: np.ndarray, chunk: int = 32, budget_bytes: int = 64 << 20
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (offset, frames) with frames uint8 [n, H, W, 3] for `indices`, a chunk at a time."""
    vr = _open(path)
    n_frames = len(vr)
    if len(indices) and int(indices[-1]) >= n_frames:
        raise VideoError(
            f"{path}: asked for frame {int(indices[-1])} but the video has {n_frames} frames"
        )
    h, w = vr[0].shape[:2] if len(indices) else (1, 1)
    step = chunk_size_for(w, h, chunk, budget_bytes)
    for off in range(0, len(indices), step):
        idx = indices[off : off + step]
        try:
            frames = vr.get_batch(idx.tolist()).asnumpy()
        except Exception as exc:  # noqa: BLE001
            raise VideoError(
                f"{path}: decoding failed near frame {int(idx[0])} ({_first_line(exc)})"
            ) from exc
        yield off, frames
