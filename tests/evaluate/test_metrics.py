"""Metrics against hand computations and independent implementations."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest

from tpwng.evaluate.metrics import (
    VideoResult,
    anomalous_only_auc,
    detection_map,
    false_alarm_rate,
    frame_ap,
    frame_auc,
    labels_to_intervals,
    metrics_table,
    per_class_auc,
    roc_pr_points,
    score_segments,
)
from tpwng.grid import expand_to_frames, frame_labels
from tpwng.train.label_quality import pseudo_label_quality

IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)
KEYS = [f"mAP@{t}" for t in IOUS]


def mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def video(vid: str, classes: list[str], scores, labels) -> VideoResult:
    return VideoResult(vid, classes, np.asarray(scores, float), np.asarray(labels, np.uint8))


def detection_video(n: int, gt: list[tuple[int, int]], pred: list[tuple[int, int, float]]):
    scores = np.zeros(n)
    for s, e, value in pred:
        scores[s:e] = value
    return video("v", ["abuse"], scores, frame_labels(gt, n))


# --------------------------------------------------------------------------- frames and labels


def test_expand_to_frames_repeats_and_cuts():
    out = expand_to_frames(np.array([0.1, 0.5, 0.9]), 40, stride=16)
    assert out.shape == (40,)
    np.testing.assert_array_equal(out[:16], 0.1)
    np.testing.assert_array_equal(out[16:32], 0.5)
    np.testing.assert_array_equal(out[32:], 0.9)
    assert np.count_nonzero(out == 0.9) == 8


def test_expand_to_frames_pads_with_last_value_and_other_stride():
    out = expand_to_frames(np.array([0.2, 0.7]), 7, stride=2)
    np.testing.assert_allclose(out, [0.2, 0.2, 0.7, 0.7, 0.7, 0.7, 0.7])
    assert expand_to_frames(np.array([0.3]), 0).shape == (0,)
    with pytest.raises(ValueError):
        expand_to_frames(np.array([]), 5)


def test_frame_labels_end_exclusive_and_checked():
    labels = frame_labels([(2, 4), (6, 10)], 10)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    assert frame_labels([], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="10 frames"):
        frame_labels([(5, 11)], 10)
    with pytest.raises(ValueError):
        frame_labels([(5, 3)], 10)


def test_labels_to_intervals_merges_touching_intervals():
    labels = frame_labels([(1, 3), (3, 5), (4, 6), (8, 9)], 9)
    assert labels_to_intervals(labels) == [(1, 6), (8, 9)]
    assert labels_to_intervals(np.zeros(4)) == []


def test_video_result_validates_and_labels():
    assert video("a", ["normal"], [0.1], [0]).label == "normal"
    assert video("b", ["abuse", "arrest"], [0.1], [1]).label == "anomalous"
    with pytest.raises(ValueError, match="'c'"):
        video("c", ["abuse"], [0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        video("d", ["abuse"], [np.nan], [1])
    with pytest.raises(ValueError):
        video("e", ["abuse"], [0.5], [2])


# --------------------------------------------------------------------------- frame-level metrics


@pytest.fixture
def videos() -> list[VideoResult]:
    return [
        video("a1", ["abuse"], [0.9, 0.8, 0.2, 0.4, 0.6], [1, 1, 0, 0, 1]),
        video("a2", ["arrest", "abuse"], [0.3, 0.7, 0.7, 0.1], [0, 1, 1, 0]),
        video("a3", ["arson"], [0.5, 0.35, 0.95], [0, 1, 1]),
        video("n1", ["normal"], [0.1, 0.6, 0.3, 0.2], [0, 0, 0, 0]),
        video("n2", ["normal"], [0.7, 0.5, 0.05], [0, 0, 0]),
    ]


def test_frame_auc_equals_mann_whitney(videos):
    scores = np.concatenate([v.frame_scores for v in videos])
    labels = np.concatenate([v.frame_labels for v in videos])
    assert frame_auc(videos) == pytest.approx(mann_whitney_auc(scores, labels))


def test_frame_ap_by_hand():
    # ranked: 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    vids = [video("a", ["abuse"], [0.9, 0.8, 0.7], [1, 0, 1]), video("n", ["normal"], [0.1], [0])]
    assert frame_ap(vids) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_one_class_only_raises_or_returns_none():
    normals = [video("n", ["normal"], [0.1, 0.9], [0, 0])]
    for fn in (frame_auc, frame_ap, roc_pr_points, detection_map):
        with pytest.raises(ValueError):
            fn(normals)
    assert anomalous_only_auc(normals) is None
    assert false_alarm_rate([video("a", ["abuse"], [0.5, 0.7], [0, 1])]) is None


def test_anomalous_only_auc(videos):
    anomalous = [v for v in videos if v.label == "anomalous"]
    scores = np.concatenate([v.frame_scores for v in anomalous])
    labels = np.concatenate([v.frame_labels for v in anomalous])
    assert anomalous_only_auc(videos) == pytest.approx(mann_whitney_auc(scores, labels))


def test_false_alarm_rate_by_hand(videos):
    # normal frames: 0.1 0.6 0.3 0.2 0.7 0.5 0.05 -> 0.6, 0.7, 0.5 are >= 0.5
    assert false_alarm_rate(videos) == pytest.approx(3 / 7)
    assert false_alarm_rate(videos, threshold=0.65) == pytest.approx(1 / 7)


def test_per_class_auc_counts_multilabel_video_in_each_class(videos):
    by_id = {v.video_id: v for v in videos}
    normal_ids = ["n1", "n2"]
    expected_members = {"abuse": ["a1", "a2"], "arrest": ["a2"], "arson": ["a3"]}
    got = per_class_auc(videos)
    assert list(got) == ["abuse", "arrest", "arson"]
    for cls, ids in expected_members.items():
        chosen = [by_id[i] for i in ids + normal_ids]
        scores = np.concatenate([v.frame_scores for v in chosen])
        labels = np.concatenate([v.frame_labels for v in chosen])
        assert got[cls] == pytest.approx(mann_whitney_auc(scores, labels)), cls


def test_roc_pr_points_shapes(videos):
    points = roc_pr_points(videos)
    assert set(points) == {"fpr", "tpr", "precision", "recall"}
    assert points["fpr"][0] == 0 and points["tpr"][-1] == 1
    assert len(points["precision"]) == len(points["recall"])


# --------------------------------------------------------------------------- temporal detection


def test_score_segments_on_crafted_vector():
    scores = np.array([0.1, 0.6, 0.8, 0.2, 0.5, 0.4, 0.9, 0.7, 1.0])
    assert score_segments(scores) == [
        (1, 3, pytest.approx(0.7)),
        (4, 5, pytest.approx(0.5)),
        (6, 9, pytest.approx(0.8666666666)),
    ]
    assert score_segments(scores, min_len=2) == [
        (1, 3, pytest.approx(0.7)),
        (6, 9, pytest.approx(0.8666666666)),
    ]
    assert score_segments(scores, threshold=0.95) == [(8, 9, 1.0)]
    assert score_segments(np.zeros(5)) == []


def test_detection_perfect_prediction_is_one_everywhere():
    gt = [(10, 30), (50, 60)]
    vids = [
        detection_video(100, gt, [(10, 30, 0.9), (50, 60, 0.8)]),
        video("n", ["normal"], np.zeros(40), np.zeros(40)),
    ]
    result = detection_map(vids)
    assert list(result) == [*KEYS, "mAP_avg"]
    for value in result.values():
        assert value == pytest.approx(1.0)


def test_detection_touching_annotations_are_one_ground_truth():
    labels = frame_labels([(10, 20), (20, 30)], 50)
    vids = [video("v", ["abuse"], labels * 0.9, labels)]
    assert detection_map(vids)["mAP@0.5"] == pytest.approx(1.0)


def test_detection_iou_between_thresholds():
    # prediction (0, 35) against ground truth (0, 100): IoU = 35 / 100 = 0.35
    vids = [detection_video(200, [(0, 100)], [(0, 35, 0.9)])]
    result = detection_map(vids)
    assert [result[k] for k in KEYS] == pytest.approx([1.0, 1.0, 1.0, 0.0, 0.0])
    assert result["mAP_avg"] == pytest.approx(0.6)


def test_detection_false_positive_above_true_positive():
    # ranked: FP (0.9), TP (0.8). precision 0, 1/2 at recall 0, 1 -> AP = 1/2
    vids = [detection_video(200, [(100, 150)], [(10, 30, 0.9), (100, 150, 0.8)])]
    for value in detection_map(vids).values():
        assert value == pytest.approx(0.5)


def test_detection_two_gts_fp_in_middle_and_duplicate_matches():
    # video 1: GT (0,50) and (100,150); predictions TP 0.9, FP 0.8 (other video), TP 0.7.
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    v1 = detection_video(200, [(0, 50), (100, 150)], [(0, 50, 0.9), (100, 150, 0.7)])
    v2 = video("n", ["normal"], np.r_[np.zeros(10), np.full(10, 0.8)], np.zeros(20))
    assert detection_map([v1, v2])["mAP@0.5"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a prediction matched to another video's ground truth never counts: IoU across videos
    v3 = detection_video(200, [], [(0, 50, 0.95)])
    v3 = video("other", ["abuse"], v3.frame_scores, v3.frame_labels)
    # ranked: FP 0.95 (v3), TP 0.9, FP 0.8, TP 0.7 -> precision 0, 1/2, 1/3, 1/2
    # monotone precision at recall 1/2 is 1/2 and at recall 1 is 1/2 -> AP = 1/2
    assert detection_map([v3, v1, v2])["mAP@0.5"] == pytest.approx(0.5)


def test_detection_no_predictions_scores_zero():
    vids = [detection_video(100, [(10, 20)], [])]
    assert detection_map(vids)["mAP_avg"] == 0.0


def test_metrics_table_is_json_ready(videos):
    table = metrics_table(videos)
    text = json.dumps(table)
    assert json.loads(text)["n_videos"] == 5
    assert table["n_anomalous"] == 3 and table["n_normal"] == 2 and table["n_frames"] == 19
    assert table["frame_auc"] == pytest.approx(frame_auc(videos))
    assert table["false_alarm_rate"] == pytest.approx(3 / 7)
    assert set(table["class_agnostic_detection"]) == {*KEYS, "mAP_avg"}
    assert set(table["per_class_auc"]) == {"abuse", "arrest", "arson"}


# --------------------------------------------------------------------------- pseudo-labels


def test_pseudo_label_quality_by_hand():
    pred = np.array([1, 1, 0, 1, 0, 0, 1])
    truth = np.array([1, 0, 0, 1, 1, 0, 1])
    # TP = 3, FP = 1, FN = 1
    got = pseudo_label_quality(pred, truth)
    assert got == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    got = pseudo_label_quality(np.array([1, 0, 0, 0]), np.array([1, 1, 1, 0]))
    assert got == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5})


def test_pseudo_label_quality_undefined_is_zero_and_checks_input():
    assert pseudo_label_quality(np.zeros(4), np.zeros(4)) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert pseudo_label_quality(np.zeros(3), np.ones(3))["recall"] == 0.0
    with pytest.raises(ValueError):
        pseudo_label_quality(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        pseudo_label_quality(np.array([0, 2]), np.array([0, 1]))
