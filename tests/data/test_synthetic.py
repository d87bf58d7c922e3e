"""The synthetic dataset generator: layout, decodability, determinism and visible anomalies."""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import pytest

from tpwng.data.datasets import folder_entries, load_interval_file, parse_ucf_temporal_annotation
from tpwng.data.synthetic import SIGNATURES, SyntheticSpec, _plan, class_dir_name, generate

SMALL = SyntheticSpec(train_normal=2, train_per_class=1, test_normal=1, test_per_class=1,
                      min_frames=48, max_frames=96, seed=7)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, SMALL, progress=False)
    return root


def _read(path: str) -> np.ndarray:
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _extreme_fraction(frames: np.ndarray) -> np.ndarray:
    """Per frame: fraction of pixels that are strongly saturated or nearly black."""
    rgb = frames.astype(np.float32) / 255
    high, low = rgb.max(-1), rgb.min(-1)
    saturation = (high - low) / np.maximum(high, 1e-6)
    return ((saturation > 0.5) | (high < 0.12)).mean(axis=(1, 2))


def test_layout_and_lists(small: Path) -> None:
    videos = _plan(SMALL)
    assert len({v.video_id for v in videos}) == len(videos) == 6 + 5
    train = (small / "train.txt").read_text().splitlines()
    test = (small / "test.txt").read_text().splitlines()
    assert len(train) == 6 and len(test) == 5
    assert "Normal/Normal_train_001.mp4" in train and "Normal/Normal_test_000.mp4" in test
    dirs = {p.name for p in (small / "videos").iterdir()}
    assert dirs == {"Normal", "Explosion", "Fighting", "Robbery", "Vandalism"}
    assert not list(small.rglob("*.tmp")) and not list(small.rglob(".*"))
    ann = parse_ucf_temporal_annotation(small / "annotations.txt")
    assert list(ann) == [Path(rel).stem for rel in test]
    assert ann["Normal_test_000"] == ("Normal", [])
    truth = parse_ucf_temporal_annotation(small / "train_intervals.txt")
    assert list(truth) == [Path(rel).stem for rel in train]

    entries = folder_entries(small)
    assert [e.split for e in entries] == ["train"] * 6 + ["test"] * 5
    by_id = {e.video_id: e for e in entries}
    assert by_id["Explosion_test_000"].classes == ["explosion"]
    assert by_id["Normal_train_000"].label == "normal"
    assert all(not e.intervals for e in entries if e.split == "train")
    assert all(len(e.intervals) == (e.label != "normal") for e in entries if e.split == "test")


def test_decoded_frames_and_intervals(small: Path) -> None:
    planned = {v.video_id: v for v in _plan(SMALL)}
    truth = load_interval_file(small / "train_intervals.txt")
    for entry in folder_entries(small):
        vr = decord.VideoReader(entry.path, ctx=decord.cpu(0), num_threads=1)
        n = planned[entry.video_id].frames
        assert len(vr) == n and SMALL.min_frames <= n <= SMALL.max_frames
        assert vr.get_avg_fps() == pytest.approx(SMALL.fps)
        assert vr[0].shape == (SMALL.height, SMALL.width, 3)
        intervals = entry.intervals if entry.split == "test" else truth[entry.video_id]
        if entry.label == "normal":
            assert intervals == []
            continue
        ((start, end),) = intervals
        assert 0 <= start < end <= n
        assert 0.1 * n <= end - start <= 0.4 * n


def test_anomalies_are_visible(small: Path) -> None:
    truth = load_interval_file(small / "train_intervals.txt")
    for entry in folder_entries(small):
        score = _extreme_fraction(_read(entry.path))
        if entry.label == "normal":
            assert score.max() < 0.02, entry.video_id
            continue
        ((start, end),) = entry.intervals or truth[entry.video_id]
        inside = score[start:end]
        outside = np.concatenate([score[:start], score[end:]])
        assert inside.min() > 0.15, entry.video_id
        assert outside.max() < 0.02, entry.video_id


def test_classes_look_different(small: Path) -> None:
    """Mean colour of the changed pixels differs clearly between classes."""
    colours = {}
    for entry in folder_entries(small):
        if entry.split != "test" or entry.label == "normal":
            continue
        frames = _read(entry.path).astype(np.float32)
        start, end = entry.intervals[0]
        background = np.median(frames[:start] if start else frames[end:], axis=0)
        changed = np.abs(frames[start:end] - background).max(-1) > 60
        colours[entry.classes[0]] = frames[start:end][changed].mean(0)
    names = sorted(colours)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(colours[a] - colours[b]).max() > 40, (a, b, colours[a], colours[b])


def test_deterministic(small: Path, tmp_path: Path) -> None:
    spec = SyntheticSpec(train_normal=0, train_per_class=1, test_normal=0, test_per_class=0,
                         classes=("fighting",), min_frames=48, max_frames=96, seed=7)
    generate(tmp_path / "a", spec, progress=False)
    assert (tmp_path / "a" / "train_intervals.txt").read_text() == \
        (small / "train_intervals.txt").read_text().splitlines()[1] + "\n"
    generate(tmp_path / "b", SMALL, progress=False)
    assert (tmp_path / "b" / "train_intervals.txt").read_text() == \
        (small / "train_intervals.txt").read_text()
    rel = "videos/Fighting/Fighting_train_000.mp4"
    first = _read(str(small / rel))
    assert np.array_equal(first, _read(str(tmp_path / "a" / rel)))
    assert np.array_equal(first, _read(str(tmp_path / "b" / rel)))
    generate(tmp_path / "c", SyntheticSpec(**{**SMALL.__dict__, "seed": 8}), progress=False)
    assert (tmp_path / "c" / "train_intervals.txt").read_text() != \
        (small / "train_intervals.txt").read_text()


def test_every_signature_renders(tmp_path: Path) -> None:
    extra = tuple(c for c in SIGNATURES if c not in SMALL.classes)
    spec = SyntheticSpec(train_normal=0, train_per_class=0, test_normal=0, test_per_class=1,
                         classes=extra, width=64, height=48, min_frames=20, max_frames=30)
    generate(tmp_path, spec, progress=False)
    for entry in folder_entries(tmp_path):
        start, end = entry.intervals[0]
        score = _extreme_fraction(_read(entry.path))
        assert score[start:end].min() > 0.15, entry.video_id


def test_spec_validation() -> None:
    assert class_dir_name("road accidents") == "RoadAccidents"
    for bad in (dict(classes=("juggling",)), dict(width=161), dict(min_frames=5),
                dict(min_frames=100, max_frames=50), dict(train_normal=-1), dict(classes=()),
                dict(classes=("normal",)), dict(seed=-1)):
        with pytest.raises(ValueError):
            generate(Path("/nonexistent"), SyntheticSpec(**bad), progress=False)
