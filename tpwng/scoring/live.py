"""Live scoring: a network stream or capture device scored snippet by snippet as it arrives.

A reader thread (`tpwng.scoring.live_source`) opens the source with PyAV and decodes its
frames in order. Every open and every read carries a deadline (``timeout``): a server that
accepts and never sends would otherwise block for ever. The scoring thread groups the frames
into snippets of ``stride`` frames, embeds each snippet's sampled frame (the one extraction
samples, `sample_indices`) once its last frame has arrived, and scores it with `SnippetStream`
(the causal TCSAL's key/value cache): the scores equal those of the whole video. Only the
frames a snippet may still sample are kept, so memory does not grow with the stream's length
(per snippet, its score and class probabilities are kept for the outputs). Decoding runs beside
the encoder, so torch gets the usable CPUs less one meanwhile: two threads on two cores, one of
them shared with the decoder, wait on each other (measured: 10 ms -> 600 ms a snippet with the
tiny CLIP).

Each snippet is one JSON line on stdout and in ``<out>/<stem>_live.jsonl``. At the end of the
stream, on SIGINT/SIGTERM or on a failure, the partial last snippet is scored as extraction
scores a video's last snippet, and what was scored is written as offline scoring writes it.
A source that drops can be reopened (``reconnect``); frames are numbered on across reconnects,
so the snippet open at the drop is completed by the first frames after it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import torch

from tpwng.features.store import pick_crop
from tpwng.features.video import VideoInfo
from tpwng.files import WriteError, is_write_error
from tpwng.grid import expand_to_frames, sample_indices
from tpwng.redact import redact_text
from tpwng.scoring.alerts import AlertTracker, snippet_class, utc_now
from tpwng.scoring.live_source import (
    Frame,
    Interrupted,
    LiveError,
    LiveOptions,
    LiveReader,
    display_source,
    source_stem,
)
from tpwng.scoring.score_video import (
    ScoreOptions,
    SnippetStream,
    VideoScores,
    check_streamable,
    detect_intervals,
    write_scores_summary,
    write_video_outputs,
)
from tpwng.scoring.scorer import Scorer

# --------------------------------------------------------------------------- scoring


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


class JsonLines:
    """The JSON-lines file: whole lines only. A line is written in full or not at all: a write
    that fails (a full disk, a size limit, any OSError) is cut back to the last whole line, and
    the file takes no more lines; `failed` keeps the error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.count = 0  # lines written by this run
        self.failed: OSError | None = None

    def write(self, text: str) -> None:
        if self.failed is not None:
            return
        data = memoryview((text + "\n").encode("utf-8"))
        start = None
        try:
            if self.fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                _cut_to_whole_lines(self.path, self.fd)
            start = os.lseek(self.fd, 0, os.SEEK_END)
            while data:
                data = data[os.write(self.fd, data):]
            self.count += 1
        except OSError as exc:
            self.failed = exc
            if start is not None:
                with suppress(OSError):
                    os.ftruncate(self.fd, start)

    def close(self) -> None:
        if self.fd is not None:
            with suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _cut_to_whole_lines(path: Path, fd: int) -> None:
    """Drop a partial last line (of an earlier run killed mid-write) before appending."""
    size = os.fstat(fd).st_size
    if not size:
        return
    with open(path, "rb") as f:
        end = size
        while end > 0:
            begin = max(0, end - (1 << 16))
            f.seek(begin)
            chunk = f.read(end - begin)
            if end == size and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                os.ftruncate(fd, begin + newline + 1)
                return
            end = begin
    os.ftruncate(fd, 0)


class _Session:
    """The scoring side: snippets from frames, their scores, alerts and the output lines."""

    def __init__(self, scorer: Scorer, live: LiveOptions, jsonl: Path,
                 emit: Callable[[str], None], redact: Callable[[str], str]) -> None:
        ex = scorer.extraction
        self.scorer, self.live, self.jsonl, self.emit = scorer, live, jsonl, emit
        self.redact = redact
        self.log = JsonLines(jsonl)  # opened with the first line
        self.emitted = 0  # lines ``emit`` took
        self.emit_failed: OSError | None = None  # standard output full or closed
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
        self.alerts = AlertTracker(live.alert_threshold)

    def line(self, record: dict) -> None:
        text = self.redact(json.dumps(record))
        if self.emit_failed is None:
            try:
                self.emit(text)
                self.emitted += 1
            except OSError as exc:  # stdout to a full disk, or to a reader that went away
                self.emit_failed = exc
        self.log.write(text)

    @property
    def write_failed(self) -> bool:
        return self.log.failed is not None or self.emit_failed is not None

    def close(self) -> None:
        self.log.close()

    def frame(self, f: Frame) -> None:
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
        fields, probs = snippet_class(s, feats, score)
        record |= fields
        if probs is not None:
            self.probs.append(probs)
        record |= {"latency_s": time.monotonic() - self.last_arrival, "wall_time": utc_now()}
        self.scores.append(score)
        self.pending.clear()
        self.count = 0
        self.line(record)
        self.check_alert(record)

    def check_alert(self, snip: dict) -> None:
        record = self.alerts.check(snip, self.scores, self.probs, self.scorer.classes)
        if record is not None:
            self.line(record)

    def finish(self, ended_by: str) -> None:
        """Score the partial last snippet, close an open alert, say how it ended."""
        self.score_open_snippet()
        if self.alerts.open is not None:
            end = self.alerts.close(len(self.scores), self.frames / self.fps, self.scores,
                                    self.probs, self.scorer.classes, ended_by)
            self.line(end)
        self.line({"event": "end", "ended_by": ended_by, "frames": self.frames,
                   "snippets": len(self.scores), "wall_time": utc_now()})

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
    each message for the user; both, and every output, name the source redacted
    (`tpwng.redact`). Returns the summary (also ``summary.json``); raises `LiveError` for a
    failure and `Interrupted` for a signal, after writing what was scored. An output that
    cannot be written (a full disk, any OSError) stops scoring; every other output is still
    attempted and one `LiveError` lists what was and was not written.
    """
    check_streamable(scorer.model, scorer.path)
    name, stem = display_source(source), source_stem(source)

    def redact(text: str) -> str:
        return redact_text(text, source)

    def tell(message: str) -> None:
        notify(redact(message))

    ex = scorer.extraction
    last_sampled = int(sample_indices(ex.stride, ex.stride, ex.sample)[0])
    reader = LiveReader(source, live, lambda i: i % ex.stride <= last_sampled, ex.stride)
    jsonl = Path(out_dir) / f"{stem}_live.jsonl"
    session = _Session(scorer, live, jsonl, emit, redact)
    with _caught_signals() as caught, _torch_threads(scoring_threads(live.threads)):
        reader.start()
        try:
            ended, failure = _follow(reader, session, caught, name, tell)
            if session.fps:
                session.finish(ended or str(failure))
        finally:
            reader.stop.set()
            session.close()
        summary, written, unwritten = _write_outputs(session, scorer, name, stem,
                                                     Path(out_dir), options, jsonl)
    reader.join(timeout=1.0)
    problem = _outcome(session, summary, ended, failure, written, unwritten, name, out_dir)
    if problem is not None:
        raise type(problem)(redact(str(problem))) from None
    tell(f"{name}: the stream ended after {session.frames / session.fps:.1f} s; "
         f"{len(session.scores)} snippets ({session.frames} frames) scored")
    return summary


def _outcome(session: _Session, summary: dict | None, ended: str | None,
             failure: LiveError | None, written: list[Path], unwritten: dict[Path, str],
             name: str, out_dir: Path) -> LiveError | Interrupted | None:
    """The one error live scoring ends with (None: the stream ended and all is written)."""
    scored = f"{len(session.scores)} snippets ({session.frames} frames)"
    lines = session.log
    if session.write_failed or unwritten:
        head = (str(failure) if failure is not None else
                f"{name}: the stream ended" if ended == "end of stream" else
                f"{name}: interrupted by {ended}")
        parts = []
        if lines.failed is not None:
            parts.append(f"{lines.path} took {lines.count} line(s) of this run, each whole, "
                         f"and no more ({_why(lines.failed)})")
        if session.emit_failed is not None:
            parts.append(f"standard output took only the first {session.emitted} line(s) "
                         f"({_why(session.emit_failed)})")
        if unwritten:
            parts.append("not written: " + ", ".join(f"{p} ({why})"
                                                     for p, why in unwritten.items()))
        parts.append("written: " + (", ".join(str(p) for p in written) or "nothing else"))
        return LiveError(f"{head}; of the {scored} scored, " + "; ".join(parts))
    if summary is None:
        if failure is not None:
            return failure
        if ended != "end of stream":
            return Interrupted(f"{name}: interrupted by {ended} before any frame arrived; "
                               "nothing to write")
        return LiveError(f"{name}: the stream ended before its first frame")
    if failure is not None:
        return LiveError(f"{failure}; the {scored} scored so far are written to {out_dir}/")
    if ended != "end of stream":
        return Interrupted(f"{name}: interrupted by {ended} after {scored}; the partial results "
                           f"are written to {out_dir}/")
    return None


def _why(exc: BaseException) -> str:
    """Why a write failed, in words (a full disk said as such)."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if not isinstance(cause, OSError):
        return str(exc)
    why = cause.strerror or str(cause)
    if is_write_error(cause):
        why += ": the disk is full or a file size limit or quota was reached"
    return why


def _follow(reader: LiveReader, session: _Session, caught: list[str], name: str,
            notify: Callable[[str], None]) -> tuple[str | None, LiveError | None]:
    """Score the reader's frames until the stream ends (``"end of stream"``), a signal is
    caught (its name), the reader fails (the error) or the lines cannot be written."""
    stride = session.stride
    while not caught:
        if session.write_failed:
            return None, LiveError(f"{name}: scoring stopped: its lines could not be written")
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
                          "wall_time": utc_now()})
            notify(f"{name}: live at {value:g} fps, a snippet every {stride / value:.2f} s; "
                   f"lines also in {session.jsonl}")
        elif kind == "note":
            notify(value[0])
            session.line(value[1] | {"wall_time": utc_now()})
        elif kind == "end":
            return "end of stream", None
        else:
            return None, value
    return caught[0], None


def _write_outputs(session: _Session, scorer: Scorer, name: str, stem: str, out_dir: Path,
                   options: ScoreOptions, jsonl: Path
                   ) -> tuple[dict | None, list[Path], dict[Path, str]]:
    """What offline scoring writes, for the frames received, each output attempted whatever
    became of the others: (the summary, None if there were no frames or it could not be
    written; the files written; the files not written, with why)."""
    if not session.frames:
        return None, [], {}
    failures: dict[Path, BaseException] = {}
    entry = write_video_outputs(session.result(name, stem, options), scorer, options, out_dir,
                                failures)
    if session.log.count:
        entry["outputs"]["live"] = str(jsonl)
    summary = None
    try:
        summary = write_scores_summary(scorer.path, name, options, [entry], out_dir)
    except (WriteError, OSError) as exc:
        failures[out_dir / "summary.json"] = exc
    written = [Path(p) for k, p in entry["outputs"].items() if k != "live"]
    written += [out_dir / "summary.json"] if summary is not None else []
    return summary, written, {p: _why(exc) for p, exc in failures.items()}
