"""The fine-grained detection mAP over bootstrap resamples of the test videos.

Whether a proposal is a true positive depends only on its own video (it is matched greedily,
in descending score, to its video's unused ground truth: `tpwng.evaluate.finegrained`), so the
matches are found once per video. A resample draws video ``v`` ``c_v`` times: each of its
proposals then occurs ``c_v`` times in a row of the ranking, and the ``c_v`` copies of a true
positive contribute ``Σ_{j=1..c} (TP + j) / (N + j) = c - (N - TP) (ψ(N + c + 1) - ψ(N + 1))``
to the sum of precisions (``TP`` and ``N``: true positives and proposals ranked before it; ψ
the digamma function), so each class's AP is one cumulative sum per resample. Equal to
`tpwng.evaluate.detection_map.fine_grained_map` on the drawn videos wherever no two proposals of
different videos share a score (a test holds this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import digamma

from tpwng.evaluate.finegrained import (
    DEFAULT_IOUS,
    Segment,
    curve_proposals,
    match_proposals,
    protocol_options,
    protocol_segments,
)


@dataclass(frozen=True)
class ClassDetections:
    """One class's proposals over all videos, in the protocol's ranking order."""

    video: np.ndarray  # [P] the proposal's video
    true_positive: np.ndarray  # [P, T] bool, per IoU threshold
    n_gt: np.ndarray  # [n_videos] ground-truth segments of the class per video


@dataclass(frozen=True)
class Detections:
    classes: list[ClassDetections]
    ious: tuple[float, ...]
    zero_all: bool  # a class without proposals makes the mAP 0 (the published scripts)


def _matches(proposals: list[tuple[int, int, float]], gt: list[tuple[int, int]],
             ious: Sequence[float]) -> np.ndarray:
    """``[proposals, T]``: `match_proposals` of one video at each IoU threshold."""
    tp = np.zeros((len(proposals), len(ious)), dtype=bool)
    for k, t in enumerate(ious):
        tp[:, k] = match_proposals(proposals, gt, t)
    return tp


def video_detections(
    frame_probs: Sequence[np.ndarray],
    ground_truth: Sequence[Sequence[Segment]],
    classnames: Sequence[str],
    protocol: str,
    fmt: str,
    ious: Sequence[float] = DEFAULT_IOUS,
) -> Detections:
    """Every video's proposals and their matches, per class, under a named protocol
    (`tpwng.evaluate.finegrained.protocol_options`)."""
    options = protocol_options(protocol, fmt)
    names = list(classnames)
    n = len(frame_probs)
    per_class: list[list[tuple[int, int, float, np.ndarray]]] = [[] for _ in names]
    n_gt = np.zeros((len(names), n), dtype=np.float64)
    for v, (probs, segments) in enumerate(zip(frame_probs, ground_truth, strict=True)):
        p = np.asarray(probs, dtype=np.float64)
        gt: list[list[tuple[int, int]]] = [[] for _ in names]
        for c, s, e in protocol_segments(segments, p.shape[0], names, options["cut_to_video"],
                                         options["normal_ground_truth"], f"video {v}"):
            gt[c].append((s, e))
        for c in range(len(names)):
            props = curve_proposals(p[:, c])
            n_gt[c, v] = len(gt[c])
            tp = _matches(props, gt[c], ious)
            per_class[c] += [(v, i, score, tp[i]) for i, (_, _, score) in enumerate(props)]
    classes = []
    for c in range(len(names)):
        # the ranking of the pooled proposals: descending score, ties in video then time order
        ranked = sorted(per_class[c], key=lambda r: -r[2])
        classes.append(ClassDetections(
            np.array([r[0] for r in ranked], dtype=np.int64),
            np.array([r[3] for r in ranked], dtype=bool).reshape(len(ranked), len(ious)),
            n_gt[c]))
    return Detections(classes, tuple(float(t) for t in ious),
                      options["empty_class"] == "zero_all")


def map_values(det: Detections, counts: np.ndarray) -> np.ndarray:
    """``mAP_avg`` (mean over classes, then IoU thresholds) of each row of ``counts``
    ([B, n_videos] draw counts)."""
    counts = np.asarray(counts, dtype=np.float64)
    b, t = counts.shape[0], len(det.ious)
    ap = np.zeros((len(det.classes), b, t))
    empty = np.zeros(b, dtype=bool)
    for c, cls in enumerate(det.classes):
        gt = counts @ cls.n_gt  # [B]
        w = counts[:, cls.video]  # [B, P]
        empty |= w.sum(axis=1) == 0
        if w.shape[1] == 0:
            continue
        before = np.cumsum(w, axis=1) - w
        for k in range(t):
            tp = cls.true_positive[:, k]
            hits = w * tp
            tp_before = np.cumsum(hits, axis=1) - hits
            copies = w - (before - tp_before) * (digamma(before + w + 1) - digamma(before + 1))
            total = np.sum(copies * tp, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                ap[c, :, k] = np.where(gt > 0, total / np.maximum(gt, 1e-300), 0.0)
    values = ap.mean(axis=0).mean(axis=1)
    if det.zero_all:
        values = np.where(empty, 0.0, values)
    return values
