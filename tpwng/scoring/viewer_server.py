"""`tpwng view --serve`: a folder of pages served over HTTP, answering the Range requests
without which browsers cannot seek a served video (`tpwng.scoring.viewer` writes the pages)."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger(__name__)


SERVE_TIMEOUT = 20.0  # seconds a connection may stay silent (a request, or reading a reply)
SERVE_WORKERS = 32  # requests served at once
SERVE_WAITING = 128  # accepted connections waiting for a worker; more are closed at once
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", re.ASCII)
_HUGE = 1 << 62  # a Range number past any file (Python refuses int() of > 4,300 digits)


def _range_number(text: str) -> int | None:
    """A Range bound; one of more than 18 digits counts as past any file."""
    if not text:
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _HUGE


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """The regular files inside one folder, answering single byte-range requests (206 Partial
    Content): browsers seek a served video only where the server honours Range.

    Nothing else is served: no listing of a folder (its ``index.html`` only), no name that
    starts with a dot, no symbolic link that leads outside the folder, no path holding a
    control character or a ``%00`` (400). A connection silent for `timeout` seconds is closed.
    """

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mp4": "video/mp4",
                      ".m4v": "video/mp4", ".webm": "video/webm", ".js": "text/javascript",
                      ".json": "application/json"}
    timeout = SERVE_TIMEOUT
    _range: tuple[int, int] | None = None

    def _resolve(self) -> str | None:
        """The regular file the request names, resolved; None once an error or a redirect
        is sent."""
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            rel = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            rel = "\0"
        if any(ord(c) < 32 or ord(c) == 127 for c in rel):
            self.send_error(400, "Bad request path")
            return None
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p.startswith(".") or "\\" in p for p in parts):
            self.send_error(404, "File not found")
            return None
        root = os.path.realpath(self.directory)
        path = os.path.join(root, *parts)
        if os.path.isdir(path):
            if not raw.endswith("/"):  # relative links in its index.html need the slash
                self.send_response(301)
                self.send_header("Location", raw + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            path = os.path.join(path, "index.html")
        real = os.path.realpath(path)
        inside = os.path.relpath(real, root).split(os.sep)
        if (real == root or inside[0] == os.pardir or any(p.startswith(".") for p in inside)
                or not os.path.isfile(real)):
            self.send_error(404, "File not found")
            return None
        return real

    def send_head(self):
        self._range = None
        path = self._resolve()
        if path is None:
            return None
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the caller after copyfile
        except OSError:
            self.send_error(404, "File not found")
            return None
        st = os.fstat(f.fileno())
        size = st.st_size
        m = _RANGE.fullmatch(self.headers.get("Range") or "")
        first, last = (_range_number(m[1]), _range_number(m[2])) if m else (None, None)
        if first is None and last is None or (first is not None and last is not None
                                               and last < first):
            # no Range, several ranges or an invalid one: the whole file (RFC 9110, 14.1.1)
            self.send_response(200)
            self.send_header("Content-Length", str(size))
        else:
            if first is None:  # the last `last` bytes
                first, last = max(0, size - last), size - 1 if last else -1
            else:
                last = size - 1 if last is None else min(last, size - 1)
            if first >= size or last < first:
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("Content-Length", str(last - first + 1))
            self._range = (first, last)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
        self.end_headers()
        return f

    def list_directory(self, path):  # noqa: ARG002 - the base's signature
        self.send_error(404, "File not found")  # never a listing
        return None

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def copyfile(self, source, outputfile) -> None:
        try:
            if self._range is None:
                super().copyfile(source, outputfile)
                return
            first, last = self._range
            source.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = source.read(min(left, 1 << 16))
                if not chunk:
                    break
                outputfile.write(chunk)
                left -= len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # the browser dropped a request it no longer needs (it does so when seeking), or
            # stopped reading
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's signature
        log.info("%s %s", self.address_string(), format % args)


class BoundedHTTPServer(HTTPServer):
    """An HTTP server of at most `workers` threads: each accepted connection waits for a
    worker (at most `waiting` of them; more are closed at once), so stalled clients hold
    neither threads nor memory without bound."""

    request_queue_size = 64  # connections the kernel holds before they are accepted

    def __init__(self, address: tuple[str, int], handler, workers: int = SERVE_WORKERS,
                 waiting: int = SERVE_WAITING) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tpwng-serve")
        self._slots = threading.BoundedSemaphore(workers + waiting)
        super().__init__(address, handler)  # closes the pool too where it cannot listen

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            self._pool.submit(self._serve_one, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._slots.release()
            self.shutdown_request(request)

    def _serve_one(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - reported as one line by handle_error
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # noqa: ARG002
        log.warning("%s: request failed: %s", client_address[0], sys.exc_info()[1])

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_server(directory: Path, port: int = 8000, bind: str = "127.0.0.1",
                timeout: float = SERVE_TIMEOUT, workers: int = SERVE_WORKERS
                ) -> BoundedHTTPServer:
    """An HTTP server of `directory` answering Range requests (port 0: any free one); OSError
    where it cannot listen there (a busy port, say)."""
    handler = type("Handler", (RangeRequestHandler,), {"timeout": timeout})
    return BoundedHTTPServer((bind, port), partial(handler, directory=str(directory)),
                             workers=workers)


def serve(directory: Path, port: int = 8000, bind: str = "127.0.0.1") -> None:
    """Serve `directory` until interrupted."""
    server = make_server(directory, port, bind)
    host, port = server.server_address[:2]
    print(f"serving {directory} at http://{host}:{port}/ (Ctrl-C stops); pages link videos by "
          "relative path, so serve a folder that holds both", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
