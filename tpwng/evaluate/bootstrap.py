"""Confidence intervals of the frame metrics from a bootstrap over test *videos*.

A resample draws the test videos with replacement; a video drawn twice counts twice. The frames
of every video are summarised once as a sparse matrix: per video and distinct score, how many
anomalous and how many normal frames have that score (a snippet's score is repeated over its
frames, so a video has about one distinct score per snippet). A resample is a vector of
per-video counts, so its frames per score are one sparse product, and every metric is a
cumulative sum over the scores; many resamples are computed at once
(`frame_metric_values`). Each resample's value equals the metric of `tpwng.evaluate.metrics`
on the list of videos it draws (a test holds this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from tpwng.evaluate.metrics import VideoResult

CHUNK = 128  # resamples evaluated together (memory: CHUNK x distinct scores x 8 bytes per array)
FRAME_METRICS = ("frame_auc", "frame_ap", "anomalous_auc", "false_alarm_rate")


@dataclass(frozen=True)
class Runs:
    """The frames of a list of videos, by video and distinct score (ascending)."""

    scores: np.ndarray  # [G] the distinct scores, ascending
    positive: sparse.csr_matrix  # [n_videos, G] anomalous frames of each video at each score
    negative: sparse.csr_matrix  # [n_videos, G] normal frames
    anomalous_video: np.ndarray  # [n_videos] bool
    frames: np.ndarray  # [n_videos] frames of each video
    n_runs: int  # runs of equal (score, label) over all videos


def compress(videos: Sequence[VideoResult]) -> Runs:
    """Frames of every video counted per distinct score and label."""
    if not videos:
        raise ValueError("the bootstrap needs at least one test video")
    parts = []
    for i, v in enumerate(videos):
        s, y = v.frame_scores, v.frame_labels.astype(bool)
        if s.size == 0:
            continue
        change = np.flatnonzero((s[1:] != s[:-1]) | (y[1:] != y[:-1])) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [s.size]]))
        parts.append((s[starts], y[starts], lengths, np.full(starts.size, i)))
    score, label, length, video = (np.concatenate(p) for p in zip(*parts, strict=True))
    scores, group = np.unique(score, return_inverse=True)
    shape = (len(videos), scores.size)

    def counts(mask: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((length[mask].astype(np.float64), (video[mask], group[mask])),
                                 shape=shape)  # duplicates (same video, score, label) add up

    return Runs(scores, counts(label), counts(~label),
                np.array([v.is_anomalous for v in videos]),
                np.array([v.n_frames for v in videos], dtype=np.float64), int(score.size))


def _auc(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC (ties count one half) per row of frames per ascending score; NaN where
    a class is missing."""
    below = np.cumsum(n, axis=1) - n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(p * (below + 0.5 * n), axis=1) / (p.sum(axis=1) * n.sum(axis=1))


def _ap(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Weighted average precision (scikit-learn's: Σ (R_k - R_k-1) P_k over distinct scores,
    from the highest) per row; NaN without anomalous frames. At the threshold of score k the
    frames at or above it are the totals less those below, so no reversal is needed."""
    total_p = p.sum(axis=1, keepdims=True)
    tp = total_p - (np.cumsum(p, axis=1) - p)
    seen = tp + n.sum(axis=1, keepdims=True) - (np.cumsum(n, axis=1) - n)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / np.maximum(seen, 1e-300), 0.0)
        return np.sum(p * precision, axis=1) / total_p[:, 0]


def frame_metric_values(runs: Runs, counts: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """`FRAME_METRICS` of each row of ``counts`` ([B, n_videos]: how often each video is
    drawn), as `tpwng.evaluate.metrics` defines them; NaN where a metric is undefined."""
    counts = np.asarray(counts, dtype=np.float64)
    anomalous = counts * runs.anomalous_video
    def frames_per_score(matrix: sparse.csr_matrix, c: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((matrix.T @ c.T).T)  # [B, G], rows contiguous

    p, n = frames_per_score(runs.positive, counts), frames_per_score(runs.negative, counts)
    pa = frames_per_score(runs.positive, anomalous)
    na = frames_per_score(runs.negative, anomalous)
    normal = counts * ~runs.anomalous_video
    alarmed = np.asarray(runs.negative[:, runs.scores >= threshold].sum(axis=1)).ravel()
    alarmed += np.asarray(runs.positive[:, runs.scores >= threshold].sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        far = (normal @ alarmed) / (normal @ runs.frames)
    return {"frame_auc": _auc(p, n), "frame_ap": _ap(p, n), "anomalous_auc": _auc(pa, na),
            "false_alarm_rate": far}


def resample_counts(n_videos: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n_videos]`` draw counts of a bootstrap over videos (seeded)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_videos, size=(resamples, n_videos))
    counts = np.zeros((resamples, n_videos), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(resamples), n_videos), draws.ravel()), 1.0)
    return counts


def bootstrap(
    metric_values: Callable[[np.ndarray], dict[str, np.ndarray]],
    n_videos: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Percentile intervals of each metric ``metric_values(counts)`` returns, over
    ``resamples`` draws of the videos (in chunks of `CHUNK`). Resamples where a metric is
    undefined (e.g. no anomalous frame drawn) are left out of its interval and counted."""
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    counts = resample_counts(n_videos, resamples, seed)
    samples: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, CHUNK):
        for name, values in metric_values(counts[start:start + CHUNK]).items():
            samples.setdefault(name, []).append(values)
        if progress is not None:
            progress(min(start + CHUNK, resamples))
    alpha = (1 - level) / 2
    out = {}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        ok = values[np.isfinite(values)]
        low, high = (np.quantile(ok, [alpha, 1 - alpha]) if ok.size else (np.nan, np.nan))
        out[name] = {"low": float(low), "high": float(high), "resamples": int(ok.size),
                     "undefined": int(values.size - ok.size)}
    return out
