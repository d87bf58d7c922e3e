"""The fault suite: bad inputs placed beside good videos in a folder dataset.

Each bad input must give one clear error naming the file and what is wrong, or, with
`extraction.on_bad_video: skip`, be left out and listed in skipped.tsv, and nothing else may be
lost or changed. The decord hang of a container that reports more frames than it holds
(decord issue #373) is simulated: a decoding child that blocks for ever in a C call holding the
GIL (tests.helpers.faults.serve_with_faults). Real files that make decord 0.6.0 hang could not be
made: over-reported sample tables, edit lists, filler and zeroed packets and truncation all
give errors or shifted frames in this version, which are covered below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.helpers import faults
from tpwng.data.datasets import DatasetError, folder_entries, ucf_entries
from tpwng.data.manifest import make_manifest, read_cuts, read_manifest, read_skipped
from tpwng.errors import CheckpointError
from tpwng.features import decode_process
from tpwng.features.clip_backbone import ClipSpec, ClipWeightsError, load_clip
from tpwng.features.extract import ExtractionSettings, extract
from tpwng.features.store import FeatureStore, StoreError, StoreWriter
from tpwng.features.video import VideoError, probe_video, read_frames
from tpwng.grid import sample_indices
from tpwng.scoring.inference import score_test_set
from tpwng.train.checkpoint import load_checkpoint, load_model
from tpwng.train.loop import train

REPO = Path(__file__).resolve().parents[2]
SPEC = ClipSpec("tpwng-tiny-ViT-B-16", "none", 0)
TRAIN = [("Normal", "n1"), ("Normal", "n2"), ("Normal", "n3"), ("Fighting", "f1"),
         ("Fighting", "f2")]
TEST = [("Normal", "tn1"), ("Fighting", "tf1")]
ANNOTATIONS = ["tn1.mp4  Normal  -1  -1", "tf1.mp4  Fighting  8  30  -1  -1"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A folder dataset of seven good 40-frame videos."""
    return faults.folder_dataset(tmp_path_factory.mktemp("good") / "ds", TRAIN, TEST,
                                 ANNOTATIONS)


@pytest.fixture(scope="module")
def good_rows(good, tmp_path_factory):
    out = tmp_path_factory.mktemp("good-manifest")
    rows, skipped = make_manifest(faults.folder_settings(good), out / "manifest.tsv",
                                  progress=False)
    assert skipped == [] and len(rows) == 7
    return rows


def _key(rows) -> list[tuple]:
    """What must not change when a bad video is added: ids, splits, frames, intervals."""
    return [(r.video_id, r.split, tuple(r.classes), tuple(r.intervals), r.frames, r.width,
             r.height) for r in rows]


def _with(good: Path, tmp_path: Path, name: str, make, split: str = "train",
          cls: str = "Fighting", annotation: str | None = None) -> tuple[Path, Path]:
    """A copy of the good dataset with one more video, made by `make(path)`."""
    root = faults.copy_dataset(good, tmp_path / "ds")
    path = root / "videos" / cls / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if make is not None:
        make(path)
    faults.add_video(root, split, f"{cls}/{name}", annotation)
    return root, path


def _manifest_both_ways(root: Path, tmp_path: Path, good_rows, path: Path, error_text: str,
                        skip_text: str | None = None) -> None:
    """Error mode: one VideoError naming the file, nothing written. Skip mode: the good
    videos exactly as before, the bad one listed with its reason."""
    out = tmp_path / "out"
    with pytest.raises(VideoError) as err:
        make_manifest(faults.folder_settings(root), out / "manifest.tsv", progress=False)
    message = str(err.value)
    assert str(path) in message and re.search(error_text, message), message
    assert "\n" not in message
    assert not out.exists() or not any(out.iterdir())
    rows, skipped = make_manifest(faults.folder_settings(root, "skip"), out / "manifest.tsv",
                                  progress=False)
    assert _key(rows) == _key(good_rows)
    assert _key(read_manifest(out / "manifest.tsv")) == _key(good_rows)
    listed = read_skipped(out / "skipped.tsv")
    assert [(s.video_id, s.path, s.split) for s in listed] == [(path.stem, str(path), "train")]
    assert re.search(skip_text or error_text, listed[0].reason), listed[0].reason
    assert sorted(p.name for p in out.iterdir()) == ["annotation_cuts.tsv", "manifest.tsv",
                                                     "skipped.tsv"]


def _good_mp4(path: Path) -> Path:
    return faults.write_video(path, 40, seed=99)


# --------------------------------------------------------------------------- bad files 1-5


@pytest.mark.parametrize(("case", "make", "text"), [
    ("corrupt", lambda p: faults.random_bytes(p), r"cannot be decoded as a video"),
    ("truncated", lambda p: faults.truncate(_good_mp4(p.with_suffix(".src")), p, 0.5),
     r"cannot be decoded as a video"),
    ("truncated-faststart",
     lambda p: faults.truncate(faults.write_video(p.with_suffix(".src"), 40, faststart=True),
                               p, 0.6),
     r"truncated or damaged"),
    ("empty", lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    ("audio-only", faults.audio_only, r"no video stream"),
    ("avi-without-timestamps", faults.avi_without_timestamps,
     r"timestamps are missing .* wrong or blank frames"),
    ("edit-list", lambda p: faults.mp4_with_edit_list(_good_mp4(p.with_suffix(".src")), p, 10),
     r"edit list trims the start .* shifted frames"),
])
def test_bad_file_is_one_clear_error_or_a_tracked_skip(good, good_rows, tmp_path, case, make,
                                                       text):
    suffix = ".avi" if case == "avi-without-timestamps" else ".mp4"
    root, path = _with(good, tmp_path, f"bad{suffix}", make)
    for src in path.parent.glob("*.src"):
        src.unlink()
    _manifest_both_ways(root, tmp_path, good_rows, path, text)


def test_missing_listed_file(good, good_rows, tmp_path):
    root, path = _with(good, tmp_path, "gone.mp4", None)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"train.txt: video file .*gone.mp4 not found"):
        make_manifest(faults.folder_settings(root), out / "manifest.tsv", progress=False)
    rows, skipped = make_manifest(faults.folder_settings(root, "skip"), out / "manifest.tsv",
                                  progress=False)
    assert _key(rows) == _key(good_rows)
    assert [(s.video_id, s.reason) for s in skipped] == [("gone", f"{path}: no such video file")]


def test_several_bad_files_are_named_in_one_message(good, tmp_path):
    root = faults.copy_dataset(good, tmp_path / "ds")
    for k in range(7):
        faults.random_bytes(root / "videos" / "Normal" / f"junk{k}.mp4", seed=k)
        faults.add_video(root, "train", f"Normal/junk{k}.mp4")
    with pytest.raises(VideoError) as err:
        make_manifest(faults.folder_settings(root), tmp_path / "m.tsv", progress=False)
    message = str(err.value)
    assert message.startswith("7 of 14 videos cannot be used: ")
    assert all(f"junk{k}.mp4" in message for k in range(5)) and "and 2 more" in message
    assert "on_bad_video: skip" in message


def test_cli_manifest_error_is_one_line(good, tmp_path, cli):
    root, path = _with(good, tmp_path, "bad.mp4", lambda p: p.write_bytes(b""))
    code, log = cli(["manifest", "--settings", _json(faults.folder_settings(root)),
                     "--out", str(tmp_path / "m.tsv")], tmp_path)
    assert code == 2
    assert log.strip().splitlines()[-1] == (
        f"tpwng manifest: error: {path}: empty file (0 bytes); set extraction.on_bad_video: "
        "skip to leave such videos out (they are then listed in data/<dataset>/skipped.tsv)")
    assert "Traceback" not in log


# --------------------------------------------------------------------------- found by decoding


def _extract(rows, out: Path, **settings):
    s = {"batch_size": 16, "decode_workers": 0, "decode_timeout": 60.0} | settings
    return extract(rows, out, SPEC, ExtractionSettings(**s), dataset="faulty", progress=False)


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.glob(f".{out.name}*")]


@pytest.mark.parametrize("workers", [0, 2])
def test_data_lost_mid_stream_is_caught_at_extraction(good, good_rows, tmp_path, workers):
    """Zeroed packets in the middle: the container is intact, so probing passes; decoding
    names the file. With skip, the manifest stage decodes and leaves it out."""
    def make(p: Path) -> None:  # long, and damaged late: probing (frame 0) never reaches it
        faults.zero_packets(faults.write_video(p.with_suffix(".src"), 320, seed=5), p, 246, 6)

    root, path = _with(good, tmp_path, "holes.mp4", make)
    path.with_suffix(".src").unlink()
    rows, skipped = make_manifest(faults.folder_settings(root), tmp_path / "m.tsv",
                                  progress=False)
    assert skipped == [] and "holes" in [r.video_id for r in rows]
    out = tmp_path / "f" / "s.h5"
    with pytest.raises(VideoError) as err:
        _extract(rows, out, decode_workers=workers)
    # decord decodes ahead in a thread: the damage may surface at the first frame already,
    # or take the decoding process down with it
    assert re.match(re.escape(f"{path}: ") + r"(decoding failed (near frame \d+|at the start) "
                    r"\(.*Error sending packet|the decoding process died \(killed by SIG)",
                    str(err.value)), str(err.value)
    assert "\n" not in str(err.value)
    _assert_nothing_written(out)
    if workers == 0:
        rows, skipped = make_manifest(faults.folder_settings(root, "skip"),
                                      tmp_path / "m2.tsv", progress=False)
        assert _key(rows) == _key(good_rows)
        assert skipped[0].video_id == "holes" and "decoding failed near frame" in \
            skipped[0].reason


@pytest.fixture()
def faulty_decoder(monkeypatch):
    """Decoding children that hang (holding the GIL) or crash on a chosen request."""
    decode_process.shutdown_decoder()
    monkeypatch.setattr(decode_process, "HELPER_COMMAND", faults.FAULTY_DECODER)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def arm(op: str, name: str, how: str = "hang") -> None:
        decode_process.shutdown_decoder()
        monkeypatch.setenv(faults.HANG_ENV, f"{op}:{name}:{how}")

    yield arm
    decode_process.shutdown_decoder()


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE}


def _wait_for_children(allowed: set[int], seconds: float = 15.0) -> set[int]:
    import gc

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gc.collect()  # a finished DataLoader iterator stops its workers when collected
        left = _children() - allowed
        if not left:
            return left
        time.sleep(0.2)
    return _children() - allowed


@pytest.mark.parametrize("workers", [0, 2])
def test_decoder_hang_holding_the_gil_is_bounded(good, tmp_path, faulty_decoder, workers):
    """decord #373: a decode that never returns and holds the GIL. The deadline is enforced
    from the calling process; the hung child is killed; the error names the file in time."""
    root, path = _with(good, tmp_path, "stuck.mp4", _good_mp4)
    faulty_decoder("read", "stuck.mp4")
    rows, _ = make_manifest(faults.folder_settings(root), tmp_path / "m.tsv", progress=False)
    before = _children()
    out = tmp_path / "f" / "s.h5"
    t0 = time.monotonic()
    with pytest.raises(VideoError) as err:
        _extract(rows, out, decode_workers=workers, decode_timeout=2.0)
    elapsed = time.monotonic() - t0
    message = str(err.value)
    del err
    assert message.startswith(f"{path}: decoding frames 8-36 did not finish within 2 s "
                              "(extraction.decode_timeout); the file is probably damaged"), message
    assert "\n" not in message
    assert elapsed < 30, elapsed
    _assert_nothing_written(out)
    assert not _wait_for_children(before)  # the hung decoding child was killed


def test_decoder_hang_with_skip_and_at_probe_time(good, good_rows, tmp_path, faulty_decoder):
    root, path = _with(good, tmp_path, "stuck.mp4", _good_mp4)
    faulty_decoder("read", "stuck.mp4")
    rows, skipped = make_manifest(faults.folder_settings(root, "skip", timeout=2.0),
                                  tmp_path / "m.tsv", progress=False)
    assert _key(rows) == _key(good_rows)
    assert [s.video_id for s in skipped] == ["stuck"]
    assert "did not finish within 2 s" in skipped[0].reason
    faulty_decoder("probe", "stuck.mp4")
    t0 = time.monotonic()
    with pytest.raises(VideoError, match=re.escape(f"{path}: probing the video did not finish "
                                                     "within 2 s")):
        make_manifest(faults.folder_settings(root, timeout=2.0), tmp_path / "m2.tsv",
                      progress=False)
    assert time.monotonic() - t0 < 30


def test_decoder_crash_is_a_clear_error(good, tmp_path, faulty_decoder):
    root, path = _with(good, tmp_path, "crash.mp4", _good_mp4)
    faulty_decoder("read", "crash.mp4", "crash")
    with pytest.raises(VideoError, match=re.escape(f"{path}: the decoding process died "
                                                   "(killed by SIGSEGV) while decoding frames")):
        list(read_frames(path, sample_indices(40), timeout=10))
    # the next video gets a fresh decoding child
    assert len(list(read_frames(good / "videos/Normal/n1.mp4", sample_indices(40),
                                timeout=10))) == 1


# --------------------------------------------------------------------------- odd but valid 6-8


def test_one_frame_odd_size_and_4k_videos_are_extracted(tmp_path):
    d = tmp_path / "v"
    paths = {
        "one": faults.write_video(d / "one.mp4", 1, seed=1),
        "odd": faults.write_video(d / "odd.mp4", 20, (97, 61), pix_fmt="yuv444p", seed=2),
        "uhd": faults.large_video(d / "uhd.mp4", 17, (3840, 2160)),
    }
    infos = {k: probe_video(p) for k, p in paths.items()}
    assert [(i.frames, i.width, i.height) for i in infos.values()] == [
        (1, 64, 48), (20, 97, 61), (17, 3840, 2160)]
    # a 4K frame is 24.9 MB: the decode budget keeps chunks at 2 frames
    sizes = [f.shape[0] for _, f in read_frames(paths["uhd"], np.arange(0, 17, 4), chunk=32)]
    assert sizes == [2, 2, 1]
    from types import SimpleNamespace

    rows = [SimpleNamespace(video_id=k, path=str(p), frames=infos[k].frames, fps=infos[k].fps)
            for k, p in paths.items()]
    out = tmp_path / "s.h5"
    _extract(rows, out)
    with FeatureStore(out) as s:
        assert {k: s.get(k).shape for k in paths} == {
            "one": (1, 1, 512), "odd": (2, 1, 512), "uhd": (2, 1, 512)}
        assert all(np.isfinite(s.get(k)).all() and s.get(k).std() > 0 for k in paths)


def test_variable_frame_rate_decodes_the_right_frames(tmp_path):
    path = faults.vfr_video(tmp_path / "vfr.mp4", 48)
    info = probe_video(path)
    ref = faults.decode_all(path).astype(np.int16)
    assert info.frames == len(ref) == 48
    assert 8 < info.fps < 25  # the average rate; snippets count frames, not seconds
    idx = sample_indices(info.frames)
    got = np.concatenate([f for _, f in read_frames(path, idx, chunk=2)]).astype(np.int16)
    for k, i in enumerate(idx):
        dist = np.abs(ref - got[k]).mean(axis=(1, 2, 3))
        assert dist.argmin() == i and dist[i] < 1.0, (i, dist.argmin(), dist[i])


# --------------------------------------------------------------------------- lists 10-11, roots


def test_duplicate_video_ids(good, tmp_path):
    root = faults.copy_dataset(good, tmp_path / "a")
    faults.add_video(root, "train", "Normal/n1.mp4")
    for mode in ("error", "skip"):
        with pytest.raises(DatasetError, match=r"video n1 is listed twice \(train and train"):
            make_manifest(faults.folder_settings(root, mode), tmp_path / "m.tsv",
                          progress=False)
    root = faults.copy_dataset(good, tmp_path / "b")
    _good_mp4(root / "videos" / "Fighting" / "n1.mp4")  # another file with the same id
    faults.add_video(root, "test", "Fighting/n1.mp4", "n1.mp4  Fighting  0  10")
    with pytest.raises(DatasetError, match=r"video n1 is listed twice \(train and test lists\)"):
        make_manifest(faults.folder_settings(root, "skip"), tmp_path / "m.tsv", progress=False)
    assert not (tmp_path / "m.tsv").exists()


def test_annotation_overshoot_within_tolerance_is_cut_and_listed(good, tmp_path):
    """An interval ending 10 frames past a 40-frame video is cut to its end (tolerance: one
    snippet, 16 frames), listed in annotation_cuts.tsv, and the manifest is otherwise as
    before; with annotation_tolerance 0 the same line is an error naming the file."""
    root = faults.copy_dataset(good, tmp_path / "ds")
    lines = (root / "annotations.txt").read_text().splitlines()
    (root / "annotations.txt").write_text(f"{lines[0]}\ntf1.mp4  Fighting  8  50\n")
    out = tmp_path / "out"
    rows, _ = make_manifest(faults.folder_settings(root), out / "manifest.tsv", progress=False)
    by_id = {r.video_id: r for r in read_manifest(out / "manifest.tsv")}
    assert by_id["tf1"].frames == 40 and by_id["tf1"].intervals == [(8, 40)]
    cuts = read_cuts(out / "annotation_cuts.tsv")
    assert [(c.video_id, c.written, c.used, c.frames, c.overshoot) for c in cuts] == [
        ("tf1", (8, 50), (8, 40), 40, 10)]
    assert cuts[0].source == str(root / "annotations.txt")
    strict = faults.folder_settings(root) | {"annotation_tolerance": 0}
    with pytest.raises(DatasetError, match=r"annotated interval 8-50 is not within its 40 "
                                           r"frames \(it ends 10 frames past the end, more than "
                                           r"annotation_tolerance = 0 frames"):
        make_manifest(strict, tmp_path / "strict" / "manifest.tsv", progress=False)
    assert not (tmp_path / "strict" / "manifest.tsv").exists()


@pytest.mark.parametrize(("line", "text"), [
    ("tf1.mp4  Fighting  8  57", r"annotations.txt: video tf1 \(.*tf1.mp4\): annotated "
                                 r"interval 8-57 is not within its 40 frames \(it ends 17 frames "
                                 r"past the end, more than annotation_tolerance = 16 frames"),
    ("tf1.mp4  Fighting  40  48", r"annotated interval 40-48 is not within its 40 frames "
                                  r"\(its start lies past the end"),
    ("tf1.mp4  Fighting  8  400", r"annotations.txt: video tf1 \(.*tf1.mp4\): annotated "
                                  r"interval 8-400 is not within its 40 frames"),
    ("tf1.mp4  Fighting  30  8", r"annotations.txt:2: bad interval 30-8 \(need 0 <= start "
                                 r"< end\)"),
])
def test_bad_annotation_intervals(good, tmp_path, line, text):
    root = faults.copy_dataset(good, tmp_path / "ds")
    lines = (root / "annotations.txt").read_text().splitlines()
    (root / "annotations.txt").write_text(f"{lines[0]}\n{line}\n")
    for mode in ("error", "skip"):  # never skipped: it would change the ground truth
        with pytest.raises(DatasetError, match=text):
            make_manifest(faults.folder_settings(root, mode), tmp_path / "m.tsv",
                          progress=False)
    assert not (tmp_path / "m.tsv").exists()


@pytest.mark.parametrize(("entry", "text"), [
    ("Normal/../../outside.mp4", "points outside the dataset root"),
    ("../outside.mp4", "points outside the dataset root"),
    ("Normal/../../../../../../etc/hostname", "points outside the dataset root"),
    ("Normal\\..\\..\\outside.mp4", "points outside the dataset root"),
    ("/etc/hostname", "is an absolute path"),
])
def test_list_paths_cannot_escape_the_root(good, tmp_path, entry, text):
    root = faults.copy_dataset(good, tmp_path / "ds")
    _good_mp4(tmp_path / "outside.mp4")
    _good_mp4(root / "outside.mp4")
    faults.add_video(root, "train", entry)
    for missing_ok in (False, True):
        with pytest.raises(DatasetError, match=text):
            folder_entries(root, missing_ok=missing_ok)
    ucf_list = tmp_path / "train.txt"
    ucf_list.write_text(entry + "\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DatasetError, match=text):
        ucf_entries(root, train_list=ucf_list, test_list=empty, annotation=empty)


# --------------------------------------------------------------------------- stores 12, 14


@pytest.fixture(scope="module")
def trained(good, tmp_path_factory):
    """The good dataset extracted and trained once: manifest, store, checkpoint."""
    d = tmp_path_factory.mktemp("trained")
    settings = faults.folder_settings(good)
    rows, _ = make_manifest(settings, d / "manifest.tsv", progress=False)
    _extract(rows, d / "features.h5")
    train(settings, d / "manifest.tsv", d / "features.h5", d / "model.pt", d / "log.tsv")
    return settings, d


def _store_copy(src: Path, dst: Path, **provenance) -> Path:
    with FeatureStore(src) as s:
        prov = dict(s.provenance) | provenance
        videos = {v: s.get(v) for v in s.video_ids()}
    with StoreWriter(dst, prov) as w:
        for v, x in videos.items():
            w.add(v, x)
    return dst


@pytest.mark.parametrize(("key", "value"), [("stride", 8), ("model", "ViT-B-16"),
                                            ("weights", "open_clip:openai")])
def test_store_of_another_model_or_stride_is_refused(trained, tmp_path, key, value):
    settings, d = trained
    other = _store_copy(d / "features.h5", tmp_path / "other.h5", **{key: value})
    text = re.escape(f"{other}: store was made with {key}={value!r} but the config asks for")
    with pytest.raises(StoreError, match=text):
        train(settings, d / "manifest.tsv", other, tmp_path / "m.pt", tmp_path / "l.tsv")
    with pytest.raises(StoreError, match=text):
        score_test_set(settings, d / "manifest.tsv", other, d / "model.pt", tmp_path / "s.h5")
    assert not list(tmp_path.glob("*.pt")) and not (tmp_path / "s.h5").exists()


def test_nan_or_inf_in_features(trained, tmp_path):
    settings, d = trained
    planted = tmp_path / "nan.h5"
    # a store written by another tool (plain HDF5: no seal, no checksums), with a NaN and an inf
    with FeatureStore(d / "features.h5") as src, h5py.File(planted, "w") as f:
        for k, v in src.provenance.items():
            f.attrs[k] = v
        for v in src.video_ids():
            x = src.get(v).astype(np.float16)
            if v == "f2":
                x[1, 0, 3], x[2, 0, 7] = np.nan, np.inf
            f.create_dataset(f"videos/{v}", data=x)
    text = re.escape(f"{planted}: features of video 'f2' contain NaN or inf (2 of ")
    with pytest.raises(StoreError, match=text):
        train(settings, d / "manifest.tsv", planted, tmp_path / "m.pt", tmp_path / "l.tsv")
    rows = read_manifest(d / "manifest.tsv")
    for r in rows:
        if r.video_id == "f2":
            r.split = "test"
    from tpwng.data.manifest import write_manifest

    write_manifest(rows, tmp_path / "m.tsv")
    with pytest.raises(StoreError, match=text):
        score_test_set(settings, tmp_path / "m.tsv", planted, d / "model.pt", tmp_path / "s.h5")
    assert not list(tmp_path.glob("*.pt")) and not (tmp_path / "s.h5").exists()


class _ConstantVisual(torch.nn.Module):
    output_dim = 512

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.full((x.shape[0], 512), self.value) + self.w


@pytest.mark.parametrize(("value", "text"), [(float("nan"), r"\)\; nothing was written"),
                                             (1e6, r", out of float16 range\)")])
def test_nan_or_overflow_at_extraction_is_refused(trained, tmp_path, value, text):
    _, d = trained
    rows = read_manifest(d / "manifest.tsv")
    model = torch.nn.Module()
    model.visual = _ConstantVisual(value)
    out = tmp_path / "f.h5"
    with pytest.raises(StoreError, match=re.escape(f"{out}: features of video 'n1' contain NaN "
                                                   "or inf (1536 of 1536 values") + text):
        extract(rows, out, SPEC, ExtractionSettings(batch_size=16, decode_workers=0),
                progress=False, clip_model=model)
    _assert_nothing_written(out)


_CORRUPTOR = r"""
import sys, numpy as np
from tpwng.features.store import FeatureStore, StoreError
ref_path, bad_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with FeatureStore(ref_path) as r:
    ref = {v: r.get(v) for v in r.video_ids()}
data = open(ref_path, "rb").read()
rng = np.random.default_rng(0)
counts = {"error": 0, "same": 0}
for trial in range(n):
    d = bytearray(data)
    if trial % 3 == 0:
        d = d[: int(rng.integers(0, len(d)))]
    elif trial % 3 == 1:
        for _ in range(int(rng.integers(1, 20))):
            d[int(rng.integers(0, len(d)))] = int(rng.integers(0, 256))
    else:
        a = int(rng.integers(0, len(d) - 64))
        d[a : a + 64] = rng.integers(0, 256, 64).astype(np.uint8).tobytes()
    open(bad_path, "wb").write(bytes(d))
    try:
        with FeatureStore(bad_path) as s:
            got = {v: s.get(v) for v in s.video_ids()}
            attrs = [s.video_attrs(v) for v in s.video_ids()]
    except StoreError as exc:
        assert bad_path in str(exc), str(exc)
        counts["error"] += 1
        continue
    assert got.keys() == ref.keys() and all((got[v] == ref[v]).all() for v in ref), trial
    counts["same"] += 1
print(counts["error"], counts["same"])
"""


def test_damaged_store_is_a_clear_error_never_a_crash(trained, tmp_path):
    """Truncated and overwritten bytes (60 seeded cases) in a subprocess, so that a crash
    would show: every read gives either a StoreError naming the file, or the true data
    (damage in unused bytes). Per-video checksums catch damage HDF5 cannot see."""
    _, d = trained
    proc = subprocess.run([sys.executable, "-c", _CORRUPTOR, str(d / "features.h5"),
                           str(tmp_path / "bad.h5"), "60"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors, same = map(int, proc.stdout.split())
    assert errors + same == 60 and errors >= 40
    for content in (b"", b"\x89HDF\r\n\x1a\n" + bytes(200), os.urandom(5000)):
        (tmp_path / "x.h5").write_bytes(content)
        with pytest.raises(StoreError, match=re.escape(str(tmp_path / "x.h5"))):
            FeatureStore(tmp_path / "x.h5")


def test_view_whose_shard_is_missing(trained, tmp_path):
    from tpwng.features.store import merge_view

    _, d = trained
    shard = _store_copy(d / "features.h5", tmp_path / "shards" / "000-of-001.h5")
    merge_view([shard], tmp_path / "features.h5")
    shard.unlink()
    with pytest.raises(StoreError, match=re.escape(f"{tmp_path / 'features.h5'}: its shard "
                                                   "shards/000-of-001.h5 does not exist")):
        FeatureStore(tmp_path / "features.h5")


# --------------------------------------------------------------------------- checkpoints 13


@pytest.mark.parametrize(("change", "text"), [
    (lambda s: s.update(classes=["normal", "fighting", "riot"]), r"trained for classes"),
    (lambda s: s["extraction"].update(stride=8), r"trained with stride=16, but the config "
                                                 r"asks for 8"),
    (lambda s: s["model"].update(layers=2), r"trained with model.layers=1, but the config has "
                                            r"model.layers=2"),
    (lambda s: s["clip"].update(seed=1), r"trained with CLIP weights 'random-init:seed=0', "
                                         r"but the config gives 'random-init:seed=1'"),
])
def test_checkpoint_of_another_config_is_refused(trained, tmp_path, change, text):
    import copy

    settings, d = trained
    other = copy.deepcopy(settings)
    change(other)
    with pytest.raises(CheckpointError, match=re.escape(str(d / "model.pt")) + ": " + text):
        load_model(d / "model.pt", other)
    with pytest.raises(CheckpointError, match=text):
        score_test_set(other, d / "manifest.tsv", d / "features.h5", d / "model.pt",
                       tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()
    load_model(d / "model.pt", settings)  # the matching config loads


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    """No code in a checkpoint ever runs: every torch.load says weights_only=True, and
    a pickle that would run code is refused."""
    sources = "\n".join(p.read_text() for p in (REPO / "tpwng").rglob("*.py"))
    calls = re.findall(r"torch\.load\([^)]*\)", sources)
    assert calls and all("weights_only=True" in c for c in calls), calls
    assert "weights_only=False" not in sources
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "tpwng-checkpoint/1", "meta": _Payload(marker), "state": {}}, evil)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable tpwng checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(ClipWeightsError, match="evil.pt"):
        load_clip(ClipSpec("tpwng-tiny-ViT-B-16", str(evil)))
    assert not marker.exists()


# --------------------------------------------------------------------------- disk full


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run the real `tpwng` command line in a fresh process: (exit code, stderr text)."""
    ctx = faults.cli_context()
    logs = tmp_path_factory.mktemp("cli-logs")
    counter = iter(range(10**6))

    def run(argv: list[str], cwd: Path, fsize_limit: int | None = None) -> tuple[int, str]:
        log = logs / f"{next(counter)}.log"
        p = ctx.Process(target=faults.run_cli, args=(argv, str(log), str(cwd), fsize_limit))
        p.start()
        p.join(240)
        assert p.exitcode is not None, "the command did not finish"
        return p.exitcode, log.read_text()

    return run


def _json(settings: dict) -> str:
    import json

    return json.dumps(settings)


def _stage_argv(stage: str, settings: dict, d: Path, out: Path) -> list[str]:
    s = ["--settings", _json(settings)]
    m = ["--manifest", str(d / "manifest.tsv")]
    return {
        "manifest": ["manifest", *s, "--out", str(out)],
        "extract": ["extract", *s, *m, "--out", str(out)],
        "train": ["train", *s, *m, "--features", str(d / "features.h5"), "--out", str(out),
                  "--log", str(out.with_suffix(".tsv"))],
        "infer": ["infer", *s, *m, "--features", str(d / "features.h5"), "--model",
                  str(d / "model.pt"), "--out", str(out)],
    }[stage]


@pytest.mark.parametrize(("stage", "name", "limit"), [
    ("manifest", "manifest.tsv", 300), ("extract", "features.h5", 6000),
    ("train", "model.pt", 20000), ("infer", "scores.h5", 3000),
])
def test_disk_full_is_a_clear_error_without_partial_output(trained, tmp_path, cli, stage, name,
                                                           limit):
    """A write that fails for lack of room (RLIMIT_FSIZE in the job's process, which needs no
    root): one line naming the file, exit status 2, no output and no temporary file left."""
    settings, d = trained
    out = tmp_path / "out" / name
    code, log = cli(_stage_argv(stage, settings, d, out), tmp_path, fsize_limit=limit)
    assert code == 2, log[-2000:]
    errors = re.findall(rf"tpwng {stage}: error: .*", log)  # a progress bar may precede it
    assert errors == [f"tpwng {stage}: error: {out}: cannot write (File too large: the disk is "
                      "full or a file size limit or quota was reached); no partial output was "
                      "left"], log[-2000:]
    assert "Traceback" not in log
    # the manifest stage writes its two side lists (complete) before the manifest itself
    assert sorted(p.name for p in out.parent.iterdir()) in (
        [], ["skipped.tsv"], ["annotation_cuts.tsv", "skipped.tsv"])
    code, log = cli(_stage_argv(stage, settings, d, out), tmp_path)  # room again: it completes
    assert code == 0, log[-2000:]
    assert out.exists()
