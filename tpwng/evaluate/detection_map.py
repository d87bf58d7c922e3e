"""Fine-grained temporal detection mAP: the per-video proposals and matches of
`tpwng.evaluate.finegrained`, ranked per class over all videos and averaged over classes and IoU
thresholds, in a named protocol (`fine_grained_map`) or on one anomaly curve
(`published_class_agnostic_map`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from tpwng.evaluate.finegrained import (
    DEFAULT_IOUS,
    Protocol,
    Segment,
    curve_proposals,
    cut_interval,
    match_proposals,
    protocol_options,
    protocol_segments,
)

EmptyClass = Literal["zero_class", "zero_all"]


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
            cut = cut_interval(interval, s.size, f"video {v}")
            if cut is not None:
                gt.setdefault(v, []).append(cut)
    n_gt = sum(len(g) for g in gt.values())
    out = {f"mAP@{t:g}": _class_ap(proposals, gt, n_gt, t) for t in ious}
    out["mAP_avg"] = float(np.mean(list(out.values())))
    return out
