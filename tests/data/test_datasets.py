"""Dataset parsers, entry builders and manifests, on the real packaged split/annotation files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tpwng.data import datasets as ds
from tpwng.data.datasets import (
    DatasetError,
    VideoEntry,
    class_prompt_name,
    entries_for,
    folder_entries,
    load_interval_file,
    parse_ucf_temporal_annotation,
    parse_xd_annotation,
    ucf_entries,
    xd_classes_from_name,
    xd_entries,
)
from tpwng.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestRow,
    build_manifest,
    read_manifest,
    write_manifest,
)
from tpwng.features.video import VideoInfo
from tpwng.grid import frame_labels


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake UCF-Crime root: one empty file per listed video, at the listed path."""
    root = tmp_path_factory.mktemp("ucf")
    for lst in (ds.UCF_TRAIN_LIST, ds.UCF_TEST_LIST):
        for rel in _lines(lst):
            _touch(root / rel)
    return root


@pytest.fixture(scope="module")
def xd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake XD-Violence root: train and test videos in separate nested folders."""
    root = tmp_path_factory.mktemp("xd")
    for sub, lst in (("train/part1", ds.XD_TRAIN_LIST), ("test/videos", ds.XD_TEST_LIST)):
        for name in ds._xd_list_names(lst):
            _touch(root / sub / f"{name}.mp4")
    return root


# --------------------------------------------------------------------------- real files


def test_ucf_lists_and_annotation_counts() -> None:
    train, test = _lines(ds.UCF_TRAIN_LIST), _lines(ds.UCF_TEST_LIST)
    assert len(train) == 1610 and len(test) == 290
    assert sum(r.startswith("Training_Normal_Videos_Anomaly/") for r in train) == 800
    ann = parse_ucf_temporal_annotation(ds.UCF_ANNOTATION)
    assert len(ann) == 290
    normal = {k for k, (cls, _) in ann.items() if class_prompt_name(cls) == "normal"}
    assert len(normal) == 150
    assert all(not ann[k][1] for k in normal)
    assert all(ann[k][1] for k in ann.keys() - normal)
    assert {class_prompt_name(c) for c, _ in ann.values()} <= set(ds.UCF_CLASSES)
    assert ann["Arson011_x264"] == ("Arson", [(150, 420), (680, 1267)])
    assert ann["Abuse028_x264"] == ("Abuse", [(165, 240)])


def test_ucf_ground_truth_vectors() -> None:
    ann = parse_ucf_temporal_annotation(ds.UCF_ANNOTATION)
    gt = frame_labels(ann["Arson011_x264"][1], 2000)
    assert gt.dtype == np.uint8 and gt.shape == (2000,)
    assert (gt[149], gt[150], gt[419], gt[420]) == (0, 1, 1, 0)
    assert (gt[679], gt[680], gt[1266], gt[1267]) == (0, 1, 1, 0)
    assert gt.sum() == (420 - 150) + (1267 - 680)
    assert not frame_labels(ann["Normal_Videos_003_x264"][1], 500).any()


def test_xd_annotation_and_lists() -> None:
    ann = parse_xd_annotation(ds.XD_ANNOTATION)
    assert len(ann) == len(_lines(ds.XD_ANNOTATION)) == 500
    assert ann["v=S-7rRLrxnVQ__#1_label_B4-0-0"] == [(0, 1517), (1970, 3038)]
    assert all(intervals for intervals in ann.values())
    # some lines carry a ".mp4" suffix; ids never do
    assert not any(k.endswith(".mp4") for k in ann)
    test = ds._xd_list_names(ds.XD_TEST_LIST)
    assert len(test) == 800
    assert sum(n.endswith("_label_A") for n in test) == 300
    assert set(ann) == {n for n in test if not n.endswith("_label_A")}
    train = ds._xd_list_names(ds.XD_TRAIN_LIST)
    assert len(train) == 3954 and not set(train) & set(test)
    for name in train + test:
        classes = xd_classes_from_name(name)
        assert classes and set(classes) <= set(ds.XD_CLASSES)


def test_xd_classes_from_name() -> None:
    assert xd_classes_from_name("x__#1_label_B2-G-0") == ["shooting", "explosion"]
    assert xd_classes_from_name("v=yviKz5J-pEA__#1_label_A") == ["normal"]
    assert xd_classes_from_name("a.b.2001__#00-29-00_00-29-52_label_B6-0-0") == ["car accident"]
    for bad in ("x__#1_label_B3-0-0", "x_no_label", "x_label_A-B1", "x_label_0-0"):
        with pytest.raises(DatasetError, match="XD-Violence video"):
            xd_classes_from_name(bad)


@pytest.mark.parametrize(("raw", "name"), [
    ("RoadAccidents", "road accidents"), ("Road_Accidents", "road accidents"),
    ("road accidents", "road accidents"), ("Shoplifting", "shoplifting"), ("Normal", "normal"),
    ("NORMAL", "normal"), ("Training_Normal_Videos_Anomaly", "normal"),
    ("Testing_Normal_Videos_Anomaly", "normal"), ("Normal_Videos_event", "normal"),
    ("CarAccident", "car accident"), ("Explosion", "explosion"),
])
def test_class_prompt_name(raw: str, name: str) -> None:
    assert class_prompt_name(raw) == name


# --------------------------------------------------------------------------- parser errors


@pytest.mark.parametrize(("line", "message"), [
    ("A001  Abuse  10  20  30", "odd number"),
    ("A001  Abuse  10  x", "integers"),
    ("A001  Abuse  20  20", "bad interval"),
    ("A001  Abuse  30  20", "bad interval"),
    ("A001  Abuse  -1  20", "bad interval"),
    ("A001", "expected"),
])
def test_ucf_annotation_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "ann.txt"
    path.write_text("B002  Abuse  1  2  -1  -1\n\n" + line + "\n")
    with pytest.raises(DatasetError, match=message) as err:
        parse_ucf_temporal_annotation(path)
    assert f"{path}:3" in str(err.value)


def test_ucf_annotation_any_number_of_pairs(tmp_path: Path) -> None:
    path = tmp_path / "ann.txt"
    path.write_text("v1.mp4 Fighting 1 5 -1 -1 10 20 30 40\nv2  Normal\n")
    assert parse_ucf_temporal_annotation(path) == {
        "v1": ("Fighting", [(1, 5), (10, 20), (30, 40)]), "v2": ("Normal", []),
    }
    assert load_interval_file(path) == {"v1": [(1, 5), (10, 20), (30, 40)], "v2": []}


def test_annotation_duplicate_video(tmp_path: Path) -> None:
    path = tmp_path / "ann.txt"
    path.write_text("v1 Abuse 1 5\nv1.mp4 Abuse 7 9\n")
    with pytest.raises(DatasetError, match=r"ann.txt:2: video v1 is listed twice"):
        parse_ucf_temporal_annotation(path)
    path.write_text("v1 1 5\nv1 7 9\n")
    with pytest.raises(DatasetError, match="v1 is listed twice"):
        parse_xd_annotation(path)


def test_frame_labels_errors() -> None:
    assert frame_labels([(0, 10)], 10).all()
    with pytest.raises(ValueError, match=r"\(5, 11\) is not within a video of 10 frames"):
        frame_labels([(5, 11)], 10)
    with pytest.raises(ValueError, match=r"\(6, 5\) is not within"):
        frame_labels([(6, 5)], 10)


# --------------------------------------------------------------------------- UCF-Crime entries


def test_ucf_entries(ucf_root: Path) -> None:
    entries = ucf_entries(ucf_root)
    assert len(entries) == 1900
    train = [e for e in entries if e.split == "train"]
    test = [e for e in entries if e.split == "test"]
    assert len(train) == 1610 and len(test) == 290
    assert sum(e.label == "normal" for e in train) == 800
    assert sum(e.label == "normal" for e in test) == 150
    assert all(not e.intervals for e in train)
    assert all(bool(e.intervals) == (e.label != "normal") for e in test)
    assert [e.video_id for e in test] == [Path(r).stem for r in _lines(ds.UCF_TEST_LIST)]
    arson = next(e for e in entries if e.video_id == "Arson011_x264")
    assert arson.split == "test" and arson.classes == ["arson"]
    assert arson.intervals == [(150, 420), (680, 1267)]
    assert arson.path == str(ucf_root / "Arson" / "Arson011_x264.mp4")
    road = next(e for e in entries if e.video_id.startswith("RoadAccidents"))
    assert road.classes == ["road accidents"]
    assert {c for e in entries for c in e.classes} == set(ds.UCF_CLASSES)
    assert entries_for("ucf", ucf_root)[0] == entries[0]


def test_ucf_entries_nested_layout_and_missing(tmp_path: Path) -> None:
    root = tmp_path / "UCF_Crimes" / "Videos"
    for i, rel in enumerate(_lines(ds.UCF_TRAIN_LIST) + _lines(ds.UCF_TEST_LIST)):
        cls, name = rel.split("/")
        _touch(root / f"Anomaly-Videos-Part-{i % 4 + 1}" / cls / name)
    entries = ucf_entries(tmp_path)
    abuse = next(e for e in entries if e.video_id == "Abuse001_x264")
    assert Path(abuse.path).is_file()
    assert abuse.path.endswith("Abuse/Abuse001_x264.mp4")
    missing = next(root.rglob("Arson011_x264.mp4"))
    missing.unlink()
    with pytest.raises(DatasetError, match="Arson011_x264.mp4") as err:
        ucf_entries(tmp_path)
    assert "Anomaly_Test.txt" in str(err.value)
    _touch(missing)
    _touch(root / "copy" / "Arson011_x264.mp4")
    with pytest.raises(DatasetError, match="several"):
        ucf_entries(tmp_path)


def _ucf_lists(tmp_path: Path, train: list[str], test: list[str], ann: list[str]) -> dict:
    files = {"train_list": train, "test_list": test, "annotation": ann}
    out = {}
    for key, lines in files.items():
        out[key] = tmp_path / f"{key}.txt"
        out[key].write_text("\n".join(lines) + "\n")
    return out


def test_ucf_entry_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ("Abuse/A1.mp4", "Abuse/A2.mp4", "Normal/N1.mp4", "Normal/N2.mp4"):
        _touch(root / rel)
    good_ann = ["A2  Abuse  5  10  -1  -1", "N2  Normal  -1  -1  -1  -1"]
    lists = _ucf_lists(tmp_path, ["Abuse/A1.mp4", "Normal/N1.mp4"],
                       ["Abuse/A2.mp4", "Normal/N2.mp4"], good_ann)
    entries = ucf_entries(root, **lists)
    assert [(e.video_id, e.split, e.intervals) for e in entries] == [
        ("A1", "train", []), ("N1", "train", []), ("A2", "test", [(5, 10)]), ("N2", "test", []),
    ]
    cases = [
        (["Abuse/A1.mp4", "Abuse/A1.mp4"], ["Abuse/A2.mp4"], good_ann[:1], "A1 is listed twice"),
        (["Abuse/A1.mp4"], ["Abuse/A2.mp4", "Abuse/A1.mp4"], good_ann[:1], "A1 is listed twice"),
        (["../Abuse/A1.mp4"], ["Abuse/A2.mp4"], good_ann[:1], "outside"),
        ([str(root / "Abuse/A1.mp4")], ["Abuse/A2.mp4"], good_ann[:1], "absolute"),
        (["Abuse/A1.mp4"], ["Abuse/A2.mp4"], good_ann[:1] + ["Ghost  Abuse  1  2"],
         "Ghost is in no split list"),
        (["Abuse/A1.mp4"], ["Abuse/A2.mp4"], [], "A2 has no annotated"),
        (["Abuse/A1.mp4"], ["Abuse/A2.mp4"], ["A2  Arson  1  2"], "A2 is annotated as"),
        (["Abuse/A1.mp4"], ["Normal/N2.mp4"], ["N2  Normal  1  2"], "normal video N2"),
    ]
    for train, test, ann, message in cases:
        lists = _ucf_lists(tmp_path, train, test, ann)
        with pytest.raises(DatasetError, match=message):
            ucf_entries(root, **lists)


# --------------------------------------------------------------------------- XD-Violence entries


def test_xd_entries(xd_root: Path) -> None:
    entries = xd_entries(xd_root)
    train = [e for e in entries if e.split == "train"]
    test = [e for e in entries if e.split == "test"]
    assert len(train) == 3954 and len(test) == 800
    assert [e.video_id for e in test] == ds._xd_list_names(ds.XD_TEST_LIST)
    assert sum(e.label == "normal" for e in test) == 300
    assert all(bool(e.intervals) == (e.label != "normal") for e in test)
    assert all(not e.intervals for e in train)
    riot = next(e for e in test if e.video_id == "v=S-7rRLrxnVQ__#1_label_B4-0-0")
    assert riot.classes == ["riot"] and riot.intervals == [(0, 1517), (1970, 3038)]
    assert riot.path == str(xd_root / "test" / "videos" / f"{riot.video_id}.mp4")
    multi = next(e for e in test if e.video_id.endswith("_label_G-B2-B6"))
    assert multi.classes == ["explosion", "shooting", "car accident"]
    fast = next(e for e in test if e.video_id.startswith("The.Fast.and.the.Furious.2001__#00-29"))
    assert fast.intervals  # its annotation line names the file with ".mp4"


def test_xd_entry_errors(tmp_path: Path, xd_root: Path) -> None:
    name = "v=S-7rRLrxnVQ__#1_label_B4-0-0"
    video = xd_root / "test" / "videos" / f"{name}.mp4"
    video.rename(tmp_path / "moved.mp4")
    try:
        with pytest.raises(DatasetError, match="xd_CLIP_rgbtest.csv") as err:
            xd_entries(xd_root)
        assert f"{name}.mp4" in str(err.value)
    finally:
        (tmp_path / "moved.mp4").rename(video)
    ann = tmp_path / "ann.txt"
    ann.write_text(ds.XD_ANNOTATION.read_text() + "\nv=ghost__#1_label_B1-0-0 1 5\n")
    with pytest.raises(DatasetError, match="v=ghost__#1_label_B1-0-0 is in no split list"):
        xd_entries(xd_root, annotation=ann)
    train = tmp_path / "train.csv"
    train.write_text("path,label\n/x/v=a__#1_label_B9-0-0__0.npy,B9-0-0\n")
    with pytest.raises(DatasetError, match="unknown label code 'B9'"):
        xd_entries(xd_root, train_list=train)


# --------------------------------------------------------------------------- folder format


def _folder(root: Path, train: list[str], test: list[str], ann: list[str] | None) -> Path:
    for rel in {*train, *test}:
        _touch(root / "videos" / rel)
    (root / "train.txt").write_text("\n".join(train) + "\n\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    if ann is not None:
        (root / "annotations.txt").write_text("\n".join(ann) + "\n")
    return root


def test_folder_entries(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["Normal/n1.mp4", "Road_Accidents/r1.avi", "Fire/clip.v2.mp4"],
                   ["Normal/n2.mp4", "RoadAccidents/r2.3gp"], ["r2.3gp  RoadAccidents  3  9"])
    entries = folder_entries(root)
    assert [(e.video_id, e.split, e.classes, e.intervals, e.label) for e in entries] == [
        ("n1", "train", ["normal"], [], "normal"),
        ("r1", "train", ["road accidents"], [], "anomalous"),
        ("clip.v2", "train", ["fire"], [], "anomalous"),
        ("n2", "test", ["normal"], [], "normal"),
        ("r2", "test", ["road accidents"], [(3, 9)], "anomalous"),
    ]
    assert entries[0].path == str(root / "videos" / "Normal" / "n1.mp4")
    assert entries_for("synthetic", root) == entries == entries_for("folder", root)
    with pytest.raises(DatasetError, match="unknown dataset format"):
        entries_for("kinetics", root)


def test_folder_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "a", ["Normal/n1.mp4"], ["Fight/f1.mp4"], None)
    with pytest.raises(DatasetError, match="f1 has no annotated") as err:
        folder_entries(root)
    assert "annotations.txt" in str(err.value)
    (root / "videos" / "Normal" / "n1.mp4").unlink()
    with pytest.raises(DatasetError, match="n1.mp4 not found") as err:
        folder_entries(root)
    assert "train.txt" in str(err.value)
    root = _folder(tmp_path / "b", ["Normal/n1.mp4", "Other/n1.mp4"], [], None)
    with pytest.raises(DatasetError, match="n1 is listed twice"):
        folder_entries(root)
    root = _folder(tmp_path / "c", ["Normal/n1.mp4"], ["../../x/y.mp4"], None)
    with pytest.raises(DatasetError, match="y.mp4 points outside"):
        folder_entries(root)
    root = _folder(tmp_path / "d", ["Normal/n1.mp4"], ["Fight/f1.mp4"], ["f1 Fight 1 2 3"])
    with pytest.raises(DatasetError, match="annotations.txt:1: odd number"):
        folder_entries(root)


# --------------------------------------------------------------------------- manifests


def _probe(frames: int) -> Callable[[str], VideoInfo]:
    return lambda path: VideoInfo(frames=frames, fps=25.0, width=320, height=240)


def test_build_manifest_checks_intervals() -> None:
    entries = [VideoEntry("v1", "/d/v1.mp4", "test", ["fighting"], [(10, 100)])]
    rows = build_manifest(entries, _probe(100), progress=False)
    assert rows[0].frames == 100 and rows[0].intervals == [(10, 100)]
    with pytest.raises(DatasetError, match=r"video v1 .*10-100 .*99 frames"):
        build_manifest(entries, _probe(99), progress=False)
    with pytest.raises(DatasetError, match="v1 has no frames"):
        build_manifest(entries, _probe(0), progress=False)
    with pytest.raises(DatasetError, match="v1 is listed twice"):
        build_manifest(entries * 2, _probe(100), progress=False)

    def broken(path: str) -> VideoInfo:
        raise RuntimeError(f"{path}: cannot decode")

    with pytest.raises(RuntimeError, match="v1.mp4"):
        build_manifest(entries, broken, progress=False)


def test_manifest_round_trip(tmp_path: Path, xd_root: Path) -> None:
    entries = xd_entries(xd_root)[-60:] + [
        VideoEntry("n.1", "/data/n 1.mp4", "train", ["normal"], []),
        VideoEntry("m", "/data/m.mp4", "test", ["shooting", "explosion"], [(0, 5), (7, 30)]),
    ]
    info = {e.path: VideoInfo(4000 + i, 29.97 + i / 7, 640, 360) for i, e in enumerate(entries)}
    rows = build_manifest(entries, info.__getitem__, progress=False)
    path = tmp_path / "sub" / "manifest.tsv"
    write_manifest(rows, path)
    back = read_manifest(path)
    assert back == rows
    assert all(isinstance(r, ManifestRow) and isinstance(r.intervals[0], tuple)
               for r in back if r.intervals)
    header, *lines = path.read_text().splitlines()
    assert header.split("\t") == MANIFEST_COLUMNS
    assert lines[-1].split("\t")[3:6] == ["anomalous", "shooting|explosion", "0-5;7-30"]
    assert [p.name for p in path.parent.iterdir()] == ["manifest.tsv"]
    write_manifest([], path)
    assert read_manifest(path) == []


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda h, r: (h.replace("\tfps", ""), r), "missing manifest column"),
    (lambda h, r: (h, r.rsplit("\t", 1)[0]), "expected 11 columns"),
    (lambda h, r: (h, r.replace("\tdecord", "\tffmpeg")), "decoder must be one of"),
    (lambda h, r: (h, r.replace("\t25.0\t", "\tfast\t")), "fps must be a number, got 'fast'"),
    (lambda h, r: (h, r.replace("\ttest\t", "\tval\t")), "split must be"),
    (lambda h, r: (h, r.replace("\tanomalous\t", "\tnormal\t")), "contradicts"),
    (lambda h, r: (h, r.replace("10-20", "20-10")), "bad interval"),
])
def test_read_manifest_errors(tmp_path: Path, mutate, message: str) -> None:
    path = tmp_path / "m.tsv"
    rows = [ManifestRow("v1", "/d/v1.mp4", "test", ["abuse"], [(10, 20)], 50, 25.0, 32, 24)]
    write_manifest(rows, path)
    header, row = path.read_text().splitlines()
    header, row = mutate(header, row)
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(DatasetError, match=message) as err:
        read_manifest(path)
    assert str(path) in str(err.value)
