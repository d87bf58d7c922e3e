"""Video decoding: probing, routing to decord or PyAV, and chunked reading.

decord reads most videos, seeking to the frames asked for; the streams it misreads (MPEG-4
Part 2 with B-frames, open GOPs) are decoded in order with PyAV instead (`routing`,
`pyav_reader`; ``extraction.decoder``).

A snippet is `stride` consecutive frames (16 by convention); one frame is sampled per snippet.
Frames are read in bounded chunks so that memory does not grow with the video's length.

Every decoding call (decord or PyAV) runs in a decoding child process, and the calling process
waits for its answer with a deadline (`timeout`, `extraction.decode_timeout` in the config).
decord can hang for ever while holding the GIL (a container that reports more frames than it
holds), crash on damaged files, or grow without bound on some files: none of that can be caught
inside the process that runs it, all of it can be from outside. A call that passes its deadline
or whose child dies is one `VideoError` naming the file; the child is killed and the next call
starts a fresh one. The child also dies with its parent, and is replaced when its memory grows
beyond `HELPER_MAX_RSS`. `timeout=None` decodes in the calling process (no deadline).

Probing refuses files left to decord on which it returns wrong frames without an error: no
usable frame timestamps (it then returns blank frames) and edit lists that trim the start (it
then returns shifted frames).
"""

from __future__ import annotations

import atexit
import fcntl
import math
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpwng.features.pyav_reader import SequentialReader
from tpwng.features.routing import choose_decoder, inspect_stream
from tpwng.grid import sample_indices
from tpwng.heap import bound_heap_growth

DECODE_TIMEOUT = 600.0  # seconds one decoding call (open, probe, one chunk) may take
HELPER_MAX_RSS = 2 << 30  # a decoding child using more memory is replaced between videos
# The decoding child: the parent's pid follows, so that the child can die with it.
HELPER_COMMAND = [sys.executable, "-c",
                  "from tpwng.features.video import serve_decoding; serve_decoding()"]


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


def chunk_size_for(width: int, height: int, max_chunk: int, budget_bytes: int) -> int:
    """Frames per decode call so that one chunk stays within `budget_bytes`."""
    frame_bytes = max(1, width * height * 3)
    return max(1, min(max_chunk, budget_bytes // frame_bytes))


# --------------------------------------------------------------------------- decord itself

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


class _Reader:
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


def _handle(reader: _Reader, request: tuple):
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


# --------------------------------------------------------------------------- the child


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), even mid-decode."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if parent and os.getppid() != parent:
        os._exit(0)


# Messages: a header (pickle length, buffer count, buffer lengths), the pickle (protocol 5),
# then the raw bytes of its out-of-band buffers: frame arrays cross without extra copies.


def _read_exact(fd: int, n: int, deadline: float | None) -> bytearray | None:
    """n bytes from fd; None on end of file; TimeoutError past the deadline."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return buf


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, obj) -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    _write_all(fd, struct.pack(f"<QI{len(raws)}Q", len(data), len(raws),
                               *(r.nbytes for r in raws)))
    _write_all(fd, data)
    for r in raws:
        _write_all(fd, r)


def _receive(fd: int, deadline: float | None):
    """One message from fd (None on end of file)."""
    head = _read_exact(fd, 12, deadline)
    if head is None:
        return None
    size, count = struct.unpack("<QI", head)
    sizes = struct.unpack(f"<{count}Q", _read_exact(fd, 8 * count, deadline) or b"")
    parts = [_read_exact(fd, n, deadline) for n in (size, *sizes)]
    if any(p is None for p in parts):
        return None
    return pickle.loads(parts[0], buffers=parts[1:])


def serve_decoding() -> None:
    """The decoding child: answer (op, args...) requests from stdin on the original stdout."""
    _die_with_parent(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    # frame chunks come from mmap and go back when freed, as in the extracting process, so
    # this process does not creep over long videos
    bound_heap_growth()
    out = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    reader = _Reader()
    while True:
        request = _receive(0, None)
        if request is None:
            return
        try:
            answer = ("ok", _handle(reader, request))
        except VideoError as exc:
            answer = ("error", str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            answer = ("error", f"{request[1] if len(request) > 1 else ''}: decoding failed "
                               f"({_first_line(exc)})")
        _send(out, answer)


# --------------------------------------------------------------------------- the parent side


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Decoder:
    """A decoding child process and the deadline of every request sent to it."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _start(self) -> None:
        self.proc = subprocess.Popen([*HELPER_COMMAND, str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True, bufsize=0)
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # larger pipe: fewer round trips per chunk
            with suppress(OSError):
                fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def rss(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return 0
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def call(self, request: tuple, timeout: float, path: str | Path, what: str):
        """Send one request; raise VideoError naming `path` past `timeout` s or if it dies."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self._start()
            proc = self.proc
            try:
                _send(proc.stdin.fileno(), request)
                answer = _receive(proc.stdout.fileno(), time.monotonic() + timeout)
            except TimeoutError:
                self.stop()
                raise VideoError(
                    f"{path}: {what} did not finish within {timeout:g} s "
                    "(extraction.decode_timeout); the file is probably damaged, e.g. a "
                    "container that reports more frames than it holds makes decord hang"
                ) from None
            except (BrokenPipeError, ConnectionResetError):
                answer = None
            if answer is None:
                code = proc.wait()
                self.stop()
                raise VideoError(f"{path}: the decoding process died ({_describe_exit(code)}) "
                                 f"while {what}; the file is probably damaged")
            status, value = answer
            if status != "ok":
                raise VideoError(value)
            return value


_DECODERS: dict[int, Decoder] = {}


def decoding_child() -> Decoder:
    """This process's decoding child (a forked process never uses its parent's)."""
    pid = os.getpid()
    dec = _DECODERS.get(pid)
    if dec is None:
        if not _DECODERS:
            atexit.register(shutdown_decoder)
        _DECODERS.clear()  # inherited from a parent process: not ours to stop
        dec = _DECODERS[pid] = Decoder()
    return dec


def shutdown_decoder() -> None:
    """Stop this process's decoding child (a new one starts when needed)."""
    dec = _DECODERS.get(os.getpid())
    if dec is not None:
        dec.stop()


def probe_video(path: str | Path, timeout: float | None = DECODE_TIMEOUT,
                decoder_setting: str = "auto") -> VideoInfo:
    """Frame count, frame rate, size and decoder of a video (a VideoError names what is
    wrong); `decoder_setting` is ``extraction.decoder`` (tpwng.features.routing)."""
    if timeout is None:
        return _probe_here(path, decoder_setting)
    return decoding_child().call(("probe", str(path), decoder_setting), timeout, path,
                          "probing the video")


def read_frames(
    path: str | Path, indices: np.ndarray, chunk: int = 32, budget_bytes: int = 64 << 20,
    timeout: float | None = DECODE_TIMEOUT, decoder: str = "auto",
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (offset, frames) with frames uint8 [n, H, W, 3] for `indices`, a chunk at a time.

    `decoder` is ``decord``, ``pyav`` or ``auto`` (routed as `probe_video` routes). Each
    decoding call must finish within `timeout` seconds (None: decode here, unbounded).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if timeout is None:
        reader = _Reader()

        def call(request: tuple, what: str):
            return _handle(reader, request)
    else:
        dec = decoding_child()
        if dec.rss() > HELPER_MAX_RSS:
            dec.stop()  # decord's memory grows on some files: start afresh between videos

        def call(request: tuple, what: str):
            return dec.call(request, timeout, path, what)

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


def check_decodable(path: str | Path, frames: int, stride: int = 16, sample: str = "center",
                    chunk: int = 32, timeout: float | None = DECODE_TIMEOUT,
                    decoder: str = "auto") -> None:
    """Decode every frame extraction will sample; raise VideoError if any cannot be."""
    for _ in read_frames(path, sample_indices(frames, stride, sample), chunk=chunk,
                         timeout=timeout, decoder=decoder):
        pass
