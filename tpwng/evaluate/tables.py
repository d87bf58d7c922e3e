"""The evaluate stage: metric tables and plots from a scores file and the manifest's ground
truth (the reference detectors' table is `tpwng.evaluate.baseline_table`)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tpwng import RESOURCES, __version__
from tpwng.data.datasets import NORMAL, Interval
from tpwng.data.manifest import ManifestRow, read_cuts, read_manifest
from tpwng.evaluate.detection_map import fine_grained_maps
from tpwng.evaluate.finegrained import (
    DEFAULT_IOUS,
    NORMAL_QUIRK_FORMATS,
    frame_class_probabilities,
    parse_xd_multiclass_annotation,
    video_classification_accuracy,
    video_ground_truth,
)
from tpwng.evaluate.metrics import (
    VideoResult,
    metrics_table,
)
from tpwng.evaluate.plots import plot_roc_pr, plot_score_curves
from tpwng.evaluate.scores_file import (
    check_scored_by,
    read_class_probs,
    read_model_record,
    read_scores,
    read_stride,
)
from tpwng.files import write_json, write_table
from tpwng.grid import frame_labels, whole_snippet_frames

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


FRAME_CONVENTIONS = ("video", "snippets")


def video_results(manifest: Path, scores: Path, frames: str = "video") -> list[VideoResult]:
    """Scores and ground truth of every scored test video, in the scores file's order.

    ``frames="video"`` scores each video's own frames (``scores.h5`` frame scores);
    ``"snippets"`` scores stride x snippets frames, each snippet's score repeated over its
    stride and the last partial snippet padded with its own score, as the published evaluation
    scripts do; the padded frames lie past the video's end, where no annotation reaches, so
    their ground truth is normal.
    """
    if frames not in FRAME_CONVENTIONS:
        raise ValueError(f"evaluate.frames must be one of {FRAME_CONVENTIONS}, got {frames!r}")
    rows = {r.video_id: r for r in read_manifest(manifest) if r.split == "test"}
    order, frame_scores, snippet_scores = read_scores(scores)
    missing = sorted(set(rows) - set(order))
    if missing:
        raise ValueError(f"{scores}: no scores for test videos {missing[:5]}")
    stride = read_stride(scores)
    out = []
    for v in order:
        if frames == "video":
            values, n = frame_scores[v], rows[v].frames
        else:
            values = whole_snippet_frames(snippet_scores[v], stride)
            n = len(values)
            if n < rows[v].frames:
                raise ValueError(f"{scores}: video {v} has {len(snippet_scores[v])} snippets of "
                                 f"{stride} frames, fewer than its {rows[v].frames} frames")
        out.append(VideoResult(v, list(rows[v].classes), values,
                               frame_labels(rows[v].intervals, n)))
    return out


XD_CLASS_ANNOTATION = RESOURCES / "xd_violence" / "annotations_multiclasses.txt"
FINE_GRAINED_PROTOCOL = (
    "ours: the published fine-grained detection protocol (VadCLIP-style XD-Violence / UCF-Crime "
    "scripts): per class, normal included, proposals are runs of the per-frame class-probability "
    "curve above max - 0.6 (max - min), >= 2 frames, scored max + 0.7 x mean of the top "
    "frames/16, matched greedily at IoU >= t; AP = sum of precision at true positives / "
    "ground-truth segments; mAP = mean over all classes. Ground truth: XD-Violence per-class "
    "intervals of annotations_multiclasses.txt, other datasets the manifest intervals under the "
    "video's class, cut to the evaluated frames; a normal video is one normal segment, scored on "
    "every dataset. Empty classes (no proposal in any video, listed in "
    "fine_grained_empty_classes) count AP 0 in the mean; the published scripts then report mAP 0 "
    "at every threshold (fine_grained_published_*: the scripts' behaviour)"
)


def published_protocol_description(fmt: str, past_end: int, ends_from: str) -> str:
    """The ``fine_grained_published_protocol`` line: the published scripts' behaviour on a
    dataset of format ``fmt`` with ``past_end`` GT segments ending past their video."""
    normal = ("normal class without ground truth (the UCF-Crime script's quirk: its normal "
              "videos' label 'A' is not in its class list), so normal scores AP 0 and the mean "
              "is the anomaly APs over all classes (13/14 of their mean on UCF-Crime)"
              if fmt in NORMAL_QUIRK_FORMATS else
              "normal class scored (the XD-Violence script)")
    return (f"published: VadCLIP's *_detectionMAP.py on its gt_segment/gt_label files: same "
            f"proposals and matching as ours; {normal}; annotation ends as written ({past_end} "
            f"ground-truth segments end past their video; ends from {ends_from}); a class "
            "without proposals makes the mAP 0 at every threshold")


def class_ground_truth(videos: Sequence[VideoResult], rows: dict[str, ManifestRow], fmt: str,
                       written: dict[str, list[Interval]] | None = None,
                       ) -> list[list[tuple[str, int, int]]]:
    """Per video its ``(class, start, end)`` ground-truth segments for the fine-grained mAP
    (`tpwng.evaluate.finegrained.video_ground_truth`): XD-Violence (``fmt == "xd"``) takes the
    per-class intervals of ``annotations_multiclasses.txt`` (as written), other formats the
    manifest's intervals under the video's class, or a video's intervals in ``written`` (see
    `written_intervals`) where given."""
    per_class = parse_xd_multiclass_annotation(XD_CLASS_ANNOTATION) if fmt == "xd" else {}
    written = written or {}
    out = []
    for v in videos:
        row = rows[v.video_id]
        anomalous = list(row.classes) != [NORMAL]
        intervals = per_class.get(v.video_id) if anomalous else None
        plain = written.get(v.video_id, row.intervals)
        try:
            out.append(video_ground_truth(row.classes, v.n_frames, plain, intervals))
        except ValueError as exc:
            raise ValueError(f"test video {v.video_id}: {exc}") from None
    return out


def written_intervals(rows: dict[str, ManifestRow], cuts: Path) -> dict[str, list[Interval]]:
    """Each test video's manifest intervals with the annotation ends as written: an interval
    that the manifest stage cut to the video's end (listed in ``cuts``, its
    ``annotation_cuts.tsv``) gets its written end back. Cuts of videos outside ``rows`` (not
    test videos) are passed over; a cut that does not match its test video's manifest row (a
    list of another manifest) is an error naming the file."""
    out = {v: list(r.intervals) for v, r in rows.items()}
    for cut in read_cuts(cuts):
        row = rows.get(cut.video_id)
        if row is None:
            continue
        here = out[cut.video_id]
        if cut.used not in here or cut.frames != row.frames:
            raise ValueError(f"{cuts}: cut {cut.written[0]}-{cut.written[1]} -> "
                             f"{cut.used[0]}-{cut.used[1]} of video {cut.video_id} "
                             f"({cut.frames} frames) does not match the manifest (intervals "
                             f"{row.intervals}, {row.frames} frames); rerun the manifest stage")
        here[here.index(cut.used)] = cut.written
    return out


def class_metrics(videos: Sequence[VideoResult], rows: dict[str, ManifestRow], scores: Path,
                  fmt: str, cuts: Path | None = None) -> dict:
    """The fine-grained detection mAP in both protocols (ours, ``fine_grained_*``, and the
    published scripts', ``fine_grained_published_*``; `tpwng.evaluate.finegrained.
    protocol_options`) and the video classification accuracy of the anomalous test videos,
    from the class probabilities of a scores file.

    Frame-level class probabilities span the frames each video is evaluated on (its
    ``VideoResult``, i.e. ``evaluate.frames``); the classification uses the snippet
    probabilities (a video's class: argmax over the anomaly classes of their mean). The
    published mode's annotation ends as written come from ``cuts`` (the manifest's
    ``annotation_cuts.tsv``); without it, the manifest's intervals stand (said in the protocol
    line and the log).
    """
    classes, probs = read_class_probs(scores)
    stride = read_stride(scores)
    frame_probs = [frame_class_probabilities(probs[v.video_id], v.n_frames, stride)
                   for v in videos]
    if cuts is None:
        log.warning("no annotation-cuts list given: the published fine-grained mAP takes the "
                    "manifest's intervals, cut ends included")
        written, ends_from = None, "the manifest (no annotation-cuts list given)"
    else:
        written, ends_from = written_intervals(rows, cuts), Path(cuts).name
    ends_from += " and annotations_multiclasses.txt" if fmt == "xd" else ""
    maps = fine_grained_maps(frame_probs, {
        "ours": class_ground_truth(videos, rows, fmt),
        "published": class_ground_truth(videos, rows, fmt, written)}, classes, fmt)
    fine, pub = maps["ours"], maps["published"]
    out: dict = {f"fine_grained_mAP@{t:g}": fine[f"mAP@{t:g}"] for t in DEFAULT_IOUS}
    out["fine_grained_mAP_avg"] = fine["mAP_avg"]
    out["fine_grained_class_AP_avg"] = {c: d["AP_avg"] for c, d in fine["per_class"].items()}
    out["fine_grained_empty_classes"] = ", ".join(fine["empty_classes"])
    out["fine_grained_protocol"] = FINE_GRAINED_PROTOCOL
    out |= {f"fine_grained_published_mAP@{t:g}": pub[f"mAP@{t:g}"] for t in DEFAULT_IOUS}
    out["fine_grained_published_mAP_avg"] = pub["mAP_avg"]
    out["fine_grained_published_class_AP_avg"] = {c: d["AP_avg"]
                                                  for c, d in pub["per_class"].items()}
    out["fine_grained_published_protocol"] = published_protocol_description(
        fmt, pub["gt_past_end"], ends_from)
    acc = video_classification_accuracy([probs[v.video_id] for v in videos],
                                        [v.classes for v in videos], classes)
    seen = {c: d for c, d in acc["per_class"].items() if d["n_videos"]}
    out["video_classification"] = {
        "top1_accuracy": acc["accuracy"],
        "mean_class_accuracy": acc["mean_class_accuracy"],
        "n_videos": acc["n_videos"],
        "per_class": {c: d["accuracy"] for c, d in seen.items()},
        "videos_per_class": {c: d["n_videos"] for c, d in seen.items()},
    }
    return out


def _cell(value: object) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def evaluate(settings: dict, manifest: Path, scores: Path, model: Path | None, prefix: str,
             cuts: Path | None = None) -> dict:
    """Write ``PREFIX_metrics.{json,tsv}``, ``PREFIX_auc.json``, ``PREFIX_ap.json`` and the
    score plots; ``cuts`` is the manifest's ``annotation_cuts.tsv`` (`class_metrics`). The
    model's record comes from the scores file; ``model``, when given, must be the checkpoint
    that wrote it (`tpwng.evaluate.scores_file.check_scored_by`)."""
    scored_by = read_model_record(scores)
    if model is not None:
        check_scored_by(scores, model)
    convention = settings["evaluate"]["frames"]
    videos = video_results(manifest, scores, convention)
    threshold = float(settings["evaluate"]["threshold"])
    table = metrics_table(videos, threshold=threshold)
    rows = read_manifest(manifest)
    table |= class_metrics(videos, {r.video_id: r for r in rows if r.split == "test"}, scores,
                           settings["format"], cuts)
    record = {
        "dataset": settings["name"],
        "split_sizes": {s: sum(r.split == s for r in rows) for s in ("train", "test")},
        "settings_hash": scored_by["settings_hash"],  # of the settings the model was trained with
        "git_commit": git_commit(),
        "clip_weights": scored_by["clip_weights"],
        "random_init_clip": scored_by["random_init_clip"],
        "clip_model": scored_by["clip_model"],
        "features_source": scored_by["features_source"],
        "epochs": scored_by["epochs"],
        "seed": scored_by["seed"],
        "tpwng_version": __version__,
        "frame_convention": convention,
        "frames_evaluated": int(sum(v.frame_scores.size for v in videos)),
        "videos_evaluated": len(videos),
    }
    full = {**record, "metrics": table}
    write_json(Path(f"{prefix}_metrics.json"), full)
    write_json(Path(f"{prefix}_auc.json"),
               {**record, "metric": "frame_auc", "value": table["frame_auc"]})
    write_json(Path(f"{prefix}_ap.json"),
               {**record, "metric": "frame_ap", "value": table["frame_ap"]})
    flat = _flatten(table)
    write_table(Path(f"{prefix}_metrics.tsv"),
                pd.DataFrame({"metric": list(flat), "value": [_cell(v) for v in flat.values()]}))
    plots = Path(prefix) / "plots"
    n = int(settings["evaluate"]["plot_videos"])
    plot_score_curves(videos, plots / "score_curves.png", max_videos=n,
                      title=f"{settings['name']}: frame AUC {table['frame_auc']:.4f}")
    plot_roc_pr(videos, plots / "roc_pr.png")
    log.info("%s: frame AUC %.4f, AP %.4f", settings["name"], table["frame_auc"],
             table["frame_ap"])
    return full
