"""How glibc's malloc serves the large tensors of a process (Linux; elsewhere a no-op).

Two opposite needs: extraction must not grow with a video's length (`bound_heap_growth`), and
training should not pay for fresh pages every step (`keep_freed_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt`` settings; False where this is not glibc on Linux."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, value in settings)
    except (OSError, AttributeError):  # not glibc
        return False


def bound_heap_growth(threshold: int = 1 << 20) -> bool:
    """Have glibc serve allocations of `threshold` bytes or more with mmap (for extraction).

    By default glibc raises its mmap threshold each time a large block is freed, after which
    the per-chunk frame tensors come from the heap, which fragments: the extracting process
    then grew by 114 MB over a one-hour video. A fixed threshold returns such blocks to the
    system when freed, so memory no longer depends on the video's length.
    """
    return _mallopt((_M_MMAP_THRESHOLD, threshold))


def keep_freed_memory() -> bool:
    """Have freed blocks reused instead of returned to the system (for training loops).

    glibc serves each block over its mmap threshold (at most 32 MB) with a fresh mapping and
    unmaps it when freed, so every step's large activations fault their pages in again: about
    0.25 ms per MB on the 2-core machine of the benchmarks, a sixth of the temporal module's
    time there. With mmap off and no trimming, the heap keeps the freed memory and the next
    step reuses it; the process then stays at its peak footprint until it exits.
    """
    return _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
