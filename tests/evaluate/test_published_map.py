"""The fine-grained mAP in both protocols in the metrics: ours and the published scripts'
(annotation ends as written from the manifest's annotation_cuts.tsv), and its place in the DAG."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.evaluate.test_class_outputs import _toy_settings
from tests.helpers.dag import snakemake, tiny_config
from tpwng.cli import main as tpwng_main
from tpwng.data.manifest import (
    AnnotationCut,
    ManifestRow,
    read_manifest,
    write_cuts,
    write_manifest,
)
from tpwng.evaluate.detection_map import fine_grained_map
from tpwng.evaluate.finegrained import frame_class_probabilities
from tpwng.evaluate.metrics import VideoResult
from tpwng.evaluate.scores_file import read_class_probs
from tpwng.evaluate.tables import (
    class_ground_truth,
    class_metrics,
    video_results,
    written_intervals,
)
from tpwng.features.store import h5_create
from tpwng.files import atomic_path

NAMES = ["normal", "fighting", "riot"]
IOUS = ("0.1", "0.2", "0.3", "0.4", "0.5")


def _row(video: str, cls: str, intervals: list[tuple[int, int]], frames: int = 32,
         split: str = "test") -> ManifestRow:
    return ManifestRow(video, f"/x/{video}.mp4", split, [cls], intervals, frames, 25.0, 8, 8)


def test_written_intervals_give_cut_ends_back(tmp_path):
    rows = {"a": _row("a", "fighting", [(2, 10), (20, 32)]), "b": _row("b", "riot", [(0, 16)])}
    write_cuts([AnnotationCut("a", (20, 41), (20, 32), 32, "ann.txt"),
                AnnotationCut("train7", (5, 70), (5, 64), 64, "ann.txt")], tmp_path / "c.tsv")
    assert written_intervals(rows, tmp_path / "c.tsv") == {"a": [(2, 10), (20, 41)],
                                                           "b": [(0, 16)]}
    assert rows["a"].intervals == [(2, 10), (20, 32)]  # the rows are left alone
    # a list that does not belong to this manifest: one error naming the file
    write_cuts([AnnotationCut("b", (0, 40), (0, 32), 32, "ann.txt")], tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match=r"bad\.tsv: cut 0-40 -> 0-32 of video b.*does not "
                                         r"match the manifest"):
        written_intervals(rows, tmp_path / "bad.tsv")
    write_cuts([AnnotationCut("a", (20, 41), (20, 32), 30, "ann.txt")], tmp_path / "frames.tsv")
    with pytest.raises(ValueError, match="frames.tsv.*30 frames.*32 frames"):
        written_intervals(rows, tmp_path / "frames.tsv")


def _hand_scores(tmp_path: Path) -> tuple[Path, dict[str, ManifestRow], list[VideoResult]]:
    """Three 32-frame test videos, 4 snippets of 8 frames (tests/evaluate/test_finegrained.py's
    `_designed_with_riot`): fighting video 'fight' (manifest GT [8, 32), written [8, 46)),
    riot video 'riot' (GT [0, 16)), normal video 'calm'."""
    fighting = {"fight": [0.05, 0.80, 0.70, 0.10], "riot": [0.60, 0.50, 0.15, 0.02],
                "calm": [0.05, 0.05, 0.40, 0.00]}
    riot = {"fight": [0.05] * 4, "riot": [0.30, 0.20, 0.02, 0.02], "calm": [0.05] * 4}
    path = tmp_path / "scores.h5"
    with atomic_path(path) as tmp, h5_create(tmp) as f:
        f.attrs["order"] = "\n".join(fighting)
        f.attrs["classes"] = "\n".join(NAMES)
        f.attrs["stride"] = 8
        groups = {g: f.create_group(g) for g in ("snippets", "frames", "class_probs")}
        for v, fi in fighting.items():
            p = np.stack([0.95 - np.array(fi), fi, riot[v]], axis=1).astype(np.float32)
            groups["class_probs"][v] = p
            groups["snippets"][v] = 1 - p[:, 0]
            groups["frames"][v] = np.repeat(1 - p[:, 0], 8)
    rows = {"fight": _row("fight", "fighting", [(8, 32)]), "riot": _row("riot", "riot", [(0, 16)]),
            "calm": _row("calm", "normal", [])}
    videos = [VideoResult(v, r.classes, np.zeros(32), np.zeros(32)) for v, r in rows.items()]
    write_cuts([AnnotationCut("fight", (8, 46), (8, 32), 32, "ann.txt")], tmp_path / "cuts.tsv")
    return path, rows, videos


def test_class_metrics_report_both_protocols_by_hand(tmp_path):
    scores, rows, videos = _hand_scores(tmp_path)
    # Per class, at t = .1 .2 .3 .4 .5 (tests/evaluate/test_finegrained.py works the proposals out):
    #   normal   [1 1 1/3 1/3 1/3]; riot 1 everywhere;
    #   fighting, proposal [8, 24): GT cut [8, 32) IoU .667 → 1 everywhere;
    #             GT as written [8, 46) IoU 16/38 = .42 → [1 1 1 1 0].
    # ours (cut, normal scored):            [1 1 7/9 7/9 7/9], avg 13/15
    # published, folder (as UCF: normal AP 0): [2/3 2/3 2/3 2/3 1/3], avg 3/5
    # published, xd (normal scored):        [1 1 7/9 7/9 4/9], avg 4/5
    want_ours = [1, 1, 7 / 9, 7 / 9, 7 / 9]
    cases = {"folder": [2 / 3, 2 / 3, 2 / 3, 2 / 3, 1 / 3], "xd": [1, 1, 7 / 9, 7 / 9, 4 / 9]}
    for fmt, want in cases.items():
        m = class_metrics(videos, rows, scores, fmt, tmp_path / "cuts.tsv")
        assert [m[f"fine_grained_mAP@{t}"] for t in IOUS] == pytest.approx(want_ours), fmt
        assert m["fine_grained_mAP_avg"] == pytest.approx(13 / 15)
        assert [m[f"fine_grained_published_mAP@{t}"] for t in IOUS] == pytest.approx(want), fmt
        assert m["fine_grained_published_mAP_avg"] == pytest.approx(np.mean(want))
        assert m["fine_grained_published_class_AP_avg"]["fighting"] == pytest.approx(0.8)
        line = m["fine_grained_published_protocol"]
        assert line.startswith("published:") and "1 ground-truth segments end past" in line
        assert "cuts.tsv" in line
        assert ("normal class without ground truth" in line) == (fmt == "folder")
        assert m["fine_grained_protocol"].startswith("ours:")
    # without the cuts list the manifest's (cut) ends stand, and the line says so
    m = class_metrics(videos, rows, scores, "folder")
    assert [m[f"fine_grained_published_mAP@{t}"] for t in IOUS] == pytest.approx([2 / 3] * 5)
    assert "0 ground-truth segments" in m["fine_grained_published_protocol"]
    assert "no annotation-cuts list given" in m["fine_grained_published_protocol"]


def test_evaluate_command_reads_the_annotation_cuts(scored, tmp_path):  # noqa: F811
    s, d = scored
    rows = read_manifest(d / "m.tsv")
    # let one anomalous test video's annotation end 10 frames past it, cut by the manifest
    i = next(i for i, r in enumerate(rows) if r.split == "test" and r.intervals)
    r = rows[i]
    start = r.intervals[0][0]
    rows[i] = replace(r, intervals=[(start, r.frames)])
    write_manifest(rows, tmp_path / "m.tsv")
    write_cuts([AnnotationCut(r.video_id, (start, r.frames + 10), (start, r.frames), r.frames)],
               tmp_path / "annotation_cuts.tsv")
    argv = ["evaluate", "--settings", json.dumps(_toy_settings()), "--manifest",
            str(tmp_path / "m.tsv"), "--scores", str(d / "scores.h5"), "--model",
            str(d / "model.pt"), "--out-prefix", str(tmp_path / "toy")]
    assert tpwng_main([*argv, "--annotation-cuts", str(tmp_path / "annotation_cuts.tsv")]) == 0
    m = json.loads((tmp_path / "toy_metrics.json").read_text())["metrics"]
    # both protocols, recomputed from the stored probabilities
    videos = video_results(tmp_path / "m.tsv", d / "scores.h5")
    test_rows = {x.video_id: x for x in rows if x.split == "test"}
    _, probs = read_class_probs(d / "scores.h5")
    frame_probs = [frame_class_probabilities(probs[v.video_id], v.n_frames) for v in videos]
    written = {v: list(x.intervals) for v, x in test_rows.items()}
    written[r.video_id] = [(start, r.frames + 10)]
    ours = fine_grained_map(frame_probs, class_ground_truth(videos, test_rows, "folder"),
                            s["classes"], "ours")
    pub = fine_grained_map(frame_probs, class_ground_truth(videos, test_rows, "folder", written),
                           s["classes"], "published", "folder")
    for t in IOUS:
        assert m[f"fine_grained_mAP@{t}"] == pytest.approx(ours[f"mAP@{t}"], abs=1e-12)
        assert m[f"fine_grained_published_mAP@{t}"] == pytest.approx(pub[f"mAP@{t}"], abs=1e-12)
    assert m["fine_grained_mAP_avg"] == pytest.approx(ours["mAP_avg"], abs=1e-12)
    assert m["fine_grained_published_mAP_avg"] == pytest.approx(pub["mAP_avg"], abs=1e-12)
    assert pub["gt_past_end"] == 1 and pub["per_class"]["normal"]["n_gt"] == 0
    assert "1 ground-truth segments end past" in m["fine_grained_published_protocol"]
    # a cuts list of another manifest stops the command, naming the file
    write_cuts([AnnotationCut(r.video_id, (0, r.frames + 3), (0, r.frames), r.frames)],
               tmp_path / "other.tsv")
    with pytest.raises(ValueError, match="other.tsv.*does not match the manifest"):
        tpwng_main([*argv, "--annotation-cuts", str(tmp_path / "other.tsv")])


def test_evaluate_rule_reads_the_manifest_annotation_cuts(tmp_path):
    out = snakemake("-n", "-p", "--cores", "1", "results/synthetic_metrics.json", cwd=tmp_path,
                    config=tiny_config(tmp_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    block = text[text.index("rule evaluate:"):]
    block = block[: block.index("\n\n")]
    assert "data/synthetic/annotation_cuts.tsv" in block.split("output:")[0]  # an input
    assert "--annotation-cuts data/synthetic/annotation_cuts.tsv" in text
