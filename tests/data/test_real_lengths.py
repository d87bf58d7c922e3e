"""Released features at their real lengths, end to end through the DAG.

A released-feature directory with the real file names of the shipped feature lists: UCF-Crime
and XD-Violence test videos at the real snippet counts of a public release
(`tests/data/feature_lengths/`, copied from it), their training videos much shorter, random
values, crops as the lists have them (10 per training video; test: UCF crop 5, XD crop 0). The
DAG runs for real to `results/ucf_auc.json` and `results/xd_ap.json` (one epoch, a reduced text
tower at random init). Against these lengths, 7 UCF-Crime and 71 XD-Violence test annotations end
1-16 frames past the last frame: the manifest cuts them and lists them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.helpers.dag import snakemake
from tpwng.data.datasets import strip_video_extension
from tpwng.data.manifest import read_cuts, read_manifest
from tpwng.evaluate.scores_file import read_scores

pytestmark = pytest.mark.slow

LISTS = REPO / "tpwng" / "resources" / "vadclip_lists"
LENGTHS = Path(__file__).parent / "feature_lengths"
UCF_ANNOTATION = REPO / "tpwng" / "resources" / "ucf_crime" / "Temporal_Anomaly_Annotation.txt"
XD_ANNOTATION = REPO / "tpwng" / "resources" / "xd_violence" / "annotations.txt"
UCF_OVERSHOOTS = {"Arson011_x264", "Assault006_x264", "Arson016_x264", "Explosion033_x264",
                  "Fighting003_x264", "Shooting015_x264", "Shooting046_x264"}
BATCH = 256  # normal and anomalous videos per step: fewer steps, same code path


def _list_files(list_file: Path) -> list[str]:
    with open(list_file) as f:
        return [row["path"].rsplit("/", 1)[-1] for row in csv.DictReader(f)]


def _lengths(name: str) -> dict[str, int]:
    table = pd.read_csv(LENGTHS / name, sep="\t", dtype={"video": str, "snippets": int})
    return dict(zip(table["video"], table["snippets"], strict=True))


def _write_release(root: Path, train_list: Path, test_list: Path, lengths: dict[str, int],
                   rng: np.random.Generator) -> None:
    """One `<video>__<crop>.npy` per row of both lists; test videos at their real lengths."""
    root.mkdir(parents=True)
    short: dict[str, int] = {}
    for name in _list_files(train_list):
        video = name.rsplit("__", 1)[0]
        t = short.setdefault(video, int(rng.integers(2, 5)))
        np.save(root / name, rng.standard_normal((t, 512), dtype=np.float32))
    for name in _list_files(test_list):
        video = name.rsplit("__", 1)[0]
        np.save(root / name, rng.standard_normal((lengths[video], 512), dtype=np.float32))


def _overshooting(annotation: Path, lengths: dict[str, int], first_interval_field: int) -> set:
    """Videos whose annotation ends past 16 x snippets frames, read straight from the file."""
    out = set()
    for line in annotation.read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        video = strip_video_extension(fields[0])
        ends = [int(e) for e in fields[first_interval_field + 1 :: 2]]
        if video in lengths and max(ends) > 16 * lengths[video]:
            out.add(video)
    return out


@pytest.fixture(scope="module")
def real_length_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("real-lengths")
    rng = np.random.default_rng(0)
    ucf, xd = _lengths("ucf_test_snippets.tsv"), _lengths("xd_test_snippets.tsv")
    _write_release(d / "UCFClipFeatures", LISTS / "ucf_CLIP_rgb.csv",
                   LISTS / "ucf_CLIP_rgbtest.csv", ucf, rng)
    _write_release(d / "XDClipFeatures", LISTS / "xd_CLIP_rgb.csv",
                   LISTS / "xd_CLIP_rgbtest.csv", xd, rng)
    # the project's config (the run's own directory has no config.yaml) with the two datasets
    # pointed at the release and made small
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for name, release in (("ucf", "UCFClipFeatures"), ("xd", "XDClipFeatures")):
        ds = cfg["datasets"][name]
        ds["clip"] = {"model": "tpwng-tiny-ViT-B-16", "pretrained": "none"}
        ds["extraction"] = {"source": "released", "released_dir": str(d / release)}
        ds["train"] |= {"epochs": 1, "batch_normal": BATCH, "batch_anomalous": BATCH}
        ds["model"] |= {"layers": 1, "heads": 2, "ff_dim": 128}
    (d / "real.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake("-n", "--cores", "2", "results/ucf_auc.json", "results/xd_ap.json",
                    cwd=d, config=d / "real.yaml")
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = snakemake("--cores", "2", "results/ucf_auc.json", "results/xd_ap.json",
                    cwd=d, config=d / "real.yaml", timeout=2400)
    assert out.returncode == 0, out.stderr[-4000:]
    return d, ucf, xd, dry.stdout + dry.stderr


def test_dry_run_lists_the_whole_dag(real_length_run):
    from tests.helpers.dag import job_counts

    *_, dry = real_length_run
    counts = job_counts(dry)
    assert counts == dict.fromkeys(
        ("manifest", "import_released", "feature_view", "train", "infer", "evaluate"), 2), dry


@pytest.mark.parametrize(("name", "metric", "videos", "frames"), [
    ("ucf", "auc", 290, 1_109_680), ("xd", "ap", 800, 2_330_384)])
def test_every_test_video_is_scored_at_its_real_length(real_length_run, name, metric, videos,
                                                       frames):
    d, ucf, xd, _ = real_length_run
    lengths = {"ucf": ucf, "xd": xd}[name]
    assert len(lengths) == videos and 16 * sum(lengths.values()) == frames
    result = json.loads((d / "results" / f"{name}_{metric}.json").read_text())
    assert result["videos_evaluated"] == videos
    assert result["frames_evaluated"] == frames
    assert result["frame_convention"] == "video"
    assert 0.0 <= result["value"] <= 1.0 and math.isfinite(result["value"])
    order, frame_scores, snippet_scores = read_scores(d / "results" / name / "scores.h5")
    assert len(order) == videos and set(order) == set(lengths)
    assert {v: len(s) for v, s in snippet_scores.items()} == lengths
    assert sum(len(s) for s in frame_scores.values()) == frames


@pytest.mark.parametrize(("name", "count"), [("ucf", 7), ("xd", 71)])
def test_the_cuts_file_lists_exactly_the_overshooting_annotations(real_length_run, name, count):
    d, ucf, xd, _ = real_length_run
    lengths = {"ucf": ucf, "xd": xd}[name]
    expected = (_overshooting(UCF_ANNOTATION, lengths, 2) if name == "ucf"
                else _overshooting(XD_ANNOTATION, lengths, 1))
    if name == "ucf":
        assert expected == UCF_OVERSHOOTS
    cuts = read_cuts(d / "data" / name / "annotation_cuts.tsv")
    assert len(expected) == count
    assert {c.video_id for c in cuts} == expected and len(cuts) == count
    assert all(1 <= c.overshoot <= 16 and c.used[1] == c.frames == 16 * lengths[c.video_id]
               for c in cuts)
    rows = {r.video_id: r for r in read_manifest(d / "data" / name / "manifest.tsv")}
    for c in cuts:
        assert c.used in rows[c.video_id].intervals
    log = (d / "logs" / name / "manifest.log").read_text()
    assert f"cut {count} annotated intervals of {count} videos" in log


def test_an_epoch_visits_every_crop(real_length_run):
    """The training lists hold 10 crops per video: an epoch covers all (video, crop) pairs."""
    d, *_ = real_length_run
    rows = read_manifest(d / "data" / "ucf" / "manifest.tsv")
    n_normal = sum(r.split == "train" and r.label == "normal" for r in rows)
    n_anomalous = sum(r.split == "train" and r.label != "normal" for r in rows)
    assert (n_normal, n_anomalous) == (800, 810)
    log = (d / "models" / "ucf" / "train_log.tsv").read_text().splitlines()
    steps = int(dict(zip(log[0].split("\t"), log[1].split("\t"), strict=True))["steps"])
    assert steps == math.ceil(10 * max(n_normal, n_anomalous) / BATCH) == 32
