"""Class outputs of the pipeline: class probabilities in scores.h5, the fine-grained mAP and
video classification in the metrics, the baselines table and its place in the DAG."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers.dag import job_counts, snakemake, tiny_config
from tests.train.test_training import _settings
from tpwng.cli import main as tpwng_main
from tpwng.data.manifest import ManifestRow, read_manifest, write_manifest
from tpwng.evaluate import ablations
from tpwng.evaluate.baseline_table import nearest_normal_calibration
from tpwng.evaluate.detection_map import published_fine_grained_map
from tpwng.evaluate.finegrained import frame_class_probabilities, video_classification_accuracy
from tpwng.evaluate.scores_file import read_class_probs, read_scores
from tpwng.evaluate.tables import class_ground_truth, evaluate, video_results
from tpwng.features.store import FeatureStore, StoreError, StoreWriter
from tpwng.train.checkpoint import load_model

CLASSES = ["normal", "fighting", "riot"]
IOUS = ("0.1", "0.2", "0.3", "0.4", "0.5")


def _toy_dataset(d: Path, n: int = 9) -> tuple[Path, Path]:
    """Like tests/train/test_training.py's, with two anomaly classes pushed apart in feature
    space."""
    rng = np.random.default_rng(0)
    direction = {c: rng.normal(size=512) for c in CLASSES[1:]}
    prov = {"model": "tpwng-tiny-ViT-B-16", "weights": "random-init:seed=0", "stride": 16,
            "sample": "center", "crop_mode": "center", "dim": 512}
    rows = []
    with StoreWriter(d / "f.h5", prov) as w:
        for i in range(n):
            cls = CLASSES[i % 3]
            for split in ("train", "test"):
                t = int(rng.integers(8, 40))
                feats = rng.normal(size=(t, 1, 512))
                iv = []
                if cls != "normal":
                    a = int(rng.integers(1, t - 4))
                    feats[a : a + 4] += 0.8 * direction[cls]
                    iv = [] if split == "train" else [(16 * a, 16 * (a + 4) - 3)]
                vid = f"{split}{i}"
                w.add(vid, feats)
                rows.append(ManifestRow(vid, f"/x/{vid}.mp4", split, [cls], iv, 16 * t - 5,
                                        25.0, 32, 32))
    write_manifest(rows, d / "m.tsv")
    return d / "m.tsv", d / "f.h5"


def _toy_settings(frames: str = "video") -> dict:
    s = _settings(epochs=2) | {"classes": CLASSES}
    s["evaluate"] = s["evaluate"] | {"frames": frames}
    return s


def test_scores_carry_class_probabilities_of_the_text_tower(scored):
    s, d = scored
    classes, probs = read_class_probs(d / "scores.h5")
    order, frames, snippets = read_scores(d / "scores.h5")
    assert classes == CLASSES and list(probs) == order
    with h5py.File(d / "scores.h5") as f:
        assert f.attrs["classes"] == "normal\nfighting\nriot"
        assert sorted(f) == ["class_probs", "frames", "snippets"]
    model, _ = load_model(d / "model.pt", s)
    with torch.no_grad():
        text = model.text_embeddings()  # the text tower, not the checkpoint's copy
    rows = {r.video_id: r for r in read_manifest(d / "m.tsv")}
    with FeatureStore(d / "f.h5") as store:
        for v in order:
            x = torch.from_numpy(store.get(v)[:, 0].astype(np.float32))[None]
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
            p = probs[v]
            assert p.dtype == np.float32 and p.shape == (x.shape[1], 3)
            np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
            with torch.no_grad():
                want = model.class_probabilities(x, mask, text=text)[0].numpy()
                eta = model.score(x, mask)[0].numpy()
            np.testing.assert_allclose(p, want, atol=1e-6)
            np.testing.assert_allclose(p[:, 0], 1.0 - snippets[v], atol=1e-6)
            # the frame and snippet scores are exactly those of scoring alone
            assert np.array_equal(snippets[v], eta.astype(np.float32))
            assert frames[v].shape == (rows[v].frames,)
    assert not np.allclose(np.concatenate(list(probs.values()))[:, 1:].std(0), 0)


def test_a_scores_file_without_class_probabilities_is_one_clear_error(tmp_path):
    from tpwng.features.store import h5_create
    from tpwng.files import atomic_path

    with atomic_path(tmp_path / "s.h5") as tmp, h5_create(tmp) as f:
        f.attrs["order"] = ""
    with pytest.raises(StoreError, match="no class probabilities.*forcerun infer"):
        read_class_probs(tmp_path / "s.h5")


@pytest.mark.parametrize("frames", ["video", "snippets"])
def test_evaluate_writes_both_maps_and_the_classification_accuracy(scored, tmp_path, frames):
    s, d = scored
    s = _toy_settings(frames)
    full = evaluate(s, d / "m.tsv", d / "scores.h5", d / "model.pt", str(tmp_path / "toy"))
    m = full["metrics"]
    assert json.loads((tmp_path / "toy_metrics.json").read_text())["metrics"] == m
    # the fine-grained mAP, recomputed from the stored probabilities on the evaluated frames
    videos = video_results(d / "m.tsv", d / "scores.h5", frames)
    rows = {r.video_id: r for r in read_manifest(d / "m.tsv")}
    _, probs = read_class_probs(d / "scores.h5")
    n = [v.n_frames for v in videos]
    assert n == ([rows[v.video_id].frames for v in videos] if frames == "video"
                 else [16 * len(probs[v.video_id]) for v in videos])
    truth = []  # a normal video: one normal segment; else its intervals under its class
    for v, k in zip(videos, n, strict=True):
        c = rows[v.video_id].classes[0]
        truth.append([(c, 0, k)] if c == "normal"
                     else [(c, a, b) for a, b in rows[v.video_id].intervals])
    want = published_fine_grained_map(
        [frame_class_probabilities(probs[v.video_id], k) for v, k in zip(videos, n, strict=True)],
        truth, CLASSES)
    for t in IOUS:
        assert m[f"fine_grained_mAP@{t}"] == pytest.approx(want[f"mAP@{t}"], abs=1e-12)
        assert 0.0 <= m[f"fine_grained_mAP@{t}"] <= 1.0
        assert f"mAP@{t}" in m["class_agnostic_detection"]
    assert m["fine_grained_mAP_avg"] == pytest.approx(want["mAP_avg"], abs=1e-12)
    assert set(m["fine_grained_class_AP_avg"]) == set(CLASSES)
    assert "published" in m["fine_grained_protocol"] and "AP 0" in m["fine_grained_protocol"]
    assert m["fine_grained_empty_classes"] == ", ".join(want["empty_classes"])
    assert "detection" not in m
    # video classification of the anomalous test videos
    acc = video_classification_accuracy([probs[v.video_id] for v in videos],
                                        [v.classes for v in videos], CLASSES)
    vc = m["video_classification"]
    assert vc["top1_accuracy"] == acc["accuracy"] and vc["n_videos"] == 6
    assert vc["videos_per_class"] == {"fighting": 3, "riot": 3}
    assert vc["per_class"] == {c: acc["per_class"][c]["accuracy"] for c in ("fighting", "riot")}
    # the TSV has the same keys, flattened
    tsv = pd.read_csv(tmp_path / "toy_metrics.tsv", sep="\t", keep_default_na=False)
    keys = set(tsv["metric"])
    assert {f"fine_grained_mAP@{t}" for t in IOUS} | {
        "fine_grained_mAP_avg", "fine_grained_protocol", "class_agnostic_detection.mAP_avg",
        "video_classification.top1_accuracy", "video_classification.per_class.riot",
        } <= keys
    assert not any(k.startswith("detection.") for k in keys)
    value = dict(zip(tsv["metric"], tsv["value"], strict=True))
    assert float(value["fine_grained_mAP_avg"]) == pytest.approx(m["fine_grained_mAP_avg"],
                                                                 abs=1e-6)
    assert json.loads((tmp_path / "toy_auc.json").read_text())["value"] == m["frame_auc"]


def test_xd_fine_grained_truth_is_the_per_class_annotation():
    xd = "v=S-7rRLrxnVQ__#1_label_B4-0-0"  # riot at 0-1517 and 1970-3038
    other = "v=0ED3i0wj6Bs__#00-00-00_00-01-27_label_A"
    rows = {xd: ManifestRow(xd, "a.mp4", "test", ["riot"], [(0, 3038)], 3100, 24.0, 8, 8),
            other: ManifestRow(other, "b.mp4", "test", ["normal"], [], 480, 24.0, 8, 8)}
    from tpwng.evaluate.metrics import VideoResult

    videos = [VideoResult(v, r.classes, np.zeros(r.frames), np.zeros(r.frames))
              for v, r in rows.items()]
    assert class_ground_truth(videos, rows, "xd") == [
        [("riot", 0, 1517), ("riot", 1970, 3038)], [("normal", 0, 480)]]
    # other formats: the manifest intervals under the video's class
    assert class_ground_truth(videos, rows, "folder") == [[("riot", 0, 3038)],
                                                          [("normal", 0, 480)]]


def test_baselines_command_writes_three_methods_beside_tpwng(scored, tmp_path):
    s, d = scored
    full = evaluate(s, d / "m.tsv", d / "scores.h5", d / "model.pt", str(tmp_path / "toy"))
    argv = ["baselines", "--settings", json.dumps(s), "--manifest", str(d / "m.tsv"),
            "--features", str(d / "f.h5"), "--scores", str(d / "scores.h5")]
    assert tpwng_main([*argv, "--out", str(tmp_path / "b.tsv")]) == 0
    table = pd.read_csv(tmp_path / "b.tsv", sep="\t")
    assert table["method"].tolist() == ["nearest_normal", "topk_mil", "tpwng"]
    tpwng = table.set_index("method").loc["tpwng"]
    m = full["metrics"]
    assert tpwng["frame_auc"] == m["frame_auc"] and tpwng["frame_ap"] == m["frame_ap"]
    assert tpwng["false_alarm_rate"] == m["false_alarm_rate"]
    assert tpwng["anomalous_auc"] == m["anomalous_auc"]
    assert (table["frames"] == full["frames_evaluated"]).all()
    assert (table["videos"] == 9).all() and (table["threshold"] == 0.5).all()
    for col in ("frame_auc", "frame_ap", "false_alarm_rate"):
        assert table[col].between(0.0, 1.0).all(), col
    # deterministic: a second run writes the same table
    assert tpwng_main([*argv, "--out", str(tmp_path / "again.tsv")]) == 0
    assert (tmp_path / "again.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()
    # the ablation summary lists them after the tables' rows
    row = dict.fromkeys(ablations.TABLE_COLUMNS, "") | {
        "table": "table3_guidance", "variant": "guidance", "overrides": '{"guidance": true}',
        "metric": "frame_auc", "ours": "91.00", "frame_auc": "91.00", "frame_ap": "80.00"}
    ablations.write_rows([row], tmp_path / "t3.tsv")
    ablations.write_summary([tmp_path / "t3.tsv"], tmp_path / "summary.tsv", tmp_path / "b.tsv")
    rows = ablations.read_table(tmp_path / "summary.tsv")
    assert rows[0] == row  # the table's row as written, JSON unquoted
    assert [(r["table"], r["variant"]) for r in rows[1:]] == [
        ("baselines", "nearest_normal"), ("baselines", "topk_mil"), ("baselines", "tpwng")]
    assert rows[3]["ours"] == rows[3]["frame_auc"] == f"{100 * m['frame_auc']:.2f}"
    assert rows[3]["paper_ucf_auc"] == rows[3]["branch"] == ""


def test_nearest_normal_calibration_is_monotone_and_needs_both_kinds():
    rng = np.random.default_rng(1)
    normal = [rng.normal(size=(20, 8)).astype(np.float32) for _ in range(4)]
    anomalous = [np.concatenate([rng.normal(size=(16, 8)), 6 + rng.normal(size=(4, 8))])
                 .astype(np.float32) for _ in range(4)]
    calibrate = nearest_normal_calibration(normal + anomalous, [0] * 4 + [1] * 4)
    d = np.linspace(0.0, 30.0, 50)
    s = calibrate(d)
    assert np.all(np.diff(s) > 0) and s[0] < 0.5 < s[-1]
    assert nearest_normal_calibration(normal[:1] + anomalous, [0] + [1] * 4) is None
    assert nearest_normal_calibration(normal, [0] * 4) is None


def test_demo_targets_schedule_the_baselines(tmp_path):
    config = tiny_config(tmp_path)
    out = snakemake("-n", "--cores", "2", cwd=tmp_path, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert counts.get("baselines") == 1 and counts.get("infer") == 1, out.stdout
    block = out.stdout.split("rule baselines:", 1)[1].split("\n\n", 1)[0]
    inputs = next(line for line in block.splitlines() if line.strip().startswith("input:"))
    for path in ("data/synthetic/manifest.tsv", "features/synthetic/features.h5",
                 "features/synthetic/shards/000-of-002.h5",
                 "features/synthetic/shards/001-of-002.h5", "results/synthetic/scores.h5"):
        assert path in inputs, inputs
    assert "results/synthetic/baselines.tsv" in block
