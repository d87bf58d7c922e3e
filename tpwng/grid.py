"""The snippet grid: how frames map to snippets and back, in one place.

A video of ``n`` frames is cut into ``ceil(n / stride)`` snippets of ``stride`` frames, the last
one partial. Extraction samples one frame per snippet (:func:`sample_indices`); scores go back
to frames by repeating each snippet's score over its frames (:func:`expand_to_frames`); ground
truth comes from 0-based, end-exclusive frame intervals (:func:`frame_labels`) and goes to
snippets by the fraction of anomalous frames (:func:`snippet_fractions`). See design §7.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SAMPLE_MODES = ("center", "start")


def snippet_count(n_frames: int, stride: int) -> int:
    """Snippets of a video of ``n_frames`` frames (the last one may be partial)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return -(-max(0, int(n_frames)) // stride)


def sample_indices(n_frames: int, stride: int = 16, mode: str = "center") -> np.ndarray:
    """Index of the frame sampled from each snippet.

    `center` takes the middle frame of the snippet's available frames (start + len // 2),
    `start` its first frame. A partial last snippet uses only the frames it has.
    """
    if mode not in SAMPLE_MODES:
        raise ValueError(f"sample mode must be one of {SAMPLE_MODES}, got {mode!r}")
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, n_frames, stride, dtype=np.int64)
    if mode == "start":
        return starts
    lengths = np.minimum(starts + stride, n_frames) - starts
    return starts + lengths // 2


def expand_to_frames(snippet_scores: np.ndarray, n_frames: int, stride: int = 16) -> np.ndarray:
    """Repeat each snippet score ``stride`` times and cut to ``n_frames``.

    If the snippets cover fewer than ``n_frames`` frames, the tail is padded with the last score.
    """
    scores = np.asarray(snippet_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"snippet scores must be 1-D, got shape {scores.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if n_frames == 0:
        return np.zeros(0, dtype=np.float64)
    if scores.size == 0:
        raise ValueError(f"no snippet scores to expand to {n_frames} frames")
    frames = np.repeat(scores, stride)[:n_frames]
    if frames.size < n_frames:
        frames = np.concatenate([frames, np.full(n_frames - frames.size, scores[-1])])
    return frames


def whole_snippet_frames(snippet_scores: np.ndarray, stride: int) -> np.ndarray:
    """Each snippet's score over all ``stride`` of its frames: ``stride × snippets`` frames, the
    convention of the published evaluation scripts (``evaluate.frames: snippets``)."""
    return np.repeat(np.asarray(snippet_scores, dtype=np.float64), stride)


def frame_labels(intervals: Iterable[tuple[int, int]], n_frames: int) -> np.ndarray:
    """Binary per-frame labels (uint8) from 0-based, end-exclusive anomaly intervals."""
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    labels = np.zeros(int(n_frames), dtype=np.uint8)
    for interval in intervals:
        start, end = (int(v) for v in interval)
        if start < 0 or end < start or end > n_frames:
            raise ValueError(
                f"interval ({start}, {end}) is not within a video of {n_frames} frames "
                "(0-based, end-exclusive)"
            )
        labels[start:end] = 1
    return labels


def snippet_fractions(labels: np.ndarray, stride: int) -> np.ndarray:
    """Fraction of anomalous frames in each snippet (a partial last snippet over its own frames)."""
    n = len(labels)
    n_snip = snippet_count(n, stride)
    padded = np.zeros(n_snip * stride, dtype=np.float64)
    padded[:n] = labels
    counts = np.minimum(np.arange(1, n_snip + 1) * stride, n) - np.arange(n_snip) * stride
    return padded.reshape(n_snip, stride).sum(1) / counts


def snippets_of(start: int, end: int, stride: int) -> slice:
    """The snippets that frames ``[start, end)`` touch."""
    return slice(start // stride, -(-end // stride))
