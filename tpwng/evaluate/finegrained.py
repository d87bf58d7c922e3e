"""What kind of anomaly: frame class probabilities, fine-grained detection mAP, video
classification. The per-snippet class probabilities themselves are the model's
(`tpwng.model.class_probs`).

Fine-grained detection follows the protocol of the published XD-Violence / UCF-Crime evaluation
scripts of VadCLIP (see `published_fine_grained_map`); `published_class_agnostic_map` is the same
protocol on one anomaly curve. Two named modes (`fine_grained_map`, `PROTOCOLS`): ``"ours"``
(the default) and ``"published"``, the scripts' behaviour as shipped, which differs from ours in
three ways (`protocol_options`): on UCF-Crime the normal class never has ground truth, annotation
ends are kept as written past the video's end, and one class without proposals makes the mAP 0.
Frame intervals are 0-based and end-exclusive throughout.
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

EmptyClass = Literal["zero_class", "zero_all"]
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
    """Ground-truth segments of one test video for `published_fine_grained_map`.

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


def _class_ap(
    proposals: list[tuple[int, int, int, float]],
    gt: dict[int, list[tuple[int, int]]],
    n_gt: int,
    t: float,
) -> float:
    """AP of one class at IoU ``t``: Σ precision at each true positive / number of GT segments.

    ``proposals`` are ``(video, start, end, score)``, ranked here by descending score (stable:
    ties keep video order, then temporal order). A proposal is a true positive when some unused
    GT segment of its video has IoU ``>= t`` (`match_proposals`: a match depends on its own
    video's proposals only, so each video is matched on its own).
    """
    if n_gt == 0 or not proposals:
        return 0.0
    by_video: dict[int, list[int]] = {}
    for i, (v, *_) in enumerate(proposals):
        by_video.setdefault(v, []).append(i)
    hit = np.zeros(len(proposals), dtype=bool)
    for v, members in by_video.items():
        hit[members] = match_proposals([proposals[i][1:] for i in members], gt.get(v, []), t)
    order = sorted(range(len(proposals)), key=lambda i: -proposals[i][3])
    tp = hit[order].astype(np.float64)
    precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    return float(np.sum(precision * tp) / n_gt)


def _check_ious(ious: Sequence[float]) -> list[float]:
    ious = [float(t) for t in ious]
    if not ious or any(not 0.0 < t <= 1.0 for t in ious):
        raise ValueError(f"IoU thresholds must be in (0, 1], got {ious}")
    return ious


def _cut(segment: tuple[int, int], n_frames: int, what: str,
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
    the video (`_cut`) or kept as written, ``normal`` segments dropped without
    ``normal_ground_truth``; a class outside ``names`` is an error naming ``what``."""
    index = {c: i for i, c in enumerate(names)}
    out = []
    for name, s, e in segments:
        if name not in index:
            raise ValueError(f"{what}: ground-truth class {name!r} is not in {list(names)}")
        cut = _cut((s, e), n_frames, what, cut_to_video)
        if cut is not None and (name != NORMAL or normal_ground_truth):
            out.append((index[name], *cut))
    return out


# --------------------------------------------------------------------------- detection mAP


def published_fine_grained_map(
    frame_probs: Sequence[np.ndarray],
    ground_truth: Sequence[Sequence[Segment]],
    classnames: Sequence[str],
    ious: Sequence[float] = DEFAULT_IOUS,
    empty_class: EmptyClass = "zero_class",
    cut_to_video: bool = True,
    normal_ground_truth: bool = True,
) -> dict:
    """Fine-grained temporal detection mAP in the protocol of the published XD-Violence and
    UCF-Crime scripts (VadCLIP's); the defaults are our choices (`fine_grained_map` names the
    two modes).

    Per video ``v`` and class ``c`` (normal included), on the per-frame curve
    ``p_v[:, c]`` (`frame_class_probabilities`): proposals are `curve_proposals` — runs above
    ``max - 0.6 (max - min)``, >= 2 frames, scored ``max + 0.7 · mean(top ⌊frames/16⌋)``, NMS at
    IoU 0.6. Per class, all videos' proposals in descending score are matched greedily to that
    class's GT segments (frame-set IoU ``>= t``, each GT used once, best IoU), and
    ``AP_c = Σ_{TP} precision / #GT_c`` (0 for a class without GT segments).
    ``mAP@t = mean_c AP_c`` over all ``k`` classes; ``mAP_avg`` is the mean over ``ious``.

    Ground truth per video comes from `video_ground_truth`: a normal video is one ``normal``
    segment over the whole video, so normal-class proposals inside anomalous videos are false
    positives. GT intervals are cut to the video's frame count (``cut_to_video``, ours); with
    ``cut_to_video=False`` they are kept as written, ends past the video included (the published
    scripts' ``gt_segment`` files), so such a segment's IoU counts frames no proposal can cover.

    ``empty_class`` decides what a class without any proposal (in any video) does:
    ``"zero_class"`` (ours, the default) gives that class AP 0 and averages as usual;
    ``"zero_all"`` reproduces the published scripts, whose mAP at every threshold is then 0.

    ``normal_ground_truth=False`` drops every ``normal`` GT segment while the normal class stays
    in the mean: its AP is 0 and ``mAP = Σ anomaly APs / k``. That is what the published
    UCF-Crime script computes (its ground-truth label of normal videos, ``A``, is not in its
    class list, where normal is ``Normal``).

    Values are fractions in [0, 1] (the scripts print them × 100). Proposals of equal score
    keep video order, then temporal order (the scripts' sort leaves such ties unordered).

    Args:
        frame_probs: per video ``[frames, k]`` class probabilities, columns in ``classnames``
            order.
        ground_truth: per video ``(class name, start, end)`` segments.
        classnames: the ``k`` class names, ``classnames[0] == "normal"``.

    Returns:
        ``{"mAP@0.1": ..., ..., "mAP_avg": ..., "per_class": {name: {"AP@0.1": ..., "AP_avg":
        ..., "n_gt": ..., "n_proposals": ...}}, "empty_classes": [...], "empty_class": ...,
        "cut_to_video": ..., "normal_ground_truth": ..., "gt_past_end": ...}`` where
        ``gt_past_end`` counts the GT segments kept ending past their video.
    """
    if empty_class not in ("zero_class", "zero_all"):
        raise ValueError(f"empty_class must be 'zero_class' or 'zero_all', got {empty_class!r}")
    ious = _check_ious(ious)
    _check_lengths(frame_probs, ground_truth)
    proposals, frames = _class_proposals(frame_probs, len(classnames))
    return _score_map(proposals, frames, ground_truth, list(classnames), ious, empty_class,
                      cut_to_video, normal_ground_truth)


ClassProposals = list[list[tuple[int, int, int, float]]]  # per class: (video, start, end, score)


def _check_lengths(frame_probs: Sequence[np.ndarray],
                   ground_truth: Sequence[Sequence[Segment]]) -> None:
    if len(frame_probs) != len(ground_truth):
        raise ValueError(f"{len(frame_probs)} videos of probabilities but {len(ground_truth)} "
                         "of ground truth")


def _class_proposals(frame_probs: Sequence[np.ndarray], k: int) -> tuple[ClassProposals,
                                                                           list[int]]:
    """Per class, every video's `curve_proposals`; and each video's frame count."""
    proposals: ClassProposals = [[] for _ in range(k)]
    frames = []
    for v, probs in enumerate(frame_probs):
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != k:
            raise ValueError(f"video {v}: probabilities must be [frames, {k}], got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"video {v}: probabilities contain NaN or inf")
        for c in range(k):
            proposals[c] += [(v, s, e, score) for s, e, score in curve_proposals(p[:, c])]
        frames.append(p.shape[0])
    return proposals, frames


def _score_map(proposals: ClassProposals, frames: list[int],
               ground_truth: Sequence[Sequence[Segment]], names: list[str], ious: list[float],
               empty_class: EmptyClass, cut_to_video: bool, normal_ground_truth: bool) -> dict:
    """`published_fine_grained_map` from the proposals of `_class_proposals`."""
    k = len(names)
    gt: list[dict[int, list[tuple[int, int]]]] = [{} for _ in range(k)]
    past_end = 0
    for v, segments in enumerate(ground_truth):
        for c, s, e in protocol_segments(segments, frames[v], names, cut_to_video,
                                         normal_ground_truth, f"video {v}"):
            gt[c].setdefault(v, []).append((s, e))
            past_end += e > frames[v]

    n_gt = [sum(len(g) for g in gt[c].values()) for c in range(k)]
    empty = [names[c] for c in range(k) if not proposals[c]]
    per_class: dict[str, dict] = {}
    for c, name in enumerate(names):
        aps = {f"AP@{t:g}": _class_ap(proposals[c], gt[c], n_gt[c], t) for t in ious}
        aps["AP_avg"] = float(np.mean(list(aps.values())))
        per_class[name] = {**aps, "n_gt": n_gt[c], "n_proposals": len(proposals[c])}
    out: dict = {}
    for t in ious:
        value = float(np.mean([per_class[n][f"AP@{t:g}"] for n in names]))
        out[f"mAP@{t:g}"] = 0.0 if (empty and empty_class == "zero_all") else value
    out["mAP_avg"] = float(np.mean([out[f"mAP@{t:g}"] for t in ious]))
    out |= {"per_class": per_class, "empty_classes": empty, "empty_class": empty_class,
            "cut_to_video": cut_to_video, "normal_ground_truth": normal_ground_truth,
            "gt_past_end": past_end}
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


def fine_grained_map(
    frame_probs: Sequence[np.ndarray],
    ground_truth: Sequence[Sequence[Segment]],
    classnames: Sequence[str],
    protocol: Protocol = "ours",
    fmt: str | None = None,
    ious: Sequence[float] = DEFAULT_IOUS,
) -> dict:
    """`published_fine_grained_map` in a named protocol (`protocol_options`); ``fmt`` (the
    dataset format) is needed by ``"published"``. For ``"published"``, ``ground_truth`` must
    carry the annotation ends as written. The result also names its ``protocol``."""
    return fine_grained_maps(frame_probs, {protocol: ground_truth}, classnames, fmt,
                             ious)[protocol]


def fine_grained_maps(
    frame_probs: Sequence[np.ndarray],
    ground_truth: dict[Protocol, Sequence[Sequence[Segment]]],
    classnames: Sequence[str],
    fmt: str | None = None,
    ious: Sequence[float] = DEFAULT_IOUS,
) -> dict[Protocol, dict]:
    """`fine_grained_map` in several protocols at once (protocol -> its ground truth), the
    proposals, which do not depend on the protocol, found once."""
    options = {protocol: protocol_options(protocol, fmt) for protocol in ground_truth}
    ious = _check_ious(ious)
    for gt in ground_truth.values():
        _check_lengths(frame_probs, gt)
    proposals, frames = _class_proposals(frame_probs, len(classnames))
    return {protocol: {**_score_map(proposals, frames, gt, list(classnames), ious,
                                    **options[protocol]), "protocol": protocol}
            for protocol, gt in ground_truth.items()}


def published_class_agnostic_map(
    frame_scores: Sequence[np.ndarray],
    ground_truth: Sequence[Sequence[tuple[int, int]]],
    ious: Sequence[float] = DEFAULT_IOUS,
) -> dict[str, float]:
    """The same protocol on one anomaly curve per video (e.g. ``η`` = 1 - p(normal)).

    Proposals are `curve_proposals` of each video's frame scores; ground truth is every
    anomaly interval regardless of class (normal videos have none); ``AP@t`` as in
    `published_fine_grained_map` for that single class. Returns ``{"mAP@0.1": ..., "mAP_avg":
    ...}`` (one class, so AP = mAP).
    """
    ious = _check_ious(ious)
    if len(frame_scores) != len(ground_truth):
        raise ValueError(f"{len(frame_scores)} videos of scores but {len(ground_truth)} of "
                         "ground truth")
    proposals: list[tuple[int, int, int, float]] = []
    gt: dict[int, list[tuple[int, int]]] = {}
    for v, (scores, intervals) in enumerate(zip(frame_scores, ground_truth, strict=True)):
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1 or not np.all(np.isfinite(s)):
            raise ValueError(f"video {v}: frame scores must be 1-D and finite")
        proposals += [(v, a, b, score) for a, b, score in curve_proposals(s)]
        for interval in intervals:
            cut = _cut(interval, s.size, f"video {v}")
            if cut is not None:
                gt.setdefault(v, []).append(cut)
    n_gt = sum(len(g) for g in gt.values())
    out = {f"mAP@{t:g}": _class_ap(proposals, gt, n_gt, t) for t in ious}
    out["mAP_avg"] = float(np.mean(list(out.values())))
    return out


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
