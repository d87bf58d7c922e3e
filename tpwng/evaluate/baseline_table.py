"""The baselines stage: reference detectors (`tpwng.evaluate.baselines`) beside TPWNG on the
test videos of its scores file, one table row per method."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tpwng.data.datasets import NORMAL
from tpwng.data.manifest import read_manifest
from tpwng.evaluate.baselines import MilSettings, nearest_normal_distance, topk_mil_ranking
from tpwng.evaluate.metrics import (
    VideoResult,
    anomalous_only_auc,
    false_alarm_rate,
    frame_ap,
    frame_auc,
)
from tpwng.evaluate.plots import spread
from tpwng.evaluate.scores_file import read_stride
from tpwng.evaluate.tables import video_results
from tpwng.features.provenance import expected_store_provenance
from tpwng.features.store import FeatureStore, pick_crop
from tpwng.files import write_table
from tpwng.grid import expand_to_frames
from tpwng.train.loop import TrainSettings

log = logging.getLogger(__name__)


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

    convention = settings["evaluate"]["frames"]
    threshold = float(settings["evaluate"]["threshold"])
    crop = int(settings["train"]["test_crop"])
    torch.set_num_threads(TrainSettings.from_settings(settings).threads)  # schema default
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
