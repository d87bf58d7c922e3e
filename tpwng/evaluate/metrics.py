"""Frame-level and temporal-detection metrics for scored test videos.

Conventions (shared with peers so numbers are comparable):

- a snippet is ``stride`` (16) frames; frame scores are the snippet scores repeated ``stride``
  times and cut to the video's frame count;
- ground truth comes from annotation intervals, 0-based and end-exclusive;
- frame-level ROC AUC (UCF-Crime) and average precision (XD-Violence) are computed with
  scikit-learn over all test frames concatenated in list order.

Everything here works on plain numpy arrays held in :class:`VideoResult` objects, one per video.
Functions that need both positive and negative frames raise ``ValueError`` when one is missing,
except those documented to return ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

DEFAULT_IOUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


# --------------------------------------------------------------------------- frames and labels


def labels_to_intervals(labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of non-zero labels as 0-based, end-exclusive ``(start, end)`` intervals.

    Touching or overlapping annotation intervals come back merged into one.
    """
    mask = np.asarray(labels).astype(bool)
    if mask.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {mask.shape}")
    edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


@dataclass
class VideoResult:
    """Per-frame scores and ground truth of one test video."""

    video_id: str
    classes: list[str]
    frame_scores: np.ndarray
    frame_labels: np.ndarray

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise ValueError(f"video {self.video_id!r}: no classes given")
        lowered = [c.lower() for c in self.classes]
        if "normal" in lowered and len(lowered) > 1:
            raise ValueError(
                f"video {self.video_id!r}: 'normal' cannot be combined with anomaly classes "
                f"{self.classes}"
            )
        self.frame_scores = np.asarray(self.frame_scores, dtype=np.float64)
        labels = np.asarray(self.frame_labels)
        if self.frame_scores.ndim != 1 or labels.ndim != 1:
            raise ValueError(f"video {self.video_id!r}: scores and labels must be 1-D")
        if self.frame_scores.shape != labels.shape:
            raise ValueError(
                f"video {self.video_id!r}: {self.frame_scores.size} frame scores but "
                f"{labels.size} frame labels"
            )
        if not np.all(np.isfinite(self.frame_scores)):
            raise ValueError(f"video {self.video_id!r}: frame scores contain NaN or inf")
        if not np.all(np.isin(labels, (0, 1))):
            raise ValueError(f"video {self.video_id!r}: frame labels must be 0 or 1")
        self.frame_labels = labels.astype(np.uint8)

    @property
    def label(self) -> str:
        """``"normal"`` for a normal video, ``"anomalous"`` otherwise."""
        return "normal" if [c.lower() for c in self.classes] == ["normal"] else "anomalous"

    @property
    def is_anomalous(self) -> bool:
        return self.label == "anomalous"

    @property
    def n_frames(self) -> int:
        return int(self.frame_scores.size)


# --------------------------------------------------------------------------- frame-level metrics


def _concat(videos: Sequence[VideoResult]) -> tuple[np.ndarray, np.ndarray]:
    if not videos:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.uint8)
    scores = np.concatenate([v.frame_scores for v in videos])
    labels = np.concatenate([v.frame_labels for v in videos])
    return scores, labels


def _has_both(labels: np.ndarray) -> bool:
    return bool(labels.size) and bool(labels.min() == 0) and bool(labels.max() == 1)


def _require_both(labels: np.ndarray, what: str) -> None:
    if not _has_both(labels):
        n_pos = int(labels.sum())
        raise ValueError(
            f"{what} needs both anomalous and normal frames; got {n_pos} anomalous and "
            f"{labels.size - n_pos} normal frames"
        )


def frame_auc(videos: Sequence[VideoResult]) -> float:
    """Frame-level ROC AUC over all frames concatenated in list order."""
    scores, labels = _concat(videos)
    _require_both(labels, "frame AUC")
    return float(roc_auc_score(labels, scores))


def frame_ap(videos: Sequence[VideoResult]) -> float:
    """Frame-level average precision over all frames concatenated in list order."""
    scores, labels = _concat(videos)
    _require_both(labels, "frame AP")
    return float(average_precision_score(labels, scores))


def anomalous_only_auc(videos: Sequence[VideoResult]) -> float | None:
    """Frame AUC over the frames of anomalous videos only; ``None`` if it is undefined."""
    scores, labels = _concat([v for v in videos if v.is_anomalous])
    if not _has_both(labels):
        return None
    return float(roc_auc_score(labels, scores))


def false_alarm_rate(videos: Sequence[VideoResult], threshold: float = 0.5) -> float | None:
    """Fraction of the frames of normal videos scored ``>= threshold``; ``None`` without any."""
    scores, _ = _concat([v for v in videos if not v.is_anomalous])
    if scores.size == 0:
        return None
    return float(np.mean(scores >= threshold))


def per_class_auc(videos: Sequence[VideoResult]) -> dict[str, float]:
    """Frame AUC per anomaly class: videos of that class together with all normal videos.

    A multi-label video counts in each of its classes. Classes come in sorted order; a class
    whose frames (with the normal videos) hold only one label is left out.
    """
    normals = [v for v in videos if not v.is_anomalous]
    classes = sorted({c for v in videos if v.is_anomalous for c in v.classes})
    out: dict[str, float] = {}
    for cls in classes:
        members = [v for v in videos if v.is_anomalous and cls in v.classes]
        scores, labels = _concat(members + normals)
        if _has_both(labels):
            out[cls] = float(roc_auc_score(labels, scores))
    return out


def roc_pr_points(videos: Sequence[VideoResult]) -> dict[str, np.ndarray]:
    """ROC and precision/recall curve points over all frames (for plotting)."""
    scores, labels = _concat(videos)
    _require_both(labels, "ROC/PR curves")
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}


# --------------------------------------------------------------------------- temporal detection


def score_segments(
    frame_scores: np.ndarray, threshold: float = 0.5, min_len: int = 1
) -> list[tuple[int, int, float]]:
    """Maximal runs of frames scored ``>= threshold``, at least ``min_len`` long.

    Returns ``(start, end_exclusive, mean score)`` per run, in temporal order.
    """
    scores = np.asarray(frame_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"frame scores must be 1-D, got shape {scores.shape}")
    out = []
    for start, end in labels_to_intervals(scores >= threshold):
        if end - start >= min_len:
            out.append((start, end, float(scores[start:end].mean())))
    return out


def _temporal_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision/recall curve, all-point interpolation (VOC 2010+)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def detection_map(
    videos: Sequence[VideoResult],
    ious: Sequence[float] = DEFAULT_IOUS,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Class-agnostic temporal detection AP at each IoU threshold, and their mean.

    Our own protocol (thresholded segments, VOC AP), reported as ``class_agnostic_detection``
    by `metrics_table`; the published fine-grained protocol is
    `tpwng.evaluate.detection_map.published_fine_grained_map`.

    Predictions are :func:`score_segments` of every video, ranked by mean score (ties keep list
    and temporal order). At IoU ``t`` a prediction is a true positive when it matches a not yet
    matched ground-truth interval of the same video with IoU ``>= t`` (the best such one).
    Ground truth is the maximal runs of anomalous frames. Returns ``{"mAP@0.1": ...,
    "mAP_avg": ...}``.
    """
    if not ious:
        raise ValueError("no IoU thresholds given")
    gts = [labels_to_intervals(v.frame_labels) for v in videos]
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        raise ValueError("detection mAP needs at least one anomalous ground-truth interval")
    preds = [
        (vi, (s, e), score)
        for vi, v in enumerate(videos)
        for s, e, score in score_segments(v.frame_scores, threshold)
    ]
    order = np.argsort(-np.array([p[2] for p in preds], dtype=np.float64), kind="stable")
    preds = [preds[i] for i in order]

    out: dict[str, float] = {}
    for t in ious:
        matched = [np.zeros(len(g), dtype=bool) for g in gts]
        tp = np.zeros(len(preds), dtype=np.float64)
        for k, (vi, seg, _) in enumerate(preds):
            best, best_j = -1.0, -1
            for j, gt in enumerate(gts[vi]):
                if matched[vi][j]:
                    continue
                iou = _temporal_iou(seg, gt)
                if iou >= t and iou > best:
                    best, best_j = iou, j
            if best_j >= 0:
                matched[vi][best_j] = True
                tp[k] = 1.0
        if preds:
            ctp = np.cumsum(tp)
            recall = ctp / n_gt
            precision = ctp / np.arange(1, len(preds) + 1)
            ap = _voc_ap(recall, precision)
        else:
            ap = 0.0
        out[f"mAP@{t:g}"] = ap
    out["mAP_avg"] = float(np.mean([out[f"mAP@{t:g}"] for t in ious]))
    return out


# --------------------------------------------------------------------------- tables


def metrics_table(videos: Sequence[VideoResult], threshold: float = 0.5) -> dict:
    """All metrics in one JSON-ready dict."""
    n_anomalous = sum(v.is_anomalous for v in videos)
    return {
        "frame_auc": frame_auc(videos),
        "frame_ap": frame_ap(videos),
        "anomalous_auc": anomalous_only_auc(videos),
        "false_alarm_rate": false_alarm_rate(videos, threshold),
        "per_class_auc": per_class_auc(videos),
        # our thresholded-segment protocol (`detection_map`), not the published one
        "class_agnostic_detection": detection_map(videos, threshold=threshold),
        "threshold": float(threshold),
        "n_videos": len(videos),
        "n_anomalous": int(n_anomalous),
        "n_normal": len(videos) - int(n_anomalous),
        "n_frames": int(sum(v.n_frames for v in videos)),
    }
