"""Video decoding: probing, routing to decord or PyAV, and chunked reading.

The API: `probe_video` (frame count, rate, size, decoder: a `VideoInfo`), `read_frames` (the
frames asked for, a bounded chunk at a time), `check_decodable` (every frame extraction will
sample); a video that cannot be read is a `VideoError` naming the file.

decord reads most videos, seeking to the frames asked for; the streams it misreads (MPEG-4
Part 2 with B-frames, open GOPs) are decoded in order with PyAV instead (`routing`,
`pyav_reader`; ``extraction.decoder``). Probing refuses files left to decord on which it
returns wrong frames without an error: no usable frame timestamps (it then returns blank
frames) and edit lists that trim the start (it then returns shifted frames).

Every decoding call runs in a decoding child process that the caller waits for with a deadline
(`timeout`, ``extraction.decode_timeout``; `tpwng.features.decode_process`): a call that passes
it or whose child dies is one `VideoError`. ``timeout=None`` decodes in the calling process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpwng.config import schema_defaults
from tpwng.features.decode_process import decoding_child, serve_requests
from tpwng.features.pyav_reader import SequentialReader
from tpwng.features.routing import choose_decoder, inspect_stream
from tpwng.grid import sample_indices

# seconds one decoding call (open, probe, one chunk) may take: extraction.decode_timeout's default
DECODE_TIMEOUT = float(schema_defaults("extraction")["decode_timeout"])
DECODE_CHUNK = int(schema_defaults("extraction")["decode_chunk"])  # frames per decoding call


class VideoError(RuntimeError):
    """A video cannot be read; the message names the file.

    A torch DataLoader re-raises an error of a worker process as the same type with the
    worker's whole traceback as the message; that is cut back to the original message here,
    so that the user still sees one line.
    """

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if text.startswith("Caught VideoError") and "Original Traceback" in text:
            text = text.rstrip().rsplit("VideoError: ", 1)[-1]
        super().__init__(text)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    decoder: str = "decord"  # which decoder reads it (tpwng.features.routing)
    route: str = ""  # why that decoder


def probe_video(path: str | Path, timeout: float | None = DECODE_TIMEOUT,
                decoder_setting: str = "auto") -> VideoInfo:
    """Frame count, frame rate, size and decoder of a video (a VideoError names what is
    wrong); `decoder_setting` is ``extraction.decoder`` (tpwng.features.routing)."""
    if timeout is None:
        return _probe_here(path, decoder_setting)
    return decoding_child().call(("probe", str(path), decoder_setting), timeout, path,
                                 "probing the video", VideoError)


def read_frames(
    path: str | Path, indices: np.ndarray, chunk: int = DECODE_CHUNK,
    budget_bytes: int = 64 << 20, timeout: float | None = DECODE_TIMEOUT, decoder: str = "auto",
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (offset, frames) with frames uint8 [n, H, W, 3] for `indices`, a chunk at a time.

    `decoder` is ``decord``, ``pyav`` or ``auto`` (routed as `probe_video` routes). Each
    decoding call must finish within `timeout` seconds (None: decode here, unbounded).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if timeout is None:
        reader = FrameReader()

        def call(request: tuple, what: str):
            return handle_request(reader, request)
    else:
        dec = decoding_child()
        dec.replace_if_grown()

        def call(request: tuple, what: str):
            return dec.call(request, timeout, path, what, VideoError)

    n_frames, h, w = call(("open", str(path), decoder), "opening the video")
    if len(indices) and 0 <= n_frames <= int(indices.max()):
        raise VideoError(
            f"{path}: asked for frame {int(indices.max())} but the video has {n_frames} frames"
        )
    step = chunk_size_for(w, h, chunk, budget_bytes)
    for off in range(0, len(indices), step):
        idx = indices[off : off + step]
        frames = call(("read", str(path), idx.tolist()),
                      f"decoding frames {int(idx[0])}-{int(idx[-1])}")
        yield off, frames
    if timeout is not None:
        call(("close",), "closing the video")


def check_decodable(path: str | Path, frames: int, stride: int, sample: str, chunk: int,
                    timeout: float | None, decoder: str = "auto") -> None:
    """Decode every frame extraction will sample; raise VideoError if any cannot be."""
    for _ in read_frames(path, sample_indices(frames, stride, sample), chunk=chunk,
                         timeout=timeout, decoder=decoder):
        pass


def chunk_size_for(width: int, height: int, max_chunk: int, budget_bytes: int) -> int:
    """Frames per decode call so that one chunk stays within `budget_bytes`."""
    frame_bytes = max(1, width * height * 3)
    return max(1, min(max_chunk, budget_bytes // frame_bytes))


# --------------------------------------------------------------------------- decoding here
# What a decoding call does, in the decoding child (or here, without a deadline).

_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+?\.(?:cc|h|cpp):\d+: ")
_AVERROR_TEXT = {
    "1094995529": "invalid data: the file is truncated or damaged",
    "-1094995529": "invalid data: the file is truncated or damaged",
    "541478725": "unexpected end of file",
    "-541478725": "unexpected end of file",
}


def _first_line(exc: BaseException) -> str:
    """decord's message without its source-file prefixes, on one line."""
    text = _DECORD_PREFIX.sub("", str(exc)).strip().splitlines()
    line = text[0][:200] if text else type(exc).__name__
    for code, meaning in _AVERROR_TEXT.items():
        if line.endswith(f"failed with {code}"):
            line = f"{line} ({meaning})"
    return line


def _open(path: str | Path, **kwargs):
    import decord

    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such video file")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kwargs)
    except Exception as exc:  # noqa: BLE001 - decord raises its own error types
        detail = _first_line(exc)
        if detail.startswith("Error reading"):  # decord's words when FFmpeg cannot open it
            detail = "no readable container: damaged, truncated, or not a video file"
        if "cannot find video stream" in detail:
            raise VideoError(f"{path}: the file has no video stream (audio only, or not a "
                             "video)") from exc
        raise VideoError(f"{path}: cannot be decoded as a video ({detail})") from exc


def _check_timestamps(vr, path: str | Path, n: int) -> None:
    """Refuse files in which decord cannot locate frames (it would return wrong frames).

    decord seeks by presentation time. Without usable timestamps (some AVI files) it returns
    blank frames; when an edit list trims the start (timestamps before 0) it returns frames
    shifted from the ones the index names. Both are silent, so both are errors here.
    """
    ts = np.asarray(vr.get_frame_timestamp(range(n)))[:, 0].astype(np.float64)
    if not np.isfinite(ts).all() or (n > 1 and not (np.diff(ts) > 0).all()) or ts.min() < -1e6:
        raise VideoError(f"{path}: frame timestamps are missing or out of order, so decord "
                         "cannot locate frames in it and would return wrong or blank frames; "
                         "re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
    if ts.min() < 0:
        raise VideoError(f"{path}: an edit list trims the start of the video (first timestamp "
                         f"{ts.min():.3f} s); decord ignores it and would return shifted "
                         "frames; re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")


def _route(path: str | Path, setting: str) -> tuple[str, str]:
    """(decoder, why) for `path` under ``extraction.decoder`` = `setting` (a VideoError when
    decord is asked for a video it misreads)."""
    if setting == "pyav":
        return choose_decoder(None, setting)
    try:
        facts = inspect_stream(path)
    except Exception as exc:  # noqa: BLE001 - PyAV raises its own error types
        raise VideoError(f"{path}: its stream cannot be inspected ({_first_line(exc)})") from exc
    try:
        return choose_decoder(facts, setting)
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from None


def _probe_here(path: str | Path, setting: str = "auto") -> VideoInfo:
    vr = _open(path)
    n = len(vr)
    if n <= 0:
        raise VideoError(f"{path}: the video has no frames")
    try:
        h, w = vr[0].shape[:2]
    except Exception as exc:  # noqa: BLE001
        raise VideoError(f"{path}: first frame cannot be decoded ({_first_line(exc)})") from exc
    fps = float(vr.get_avg_fps())
    if not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"{path}: the video reports an invalid frame rate ({fps})")
    decoder, why = _route(path, setting)
    if decoder == "decord":  # PyAV decodes in order: decord's timestamps do not matter to it
        _check_timestamps(vr, path, n)
    return VideoInfo(frames=n, fps=fps, width=int(w), height=int(h), decoder=decoder, route=why)


class FrameReader:
    """One open video in the decoding process (the last one asked for)."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.vr = None
        self.sequential: SequentialReader | None = None
        self.shape = (0, 1, 1)

    def open(self, path: str, decoder: str = "auto") -> tuple[int, int, int]:
        """(frames, height, width) of `path`, opening it unless it is the open one; frames is
        -1 where PyAV reads it (its count is known only at the end)."""
        if self.path != path:
            self.close()
            if decoder == "auto":
                decoder, _ = _route(path, decoder)
            if decoder == "pyav":
                reader = SequentialReader(path, VideoError)
                ctx = reader.container.streams.video[0].codec_context
                self.sequential, self.path = reader, path
                self.shape = (-1, int(ctx.height), int(ctx.width))
                return self.shape
            vr = _open(path)
            n = len(vr)
            try:
                h, w = vr[0].shape[:2] if n > 0 else (1, 1)
            except Exception as exc:  # noqa: BLE001
                raise VideoError(
                    f"{path}: decoding failed at the start ({_first_line(exc)})") from exc
            self.vr, self.path, self.shape = vr, path, (n, int(h), int(w))
        return self.shape

    def read(self, path: str, idx: list[int]) -> np.ndarray:
        if self.path == path and self.sequential is not None:
            return self.sequential.read(idx)
        n, _, _ = self.open(path, "decord")
        if idx and max(idx) >= n:
            raise VideoError(f"{path}: asked for frame {max(idx)} but the video has {n} frames "
                             "(was the file replaced after the manifest was made?)")
        try:
            return self.vr.get_batch(idx).asnumpy()
        except Exception as exc:  # noqa: BLE001
            raise VideoError(
                f"{path}: decoding failed near frame {idx[0]} ({_first_line(exc)})") from exc

    def close(self) -> None:
        if self.sequential is not None:
            self.sequential.close()
        self.vr, self.sequential, self.path, self.shape = None, None, None, (0, 1, 1)


def handle_request(reader: FrameReader, request: tuple):
    """Answer one decoding request ``(op, args...)`` with `reader`."""
    op, *args = request
    if op == "probe":
        return _probe_here(*args)
    if op == "open":
        return reader.open(*args)
    if op == "read":
        return reader.read(args[0], args[1])
    if op == "close":
        return reader.close()
    raise ValueError(f"unknown decoding request {op!r}")


def serve_decoding() -> None:
    """The decoding child (`tpwng.features.decode_process.HELPER_COMMAND`): every failure
    goes back as one message naming the file."""
    reader = FrameReader()

    def answer(request: tuple) -> tuple[str, object]:
        try:
            return "ok", handle_request(reader, request)
        except VideoError as exc:
            return "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            return "error", (f"{request[1] if len(request) > 1 else ''}: decoding failed "
                             f"({_first_line(exc)})")

    serve_requests(answer)
