"""`tpwng score`: per-frame scores, intervals and plots for one's own videos; stream mode."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tpwng.cli import main
from tpwng.data.manifest import ManifestRow, write_manifest
from tpwng.evaluate.metrics import labels_to_intervals
from tpwng.features.store import StoreWriter
from tpwng.features.video import probe_video
from tpwng.grid import expand_to_frames
from tpwng.model.tpwng import TPWNG, ModelConfig
from tpwng.scoring.inference import score_features
from tpwng.scoring.score_video import SnippetStream, score_offline, snippet_features
from tpwng.scoring.scorer import load_scorer
from tpwng.train.loop import train

STRIDE = 8  # many snippets from short videos, so the stream's key window is exercised
CLIP_SEED = 7


def _train(tmp: Path, name: str, model: dict) -> Path:
    """A one-epoch checkpoint on random features of the tiny random-init CLIP (seed 7)."""
    rng = np.random.default_rng(0)
    prov = {"model": "tpwng-tiny-ViT-B-16", "weights": f"random-init:seed={CLIP_SEED}",
            "stride": STRIDE, "sample": "center", "crop_mode": "center", "dim": 512}
    rows = []
    with StoreWriter(tmp / f"{name}.h5", prov) as w:
        for i in range(4):
            normal = i % 2 == 0
            t = int(rng.integers(6, 20))
            w.add(f"v{i}", rng.normal(size=(t, 1, 512)) + (0 if normal else 0.5))
            rows.append(ManifestRow(f"v{i}", f"/x/v{i}.mp4", "train",
                                    ["normal"] if normal else ["fighting"], [], STRIDE * t,
                                    25.0, 32, 32))
    write_manifest(rows, tmp / f"{name}.tsv")
    settings = {
        "name": "toy", "format": "folder", "root": None, "classes": ["normal", "fighting"],
        "clip": {"model": "tpwng-tiny-ViT-B-16", "pretrained": "none", "seed": CLIP_SEED},
        "extraction": {"stride": STRIDE, "sample": "center", "crop_mode": "center",
                       "source": "extract"},
        "model": {"ff_dim": 64, "layers": 2} | model,
        "train": {"lr": 1e-3, "weight_decay": 0.005, "epochs": 1, "batch_normal": 2,
                  "batch_anomalous": 2, "max_seq_len": 16, "test_crop": 0, "seed": 0,
                  "device": "cpu", "threads": 2},
    }
    out = tmp / f"{name}.pt"
    train(settings, tmp / f"{name}.tsv", tmp / f"{name}.h5", out, tmp / f"{name}_log.tsv")
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("score-models")
    return {"tcsal": _train(d, "tcsal", {"span_scale": 3, "R": 2}),
            "transformer": _train(d, "transformer", {"temporal": "transformer"})}


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory, sample_videos):
    d = tmp_path_factory.mktemp("my-videos")
    for name in ("carphone_pristine", "carphone_distorted"):
        shutil.copy(sample_videos[name], d / f"{name}.mp4")
    (d / "notes.txt").write_text("not a video\n")
    return d


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["frame", "time_s", "score"]
    return (np.array([int(r["frame"]) for r in rows]), np.array([float(r["time_s"]) for r in rows]),
            np.array([float(r["score"]) for r in rows]))


def _run(capsys, *args):
    rc = main(["score", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def offline(models, video_dir):
    """Info and offline snippet scores of one video, through the library."""
    video = video_dir / "carphone_pristine.mp4"
    info = probe_video(video)
    return info, score_offline(load_scorer(models["tcsal"], "cpu"), video, info)


def test_one_video_writes_frame_scores_intervals_and_plot(models, video_dir, offline, tmp_path,
                                                          capsys):
    info, snippets = offline
    rc, out, _ = _run(capsys, video_dir / "carphone_pristine.mp4", "--model", models["tcsal"],
                      "--out", tmp_path, "--threshold", 0.0)  # one interval: the whole video
    assert rc == 0, out
    frames, times, scores = _read_csv(tmp_path / "carphone_pristine_scores.csv")
    assert frames.tolist() == list(range(info.frames))
    np.testing.assert_allclose(times, frames / info.fps, atol=1e-4)
    assert np.all((scores >= 0) & (scores <= 1)) and scores.std() > 0
    # snippet scores repeated per frame, as the evaluation expands them
    np.testing.assert_allclose(scores, expand_to_frames(snippets, info.frames, STRIDE), atol=1e-6)
    assert (tmp_path / "carphone_pristine_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "carphone_pristine_intervals.json").read_text())
    interval = record["intervals"][0]
    named = {k: interval.pop(k) for k in ("class", "class_probability")}
    assert interval | {"mean_score": 0, "max_score": 0} == {
        "start_frame": 0, "end_frame": info.frames, "start_s": 0.0,
        "end_s": info.frames / info.fps, "mean_score": 0, "max_score": 0}
    assert record["video"]["frames"] == info.frames and record["model"] == str(models["tcsal"])
    assert "carphone_pristine.mp4: 1 anomalous interval(s)" in out
    # the interval's class: the anomaly class of largest mean probability over its snippets,
    # recomputed here through the text tower (scoring uses the checkpoint's saved embeddings)
    from tpwng.features.provenance import recorded_settings
    from tpwng.train.checkpoint import load_model

    scorer = load_scorer(models["tcsal"], "cpu")
    feats = np.concatenate(list(snippet_features(scorer, video_dir / "carphone_pristine.mp4",
                                                 info)))
    model, meta = load_model(models["tcsal"], recorded_settings(scorer.meta))
    with torch.no_grad():
        probs = model.class_probabilities(torch.from_numpy(feats)[None])[0].numpy()
    mean = probs[:, 1:].mean(0)
    assert named == {"class": meta["classes"][1 + int(mean.argmax())],
                     "class_probability": pytest.approx(float(mean.max()), abs=1e-5)}


def test_intervals_match_the_csv_runs_above_threshold(models, video_dir, offline, tmp_path,
                                                      capsys):
    video = video_dir / "carphone_pristine.mp4"
    threshold = float(np.quantile(offline[1], 0.6))
    rc, *_ = _run(capsys, video, "--model", models["tcsal"], "--out", tmp_path / "a",
                  "--threshold", threshold)
    assert rc == 0
    _, _, scores = _read_csv(tmp_path / "a" / "carphone_pristine_scores.csv")
    record = json.loads((tmp_path / "a" / "carphone_pristine_intervals.json").read_text())
    assert record["threshold"] == threshold
    got = [(iv["start_frame"], iv["end_frame"]) for iv in record["intervals"]]
    assert len(got) > 1 and got == labels_to_intervals(scores >= threshold - 5e-7)
    for iv in record["intervals"]:
        run = scores[iv["start_frame"] : iv["end_frame"]]
        assert abs(iv["mean_score"] - run.mean()) < 1e-5 and iv["max_score"] >= threshold
        assert iv["start_s"] == iv["start_frame"] / record["video"]["fps"]
    # --min-length drops the shorter runs
    longest = max(e - s for s, e in got)
    rc, *_ = _run(capsys, video, "--model", models["tcsal"], "--out", tmp_path / "b",
                  "--threshold", threshold, "--min-length", longest / record["video"]["fps"])
    kept = json.loads((tmp_path / "b" / "carphone_pristine_intervals.json").read_text())
    assert [(iv["start_frame"], iv["end_frame"]) for iv in kept["intervals"]] == [
        iv for iv in got if iv[1] - iv[0] >= longest]


def test_folder_scores_every_video(models, video_dir, tmp_path, capsys):
    rc, out, _ = _run(capsys, video_dir, "--model", models["tcsal"], "--out", tmp_path)
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = ["carphone_distorted", "carphone_pristine"]
    assert [v["video"] for v in summary["videos"]] == [str(video_dir / f"{n}.mp4") for n in names]
    for n, v in zip(names, summary["videos"], strict=True):
        frames, _, _ = _read_csv(tmp_path / f"{n}_scores.csv")
        assert len(frames) == v["frames"] == probe_video(video_dir / f"{n}.mp4").frames
        assert (tmp_path / f"{n}_scores.png").is_file()
        assert (tmp_path / f"{n}_intervals.json").is_file()
    assert not list(tmp_path.glob("notes*"))
    assert out.count("anomalous interval(s)") == 2


def test_stream_equals_offline_and_prints_each_snippet(models, video_dir, offline, tmp_path,
                                                       capsys):
    info, snippets = offline
    video = video_dir / "carphone_pristine.mp4"
    assert len(snippets) > 2 * 5  # beyond the key window F + R = 5 of the stream's cache
    rc, out, _ = _run(capsys, video, "--model", models["tcsal"], "--out", tmp_path, "--stream")
    assert rc == 0
    lines = [ln.split() for ln in out.splitlines() if ln[:1] == " "]
    assert [int(ln[0]) for ln in lines] == list(range(len(snippets)))
    np.testing.assert_allclose([float(ln[1]) for ln in lines],
                               np.arange(len(snippets)) * STRIDE / info.fps, atol=1e-3)
    np.testing.assert_allclose([float(ln[2]) for ln in lines], snippets, atol=1e-5, rtol=0)
    _, _, scores = _read_csv(tmp_path / "carphone_pristine_scores.csv")
    np.testing.assert_allclose(scores[::STRIDE], snippets, atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "carphone_pristine_intervals.json").read_text())
    assert record["mode"] == "stream"


@pytest.mark.parametrize("span_scale,R,n,chunk", [(256, 256, 560, 40), (16, 8, 40, 1),
                                                   (2.5, 1.5, 80, 7)])
def test_snippet_stream_equals_whole_video(tiny_clip, span_scale, R, n, chunk):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, ff_dim=64, span_scale=span_scale, R=R)
    model = TPWNG(tiny_clip[0], ["normal", "fighting"], cfg).eval()
    model.set_feature_stats(torch.randn(512), torch.rand(512) + 0.5)
    feats = np.random.default_rng(1).normal(size=(n, 512))
    whole = score_features(model, feats)
    stream = SnippetStream(model, "m.pt")
    parts = [stream.push(feats[i : i + chunk]) for i in range(0, n, chunk)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(score_features(model, feats), whole)  # model left unchanged


def _error_line(capsys, *args) -> str:
    rc, _, err = _run(capsys, *args)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("tpwng score: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_stream_needs_the_causal_tcsal(models, video_dir, tmp_path, capsys):
    line = _error_line(capsys, video_dir / "carphone_pristine.mp4", "--model",
                       models["transformer"], "--out", tmp_path, "--stream")
    assert "stream mode needs the causal TCSAL" in line and str(models["transformer"]) in line
    assert not list(tmp_path.iterdir())  # refused before any video is decoded
    rc, *_ = _run(capsys, video_dir / "carphone_pristine.mp4", "--model", models["transformer"],
                  "--out", tmp_path)
    assert rc == 0  # offline scoring works for it


def test_clear_errors(models, video_dir, tmp_path, capsys):
    video = video_dir / "carphone_pristine.mp4"
    missing = tmp_path / "nope.pt"
    assert str(missing) in _error_line(capsys, video, "--model", missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert "not a readable tpwng checkpoint" in _error_line(capsys, video, "--model", garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert "not a tpwng checkpoint" in _error_line(capsys, video, "--model", other)
    model = models["tcsal"]
    assert "no such video file or folder" in _error_line(
        capsys, tmp_path / "missing.mp4", "--model", model)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: folder has no video files" in _error_line(capsys, empty, "--model", model)
    assert f"{video_dir / 'notes.txt'}: " in _error_line(capsys, video_dir / "notes.txt",
                                                       "--model", model)


def test_folder_with_a_broken_video_scores_the_others(models, video_dir, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(video_dir / "carphone_distorted.mp4", d / "good.mp4")
    (d / "broken.mp4").write_bytes(b"\x00" * 1000)
    rc, out, err = _run(capsys, d, "--model", models["tcsal"], "--out", tmp_path / "out")
    assert rc == 2
    assert f"error: {d / 'broken.mp4'}: " in err and "1 of 2 videos" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "error" in summary["videos"][0] and summary["videos"][1]["frames"] > 0
    assert (tmp_path / "out" / "good_scores.csv").is_file()
