"""Live scoring: a network stream or capture device scored snippet by snippet as it arrives.

A reader thread opens the source with PyAV and decodes its frames in order. Every open and
every read carries a deadline (``timeout``): a server that accepts and never sends would
otherwise block for ever. The scoring thread groups the frames into snippets of ``stride``
frames, embeds each snippet's sampled frame (the one extraction samples, `sample_indices`) once
its last frame has arrived, and scores it with `SnippetStream` (the causal TCSAL's key/value
cache): the scores equal those of the whole video. Only the frames a snippet may still sample
are kept, so memory does not grow with the stream's length (per snippet, its score and class
probabilities are kept for the outputs). Decoding runs beside the encoder, so torch gets the
usable CPUs less one meanwhile: two threads on two cores, one of them shared with the decoder,
wait on each other (measured: 10 ms -> 600 ms a snippet with the tiny CLIP).

Each snippet is one JSON line on stdout and in ``<out>/<stem>_live.jsonl``. At the end of the
stream, on SIGINT/SIGTERM or on a failure, the partial last snippet is scored as extraction
scores a video's last snippet, and what was scored is written as offline scoring writes it.
A source that drops can be reopened (``reconnect``); frames are numbered on across reconnects,
so the snippet open at the drop is completed by the first frames after it.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np
import torch

from tpwng.data.grid import expand_to_frames, sample_indices
from tpwng.evaluate.inference import pick_crop, snippet_class_probs
from tpwng.evaluate.score_video import (
    ScoreOptions,
    Scorer,
    SnippetStream,
    VideoScores,
    check_streamable,
    detect_intervals,
    write_scores_summary,
    write_video_outputs,
)
from tpwng.features.video import VideoError, VideoInfo

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
    """A stream URL (http(s), rtsp, rtmp, udp) or a V4L2 device (/dev/videoN)."""
    return (urlsplit(source).scheme.lower() in LIVE_SCHEMES
            or DEVICE.fullmatch(source) is not None)


def display_source(source: str) -> str:
    """The source as messages and outputs name it: a URL's password is left out."""
    parts = urlsplit(source)
    if parts.password is None:
        return source
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def source_stem(source: str) -> str:
    """A safe output stem: a device's name, or a URL's host, port and path (no extension,
    no credentials, no query)."""
    if DEVICE.fullmatch(source):
        return Path(source).name
    parts = urlsplit(source)
    try:
        port = parts.port
    except ValueError:
        raise LiveError(f"{display_source(source)}: the URL's port is not a number") from None
    names = [parts.hostname or "stream", *([str(port)] if port else [])]
    segments = [s for s in parts.path.split("/") if s]
    if segments:
        segments[-1] = Path(segments[-1]).stem or segments[-1]
    stem = re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(names + segments)).strip("._")
    return stem[:100] or "stream"


def _reason(exc: BaseException, timeout: float) -> str:
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
def _ffmpeg_errors() -> Iterator[None]:
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
class _Frame:
    arrived: float  # time.monotonic() when it was decoded
    rgb: np.ndarray | None  # uint8 [H, W, 3]; only for frames a snippet may sample


class _Reader(threading.Thread):
    """Opens the source, decodes its frames in order into a bounded queue and reopens it after
    a drop; items: ("open", fps), ("frame", _Frame), ("note", (message, record)),
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
            self._put(("error", LiveError(f"{self.label}: reading failed after frame "
                                          f"{self.frames} ({_reason(exc, self.options.timeout)})")))

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
        with _ffmpeg_errors():
            container = av.open(self.source, **kwargs)
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
                            f"{_reason(exc, self.options.timeout)}") from None
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
                last = _reason(exc, self.options.timeout)
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
                self._put(("frame", _Frame(arrived, frame.to_ndarray(format="rgb24")
                                                    if keep else None)))
                self.frames += 1
                got += 1
        except (av.error.FFmpegError, OSError) as exc:
            return got, _reason(exc, self.options.timeout)
        return got, None


# --------------------------------------------------------------------------- scoring


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def scoring_threads(threads: int | None = None) -> int:
    """torch's CPU threads while a stream is decoded beside it: ``threads``, or all usable
    CPUs less one for decoding (on a shared core torch's threads wait on one another)."""
    if threads is not None:
        return max(1, threads)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, usable - 1)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _caught_signals() -> Iterator[list[str]]:
    """SIGINT and SIGTERM recorded (by name) in the yielded list instead of acted on."""
    caught: list[str] = []

    def handler(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield caught  # handlers can only be set in the main thread
        return
    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in before.items():
            signal.signal(s, h)


class _Session:
    """The scoring side: snippets from frames, their scores, alerts and the output lines."""

    def __init__(self, scorer: Scorer, live: LiveOptions, jsonl: Path,
                 emit: Callable[[str], None]) -> None:
        ex = scorer.extraction
        self.scorer, self.live, self.jsonl, self.emit = scorer, live, jsonl, emit
        self.log: IO[str] | None = None  # the lines file, opened with the first line
        self.stride, self.sample = ex.stride, ex.sample
        self.stream = SnippetStream(scorer.model, scorer.path, scorer.device)
        self.fps = 0.0
        self.frames = 0  # frames received
        self.size = (0, 0)  # width, height of the first frame
        self.pending: dict[int, np.ndarray] = {}  # the open snippet's frames it may sample
        self.count = 0  # frames of the open snippet
        self.last_arrival = 0.0
        self.scores: list[float] = []
        self.probs: list[np.ndarray] = []
        self.alert: dict | None = None  # the open alert interval

    def line(self, record: dict) -> None:
        text = json.dumps(record)
        self.emit(text)
        if self.log is None:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(self.jsonl, "a")  # closed by `close`
        self.log.write(text + "\n")
        self.log.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def frame(self, f: _Frame) -> None:
        if f.rgb is not None:
            self.pending[self.count] = f.rgb
            if not self.frames:
                self.size = (int(f.rgb.shape[1]), int(f.rgb.shape[0]))
        self.frames += 1
        self.count += 1
        self.last_arrival = f.arrived
        if self.count == self.stride:
            self.score_open_snippet()

    def score_open_snippet(self) -> None:
        """Score the snippet of the frames since the last one (at most ``stride``)."""
        if not self.count:
            return
        rgb = self.pending[int(sample_indices(self.count, self.stride, self.sample)[0])]
        s = self.scorer
        feats = pick_crop(s.encoder.encode(s.encoder.prepare(torch.from_numpy(rgb[None])))
                          .numpy(), s.crop)
        score = float(self.stream.push(feats)[0])
        record = {"event": "snippet", "snippet": len(self.scores),
                  "time_s": (self.frames - self.count) / self.fps,
                  "start_frame": self.frames - self.count, "frames": self.count,
                  "score": score}
        if s.text is not None:
            probs = snippet_class_probs(feats, np.array([score]), s.text, s.logit_scale)[0]
            best = 1 + int(np.argmax(probs[1:]))
            record |= {"class": s.classes[best], "class_probability": float(probs[best])}
            self.probs.append(probs)
        record |= {"latency_s": time.monotonic() - self.last_arrival, "wall_time": _now()}
        self.scores.append(score)
        self.pending.clear()
        self.count = 0
        self.line(record)
        self.check_alert(record)

    def check_alert(self, snip: dict) -> None:
        x = self.live.alert_threshold
        if x is None:
            return
        if self.alert is None and snip["score"] >= x:
            self.alert = {"event": "alert_start", "snippet": snip["snippet"],
                          "time_s": snip["time_s"], "score": snip["score"], "threshold": x,
                          "wall_time": snip["wall_time"]}
            self.line(self.alert)
        elif self.alert is not None and snip["score"] < x:
            self.close_alert(snip["snippet"], snip["time_s"])

    def close_alert(self, end_snippet: int, end_s: float, ended_by: str = "score") -> None:
        """The open alert's end: ``end_snippet`` is the first snippet after it."""
        start = self.alert
        if start is None:
            return
        run = slice(start["snippet"], end_snippet)
        record = {"event": "alert_end", "snippet": end_snippet, "time_s": end_s,
                  "start_snippet": start["snippet"], "start_time_s": start["time_s"],
                  "duration_s": end_s - start["time_s"],
                  "max_score": max(self.scores[run]), "threshold": start["threshold"],
                  "ended_by": ended_by}
        if self.probs:
            within = np.mean(self.probs[run], axis=0)[1:]
            best = int(np.argmax(within))
            record |= {"class": self.scorer.classes[best + 1],
                       "class_probability": float(within[best])}
        self.line(record | {"wall_time": _now()})
        self.alert = None

    def finish(self, ended_by: str) -> None:
        """Score the partial last snippet, close an open alert, say how it ended."""
        self.score_open_snippet()
        if self.alert is not None:
            self.close_alert(len(self.scores), self.frames / self.fps, ended_by)
        self.line({"event": "end", "ended_by": ended_by, "frames": self.frames,
                   "snippets": len(self.scores), "wall_time": _now()})

    def result(self, source: str, stem: str, options: ScoreOptions) -> VideoScores:
        info = VideoInfo(frames=self.frames, fps=self.fps, width=self.size[0],
                         height=self.size[1], decoder="pyav", route="live source")
        snippets = np.asarray(self.scores, dtype=np.float32)
        frames = expand_to_frames(snippets, self.frames, self.stride)
        probs = np.stack(self.probs) if self.probs else None
        intervals = detect_intervals(frames, self.fps, options.threshold, options.min_length,
                                     probs, self.scorer.classes, self.stride)
        return VideoScores(Path(stem), info, snippets, frames, intervals, probs,
                           self.scorer.classes, source=source, stem=stem)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stdout(line: str) -> None:
    print(line, flush=True)


def score_live(scorer: Scorer, source: str, out_dir: Path, options: ScoreOptions,
               live: LiveOptions, emit: Callable[[str], None] = _stdout,
               notify: Callable[[str], None] = _stderr) -> dict:
    """Score a live source until it ends, fails or SIGINT/SIGTERM arrives; write the outputs.

    ``emit`` gets each JSON line (also appended to ``<out>/<stem>_live.jsonl``), ``notify``
    each message for the user. Returns the summary (also ``summary.json``); raises `LiveError`
    for a failure and `Interrupted` for a signal, after writing what was scored.
    """
    check_streamable(scorer.model, scorer.path)
    name, stem = display_source(source), source_stem(source)
    ex = scorer.extraction
    last_sampled = int(sample_indices(ex.stride, ex.stride, ex.sample)[0])
    reader = _Reader(source, live, lambda i: i % ex.stride <= last_sampled, ex.stride)
    jsonl = Path(out_dir) / f"{stem}_live.jsonl"
    session = _Session(scorer, live, jsonl, emit)
    with _caught_signals() as caught, _torch_threads(scoring_threads(live.threads)):
        reader.start()
        try:
            ended, failure = _follow(reader, session, caught, name, notify)
            if session.fps:
                session.finish(ended or str(failure))
        finally:
            reader.stop.set()
            session.close()
        summary = _write_outputs(session, scorer, name, stem, Path(out_dir), options, jsonl)
    reader.join(timeout=1.0)
    scored = f"{len(session.scores)} snippets ({session.frames} frames)"
    if summary is None:
        if failure is not None:
            raise failure
        if ended != "end of stream":
            raise Interrupted(f"{name}: interrupted by {ended} before any frame arrived; "
                              "nothing to write")
        raise LiveError(f"{name}: the stream ended before its first frame")
    if failure is not None:
        raise LiveError(f"{failure}; the {scored} scored so far are written to {out_dir}/")
    if ended != "end of stream":
        raise Interrupted(f"{name}: interrupted by {ended} after {scored}; the partial results "
                          f"are written to {out_dir}/")
    notify(f"{name}: the stream ended after {session.frames / session.fps:.1f} s; {scored} "
           "scored")
    return summary


def _follow(reader: _Reader, session: _Session, caught: list[str], name: str,
            notify: Callable[[str], None]) -> tuple[str | None, LiveError | None]:
    """Score the reader's frames until the stream ends (``"end of stream"``), a signal is
    caught (its name) or the reader fails (the error)."""
    stride = session.stride
    while not caught:
        try:
            kind, value = reader.items.get(timeout=0.1)
        except queue.Empty:
            continue
        if kind == "frame":
            session.frame(value)
        elif kind == "open":
            session.fps = value
            session.line({"event": "start", "source": name, "fps": value, "stride": stride,
                          "model": str(session.scorer.path),
                          "alert_threshold": session.live.alert_threshold,
                          "wall_time": _now()})
            notify(f"{name}: live at {value:g} fps, a snippet every {stride / value:.2f} s; "
                   f"lines also in {session.jsonl}")
        elif kind == "note":
            notify(value[0])
            session.line(value[1] | {"wall_time": _now()})
        elif kind == "end":
            return "end of stream", None
        else:
            return None, value
    return caught[0], None


def _write_outputs(session: _Session, scorer: Scorer, name: str, stem: str, out_dir: Path,
                   options: ScoreOptions, jsonl: Path) -> dict | None:
    """What offline scoring writes, for the frames received (None if there were none)."""
    if not session.frames:
        return None
    entry = write_video_outputs(session.result(name, stem, options), scorer, options, out_dir)
    entry["outputs"]["live"] = str(jsonl)
    return write_scores_summary(scorer.path, name, options, [entry], out_dir)
