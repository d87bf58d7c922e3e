"""One decoding thread per source: frames in order, cut into snippets, handed to the scorer.

A reader opens its source with PyAV (as `tpwng score URL --stream` does: deadlines on every
open and read, FFmpeg's own reason in the message), numbers its frames on across reconnects
and loops, and keeps of each open snippet only the decoded frames it may still sample (as
frame objects: only the sampled one is converted to RGB and preprocessed, here, beside the
other sources). A ready snippet goes to the source's `SourceQueue`.

The drop rule. A source paced by its own clock (a stream, a device, a file played at its frame
rate) cannot wait for the scorer: at most ``max_pending`` of its ready snippets wait; a new one
beyond that pushes out the oldest waiting one, which is recorded in its place as dropped (its
snippet number, first frame and frame count kept: the stream's time stays right). A file read
as fast as possible (``realtime: false``) is never dropped from: its reader waits instead.

A stream that drops or never answers is reopened for ever with back-off (0.5 s, doubled up to
``backoff_max``, back to 0.5 s once a connection delivers frames); a file ends after its plays.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tpwng.grid import sample_indices
from tpwng.scoring.live_source import DEVICE, failure_reason, ffmpeg_errors, ffmpeg_url
from tpwng.serve.config import SourceSpec

FIRST_BACKOFF = 0.5


@dataclass
class Snippet:
    """A ready snippet of one source: its sampled frame, preprocessed for the encoder."""

    index: int  # the snippet's number in the source's stream
    start_frame: int
    frames: int  # frames it spans (< stride: the partial last one)
    arrived: float  # time.monotonic() when its last frame was decoded
    x: torch.Tensor | None = None  # [1, crops, 3, 224, 224]; None: dropped
    rgb: np.ndarray | None = None  # the sampled frame, uint8 [H, W, 3]

    @property
    def dropped(self) -> bool:
        return self.x is None


@dataclass
class SourceCounters:
    """What a reader did, read by the metrics (ints written by one thread only)."""

    frames: int = 0  # decoded, over all connections and plays
    reconnects: int = 0
    dropped_snippets: int = 0
    dropped_frames: int = 0
    status: str = "connecting"  # connecting | live | reconnecting | ended | failed
    last_error: str = ""


class SourceQueue:
    """A source's items for the scorer, in order: ``("snippet", Snippet)`` (a dropped one
    has no frame) and events ``("open", fps)``, ``("note", (message, record))``,
    ``("end", how)``. All queues share the service's condition, so the scorer wakes for any."""

    def __init__(self, cond: threading.Condition, max_pending: int, paced: bool,
                 counters: SourceCounters) -> None:
        self.cond, self.max_pending, self.paced = cond, max_pending, paced
        self.counters = counters
        self.items: collections.deque[tuple[str, Any]] = collections.deque()
        self.waiting = 0  # snippets (not dropped) among the items

    def put_event(self, kind: str, value: Any) -> None:
        with self.cond:
            self.items.append((kind, value))
            self.cond.notify_all()

    def put_snippet(self, snip: Snippet, stop: threading.Event) -> None:
        with self.cond:
            while self.waiting >= self.max_pending:
                if self.paced:
                    self._drop_oldest()
                    break
                if stop.is_set():
                    break  # draining: the scorer takes what waits
                self.cond.wait(0.1)
            self.items.append(("snippet", snip))
            self.waiting += 1
            self.cond.notify_all()

    def _drop_oldest(self) -> None:
        for i, (kind, value) in enumerate(self.items):
            if kind == "snippet" and not value.dropped:
                self.items[i] = ("snippet", Snippet(value.index, value.start_frame,
                                                    value.frames, value.arrived))
                self.waiting -= 1
                self.counters.dropped_snippets += 1
                self.counters.dropped_frames += value.frames
                return

    def take(self, budget: int) -> tuple[list[tuple[str, Any]], int]:
        """Items in order up to ``budget`` snippets to encode (call holding the condition)."""
        out: list[tuple[str, Any]] = []
        used = 0
        while self.items:
            kind, value = self.items[0]
            if kind == "snippet" and not value.dropped:
                if used >= budget:
                    break
                used += 1
                self.waiting -= 1
            out.append(self.items.popleft())
        if out:
            self.cond.notify_all()  # a reader waiting for room
        return out, used


@dataclass
class _Open:
    """The open snippet: its first frame and the decoded frames it may still sample."""

    start: int = 0
    count: int = 0
    held: dict[int, Any] = field(default_factory=dict)
    last_arrival: float = 0.0


class SourceReader(threading.Thread):
    """Decodes one source into its queue until it ends, fails for good or ``stop`` is set."""

    def __init__(self, spec: SourceSpec, label: str, stride: int, sample: str,
                 prepare: Callable[[np.ndarray], torch.Tensor], queue: SourceQueue,
                 stop: threading.Event, backoff_max: float) -> None:
        super().__init__(name=f"tpwng-serve-{spec.name}", daemon=True)
        self.spec, self.label, self.stride, self.sample = spec, label, stride, sample
        self.prepare, self.queue, self.stop = prepare, queue, stop
        self.backoff_max = backoff_max
        self.counters = queue.counters
        self.last_sampled = int(sample_indices(stride, stride, sample)[0])
        self.open = _Open()
        self.snippets = 0
        self.fps = 0.0

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        ended = "stopped"
        try:
            ended = self._read()
        except Exception as exc:  # noqa: BLE001 - the source fails, the service goes on
            ended = f"failed: {failure_reason(exc, self.spec.timeout)}"
            self.counters.status, self.counters.last_error = "failed", ended
            self._note(f"{self.label}: {ended}", {"event": "failed", "reason": ended})
        finally:
            if self.open.count:
                self._emit_open_snippet()
            if self.counters.status != "failed":
                self.counters.status = "ended"
            self.queue.put_event("end", ended)

    def _note(self, message: str, record: dict) -> None:
        self.queue.put_event("note", (message, record))

    def _read(self) -> str:
        plays, backoff, first = 0, FIRST_BACKOFF, True
        while not self.stop.is_set():
            container = self._connect(first, backoff)
            if container is None:
                return "stopped"
            stream = container.streams.video[0]
            if first:
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.fps = float(rate) if rate else 0.0
                if not self.fps > 0:
                    container.close()
                    raise RuntimeError("the video stream reports no frame rate")
                self.queue.put_event("open", self.fps)
                first = False
            self.counters.status = "live"
            got, failure = self._decode(container)
            container.close()
            if self.stop.is_set():
                return "stopped"
            if self.spec.kind == "file":
                plays += 1
                if failure is not None:
                    raise RuntimeError(f"{failure} after frame {self.counters.frames}")
                if self.spec.loop is not None and plays >= self.spec.loop:
                    return "end of stream"
                continue
            backoff = FIRST_BACKOFF if got else backoff
            why = failure or "the stream ended"
            self.counters.status = "reconnecting"
            self.counters.reconnects += 1
            self._note(f"{self.label}: {why} after {self.counters.frames} frames; reconnecting",
                       {"event": "reconnecting", "frame": self.counters.frames, "reason": why})
        return "stopped"

    def _connect(self, first: bool, backoff: float):
        """The source opened (files: at once; streams: retried with back-off for ever)."""
        import av

        while not self.stop.is_set():
            try:
                container = self._open()
                if not first and self.spec.kind != "file":  # a file's next play is no news
                    self._note(f"{self.label}: reconnected; scoring continues at frame "
                               f"{self.counters.frames}",
                               {"event": "reconnected", "frame": self.counters.frames})
                return container
            except (av.error.FFmpegError, OSError) as exc:
                why = failure_reason(exc, self.spec.timeout)
                if self.spec.kind == "file":
                    raise RuntimeError(f"cannot open: {why}") from None
            except _NotVideo as exc:
                why = str(exc)
                if self.spec.kind == "file":
                    raise RuntimeError(why) from None
            self.counters.last_error = f"cannot open: {why}"
            self._note(f"{self.label}: cannot open: {why}; trying again in {backoff:g} s",
                       {"event": "unreachable", "reason": why, "retry_in_s": backoff})
            if self.stop.wait(backoff):
                return None
            backoff = min(self.backoff_max, backoff * 2)
        return None

    def _open(self):
        import av

        kwargs: dict[str, Any] = {"timeout": (self.spec.timeout, self.spec.timeout)}
        if self.spec.kind == "device" and DEVICE.fullmatch(self.spec.location):
            kwargs["format"] = "v4l2"
        with ffmpeg_errors():
            container = av.open(ffmpeg_url(self.spec.location), **kwargs)
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise _NotVideo(f"not a video stream (its streams: {', '.join(kinds)})")
        return container

    def _decode(self, container) -> tuple[int, str | None]:
        """Frames of one connection or play: (frames decoded, failure or None)."""
        import av

        got, start = 0, time.monotonic()
        pace = self.spec.kind == "file" and self.spec.realtime
        try:
            for frame in container.decode(container.streams.video[0]):
                if self.stop.is_set():
                    break
                if pace:
                    time.sleep(max(0.0, start + got / self.fps - time.monotonic()))
                self._frame(frame, time.monotonic())
                got += 1
        except (av.error.FFmpegError, OSError) as exc:
            return got, failure_reason(exc, self.spec.timeout)
        return got, None

    # ------------------------------------------------------------------ snippets

    def _frame(self, frame, arrived: float) -> None:
        o = self.open
        if o.count <= self.last_sampled:
            o.held[o.count] = frame
        o.count += 1
        o.last_arrival = arrived
        self.counters.frames += 1
        if o.count == self.stride:
            self._emit_open_snippet()

    def _emit_open_snippet(self) -> None:
        """The open snippet (full, or the partial last one) to the queue, its sampled frame
        picked as extraction picks it."""
        o = self.open
        k = int(sample_indices(o.count, self.stride, self.sample)[0])
        rgb = o.held[k].to_ndarray(format="rgb24")
        snip = Snippet(self.snippets, o.start, o.count, o.last_arrival,
                       self.prepare(rgb), rgb)
        self.snippets += 1
        self.open = _Open(start=o.start + o.count)
        self.queue.put_snippet(snip, self.stop)


class _NotVideo(Exception):
    """The source opened but holds no video stream."""
