"""Alert events POSTed as JSON to HTTP receivers, never in the scorer's way.

Each receiver has its own bounded queue and sender thread: `AlertSender.put` never blocks (an
event that finds the queue full is dropped and counted), and a slow receiver delays only its
own events. A POST that fails (refused, timed out, a status other than 2xx) is tried again
after ``backoff`` s, doubled each time, up to ``retries`` more times; then it is given up
(counted, and told once per failure in the service's messages, the URL redacted).
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from tpwng.redact import redact_url
from tpwng.serve.config import ReceiverSpec


@dataclass
class ReceiverCounters:
    sent: int = 0  # events a receiver answered with 2xx
    retries: int = 0  # POSTs tried again
    failed: int = 0  # events given up after every retry
    dropped: int = 0  # events that found the queue full
    last_error: str = ""


class AlertSender(threading.Thread):
    """POSTs one receiver's events from a bounded queue (see the module)."""

    def __init__(self, spec: ReceiverSpec, notify: Callable[[str], None]) -> None:
        super().__init__(name=f"tpwng-alerts-{spec.name}", daemon=True)
        self.spec, self.notify = spec, notify
        self.label = redact_url(spec.url)
        self.events: queue.Queue[dict | None] = queue.Queue(spec.queue)
        self.counters = ReceiverCounters()
        self.stop = threading.Event()

    def put(self, event: dict) -> None:
        """Queue an event for this receiver; drop it (counted) if the queue is full."""
        try:
            self.events.put_nowait(event)
        except queue.Full:
            self.counters.dropped += 1

    @property
    def waiting(self) -> int:
        return self.events.qsize()

    def run(self) -> None:
        while True:
            event = self.events.get()
            if event is None:
                return
            self._deliver(event)

    def close(self, drain: float) -> None:
        """Deliver what waits for up to ``drain`` s, then stop (retry waits are cut short)."""
        try:
            self.events.put(None, timeout=max(drain, 0.01))
        except queue.Full:
            pass
        self.join(drain)
        self.stop.set()
        self.join(self.spec.timeout + 1)

    def _deliver(self, event: dict) -> None:
        body = json.dumps(event).encode()
        wait = self.spec.backoff
        for attempt in range(self.spec.retries + 1):
            if attempt:
                self.counters.retries += 1
                if self.stop.wait(wait):
                    break
                wait *= 2
            why = self._post(body)
            if why is None:
                self.counters.sent += 1
                return
            self.counters.last_error = why
        self.counters.failed += 1
        self.notify(f"alert receiver {self.spec.name} ({self.label}): gave up an "
                    f"{event.get('event')} event of {event.get('source')} after "
                    f"{self.spec.retries + 1} tries ({self.counters.last_error})")

    def _post(self, body: bytes) -> str | None:
        """None if the receiver took it, else why not."""
        request = urllib.request.Request(self.spec.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.spec.timeout) as response:
                response.read(1 << 16)
                return None
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                return f"no answer within {self.spec.timeout:g} s"
            if isinstance(reason, ConnectionRefusedError):
                return "connection refused"
            return str(reason) or type(reason).__name__
