"""A local live source for benchmarks and tests: ffmpeg serving a video in real time over
loopback HTTP (`loopback_server`), on a port nothing listens on (`free_port`)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a process listens on the loopback TCP port (from /proc: a test connection
    would take ffmpeg's only client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


@contextlib.contextmanager
def loopback_server(video: Path, port: int, *output_args: str, ffmpeg: str = "ffmpeg",
                    wait: float = 10.0) -> Iterator:
    """ffmpeg serving ``video`` in real time (``-re``) to one HTTP client on 127.0.0.1:`port`
    as MPEG-TS (stream copy; ``output_args`` before the output, e.g. ``-t 2``); the process,
    once it listens (a RuntimeError if it exits or does not listen within `wait` s)."""
    import subprocess

    proc = subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-i",
                             str(video), *output_args, "-c", "copy", "-f", "mpegts",
                             "-listen", "1", f"http://127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + wait
        while not listening(port):
            if proc.poll() is not None:
                raise RuntimeError(f"ffmpeg exited ({proc.returncode}) before listening on "
                                   f"port {port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ffmpeg did not listen on port {port} within {wait:g} s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
