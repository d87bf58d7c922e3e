"""Durable outputs: every file the pipeline writes goes through here.

A file is written under a temporary name beside its target (``.NAME.tmp-HOST-PID``), synced,
renamed and its directory synced, so a file with its final name is always whole, even after a
crash or ``kill -9``; temporary files of dead writers on the same host are cleared by the next
write of the same target. A write that fails for lack of room is one :class:`WriteError`
naming the file, with nothing partial left.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# errno values of a write that failed for lack of room (or a read-only file system)
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
_HOST = socket.gethostname().replace(os.sep, "_") or "host"


class WriteError(RuntimeError):
    """An output could not be written; the message names it. Nothing partial was left."""


def is_write_error(exc: BaseException) -> bool:
    """An OSError of a write that failed for lack of room (disk full, size limit, quota)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def write_error(path: str | Path, exc: OSError) -> WriteError:
    """The one-line error of a failed write of `path`."""
    why = exc.strerror or str(exc)
    if is_write_error(exc):
        why += ": the disk is full or a file size limit or quota was reached"
    return WriteError(f"{path}: cannot write ({why}); no partial output was left")


def temp_path(path: str | Path) -> Path:
    """The temporary name `path` is written under by this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temporary files of `path` left by writers on this host that were killed."""
    path = Path(path)
    prefix = f".{path.name}.tmp-{_HOST}-"
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):] if name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with suppress(OSError):
                (path.parent / name).unlink()
                removed.append(path.parent / name)
    return removed


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush a file (or a directory entry) to disk, so that a crash cannot undo a rename."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync directories; files must sync
            raise
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file to its final name, durably."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent, directory=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    A write that fails for lack of room becomes a :class:`WriteError` naming `path`; the
    temporary file is removed whatever happens, and temporary files of killed earlier writers
    are cleared.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        yield tmp
        publish(tmp, path)
    except OSError as exc:
        if is_write_error(exc):
            raise write_error(path, exc) from exc
        raise
    finally:
        with suppress(OSError):
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text (newlines as written) to `path` durably."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_lines(path: str | Path, lines: list[str]) -> None:
    """Write text lines, each ended by a newline, to `path` durably."""
    write_text(path, "".join(line + "\n" for line in lines))


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON (keys in their order) to `path` durably."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_table(path: str | Path, table: pd.DataFrame, index: bool = False,
                unquoted: bool = False) -> None:
    """Write a table as TSV (header, one row per line) to `path` durably; `unquoted` writes
    every field as it is (for fields such as JSON that hold quotes but never tabs)."""
    import csv

    write_text(path, table.to_csv(sep="\t", index=index, lineterminator="\n",
                                  quoting=csv.QUOTE_NONE if unquoted else csv.QUOTE_MINIMAL))
