"""What kind of anomaly: frame class probabilities, the fine-grained detection protocol per
video (ground truth, proposals, matches), video classification. The per-snippet class
probabilities themselves are the model's (`tpwng.model.class_probs`); the detection mAP over all
videos is `tpwng.evaluate.detection_map`.

Fine-grained detection follows the protocol of the published XD-Violence / UCF-Crime evaluation
scripts of VadCLIP (see `tpwng.evaluate.detection_map.published_fine_grained_map`). Two named
modes (`PROTOCOLS`): ``"ours"`` (the default) and ``"published"``, the scripts' behaviour as
shipped, which differs from ours in three ways (`protocol_options`): on UCF-Crime the normal
class never has ground truth, annotation ends are kept as written past the video's end, and one
class without proposals makes the mAP 0. Frame intervals are 0-based and end-exclusive
throughout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from tpwng.data.datasets import (
    NORMAL,
    XD_CODES,
    DatasetError,
    parse_int,
    read_lines,
    strip_video_extension,
)

DEFAULT_IOUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
# Constants of the published protocol.
THRESHOLD_FRACTION = 0.6  # proposal threshold: max - 0.6 · (max - min) of the class curve
VIDEO_SCORE_WEIGHT = 0.7  # proposal score: max inside + 0.7 · video-level class score
NMS_IOU = 0.6  # proposals of one video and class overlapping more than this are suppressed
MIN_PROPOSAL_FRAMES = 2
TOPK_DIVISOR = 16  # video-level class score: mean of the top ⌊frames / 16⌋ frame values

Protocol = Literal["ours", "published"]
PROTOCOLS: tuple[str, ...] = ("ours", "published")
# Formats whose ground truth is in UCF-Crime's layout (the UCF temporal annotation format), where
# the published protocol is that of the UCF-Crime script, whose normal class has no ground truth.
NORMAL_QUIRK_FORMATS: tuple[str, ...] = ("ucf", "folder", "synthetic")
KNOWN_FORMATS: tuple[str, ...] = (*NORMAL_QUIRK_FORMATS, "xd")
VideoScore = Literal["mean", "topk"]
Segment = tuple[str, int, int]  # (class name, start, end)


# --------------------------------------------------------------------------- class probabilities


def frame_class_probabilities(
    snippet_probs: np.ndarray, n_frames: int, stride: int = 16
) -> np.ndarray:
    """``[n_frames, k]``: each snippet's row repeated ``stride`` times, cut to ``n_frames``.

    Frames past the last snippet take the last snippet's row (as frame scores do).
    """
    p = np.asarray(snippet_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"snippet probabilities must be [T >= 1, k], got shape {p.shape}")
    if n_frames < 0 or stride < 1:
        raise ValueError(f"need n_frames >= 0 and stride >= 1, got {n_frames}, {stride}")
    frames = np.repeat(p, stride, axis=0)[:n_frames]
    if frames.shape[0] < n_frames:
        tail = np.repeat(p[-1:], n_frames - frames.shape[0], axis=0)
        frames = np.concatenate([frames, tail])
    return frames


# --------------------------------------------------------------------------- ground truth


def parse_xd_multiclass_annotation(path: str | os.PathLike[str]) -> dict[str, list[Segment]]:
    """Parse XD-Violence's ``annotations_multiclasses.txt``.

    One video per line: ``name code s1 e1 [code s2 e2 ...]``, whitespace separated, where
    ``code`` is an XD label code (``B1`` fighting, ``B2`` shooting, ``B4`` riot, ``B5`` abuse,
    ``B6`` car accident, ``G`` explosion) and the interval is 0-based, end-exclusive. Returns
    video id (name without a video extension) -> ``[(class prompt name, start, end), ...]`` in
    file order. Intervals are kept as written: within one class they may touch or overlap, and a
    class need not be among the codes in the video's name (the public file has one such video).
    """
    result: dict[str, list[Segment]] = {}
    for number, line in read_lines(path):
        fields = line.split()
        where = f"{path}:{number}"
        video_id = strip_video_extension(fields[0])
        if video_id in result:
            raise DatasetError(f"{where}: video {video_id} is listed twice")
        rest = fields[1:]
        if not rest or len(rest) % 3:
            raise DatasetError(f"{where}: expected '<video> <code> <start> <end> ...' in "
                               f"triples, got {len(rest)} fields after the name")
        segments: list[Segment] = []
        for code, start_text, end_text in zip(rest[::3], rest[1::3], rest[2::3], strict=True):
            if code not in XD_CODES or XD_CODES[code] == NORMAL:
                raise DatasetError(f"{where}: unknown anomaly class code {code!r}")
            start, end = parse_int(start_text, where), parse_int(end_text, where)
            if start < 0 or end <= start:
                raise DatasetError(f"{where}: bad interval {start}-{end} (need 0 <= start < end)")
            segments.append((XD_CODES[code], start, end))
        result[video_id] = segments
    return result


def video_ground_truth(
    classes: Sequence[str],
    n_frames: int,
    intervals: Sequence[tuple[int, int]] = (),
    class_intervals: Sequence[Segment] | None = None,
) -> list[Segment]:
    """Ground-truth segments of one test video for the detection mAP
    (`tpwng.evaluate.detection_map.published_fine_grained_map`).

    A normal video (``classes == ["normal"]``) is one ``normal`` segment over the whole video.
    An anomalous video takes ``class_intervals`` when given (XD-Violence's per-class intervals),
    else its ``intervals`` under its single class (UCF-Crime); a multi-label video without
    ``class_intervals`` is an error.
    """
    if list(classes) == [NORMAL]:
        return [(NORMAL, 0, int(n_frames))]
    if class_intervals is not None:
        return [(str(c), int(s), int(e)) for c, s, e in class_intervals]
    if len(classes) != 1:
        raise ValueError(f"a video of classes {list(classes)} needs per-class intervals")
    return [(str(classes[0]), int(s), int(e)) for s, e in intervals]


# --------------------------------------------------------------------------- protocol pieces


def segment_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """IoU of the frame sets ``range(*a)`` and ``range(*b)``."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def video_class_score(curve: np.ndarray) -> float:
    """Mean of the top ``max(1, ⌊frames / 16⌋)`` values of one video's per-frame curve.

    (The published scripts take ``⌊frames / 16⌋`` values, none for a video under 16 frames.)
    """
    m = max(1, curve.size // TOPK_DIVISOR)
    return float(np.sort(curve)[::-1][:m].mean())


def curve_proposals(curve: np.ndarray) -> list[tuple[int, int, float]]:
    """Proposals ``(start, end, score)`` of one video's per-frame curve, after NMS.

    Maximal runs of frames ``> max - 0.6 · (max - min)``, at least 2 frames long, scored
    ``max(curve[run]) + 0.7 · video_class_score(curve)``; then greedy NMS in descending score
    (stable order), suppressing a proposal whose IoU with a kept one exceeds 0.6. (Runs of one
    threshold are disjoint, so NMS removes nothing here; it is kept for the protocol's sake.)
    A constant curve has no proposals.
    """
    c = np.asarray(curve, dtype=np.float64)
    if c.size == 0:
        return []
    hi, lo = float(c.max()), float(c.min())
    above = c > hi - THRESHOLD_FRACTION * (hi - lo)
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    bonus = VIDEO_SCORE_WEIGHT * video_class_score(c)
    runs = [(int(s), int(e), float(c[s:e].max()) + bonus)
            for s, e in zip(starts, ends, strict=True) if e - s >= MIN_PROPOSAL_FRAMES]
    runs.sort(key=lambda r: -r[2])
    kept: list[tuple[int, int, float]] = []
    for r in runs:
        if all(segment_iou((r[0], r[1]), (k[0], k[1])) <= NMS_IOU for k in kept):
            kept.append(r)
    return kept


def match_proposals(proposals: Sequence[tuple[int, int, float]],
                    gt: Sequence[tuple[int, int]], t: float) -> np.ndarray:
    """True positives (bool, in the given order) of one video's ``(start, end, score)``
    proposals at IoU ``t``: in descending score (stable), each takes the unused GT segment of
    its video with the best IoU ``>= t`` (the first on ties)."""
    order = sorted(range(len(proposals)), key=lambda i: -proposals[i][2])
    used = np.zeros(len(gt), dtype=bool)
    tp = np.zeros(len(proposals), dtype=bool)
    for i in order:
        s, e, _ = proposals[i]
        best, best_j = -1.0, -1
        for j, g in enumerate(gt):
            if used[j]:
                continue
            iou = segment_iou((s, e), g)
            if iou >= t and iou > best:
                best, best_j = iou, j
        if best_j >= 0:
            used[best_j] = True
            tp[i] = True
    return tp


def cut_interval(segment: tuple[int, int], n_frames: int, what: str,
                 cut: bool = True) -> tuple[int, int] | None:
    """A GT interval cut to the video's length (ours; None if nothing is left), or with
    ``cut=False`` kept as written, as the published scripts' ``gt_segment`` files keep it."""
    s, e = int(segment[0]), int(segment[1])
    if s < 0 or e <= s:
        raise ValueError(f"{what}: bad interval {s}-{e} (need 0 <= start < end)")
    if not cut:
        return s, e
    e = min(e, n_frames)
    return (s, e) if e > s else None


def protocol_segments(segments: Sequence[Segment], n_frames: int, names: Sequence[str],
                      cut_to_video: bool, normal_ground_truth: bool, what: str,
                      ) -> list[tuple[int, int, int]]:
    """One video's ground truth as a protocol counts it: ``(class index, start, end)``, cut to
    the video (`cut_interval`) or kept as written, ``normal`` segments dropped without
    ``normal_ground_truth``; a class outside ``names`` is an error naming ``what``."""
    index = {c: i for i, c in enumerate(names)}
    out = []
    for name, s, e in segments:
        if name not in index:
            raise ValueError(f"{what}: ground-truth class {name!r} is not in {list(names)}")
        cut = cut_interval((s, e), n_frames, what, cut_to_video)
        if cut is not None and (name != NORMAL or normal_ground_truth):
            out.append((index[name], *cut))
    return out


def protocol_options(protocol: Protocol, fmt: str | None = None) -> dict:
    """`published_fine_grained_map`'s options for a named protocol on a dataset format.

    ``"ours"`` (any format): the normal class scored, GT cut to the video, a class without
    proposals AP 0 in the mean. ``"published"``: what VadCLIP's scripts compute from their
    shipped ``gt_segment*`` / ``gt_label*`` files: GT ends as written, mAP 0 at every threshold
    once a class has no proposal, and on formats in UCF-Crime's layout (``ucf``, ``folder``,
    ``synthetic``) no normal ground truth (the UCF-Crime script's normal class scores AP 0 and
    the mean is the anomaly APs' sum over all classes); XD-Violence's script scores normal.
    """
    if protocol == "ours":
        return {"empty_class": "zero_class", "cut_to_video": True, "normal_ground_truth": True}
    if protocol != "published":
        raise ValueError(f"fine-grained protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if fmt not in KNOWN_FORMATS:
        raise ValueError(f"the published fine-grained protocol depends on the dataset format "
                         f"(one of {KNOWN_FORMATS}), got {fmt!r}")
    return {"empty_class": "zero_all", "cut_to_video": False,
            "normal_ground_truth": fmt not in NORMAL_QUIRK_FORMATS}


# --------------------------------------------------------------------------- classification


def video_classification_accuracy(
    probs: Sequence[np.ndarray],
    classes: Sequence[Sequence[str]],
    classnames: Sequence[str],
    video_score: VideoScore = "mean",
) -> dict:
    """Top-1 anomaly-class accuracy over the anomalous test videos.

    The video-level score of anomaly class ``c`` is, by default (``"mean"``), the mean over the
    video's snippets (or frames) of ``p(c) = η · q(c)``: an η-weighted vote, so the snippets the
    classifier finds anomalous decide. ``"topk"`` takes the mean of the top ``max(1, ⌊n/16⌋)``
    values instead (the detection protocol's video-level score). The predicted class is the
    argmax over the anomaly classes (normal is never predicted; ties take the first class).
    A video is correct when the prediction is any of its true classes (multi-label XD videos).
    Per class, over the videos that have that class, the same rule. Normal videos are skipped.

    Args:
        probs: per video ``[n, k]`` class probabilities (snippets or frames).
        classes: per video its true class names (``["normal"]`` for a normal video).
        classnames: the ``k`` class names, ``classnames[0] == "normal"``.

    Returns:
        ``{"accuracy", "mean_class_accuracy", "n_videos", "per_class": {name: {"accuracy",
        "n_videos"}}, "predictions": [name or None per input video]}``; a class without videos
        has accuracy None.
    """
    if video_score not in ("mean", "topk"):
        raise ValueError(f"video_score must be 'mean' or 'topk', got {video_score!r}")
    names = list(classnames)
    if len(probs) != len(classes):
        raise ValueError(f"{len(probs)} videos of probabilities but {len(classes)} of classes")
    hits = {c: [0, 0] for c in names[1:]}
    predictions: list[str | None] = []
    correct = total = 0
    for v, (p, true) in enumerate(zip(probs, classes, strict=True)):
        true = [str(c) for c in true]
        if true == [NORMAL]:
            predictions.append(None)
            continue
        unknown = [c for c in true if c not in hits]
        if unknown or not true:
            raise ValueError(f"video {v}: classes {true} are not anomaly classes of {names}")
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(names) or p.shape[0] == 0:
            raise ValueError(f"video {v}: probabilities must be [n >= 1, {len(names)}], got "
                             f"{p.shape}")
        if video_score == "mean":
            scores = p[:, 1:].mean(0)
        else:
            scores = np.array([video_class_score(p[:, c]) for c in range(1, len(names))])
        pred = names[1 + int(np.argmax(scores))]
        predictions.append(pred)
        ok = pred in true
        correct += ok
        total += 1
        for c in true:
            hits[c][0] += ok
            hits[c][1] += 1
    if total == 0:
        raise ValueError("video classification accuracy needs at least one anomalous video")
    per_class = {c: {"accuracy": (h[0] / h[1] if h[1] else None), "n_videos": h[1]}
                 for c, h in hits.items()}
    seen = [d["accuracy"] for d in per_class.values() if d["accuracy"] is not None]
    return {
        "accuracy": correct / total,
        "mean_class_accuracy": float(np.mean(seen)),
        "n_videos": total,
        "per_class": per_class,
        "video_score": video_score,
        "predictions": predictions,
    }
