"""Dataset split/annotation parsers and video manifests.

Supported layouts: UCF-Crime and XD-Violence (split and annotation files shipped in
``tpwng/resources``, videos found below a user-given root), and a generic folder format::

    ROOT/videos/<Class>/<id>.<ext>
    ROOT/train.txt, ROOT/test.txt     one "<Class>/<id>.<ext>" per line
    ROOT/annotations.txt              UCF temporal format, test videos (normal ones optional)

Frame intervals are 0-based and end-exclusive throughout.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tpwng import RESOURCES
from tpwng.files import write_lines, write_table
from tpwng.store import StoreError
from tpwng.video import DECODE_TIMEOUT, VideoError, VideoInfo, check_decodable, probe_video

log = logging.getLogger(__name__)

NORMAL = "normal"
UCF_CLASSES = [
    "normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion", "fighting",
    "road accidents", "robbery", "shooting", "shoplifting", "stealing", "vandalism",
]
XD_CLASSES = ["normal", "fighting", "shooting", "riot", "abuse", "car accident", "explosion"]
XD_CODES = {
    "A": "normal", "B1": "fighting", "B2": "shooting", "B4": "riot", "B5": "abuse",
    "B6": "car accident", "G": "explosion",
}

UCF_TRAIN_LIST = RESOURCES / "ucf_crime" / "Anomaly_Train.txt"
UCF_TEST_LIST = RESOURCES / "ucf_crime" / "Anomaly_Test.txt"
UCF_ANNOTATION = RESOURCES / "ucf_crime" / "Temporal_Anomaly_Annotation.txt"
XD_TRAIN_LIST = RESOURCES / "vadclip_lists" / "xd_CLIP_rgb.csv"
XD_TEST_LIST = RESOURCES / "vadclip_lists" / "xd_CLIP_rgbtest.csv"
XD_ANNOTATION = RESOURCES / "xd_violence" / "annotations.txt"

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
)
FORMATS = ("ucf", "xd", "folder", "synthetic")
MANIFEST_COLUMNS = [
    "video_id", "path", "split", "label", "classes", "intervals", "frames", "fps", "width",
    "height",
]
SPLITS = ("train", "test")
SKIPPED_COLUMNS = ["video_id", "path", "split", "label", "reason"]
BAD_VIDEO_ACTIONS = ("error", "skip")
_NORMAL_DIRS = {
    "training_normal_videos_anomaly", "testing_normal_videos_anomaly", "normal_videos_event",
}

Interval = tuple[int, int]


class DatasetError(ValueError):
    """Bad dataset input; the message names the file and the problem."""


class UnusableVideoError(VideoError, DatasetError):
    """A video that opens but cannot be used (no frames, no valid frame rate)."""


@dataclass
class VideoEntry:
    """One video of a dataset with its split, prompt classes and test-time annotation."""

    video_id: str
    path: str
    split: str
    classes: list[str]
    intervals: list[Interval]
    # where the intervals come from (an annotation file), for messages only
    source: str = field(default="", kw_only=True, compare=False, repr=False)

    @property
    def label(self) -> str:
        """``"normal"`` for normal videos, else ``"anomalous"``."""
        return NORMAL if self.classes == [NORMAL] else "anomalous"


@dataclass
class ManifestRow(VideoEntry):
    """A :class:`VideoEntry` together with its probed :class:`VideoInfo`."""

    frames: int
    fps: float
    width: int
    height: int


# --------------------------------------------------------------------------- helpers


def strip_video_extension(name: str) -> str:
    """Drop a known video file extension (names such as ``Bad.Boys.1995__#1`` keep their dots)."""
    lower = name.lower()
    for ext in VIDEO_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def _read_lines(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """Non-empty, stripped lines of a text file with their 1-based line numbers."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            lines.append((number, line))
    return lines


def _parse_intervals(fields: Sequence[str], where: str) -> list[Interval]:
    """Parse ``s1 e1 s2 e2 ...``; a ``-1 -1`` pair marks an absent interval."""
    if len(fields) % 2:
        raise DatasetError(f"{where}: odd number of interval fields ({len(fields)})")
    intervals = []
    for start_text, end_text in zip(fields[::2], fields[1::2], strict=True):
        try:
            start, end = int(start_text), int(end_text)
        except ValueError:
            raise DatasetError(
                f"{where}: interval bounds must be integers, got {start_text!r} {end_text!r}"
            ) from None
        if start == -1 and end == -1:
            continue
        if start < 0 or end <= start:
            raise DatasetError(f"{where}: bad interval {start}-{end} (need 0 <= start < end)")
        intervals.append((start, end))
    return intervals


def class_prompt_name(raw: str) -> str:
    """Map a class/folder name to its prompt name, e.g. ``RoadAccidents`` -> ``road accidents``."""
    name = raw.strip()
    if name.lower() == NORMAL or name.lower() in _NORMAL_DIRS:
        return NORMAL
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    name = re.sub(r"[\s_\-]+", " ", name)
    return name.strip().lower()


# --------------------------------------------------------------------------- parsers


def parse_ucf_temporal_annotation(
    path: str | os.PathLike[str],
) -> dict[str, tuple[str, list[Interval]]]:
    """Parse a UCF-Crime temporal annotation: ``name  class  s1  e1  s2  e2 ...``.

    Returns video id (name without extension) -> (raw class, intervals).
    """
    result: dict[str, tuple[str, list[Interval]]] = {}
    for number, line in _read_lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) < 2:
            raise DatasetError(f"{where}: expected '<video> <class> [start end ...]', got {line!r}")
        video_id = strip_video_extension(fields[0])
        if video_id in result:
            raise DatasetError(f"{where}: video {video_id} is listed twice")
        result[video_id] = (fields[1], _parse_intervals(fields[2:], where))
    return result


def parse_xd_annotation(path: str | os.PathLike[str]) -> dict[str, list[Interval]]:
    """Parse an XD-Violence annotation: ``name s1 e1 s2 e2 ...`` -> video id -> intervals."""
    result: dict[str, list[Interval]] = {}
    for number, line in _read_lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        video_id = strip_video_extension(fields[0])
        if video_id in result:
            raise DatasetError(f"{where}: video {video_id} is listed twice")
        result[video_id] = _parse_intervals(fields[1:], where)
    return result


def load_interval_file(path: str | os.PathLike[str]) -> dict[str, list[Interval]]:
    """Read a file in the UCF temporal format as video id -> intervals."""
    return {vid: intervals for vid, (_, intervals) in parse_ucf_temporal_annotation(path).items()}


def xd_classes_from_name(video_id: str) -> list[str]:
    """Prompt classes encoded after ``_label_`` in an XD-Violence video name."""
    if "_label_" not in video_id:
        raise DatasetError(f"XD-Violence video {video_id}: name has no '_label_' part")
    codes = [c for c in video_id.rsplit("_label_", 1)[1].split("-") if c != "0"]
    classes: list[str] = []
    for code in codes:
        if code not in XD_CODES:
            raise DatasetError(f"XD-Violence video {video_id}: unknown label code {code!r}")
        if XD_CODES[code] not in classes:
            classes.append(XD_CODES[code])
    if not classes or (NORMAL in classes and len(classes) > 1):
        raise DatasetError(f"XD-Violence video {video_id}: invalid label codes {codes}")
    return classes


def frame_labels(intervals: Iterable[Interval], n_frames: int) -> np.ndarray:
    """Per-frame 0/1 ground truth (uint8) of a video with ``n_frames`` frames."""
    labels = np.zeros(int(n_frames), dtype=np.uint8)
    for start, end in intervals:
        if start < 0 or end < start:
            raise DatasetError(f"bad interval {start}-{end} (need 0 <= start <= end)")
        if end > n_frames:
            raise DatasetError(f"interval {start}-{end} lies beyond the video's {n_frames} frames")
        labels[start:end] = 1
    return labels


# --------------------------------------------------------------------------- path resolution


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Resolver:
    """Find listed videos below a root: at the listed relative path, else by file name."""

    def __init__(self, root: str | os.PathLike[str], search: bool = True,
                 require_files: bool = True, missing_ok: bool = False) -> None:
        self.root = os.path.normpath(os.path.abspath(os.fspath(root)))
        self.require_files = require_files
        self.missing_ok = missing_ok
        if require_files and not os.path.isdir(self.root):
            raise DatasetError(f"{self.root}: dataset root is not a directory")
        self.search = search and require_files
        self._index: dict[str, list[str]] | None = None

    def _build_index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            for name in filenames:
                index.setdefault(name, []).append(os.path.join(dirpath, name))
        return index

    def resolve(self, relative: str, list_file: str | os.PathLike[str]) -> str:
        """Absolute path of ``relative`` (a list entry); errors name the list file."""
        if os.path.isabs(relative) or relative.startswith(("/", "\\")):
            raise DatasetError(f"{list_file}: {relative} is an absolute path; list paths must "
                               f"be relative to {self.root}")
        candidate = os.path.normpath(os.path.join(self.root, relative))
        if not _inside(candidate, self.root):
            raise DatasetError(f"{list_file}: {relative} points outside the dataset root "
                               f"{self.root}")
        if os.path.isfile(candidate) or not self.require_files:
            return candidate
        if self.search:
            if self._index is None:
                self._index = self._build_index()
            found = self._index.get(os.path.basename(relative), [])
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise DatasetError(f"{list_file}: {relative} matches several files below "
                                   f"{self.root}: {', '.join(sorted(found))}")
        if self.missing_ok:
            return candidate  # probing it reports the missing file as a bad video
        raise DatasetError(f"{list_file}: video file {candidate} not found"
                           + (f" (nor any file named {os.path.basename(relative)} below "
                              f"{self.root})" if self.search else ""))


def _check_unique(entries: Sequence[VideoEntry], dataset: str) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.video_id in seen:
            raise DatasetError(f"{dataset}: video {entry.video_id} is listed twice "
                               f"({seen[entry.video_id]} and {entry.split} lists)")
        seen[entry.video_id] = entry.split


def _attach_ucf_annotation(
    entries: list[VideoEntry],
    annotation: dict[str, tuple[str, list[Interval]]],
    annotation_file: str | os.PathLike[str],
) -> None:
    """Give test entries their intervals, checking the annotation against the split lists."""
    by_id = {entry.video_id: entry for entry in entries}
    for video_id, (raw_class, intervals) in annotation.items():
        entry = by_id.get(video_id) or by_id.get(os.path.splitext(video_id)[0])
        if entry is None:
            raise DatasetError(f"{annotation_file}: annotated video {video_id} is in no split list")
        if entry.split != "test":
            continue  # weak supervision: training videos carry only their class
        if class_prompt_name(raw_class) != entry.classes[0]:
            raise DatasetError(f"{annotation_file}: video {video_id} is annotated as "
                               f"{raw_class!r} but listed under class {entry.classes[0]!r}")
        if entry.label == NORMAL and intervals:
            raise DatasetError(f"{annotation_file}: normal video {video_id} has anomalous "
                               f"intervals {intervals}")
        entry.intervals = list(intervals)
        entry.source = str(annotation_file)
    for entry in entries:
        if entry.split == "test" and entry.label != NORMAL and not entry.intervals:
            raise DatasetError(f"{annotation_file}: anomalous test video {entry.video_id} has "
                               "no annotated interval")


def _class_list_entries(
    list_file: str | os.PathLike[str], split: str, resolver: _Resolver
) -> list[VideoEntry]:
    """Entries of a ``<Class>/<file>`` list (UCF-Crime and folder formats)."""
    entries = []
    for number, line in _read_lines(list_file):
        relative = line.replace("\\", "/")
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if len(parts) < 2 and not os.path.isabs(relative):
            raise DatasetError(f"{list_file}:{number}: expected '<Class>/<video file>', "
                               f"got {line!r}")
        path = resolver.resolve(relative, list_file)
        video_id = os.path.splitext(parts[-1])[0]
        entries.append(VideoEntry(video_id, path, split, [class_prompt_name(parts[0])], []))
    return entries


# --------------------------------------------------------------------------- datasets


def ucf_entries(
    root: str | os.PathLike[str],
    *,
    train_list: str | os.PathLike[str] = UCF_TRAIN_LIST,
    test_list: str | os.PathLike[str] = UCF_TEST_LIST,
    annotation: str | os.PathLike[str] = UCF_ANNOTATION,
    require_files: bool = True,
    missing_ok: bool = False,
) -> list[VideoEntry]:
    """UCF-Crime entries (train list order, then test list order) for videos below ``root``."""
    resolver = _Resolver(root, require_files=require_files, missing_ok=missing_ok)
    entries = (_class_list_entries(train_list, "train", resolver)
               + _class_list_entries(test_list, "test", resolver))
    _check_unique(entries, "UCF-Crime")
    _attach_ucf_annotation(entries, parse_ucf_temporal_annotation(annotation), annotation)
    return entries


def _xd_list_names(list_file: str | os.PathLike[str]) -> list[str]:
    """Video ids of a feature list (``path,label``), one per video with crops merged."""
    try:
        with open(list_file, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DatasetError(f"{list_file}: cannot read ({exc})") from None
    names: dict[str, None] = {}
    for number, row in enumerate(rows, start=1):
        if not row or not row[0].strip() or (number == 1 and row[0].strip() == "path"):
            continue
        stem = re.split(r"[\\/]", row[0].strip())[-1]
        if stem.endswith(".npy"):
            stem = stem[:-4]
        head, sep, crop = stem.rpartition("__")
        if sep and crop.isdigit():
            stem = head
        stem = strip_video_extension(stem)
        if not stem:
            raise DatasetError(f"{list_file}:{number}: no video name in {row[0]!r}")
        names[stem] = None
    return list(names)


def xd_entries(
    root: str | os.PathLike[str],
    *,
    train_list: str | os.PathLike[str] = XD_TRAIN_LIST,
    test_list: str | os.PathLike[str] = XD_TEST_LIST,
    annotation: str | os.PathLike[str] = XD_ANNOTATION,
    require_files: bool = True,
    missing_ok: bool = False,
) -> list[VideoEntry]:
    """XD-Violence entries (train, then test in list order) for ``<id>.mp4`` files below root."""
    resolver = _Resolver(root, require_files=require_files, missing_ok=missing_ok)
    entries = []
    for split, list_file in (("train", train_list), ("test", test_list)):
        for video_id in _xd_list_names(list_file):
            try:
                classes = xd_classes_from_name(video_id)
            except DatasetError as exc:
                raise DatasetError(f"{list_file}: {exc}") from None
            path = resolver.resolve(f"{video_id}.mp4", list_file)
            entries.append(VideoEntry(video_id, path, split, classes, []))
    _check_unique(entries, "XD-Violence")
    by_id = {entry.video_id: entry for entry in entries}
    for video_id, intervals in parse_xd_annotation(annotation).items():
        entry = by_id.get(video_id)
        if entry is None:
            raise DatasetError(f"{annotation}: annotated video {video_id} is in no split list")
        if entry.split != "test":
            continue
        if entry.label == NORMAL:
            raise DatasetError(f"{annotation}: normal video {video_id} has anomalous intervals")
        entry.intervals = intervals
        entry.source = str(annotation)
    for entry in entries:
        if entry.split == "test" and entry.label != NORMAL and not entry.intervals:
            raise DatasetError(f"{annotation}: violent test video {entry.video_id} has no "
                               "annotated interval")
    return entries


def folder_entries(root: str | os.PathLike[str], require_files: bool = True,
                   missing_ok: bool = False) -> list[VideoEntry]:
    """Entries of the generic folder format (see the module docstring)."""
    root = Path(root)
    resolver = _Resolver(root / "videos", search=False, require_files=require_files,
                         missing_ok=missing_ok)
    entries = (_class_list_entries(root / "train.txt", "train", resolver)
               + _class_list_entries(root / "test.txt", "test", resolver))
    _check_unique(entries, str(root))
    annotation_file = root / "annotations.txt"
    if annotation_file.exists():
        annotation = parse_ucf_temporal_annotation(annotation_file)
    else:
        annotation = {}
    _attach_ucf_annotation(entries, annotation, annotation_file)
    return entries


def entries_for(fmt: str, root: str | os.PathLike[str], require_files: bool = True,
                missing_ok: bool = False) -> list[VideoEntry]:
    """Entries of a dataset in format ``fmt`` (``ucf``, ``xd``, ``folder`` or ``synthetic``).

    ``require_files=False`` lists the videos without looking for them (released features);
    ``missing_ok=True`` keeps a listed video whose file is missing (probing reports it).
    """
    kw = {"require_files": require_files, "missing_ok": missing_ok}
    if fmt == "ucf":
        return ucf_entries(root, **kw)
    if fmt == "xd":
        return xd_entries(root, **kw)
    if fmt in ("folder", "synthetic"):
        return folder_entries(root, **kw)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- manifests


@dataclass
class SkippedVideo:
    """A listed video left out of the manifest (``extraction.on_bad_video: skip``)."""

    video_id: str
    path: str
    split: str
    label: str
    reason: str


@dataclass(frozen=True)
class AnnotationCut:
    """An annotated interval that ended past its video's last frame and was cut to the end."""

    video_id: str
    written: Interval
    used: Interval
    frames: int
    source: str = ""

    @property
    def overshoot(self) -> int:
        """Frames the interval as written ran past the video's end."""
        return self.written[1] - self.frames


def fit_intervals(entry: VideoEntry, frames: int,
                  tolerance: int) -> tuple[list[Interval], list[AnnotationCut]]:
    """The entry's intervals fitted to a video of ``frames`` frames, and the cuts made.

    An interval whose end lies past the last frame by at most ``tolerance`` frames is cut to
    the video's end (public evaluation scripts cut such annotations the same way: their ground
    truth is as long as the video's snippets). A start at or past the end, or an end more than
    ``tolerance`` frames past it, is a :class:`DatasetError` naming the annotation file.
    """
    intervals: list[Interval] = []
    cuts: list[AnnotationCut] = []
    where = f"{entry.source}: " if entry.source else ""
    for start, end in entry.intervals:
        if 0 <= start < end <= frames:
            intervals.append((int(start), int(end)))
            continue
        overshoot = end - frames
        if start < 0 or start >= frames or overshoot > tolerance:
            beyond = ("its start lies past the end" if start >= frames else
                      f"it ends {overshoot} frames past the end, more than "
                      f"annotation_tolerance = {tolerance} frames")
            raise DatasetError(
                f"{where}video {entry.video_id} ({entry.path}): annotated interval "
                f"{start}-{end} is not within its {frames} frames ({beyond}; is the video "
                "truncated, or the annotation wrong?)"
            )
        intervals.append((int(start), int(frames)))
        cuts.append(AnnotationCut(entry.video_id, (int(start), int(end)), (int(start), frames),
                                  int(frames), entry.source))
    return intervals, cuts


# What a bad video raises while it is probed or test-decoded: these, and only these, may be
# skipped. Errors of the lists and annotations are never skipped.
BAD_VIDEO_ERRORS = (VideoError, StoreError)


def _bad_video_error(bad: list[tuple[VideoEntry, Exception]], total: int) -> Exception:
    """One error (of the first one's type) naming every bad video, up to five in full."""
    hint = ("set extraction.on_bad_video: skip to leave such videos out (they are then listed "
            "in data/<dataset>/skipped.tsv)")
    if len(bad) == 1:
        return type(bad[0][1])(f"{bad[0][1]}; {hint}")
    shown = "; ".join(str(exc) for _, exc in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return type(bad[0][1])(f"{len(bad)} of {total} videos cannot be used: {shown}{more}; "
                           f"{hint}")


def build_manifest(
    entries: Sequence[VideoEntry],
    probe: Callable[[str], VideoInfo],
    progress: bool = True,
    *,
    on_bad_video: str = "error",
    check: Callable[[str, VideoInfo], None] | None = None,
    skipped: list[SkippedVideo] | None = None,
    tolerance: int = 0,
    cuts: list[AnnotationCut] | None = None,
) -> list[ManifestRow]:
    """Probe every video and fit its annotation to the probed frame count.

    An interval ending at most ``tolerance`` frames past the video's end is cut to the end
    and the cut appended to ``cuts`` (see :func:`fit_intervals`).

    A video that cannot be used (``probe`` or ``check`` raise one of BAD_VIDEO_ERRORS, or it
    has no frames or no valid frame rate) is, with ``on_bad_video="error"``, reported in one
    error (of the first such error's type) naming every such file once all are probed; with
    ``"skip"`` it is left out and appended to ``skipped`` with the reason. Duplicate ids and
    annotated intervals that do not fit the video (beyond the tolerance) are errors either way:
    skipping them would silently change the ground truth.
    """
    if on_bad_video not in BAD_VIDEO_ACTIONS:
        raise DatasetError(f"on_bad_video must be one of {BAD_VIDEO_ACTIONS}, got "
                           f"{on_bad_video!r}")
    if on_bad_video == "skip" and skipped is None:
        raise ValueError("on_bad_video='skip' needs a list to report skipped videos in")
    _check_unique(entries, "manifest")
    rows = []
    bad: list[tuple[VideoEntry, Exception]] = []
    for entry in tqdm(entries, desc="probe videos", unit="video", disable=not progress):
        try:
            info = probe(entry.path)
            if info.frames <= 0:
                raise UnusableVideoError(f"{entry.path}: video {entry.video_id} has no frames")
            if not (math.isnan(info.fps) or (math.isfinite(info.fps) and info.fps > 0)):
                raise UnusableVideoError(f"{entry.path}: video {entry.video_id} has invalid "
                                         f"fps {info.fps}")
            intervals, video_cuts = fit_intervals(entry, int(info.frames), tolerance)
            if check is not None:
                check(entry.path, info)
        except BAD_VIDEO_ERRORS as exc:
            bad.append((entry, exc))
            continue
        if cuts is not None:
            cuts.extend(video_cuts)
        rows.append(ManifestRow(
            entry.video_id, entry.path, entry.split, list(entry.classes), intervals,
            int(info.frames), float(info.fps), int(info.width), int(info.height),
        ))
    if bad and on_bad_video == "error":
        raise _bad_video_error(bad, len(entries))
    for entry, exc in bad:
        skipped.append(SkippedVideo(entry.video_id, entry.path, entry.split, entry.label,
                                    str(exc)))
        log.warning("skipped video %s: %s", entry.video_id, exc)
    return rows


def annotation_tolerance(settings: dict) -> int:
    """Frames an annotated interval may end past its video's end: the setting, else the stride."""
    value = settings.get("annotation_tolerance")
    if value is None:
        value = int((settings.get("extraction") or {}).get("stride", 16))
    return int(value)


def make_manifest(settings: dict, out: str | os.PathLike[str],
                  skipped_out: str | os.PathLike[str] | None = None,
                  progress: bool = True,
                  cuts_out: str | os.PathLike[str] | None = None,
                  ) -> tuple[list[ManifestRow], list[SkippedVideo]]:
    """The manifest stage: list, probe and (when skipping bad videos) test-decode every video.

    Writes the manifest, the list of skipped videos (``skipped_out``, default ``skipped.tsv``
    beside the manifest; only its header when nothing was skipped) and the annotated intervals
    cut to their video's end (``cuts_out``, default ``annotation_cuts.tsv`` beside it; see
    :func:`fit_intervals`). With ``extraction.on_bad_video: skip`` every sampled frame of every
    video is decoded here, so that a video extraction could not decode is left out now, before
    any later stage sees the video set; extraction then never skips anything. Released features
    (``extraction.source: released``) stand in for the videos: a video's frame count is 16 x
    its snippets, and the dataset root defaults to ``extraction.released_dir``.
    """
    ex = settings.get("extraction") or {}
    released = ex.get("source", "extract") == "released"
    action = ex.get("on_bad_video", "error")
    skip = action == "skip"
    root = settings.get("root") or (ex.get("released_dir") if released else None)
    if not root:
        raise DatasetError(f"dataset {settings.get('name')!r} has no root: set "
                           f"datasets.{settings.get('name')}.root")
    entries = entries_for(settings["format"], Path(root), require_files=not released,
                          missing_ok=skip)
    timeout = float(ex.get("decode_timeout", DECODE_TIMEOUT))
    check = None
    if released:
        from tpwng.released import released_probe

        probe = released_probe(settings)
    else:
        def probe(path: str) -> VideoInfo:
            return probe_video(path, timeout=timeout)

        if skip:
            def check(path: str, info: VideoInfo) -> None:
                check_decodable(path, info.frames, int(ex.get("stride", 16)),
                                ex.get("sample", "center"), int(ex.get("decode_chunk", 32)),
                                timeout)
    skipped: list[SkippedVideo] = []
    cuts: list[AnnotationCut] = []
    tolerance = annotation_tolerance(settings)
    rows = build_manifest(entries, probe, progress, on_bad_video=action, check=check,
                          skipped=skipped, tolerance=tolerance, cuts=cuts)
    cuts_path = Path(cuts_out) if cuts_out else Path(out).with_name("annotation_cuts.tsv")
    write_cuts(cuts, cuts_path)
    write_skipped(skipped, skipped_out or Path(out).with_name("skipped.tsv"))
    write_manifest(rows, out)
    if cuts:
        log.info("cut %d annotated intervals of %d videos to their video's end (by %d-%d "
                 "frames, annotation_tolerance %d); listed in %s", len(cuts),
                 len({c.video_id for c in cuts}), min(c.overshoot for c in cuts),
                 max(c.overshoot for c in cuts), tolerance, cuts_path)
    else:
        log.info("every annotated interval lies within its video (nothing cut)")
    return rows, skipped


CUTS_COLUMNS = ["video_id", "interval_written", "interval_used", "frames", "overshoot",
                "annotation"]


def write_cuts(cuts: Sequence[AnnotationCut], path: str | os.PathLike[str]) -> None:
    """Write the annotation cuts (TSV, one row per cut interval) atomically."""
    import pandas as pd

    table = pd.DataFrame(
        [(c.video_id, f"{c.written[0]}-{c.written[1]}", f"{c.used[0]}-{c.used[1]}", c.frames,
          c.overshoot, c.source) for c in cuts],
        columns=CUTS_COLUMNS,
    )
    write_table(path, table)


def read_cuts(path: str | os.PathLike[str]) -> list[AnnotationCut]:
    """Read a list written by :func:`write_cuts`."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read annotation cuts ({exc})") from None
    if list(table.columns) != CUTS_COLUMNS:
        raise DatasetError(f"{path}: not an annotation-cuts list (header {CUTS_COLUMNS})")

    def interval(text: str) -> Interval:
        start, _, end = text.partition("-")
        return int(start), int(end)

    return [AnnotationCut(r.video_id, interval(r.interval_written), interval(r.interval_used),
                          int(r.frames), r.annotation) for r in table.itertuples()]


def _clean_field(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)


def write_skipped(skipped: Iterable[SkippedVideo], path: str | os.PathLike[str]) -> None:
    """Write the skipped-video list (TSV, one row per video with the reason) atomically."""
    lines = ["\t".join(SKIPPED_COLUMNS)]
    for v in skipped:
        lines.append("\t".join(_clean_field(str(x)) for x in
                               (v.video_id, v.path, v.split, v.label, v.reason)))
    write_lines(path, lines)


def read_skipped(path: str | os.PathLike[str]) -> list[SkippedVideo]:
    """Read a list written by :func:`write_skipped`."""
    lines = _read_lines(path)
    if not lines or lines[0][1].split("\t") != SKIPPED_COLUMNS:
        raise DatasetError(f"{path}: not a skipped-video list (header {SKIPPED_COLUMNS})")
    out = []
    for number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(SKIPPED_COLUMNS):
            raise DatasetError(f"{path}:{number}: expected {len(SKIPPED_COLUMNS)} columns")
        out.append(SkippedVideo(*fields))
    return out


def _row_fields(row: ManifestRow) -> list[str]:
    fields = [
        row.video_id, row.path, row.split, row.label, "|".join(row.classes),
        ";".join(f"{s}-{e}" for s, e in row.intervals), str(int(row.frames)),
        repr(float(row.fps)), str(int(row.width)), str(int(row.height)),
    ]
    for text in fields:
        if "\t" in text or "\n" in text or "\r" in text:
            raise DatasetError(f"video {row.video_id}: field {text!r} contains a tab or newline")
    if any("|" in c for c in row.classes):
        raise DatasetError(f"video {row.video_id}: class names must not contain '|'")
    return fields


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike[str]) -> None:
    """Write a manifest TSV atomically (temporary file in the same folder, then rename)."""
    lines = ["\t".join(MANIFEST_COLUMNS)] + ["\t".join(_row_fields(row)) for row in rows]
    write_lines(path, lines)


def _parse_manifest_intervals(text: str, where: str) -> list[Interval]:
    if not text:
        return []
    fields = []
    for item in text.split(";"):
        start, sep, end = item.partition("-")
        if not sep:
            raise DatasetError(f"{where}: bad interval {item!r} (expected 'start-end')")
        fields += [start, end]
    intervals = _parse_intervals(fields, where)
    if len(intervals) * 2 != len(fields):
        raise DatasetError(f"{where}: bad intervals {text!r}")
    return intervals


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Read a manifest written by :func:`write_manifest`."""
    lines = _read_lines(path)
    if not lines:
        raise DatasetError(f"{path}: empty manifest (no header)")
    header = lines[0][1].split("\t")
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing manifest column(s) {', '.join(missing)}")
    col = {name: header.index(name) for name in MANIFEST_COLUMNS}
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for number, line in lines[1:]:
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DatasetError(f"{where}: expected {len(header)} columns, got {len(fields)}")
        value = {name: fields[i].strip() for name, i in col.items()}
        try:
            frames, width, height = (int(value[k]) for k in ("frames", "width", "height"))
            fps = float(value["fps"])
        except ValueError:
            raise DatasetError(f"{where}: frames/fps/width/height must be numbers") from None
        if value["split"] not in SPLITS:
            raise DatasetError(f"{where}: split must be train or test, got {value['split']!r}")
        classes = [c for c in value["classes"].split("|") if c]
        if not value["video_id"] or not value["path"] or not classes:
            raise DatasetError(f"{where}: empty video_id, path or classes")
        row = ManifestRow(
            value["video_id"], value["path"], value["split"], classes,
            _parse_manifest_intervals(value["intervals"], where), frames, fps, width, height,
        )
        if row.label != value["label"]:
            raise DatasetError(f"{where}: label {value['label']!r} contradicts classes "
                               f"{value['classes']!r}")
        if row.video_id in seen:
            raise DatasetError(f"{where}: video {row.video_id} is listed twice")
        seen.add(row.video_id)
        rows.append(row)
    return rows
