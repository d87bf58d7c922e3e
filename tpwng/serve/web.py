"""What `tpwng serve` answers over HTTP (127.0.0.1 by default), from a bounded thread pool:

- ``/``: the live page (every source's recent score timeline, updated as scores arrive;
  alerts listed; a click on a source opens its recent window: a larger timeline, its latest
  sampled frame and its counters);
- ``/events``: server-sent events (``snippet``, ``alert``, ``status``) for the page;
- ``/api/state``: every source's status, counters and recent scores, and recent alerts (JSON);
- ``/frame/<name>.jpg``: a source's latest scored frame;
- ``/metrics``: Prometheus text format; ``/health``: JSON, 200 while the scorer runs.

At most `MAX_EVENT_CLIENTS` pages follow the events at once (each holds a worker); more are
answered 503. Names and URLs shown are the redacted ones (`tpwng.redact`).
"""

from __future__ import annotations

import io
import json
import math
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from tpwng import RESOURCES
from tpwng.scoring.viewer_server import BoundedHTTPServer
from tpwng.serve.service import LATENCY_WINDOW, Service

PAGE = RESOURCES / "serve" / "live.html"
MAX_EVENT_CLIENTS = 8
WORKERS = MAX_EVENT_CLIENTS + 8
KEEPALIVE_S = 10.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    return repr(float(x)) if isinstance(x, float) else str(x)


def render_metrics(service: Service) -> str:
    """The service's counters in Prometheus text format (version 0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[dict, float | None]],
               suffix: str = "") -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{suffix}{{{text}}} {_number(value)}" if text else
                         f"{name}{suffix} {_number(value)}")

    states = service.sources

    def per_source(get) -> list[tuple[dict, float | None]]:
        return [({"source": s.spec.name}, get(s)) for s in states]

    family("tpwng_source_up", "gauge", "1 while the source delivers frames",
           per_source(lambda s: int(s.counters.status == "live")))
    family("tpwng_source_frames_decoded_total", "counter", "frames decoded",
           per_source(lambda s: s.counters.frames))
    family("tpwng_source_snippets_scored_total", "counter", "snippets scored",
           per_source(lambda s: s.scored))
    family("tpwng_source_snippets_dropped_total", "counter",
           "snippets skipped because the scorer could not keep up",
           per_source(lambda s: s.counters.dropped_snippets))
    family("tpwng_source_frames_dropped_total", "counter", "frames of the skipped snippets",
           per_source(lambda s: s.counters.dropped_frames))
    family("tpwng_source_reconnects_total", "counter", "times the source was reopened",
           per_source(lambda s: s.counters.reconnects))
    family("tpwng_source_alert_open", "gauge", "1 while the source's score is above its "
           "alert threshold", per_source(lambda s: int(s.alerts.open is not None)))
    lines.append("# HELP tpwng_source_latency_seconds seconds from a snippet's last frame "
                 f"decoded to its score (quantiles of the latest {LATENCY_WINDOW})")
    lines.append("# TYPE tpwng_source_latency_seconds summary")
    for s in states:
        name = _label(s.spec.name)
        for q in (0.5, 0.95):
            lines.append(f'tpwng_source_latency_seconds{{source="{name}",quantile="{q}"}} '
                         f"{_number(s.latency.quantile(q))}")
        lines.append(f'tpwng_source_latency_seconds_sum{{source="{name}"}} '
                     f"{_number(s.latency.total)}")
        lines.append(f'tpwng_source_latency_seconds_count{{source="{name}"}} {s.latency.count}')
    # the encoder's batches as a histogram of snippets per forward pass
    bounds = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    batches = dict(service.batches)
    lines.append("# HELP tpwng_encoder_batch_size snippets per encoder forward pass")
    lines.append("# TYPE tpwng_encoder_batch_size histogram")
    for b in bounds:
        n = sum(c for size, c in batches.items() if size <= b)
        lines.append(f'tpwng_encoder_batch_size_bucket{{le="{b}"}} {n}')
    lines.append(f'tpwng_encoder_batch_size_bucket{{le="+Inf"}} {sum(batches.values())}')
    lines.append(f"tpwng_encoder_batch_size_sum {sum(k * c for k, c in batches.items())}")
    lines.append(f"tpwng_encoder_batch_size_count {sum(batches.values())}")
    family("tpwng_encoder_seconds_total", "counter", "seconds spent in encoder forward passes",
           [({}, service.encode_s)])
    family("tpwng_process_cpu_seconds_total", "counter", "user and system CPU seconds of the "
           "process", [({}, service.cpu_seconds())])
    family("tpwng_uptime_seconds", "gauge", "seconds since the service started",
           [({}, _uptime(service))])

    def per_receiver(get) -> list[tuple[dict, float | None]]:
        return [({"receiver": r.spec.name}, get(r)) for r in service.senders]

    if service.senders:
        family("tpwng_receiver_sent_total", "counter", "alert events delivered",
               per_receiver(lambda r: r.counters.sent))
        family("tpwng_receiver_retries_total", "counter", "alert POSTs tried again",
               per_receiver(lambda r: r.counters.retries))
        family("tpwng_receiver_failed_total", "counter", "alert events given up after every "
               "retry", per_receiver(lambda r: r.counters.failed))
        family("tpwng_receiver_dropped_total", "counter", "alert events dropped: the "
               "receiver's queue was full", per_receiver(lambda r: r.counters.dropped))
        family("tpwng_receiver_queue", "gauge", "alert events waiting",
               per_receiver(lambda r: r.waiting))
    return "\n".join(lines) + "\n"


def _uptime(service: Service) -> float:
    import time

    return time.monotonic() - service.started


class _Handler(BaseHTTPRequestHandler):
    service: Service
    event_slots: threading.BoundedSemaphore
    timeout = 30.0

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's signature
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_HEAD(self) -> None:  # noqa: N802 - the name http.server calls
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        s = self.service
        if path == "/":
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/health":
            alive = s.thread.is_alive()
            self._json({"status": "ok" if alive else "stopped",
                        "sources": {x.spec.name: x.counters.status for x in s.sources}},
                       200 if alive else 503)
        elif path == "/metrics":
            self._send(200, render_metrics(s).encode(), "text/plain; version=0.0.4")
        elif path == "/api/state":
            self._json(s.state())
        elif path == "/events":
            self._events(self.path.partition("?")[2])
        elif path.startswith("/frame/") and path.endswith(".jpg"):
            self._frame(path[len("/frame/"):-len(".jpg")])
        else:
            self._json({"error": "not found"}, 404)

    def _frame(self, name: str) -> None:
        from PIL import Image

        state = next((x for x in self.service.sources if x.spec.name == name), None)
        rgb = None if state is None else state.last_rgb
        if rgb is None:
            self._json({"error": "no frame yet"}, 404)
            return
        image = Image.fromarray(rgb)
        image.thumbnail((640, 640))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=80)
        self._send(200, buf.getvalue(), "image/jpeg")

    def _events(self, query: str) -> None:
        """Events numbered after ``?after=N`` or the Last-Event-ID header (a page's
        reconnect), else from now."""
        if not self.event_slots.acquire(blocking=False):
            self._json({"error": f"at most {MAX_EVENT_CLIENTS} pages follow the events"}, 503)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            hub = self.service.hub
            asked = parse_qs(query).get("after", [self.headers.get("Last-Event-ID", "")])[0]
            seq = int(asked) if asked.isascii() and asked.isdigit() else hub.seq
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            while not hub.closed:
                seq, texts = hub.after(seq, KEEPALIVE_S)
                self.wfile.write(("".join(texts) or ": keep-alive\n\n").encode())
                self.wfile.flush()
        except OSError:  # the page went away
            pass
        finally:
            self.close_connection = True
            self.event_slots.release()


def service_server(service: Service, port: int | None = None, bind: str | None = None
                ) -> BoundedHTTPServer:
    """The service's HTTP server (not yet serving); OSError where it cannot listen."""
    handler = type("Handler", (_Handler,), {
        "service": service, "event_slots": threading.BoundedSemaphore(MAX_EVENT_CLIENTS)})
    return BoundedHTTPServer((service.config.bind if bind is None else bind,
                              service.config.port if port is None else port),
                             partial(handler), workers=WORKERS)
