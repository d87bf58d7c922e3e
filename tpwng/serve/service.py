"""`tpwng serve`: many sources, one scorer.

One decoding thread per source (`tpwng.serve.sources`) hands ready snippets to one scoring
thread, which takes every snippet waiting, of all sources, and embeds them in one forward pass
of the CLIP image encoder; each source then pushes its snippets through its own TCSAL
key/value cache (`SnippetStream`), so a source's scores are those `tpwng score SOURCE --stream`
gives it (the batch changes nothing but the order of floating-point sums).

Per source, as `--stream` writes them: ``<out>/<name>_live.jsonl`` (start, snippet, alert and
end lines) and, when the service stops (all sources ended, SIGINT or SIGTERM: readers stop,
their partial last snippets are scored), ``<name>_scores.csv``, ``_scores.png`` and
``_intervals.json``; ``summary.json`` for all. A dropped snippet (`tpwng.serve.sources`) has
no score (``NaN`` in the CSV, ``"dropped": true`` in its line) and the source's TCSAL cache
starts afresh after it: the scores after a gap are those of a stream that began there.
Alerts (score crossing the source's ``alert_threshold``, with the most likely class) also go
to ``<out>/alerts.jsonl`` and to every receiver (`tpwng.serve.alerts`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpwng.features.store import pick_crop
from tpwng.features.video import VideoInfo
from tpwng.grid import expand_to_frames
from tpwng.scoring.alerts import AlertTracker, snippet_class, utc_now
from tpwng.scoring.live import JsonLines, scoring_threads
from tpwng.scoring.live_source import display_source
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
from tpwng.serve.alerts import AlertSender
from tpwng.serve.config import ServeConfig, SourceSpec
from tpwng.serve.sources import Snippet, SourceCounters, SourceQueue, SourceReader

LATENCY_WINDOW = 1024  # latest latencies per source behind the p50 / p95
EVENT_RING = 4096  # events kept for the live page's clients


class Hub:
    """Events for the live page: numbered, the latest `EVENT_RING` kept; clients wait for
    the next number."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: collections.deque[tuple[int, str]] = collections.deque(maxlen=EVENT_RING)
        self.seq = 0
        self.closed = False

    def publish(self, kind: str, data: dict) -> None:
        with self.cond:
            self.seq += 1
            text = f"id: {self.seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
            self.events.append((self.seq, text))
            self.cond.notify_all()

    def after(self, seq: int, timeout: float) -> tuple[int, list[str]]:
        """Events numbered above ``seq`` (waiting up to ``timeout`` s for one): the last
        number and their texts; a client that fell behind the ring gets a ``reset`` event."""
        with self.cond:
            if self.seq <= seq and not self.closed:
                self.cond.wait(timeout)
            new = [(n, t) for n, t in self.events if n > seq]
            if new and new[0][0] > seq + 1:
                return self.seq, ["event: reset\ndata: {}\n\n"]
            return self.seq, [t for _, t in new]

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@dataclass
class Latency:
    """The latest latencies (seconds from a snippet's last frame decoded to its score)."""

    recent: collections.deque
    count: int = 0
    total: float = 0.0

    def add(self, x: float) -> None:
        self.recent.append(x)
        self.count += 1
        self.total += x

    def quantile(self, q: float) -> float:
        return float(np.quantile(np.fromiter(self.recent, float), q)) if self.recent else math.nan


class SourceState:
    """The scoring side of one source: its TCSAL cache, scores, alerts and lines."""

    def __init__(self, spec: SourceSpec, service: Service) -> None:
        self.spec, self.service = spec, service
        self.label = display_source(spec.location)
        self.counters = SourceCounters()
        self.queue = SourceQueue(service.cond, service.config.max_pending, spec.paced,
                                 self.counters)
        self.log = JsonLines(service.out / f"{spec.name}_live.jsonl")
        self.stream = SnippetStream(service.scorer.model, service.scorer.path,
                                    service.scorer.device)
        self.fps = 0.0
        self.size = (0, 0)
        self.frames = 0  # frames covered by the snippets taken (scored or dropped)
        self.scores: list[float] = []  # NaN: dropped
        self.probs: list[np.ndarray] = []
        self.alerts = AlertTracker(spec.alert_threshold, {"source": spec.name},
                                   ("class", "class_probability"))
        self.ended: str | None = None
        self.scored = 0
        self.latency = Latency(collections.deque(maxlen=LATENCY_WINDOW))
        self.recent: collections.deque[dict] = collections.deque(maxlen=service.config.recent)
        self.last_rgb: np.ndarray | None = None
        self.reader: SourceReader | None = None

    def line(self, record: dict) -> None:
        self.log.write(self.service.config.redact(json.dumps(record)))

    # ------------------------------------------------------------------ items

    def handle(self, kind: str, value: Any, feats: np.ndarray | None) -> None:
        if kind == "snippet":
            if value.dropped:
                self.dropped(value)
            else:
                self.score(value, feats)
        elif kind == "open":
            self.fps = value
            self.line({"event": "start", "source": self.label, "name": self.spec.name,
                       "fps": value, "stride": self.service.stride,
                       "model": str(self.service.scorer.path),
                       "alert_threshold": self.spec.alert_threshold, "wall_time": utc_now()})
            self.service.tell(f"{self.spec.name} ({self.label}): live at {value:g} fps")
            self.service.hub.publish("status", {"source": self.spec.name, "status": "live",
                                                "fps": value})
        elif kind == "note":
            message, record = value
            self.service.tell(f"{self.spec.name}: {message}")
            self.line(record | {"wall_time": utc_now()})
            self.service.hub.publish("status", {"source": self.spec.name,
                                                "status": self.counters.status,
                                                "message": self.service.config.redact(message)})
        elif kind == "end":
            self.finish(value)

    def _record(self, snip: Snippet) -> dict:
        return {"event": "snippet", "source": self.spec.name, "snippet": snip.index,
                "time_s": snip.start_frame / self.fps, "start_frame": snip.start_frame,
                "frames": snip.frames}

    def dropped(self, snip: Snippet) -> None:
        """A snippet the scorer could not take in time: no score, and the temporal context
        starts afresh after it."""
        self.scores.append(math.nan)
        if self.service.scorer.text is not None:
            self.probs.append(np.full(len(self.service.scorer.classes), np.nan))
        self.frames = snip.start_frame + snip.frames
        self.stream = SnippetStream(self.service.scorer.model, self.service.scorer.path,
                                    self.service.scorer.device)
        self.line(self._record(snip) | {"dropped": True, "wall_time": utc_now()})

    def score(self, snip: Snippet, feats: np.ndarray) -> None:
        s = self.service.scorer
        value = float(self.stream.push(feats)[0])
        record = self._record(snip) | {"score": value}
        fields, probs = snippet_class(s, feats, value)
        record |= fields
        if probs is not None:
            self.probs.append(probs)
        latency = time.monotonic() - snip.arrived
        record |= {"latency_s": latency, "wall_time": utc_now()}
        self.scores.append(value)
        self.frames = snip.start_frame + snip.frames
        if not self.scored and snip.rgb is not None:
            self.size = (int(snip.rgb.shape[1]), int(snip.rgb.shape[0]))
        self.scored += 1
        self.latency.add(latency)
        self.last_rgb = snip.rgb
        self.line(record)
        page = {k: record[k] for k in ("source", "snippet", "time_s", "score", "latency_s")}
        page |= {k: record[k] for k in ("class", "class_probability") if k in record}
        self.recent.append(page)
        self.service.hub.publish("snippet", page)
        self.check_alert(record)

    # ------------------------------------------------------------------ alerts

    def check_alert(self, snip: dict) -> None:
        record = self.alerts.check(snip, self.scores, self.probs, self.service.scorer.classes)
        if record is not None:
            self.line(record)
            self.service.alert(record)

    def finish(self, how: str) -> None:
        how = self.service.stop_reason if how == "stopped" else how
        self.ended = how
        if self.alerts.open is not None:
            end = self.alerts.close(len(self.scores), self.frames / self.fps, self.scores,
                                    self.probs, self.service.scorer.classes, how)
            self.line(end)
            self.service.alert(end)
        self.line({"event": "end", "ended_by": how, "frames": self.frames,
                   "snippets": len(self.scores), "dropped": self.counters.dropped_snippets,
                   "wall_time": utc_now()})
        self.service.hub.publish("status", {"source": self.spec.name,
                                            "status": self.counters.status, "ended_by": how})

    # ------------------------------------------------------------------ outputs

    def write_outputs(self, options: ScoreOptions, out: Path) -> dict:
        """`tpwng score --stream`'s files for this source; its summary entry."""
        if not self.scores or not self.fps:
            return {"video": self.label, "name": self.spec.name,
                    "error": self.counters.last_error or "no frames arrived"}
        s = self.service.scorer
        info = VideoInfo(frames=self.frames, fps=self.fps, width=self.size[0],
                         height=self.size[1], decoder="pyav", route="live source")
        snippets = np.asarray(self.scores, dtype=np.float32)
        frames = expand_to_frames(snippets, self.frames, self.service.stride)
        probs = np.stack(self.probs) if self.probs else None
        intervals = detect_intervals(frames, self.fps, options.threshold, options.min_length,
                                     probs, s.classes, self.service.stride)
        result = VideoScores(Path(self.spec.name), info, snippets, frames, intervals, probs,
                             s.classes, source=self.label, stem=self.spec.name)
        failures: dict[Path, BaseException] = {}
        entry = write_video_outputs(result, s, options, out, failures)
        scored = frames[~np.isnan(frames)]
        entry |= {"name": self.spec.name,
                  "max_score": float(scored.max()) if scored.size else None,
                  "snippets": len(self.scores), "dropped_snippets": int(np.isnan(snippets).sum()),
                  "ended_by": self.ended}
        if failures:
            entry["not_written"] = {str(p): str(e) for p, e in failures.items()}
        if self.log.count:
            entry["outputs"]["live"] = str(self.log.path)
        return entry


class Service:
    """The sources, the scorer thread, the alert senders and the live page's events."""

    def __init__(self, config: ServeConfig, scorer: Scorer, out: Path,
                 notify: Callable[[str], None] = lambda m: None) -> None:
        check_streamable(scorer.model, scorer.path)
        self.config, self.scorer, self.out = config, scorer, Path(out)
        self.notify = notify
        ex = scorer.extraction
        self.stride, self.sample = ex.stride, ex.sample
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.hub = Hub()
        self.started = time.monotonic()
        self.batches = collections.Counter()  # encoder batch size -> forward passes
        self.encode_s = 0.0
        self.alerts_log = JsonLines(self.out / "alerts.jsonl")
        self.recent_alerts: collections.deque[dict] = collections.deque(maxlen=200)
        self.senders = [AlertSender(r, self.tell) for r in config.receivers]
        self.sources = [SourceState(spec, self) for spec in config.sources]
        self.thread = threading.Thread(target=self._run, name="tpwng-serve-scorer",
                                       daemon=True)
        self.failure: BaseException | None = None
        self.stop_reason = "stopped"
        self.summary: dict | None = None
        self.done = threading.Event()

    def tell(self, message: str) -> None:
        self.notify(self.config.redact(message))

    def alert(self, record: dict) -> None:
        """An alert event: to alerts.jsonl, the live page and every receiver."""
        text = self.config.redact(json.dumps(record))
        self.alerts_log.write(text)
        event = json.loads(text)
        self.recent_alerts.append(event)
        self.hub.publish("alert", event)
        for sender in self.senders:
            sender.put(event)

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for sender in self.senders:
            sender.start()
        encoder = self.scorer.encoder
        for state in self.sources:
            state.reader = SourceReader(
                state.spec, state.label, self.stride, self.sample,
                lambda rgb: encoder.prepare(torch.from_numpy(rgb[None])), state.queue,
                self.stop, self.config.backoff_max)
            state.reader.start()
        self.thread.start()

    def request_stop(self, reason: str = "stopped") -> None:
        """Stop reading; what was read is scored and written (`wait` returns then). The
        sources' lines say they ended by ``reason`` (e.g. SIGTERM)."""
        if not self.stop.is_set():
            self.stop_reason = reason
        self.stop.set()
        with self.cond:
            self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> dict | None:
        """The summary once every source has ended and the outputs are written."""
        self.done.wait(timeout)
        if self.failure is not None:
            raise self.failure
        return self.summary

    def _run(self) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(scoring_threads(self.config.threads))
        try:
            self._score_until_all_ended()
        except BaseException as exc:  # noqa: BLE001 - raised again by `wait`
            self.failure = exc
            self.stop.set()
        finally:
            torch.set_num_threads(before)
            try:
                self._close()
            except BaseException as exc:  # noqa: BLE001
                self.failure = self.failure or exc
            self.done.set()

    def _take(self) -> list[tuple[SourceState, list[tuple[str, Any]]]]:
        """Every source's waiting items (up to ``max_batch`` snippets in all, shared out in
        turn); waits until there are some."""
        with self.cond:
            while not any(s.queue.items for s in self.sources):
                if all(s.ended is not None for s in self.sources):
                    return []
                self.cond.wait(0.1)
            taken = []
            budget = self.config.max_batch
            share = max(1, budget // len(self.sources))
            for state in sorted(self.sources, key=lambda s: -s.queue.waiting):
                items, used = state.queue.take(min(share, budget) if budget else 0)
                budget -= used
                if items:
                    taken.append((state, items))
            return taken

    def _score_until_all_ended(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return
            snippets = [v for _, items in taken for k, v in items
                        if k == "snippet" and not v.dropped]
            feats = None
            if snippets:
                t0 = time.perf_counter()
                x = torch.cat([s.x for s in snippets])
                feats = pick_crop(self.scorer.encoder.encode(x).numpy(), self.scorer.crop)
                self.encode_s += time.perf_counter() - t0
                self.batches[len(snippets)] += 1
            row = 0
            for state, items in taken:
                for kind, value in items:
                    f = None
                    if kind == "snippet" and not value.dropped:
                        f, row = feats[row:row + 1], row + 1
                    state.handle(kind, value, f)

    def _close(self) -> None:
        self.stop.set()
        for state in self.sources:
            if state.reader is not None:
                state.reader.join(2.0)
            state.log.close()
        self.alerts_log.close()
        for sender in self.senders:
            sender.close(drain=5.0)
        options = ScoreOptions(threshold=self.config.threshold,
                               min_length=self.config.min_length, stream=True)
        entries = [state.write_outputs(options, self.out) for state in self.sources]
        self.summary = write_scores_summary(self.scorer.path, str(self.config.path), options,
                                            entries, self.out)
        self.hub.close()

    # ------------------------------------------------------------------ state

    def cpu_seconds(self) -> float:
        t = os.times()
        return t.user + t.system

    def state(self) -> dict:
        """Every source's status, counters, thresholds and recent scores; recent alerts;
        ``seq``: the number of the last event they include (follow on from it)."""
        seq = self.hub.seq
        return {"seq": seq, "uptime_s": time.monotonic() - self.started, "stride": self.stride,
                "sources": [self.source_state(s, recent=True) for s in self.sources],
                "alerts": list(self.recent_alerts)}

    def source_state(self, s: SourceState, recent: bool = False) -> dict:
        c = s.counters
        out = {"name": s.spec.name, "source": s.label, "kind": s.spec.kind,
               "status": c.status, "fps": s.fps, "frames_decoded": c.frames,
               "snippets_scored": s.scored, "snippets_dropped": c.dropped_snippets,
               "frames_dropped": c.dropped_frames, "reconnects": c.reconnects,
               "latency_p50_s": _finite(s.latency.quantile(0.5)),
               "latency_p95_s": _finite(s.latency.quantile(0.95)),
               "alert_threshold": s.spec.alert_threshold, "alert_open": s.alerts.open is not None,
               "last_error": self.config.redact(c.last_error)}
        if recent:
            out["recent"] = list(s.recent)
        return out


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x
