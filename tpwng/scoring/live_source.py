"""Live sources: what counts as one (a stream URL or a capture device), how messages and
outputs name it, and the reader thread that opens it with PyAV, decodes its frames in order
under a deadline and reopens it after a drop (`tpwng.scoring.live` scores what it reads)."""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tpwng.features.video import VideoError
from tpwng.redact import redact_url, split_url

LIVE_SCHEMES = ("http", "https", "rtsp", "rtmp", "udp")
DEVICE = re.compile(r"/dev/video\d+")
DEFAULT_TIMEOUT = 10.0  # seconds an open or a read may wait for data
DEFAULT_RECONNECT = 0  # a finite stream's normal end looks like a drop: reconnect on request
RETRY_EVERY = 0.5  # seconds between tries to reopen a source within one reconnect


class LiveError(VideoError):
    """A live source cannot be opened or read; the message names the source."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped live scoring; what was scored is written."""


@dataclass(frozen=True)
class LiveOptions:
    """How long to wait for a live source, how often to reopen it, when to raise an alert."""

    timeout: float = DEFAULT_TIMEOUT
    reconnect: int = DEFAULT_RECONNECT  # reopen tries after each drop (restored once it delivers)
    alert_threshold: float | None = None
    realtime: bool = False  # pace a file at its frame rate (a benchmark without a server)
    threads: int | None = None  # torch's CPU threads meanwhile; None: the usable CPUs less one


# --------------------------------------------------------------------------- sources


def is_live_source(source: str) -> bool:
    """A stream URL (http(s), rtsp, rtmp, udp; the scheme in any case) or a V4L2 device
    (/dev/videoN)."""
    parts = split_url(source)
    return ((parts is not None and parts.scheme.lower() in LIVE_SCHEMES)
            or DEVICE.fullmatch(source) is not None)


def display_source(source: str) -> str:
    """The source as messages and outputs name it: as given, its credentials, query values and
    fragment masked (`tpwng.redact.redact_url`)."""
    return redact_url(source)


def ffmpeg_url(source: str) -> str:
    """What FFmpeg opens: the source with its scheme in lower case (FFmpeg's protocol names
    are; ``HTTP://`` would be "Protocol not found")."""
    parts = split_url(source)
    if parts is None:
        return source
    return parts.scheme.lower() + source[len(parts.scheme):]


def source_stem(source: str) -> str:
    """A safe output stem: a device's name, or a URL's host, port and path (no extension,
    no credentials, no query)."""
    if DEVICE.fullmatch(source):
        return Path(source).name
    parts = split_url(source)
    host, port, path = ("", None, source) if parts is None else (parts.host, parts.port,
                                                                  parts.path)
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise LiveError(f"{display_source(source)}: the URL's port {port!r} is not a port "
                        "number")
    names = [host.strip("[]") or "stream", *([str(int(port))] if port else [])]
    segments = [s for s in path.split("/") if s]
    if segments:
        segments[-1] = Path(segments[-1]).stem or segments[-1]
    stem = re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(names + segments)).strip("._")
    return stem[:100] or "stream"


def failure_reason(exc: BaseException, timeout: float) -> str:
    """What went wrong, in words, from a PyAV (FFmpeg) error."""
    import av

    if isinstance(exc, av.error.ExitError | TimeoutError):  # PyAV's deadline, rw_timeout
        return f"timed out after {timeout:g} s without data"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        return "no such file or device"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, av.error.InvalidDataError):
        return "not a video stream (the data is not in a container format FFmpeg reads)"
    if isinstance(exc, av.error.FFmpegError):
        detail = exc.strerror or type(exc).__name__
        log = getattr(exc, "log", None)
        if log and log[2].strip():
            detail += f" ({log[2].strip()})"
        return detail
    return str(exc) or type(exc).__name__


@contextmanager
def ffmpeg_errors() -> Iterator[None]:
    """FFmpeg's own error message attached to PyAV errors raised within (e.g. a failed host
    lookup) while nothing of it is printed."""
    import av.logging

    before = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture():
            yield
    finally:
        av.logging.set_level(before)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Frame:
    """One decoded frame as it arrived."""

    arrived: float  # time.monotonic() when it was decoded
    rgb: np.ndarray | None  # uint8 [H, W, 3]; only for frames a snippet may sample


class LiveReader(threading.Thread):
    """Opens the source, decodes its frames in order into a bounded queue and reopens it after
    a drop; items: ("open", fps), ("frame", Frame), ("note", (message, record)),
    ("end", None), ("error", LiveError)."""

    def __init__(self, source: str, options: LiveOptions, keep: Callable[[int], bool],
                 maxsize: int) -> None:
        super().__init__(name="tpwng-live-reader", daemon=True)
        self.source, self.options, self.keep = source, options, keep
        self.label = display_source(source)
        self.items: queue.Queue = queue.Queue(maxsize)
        self.stop = threading.Event()
        self.frames = 0  # frames decoded, over all connections

    def run(self) -> None:
        try:
            self._read()
        except LiveError as exc:
            self._put(("error", exc))
        except Exception as exc:  # noqa: BLE001 - reported by the scoring thread
            reason = failure_reason(exc, self.options.timeout)
            self._put(("error", LiveError(f"{self.label}: reading failed after frame "
                                          f"{self.frames} ({reason})")))

    def _put(self, item: tuple) -> None:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _open(self, timeout: float):
        import av

        kwargs: dict[str, Any] = {"timeout": (timeout, self.options.timeout)}
        if DEVICE.fullmatch(self.source):
            kwargs["format"] = "v4l2"
        with ffmpeg_errors():
            container = av.open(ffmpeg_url(self.source), **kwargs)
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise LiveError(f"{self.label}: not a video stream (its streams: {', '.join(kinds)})")
        return container

    def _read(self) -> None:
        import av

        try:
            container = self._open(self.options.timeout)
        except av.error.FFmpegError as exc:
            raise LiveError(f"{self.label}: cannot open: "
                            f"{failure_reason(exc, self.options.timeout)}") from None
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not (math.isfinite(fps) and fps > 0):
            container.close()
            raise LiveError(f"{self.label}: the video stream reports no frame rate")
        self._put(("open", fps))
        left = self.options.reconnect
        while True:
            got, failure = self._decode(container, fps)
            container.close()
            if self.stop.is_set():
                return
            if got:
                left = self.options.reconnect
            if left == 0:
                if failure is not None:
                    raise LiveError(f"{self.label}: {failure} after frame {self.frames}")
                self._put(("end", None))
                return
            left -= 1
            attempt = self.options.reconnect - left
            why = failure or "the stream ended"
            self._put(("note", (f"{self.label}: {why} after {self.frames} frames; reconnecting "
                                f"({attempt} of {self.options.reconnect}, waiting up to "
                                f"{self.options.timeout:g} s)",
                                {"event": "reconnecting", "frame": self.frames, "reason": why,
                                 "attempt": attempt})))
            container = self._reopen(why)
            if container is None:
                return
            self._put(("note", (f"{self.label}: reconnected; scoring continues at frame "
                                f"{self.frames}", {"event": "reconnected", "frame": self.frames})))

    def _reopen(self, why: str):
        """The source opened again within ``timeout`` s (refusals retried); None if stopped."""
        import av

        deadline = time.monotonic() + self.options.timeout
        while not self.stop.is_set():
            try:
                return self._open(max(0.1, deadline - time.monotonic()))
            except av.error.FFmpegError as exc:
                last = failure_reason(exc, self.options.timeout)
            if time.monotonic() + RETRY_EVERY > deadline:
                raise LiveError(f"{self.label}: {why} after frame {self.frames} and it could "
                                f"not be reopened within {self.options.timeout:g} s ({last})")
            self.stop.wait(RETRY_EVERY)
        return None

    def _decode(self, container, fps: float) -> tuple[int, str | None]:
        """Frames of one connection until its end: (frames decoded, failure or None)."""
        import av

        got, start = 0, time.monotonic()
        try:
            for frame in container.decode(container.streams.video[0]):
                arrived = time.monotonic()
                if self.stop.is_set():
                    break
                if self.options.realtime:
                    time.sleep(max(0.0, start + got / fps - arrived))
                    arrived = time.monotonic()
                keep = self.keep(self.frames)
                self._put(("frame", Frame(arrived, frame.to_ndarray(format="rgb24")
                                                    if keep else None)))
                self.frames += 1
                got += 1
        except (av.error.FFmpegError, OSError) as exc:
            return got, failure_reason(exc, self.options.timeout)
        return got, None
