"""Metric tables and plots from a scores file and the manifest's ground truth, and the
table of reference detectors beside TPWNG (`baselines`)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tpwng import RESOURCES, __version__
from tpwng.data.datasets import NORMAL, Interval
from tpwng.data.manifest import ManifestRow, read_cuts, read_manifest
from tpwng.evaluate.baselines import MilSettings, nearest_normal_distance, topk_mil_ranking
from tpwng.evaluate.finegrained import (
    DEFAULT_IOUS,
    NORMAL_QUIRK_FORMATS,
    fine_grained_maps,
    frame_class_probabilities,
    parse_xd_multiclass_annotation,
    video_classification_accuracy,
    video_ground_truth,
)
from tpwng.evaluate.inference import pick_crop, read_class_probs, read_scores, read_stride
from tpwng.evaluate.metrics import (
    VideoResult,
    anomalous_only_auc,
    false_alarm_rate,
    frame_ap,
    frame_auc,
    metrics_table,
)
from tpwng.evaluate.plots import plot_roc_pr, plot_score_curves, spread
from tpwng.features.provenance import expected_store_provenance, store_source
from tpwng.features.store import FeatureStore
from tpwng.files import write_json, write_table
from tpwng.grid import expand_to_frames, frame_labels, whole_snippet_frames
from tpwng.train.checkpoint import load_checkpoint

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


def evaluate(settings: dict, manifest: Path, scores: Path, model: Path, prefix: str,
             cuts: Path | None = None) -> dict:
    """Write ``PREFIX_metrics.{json,tsv}``, ``PREFIX_auc.json``, ``PREFIX_ap.json`` and the
    score plots; ``cuts`` is the manifest's ``annotation_cuts.tsv`` (`class_metrics`)."""
    convention = settings["evaluate"].get("frames", "video")
    videos = video_results(manifest, scores, convention)
    threshold = float(settings["evaluate"]["threshold"])
    table = metrics_table(videos, threshold=threshold)
    rows = read_manifest(manifest)
    table |= class_metrics(videos, {r.video_id: r for r in rows if r.split == "test"}, scores,
                           settings["format"], cuts)
    meta = load_checkpoint(model)["meta"]
    record = {
        "dataset": settings["name"],
        "split_sizes": {s: sum(r.split == s for r in rows) for s in ("train", "test")},
        "settings_hash": meta["settings_hash"],  # of the settings the model was trained with
        "git_commit": git_commit(),
        "clip_weights": meta["clip"]["weights"],
        "random_init_clip": bool(meta["clip"]["random_init"]),
        "clip_model": meta["clip"]["model"],
        "features_source": store_source(meta["store"]),
        "epochs": meta["epochs"],
        "seed": meta["seed"],
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


# --------------------------------------------------------------------------- baselines

BASELINE_SCORES = {
    "nearest_normal": "distance to the nearest normal training snippet (false alarms: "
                      "logistic calibration on the training videos' labels)",
    "topk_mil": "snippet MLP trained with the top-k MIL ranking hinge",
    "tpwng": "TPWNG anomaly score (scores.h5)",
}
CALIBRATION_VIDEOS = 32  # at most this many normal and anomalous training videos calibrate


def nearest_normal_calibration(
    train: Sequence[np.ndarray], labels: Sequence[int], max_videos: int = CALIBRATION_VIDEOS,
    k_divisor: int = 16,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A map of nearest-normal distances to [0, 1] fitted on the training videos' weak labels,
    so that the false-alarm threshold means for the distance what it means for a probability.

    Each of up to ``max_videos`` normal training videos is scored against the normal videos
    other than itself (leave one video out), each of up to ``max_videos`` anomalous ones
    against all normal videos; a video's score is the mean of its top ``max(1, T // 16)``
    snippet distances (MIL's video score). A class-balanced logistic regression of the video
    label on that score gives ``s(d) = σ(a·d + b)``. None with fewer than two normal or no
    anomalous training videos.
    """
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if len(normal) < 2 or len(anomalous) == 0:
        return None
    held = [int(normal[i]) for i in spread(len(normal), max_videos)]
    picked = [int(anomalous[i]) for i in spread(len(anomalous), max_videos)]
    distances = [nearest_normal_distance([train[j] for j in normal if j != i],
                                         [0] * (len(normal) - 1), [train[i]])[0] for i in held]
    distances += nearest_normal_distance([train[j] for j in normal], [0] * len(normal),
                                         [train[i] for i in picked])

    def video_score(d: np.ndarray) -> float:
        return float(np.sort(d)[::-1][: max(1, d.size // k_divisor)].mean())

    x = np.array([video_score(d) for d in distances])
    y = np.array([0] * len(held) + [1] * len(picked))
    mean, std = x.mean(), max(x.std(), 1e-12)
    fit = LogisticRegression(class_weight="balanced").fit(((x - mean) / std)[:, None], y)
    a = float(fit.coef_[0, 0]) / std
    b = float(fit.intercept_[0]) - a * mean
    log.info("nearest-normal calibration on %d + %d training videos: s(d) = sigmoid(%.4g d "
             "%+.4g)", len(held), len(picked), a, b)
    return lambda d: expit(a * np.asarray(d, dtype=np.float64) + b)


def _as_videos(truth: Sequence[VideoResult], snippet_scores: Sequence[np.ndarray],
               stride: int) -> list[VideoResult]:
    """Another method's snippet scores on TPWNG's test videos, frames and ground truth (each
    snippet's score over its stride, cut or padded to the evaluated frames)."""
    return [VideoResult(t.video_id, t.classes, expand_to_frames(s, t.n_frames, stride),
                        t.frame_labels) for t, s in zip(truth, snippet_scores, strict=True)]


def _frame_metrics(videos: Sequence[VideoResult], alarms: Sequence[VideoResult] | None,
                   threshold: float) -> dict:
    return {"frame_auc": frame_auc(videos), "frame_ap": frame_ap(videos),
            "anomalous_auc": anomalous_only_auc(videos),
            "false_alarm_rate": (None if alarms is None
                                 else false_alarm_rate(alarms, threshold))}


def baselines_report(settings: dict, manifest: Path, features: Path, scores: Path, out: Path,
                     mil: MilSettings | None = None) -> pd.DataFrame:
    """Nearest-normal distance and top-k MIL ranking beside TPWNG, one row per method.

    Both detectors read the same store as TPWNG (crop ``train.test_crop``, or the only one),
    learn from the training videos' labels, and score the test videos of ``scores`` (TPWNG's),
    in its order, on the frames ``evaluate.frames`` asks for. Frame AUC, AP, AUC on anomalous
    videos and false-alarm rate (frames of normal videos scored ``>= evaluate.threshold``) are
    those of `tpwng.evaluate.metrics.metrics_table`; the TPWNG row equals the metrics table's. The
    nearest-normal distance is unbounded: its false alarms are counted on the calibrated score
    of `nearest_normal_calibration` (a monotone map, so AUC and AP are the distance's).
    """
    import torch

    convention = settings["evaluate"].get("frames", "video")
    threshold = float(settings["evaluate"]["threshold"])
    crop = int(settings["train"]["test_crop"])
    torch.set_num_threads(int(settings["train"].get("threads", 2)))
    truth = video_results(manifest, scores, convention)
    stride = read_stride(scores)
    train_rows = [r for r in read_manifest(manifest) if r.split == "train"]
    with FeatureStore(features) as store:
        store.check_compatible(expected_store_provenance(settings))
        train = [pick_crop(store.get(r.video_id), crop) for r in train_rows]
        test = [pick_crop(store.get(v.video_id), crop) for v in truth]
    labels = [int(r.label != NORMAL) for r in train_rows]

    distance = _as_videos(truth, nearest_normal_distance(train, labels, test), stride)
    calibrate = nearest_normal_calibration(train, labels)
    alarms = None if calibrate is None else [
        VideoResult(v.video_id, v.classes, calibrate(v.frame_scores), v.frame_labels)
        for v in distance]
    mil_videos = _as_videos(truth, topk_mil_ranking(train, labels, test, mil or MilSettings()),
                            stride)
    rows = {"nearest_normal": _frame_metrics(distance, alarms, threshold),
            "topk_mil": _frame_metrics(mil_videos, mil_videos, threshold),
            "tpwng": _frame_metrics(truth, truth, threshold)}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("method").reset_index()
    table = table.assign(threshold=threshold, frame_convention=convention,
                         videos=len(truth), frames=int(sum(v.n_frames for v in truth)),
                         train_videos=len(train_rows),
                         score=[BASELINE_SCORES[m] for m in table["method"]])
    write_table(out, table)
    for r in table.itertuples():
        log.info("%s: %s frame AUC %.4f, AP %.4f", settings["name"], r.method, r.frame_auc,
                 r.frame_ap)
    return table
