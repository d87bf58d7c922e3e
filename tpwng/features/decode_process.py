"""Decoding in a child process, with a deadline on every call (`tpwng.features.video`).

decord can hang for ever while holding the GIL (a container that reports more frames than it
holds), crash on damaged files, or grow without bound on some files: none of that can be caught
inside the process that runs it, all of it can be from outside. So every decoding request goes
to a child process, and the caller waits for its answer with a deadline. A request that passes
its deadline or whose child dies raises the caller's error type naming the file; the child is
killed and the next request starts a fresh one. The child also dies with its parent, and is
replaced when its memory grows beyond `HELPER_MAX_RSS` (`replace_if_grown`).

The child runs `serve_requests` with the request handler the decoding module gives it
(`tpwng.features.video.serve_decoding`, the command `HELPER_COMMAND`).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from tpwng.heap import bound_heap_growth

HELPER_MAX_RSS = 2 << 30  # a decoding child using more memory is replaced between videos
# The decoding child: the parent's pid follows, so that the child can die with it.
HELPER_COMMAND = [sys.executable, "-c",
                  "from tpwng.features.video import serve_decoding; serve_decoding()"]


class Decoder:
    """A decoding child process and the deadline of every request sent to it."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def call(self, request: tuple, timeout: float, path: str | Path, what: str,
             error: type[Exception]):
        """Send one request; raise `error` naming `path` past `timeout` s, if the child dies,
        or with the child's message when the request fails."""
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
                raise error(
                    f"{path}: {what} did not finish within {timeout:g} s "
                    "(extraction.decode_timeout); the file is probably damaged, e.g. a "
                    "container that reports more frames than it holds makes decord hang"
                ) from None
            except (BrokenPipeError, ConnectionResetError):
                answer = None
            if answer is None:
                code = proc.wait()
                self.stop()
                raise error(f"{path}: the decoding process died ({_describe_exit(code)}) "
                            f"while {what}; the file is probably damaged")
            status, value = answer
            if status != "ok":
                raise error(value)
            return value

    def replace_if_grown(self) -> None:
        """Stop the child if its memory passed `HELPER_MAX_RSS` (decord's grows on some
        files); the next request starts afresh. Called between videos."""
        if self.rss() > HELPER_MAX_RSS:
            self.stop()

    def rss(self) -> int:
        """The child's resident memory in bytes (0 when there is none)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

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

    def _start(self) -> None:
        self.proc = subprocess.Popen([*HELPER_COMMAND, str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True, bufsize=0)
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # larger pipe: fewer round trips per chunk
            with suppress(OSError):
                fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


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


def serve_requests(answer: Callable[[tuple], tuple[str, object]]) -> None:
    """The decoding child: answer requests from stdin on the original stdout until stdin
    ends; ``answer(request)`` gives ``("ok", value)`` or ``("error", message)``."""
    _die_with_parent(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    # frame chunks come from mmap and go back when freed, as in the extracting process, so
    # this process does not creep over long videos
    bound_heap_growth()
    out = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    while True:
        request = _receive(0, None)
        if request is None:
            return
        _send(out, answer(request))


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


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


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
