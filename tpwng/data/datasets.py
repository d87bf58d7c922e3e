"""Dataset split/annotation parsers and video manifests.

Supported layouts: UCF-Crime and XD-Violence (split and annotation files shipped in
``tpwng/resources``, videos found below a user-given root), and a generic folder format::

    ROOT/videos/<Class>/<id>.<ext>
    ROOT/train.txt, ROOT/test.txt     one "<Class>/<id>.<ext>" per line
    ROOT/annotations.txt              UCF temporal format, test videos (normal ones optional)

Frame intervals are 0-based and end-exclusive throughout. The manifest stage, which probes
the listed videos, is `tpwng.data.manifest`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tpwng import RESOURCES
from tpwng.features.video import VideoError

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
SPLITS = ("train", "test")
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


# --------------------------------------------------------------------------- helpers


def strip_video_extension(name: str) -> str:
    """Drop a known video file extension (names such as ``Bad.Boys.1995__#1`` keep their dots)."""
    lower = name.lower()
    for ext in VIDEO_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def read_lines(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
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


_INTEGER = re.compile(r"-?[0-9]{1,18}")


def parse_int(text: str, where: str, what: str = "interval bounds") -> int:
    """The one integer parser of annotation, split and manifest files: plain ASCII decimal
    digits, a leading ``-`` allowed, nothing else (``int()`` would also take ``1_0``, ``+10``,
    `` 10`` and other scripts' digits, and any length)."""
    if not _INTEGER.fullmatch(text):
        raise DatasetError(f"{where}: {what} must be integers written in the digits 0-9, "
                           f"got {text!r}")
    return int(text)


def parse_intervals(fields: Sequence[str], where: str) -> list[Interval]:
    """Parse ``s1 e1 s2 e2 ...``; a ``-1 -1`` pair marks an absent interval."""
    if len(fields) % 2:
        raise DatasetError(f"{where}: odd number of interval fields ({len(fields)})")
    intervals = []
    for start_text, end_text in zip(fields[::2], fields[1::2], strict=True):
        start, end = parse_int(start_text, where), parse_int(end_text, where)
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
    for number, line in read_lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) < 2:
            raise DatasetError(f"{where}: expected '<video> <class> [start end ...]', got {line!r}")
        video_id = strip_video_extension(fields[0])
        if video_id in result:
            raise DatasetError(f"{where}: video {video_id} is listed twice")
        result[video_id] = (fields[1], parse_intervals(fields[2:], where))
    return result


def parse_xd_annotation(path: str | os.PathLike[str]) -> dict[str, list[Interval]]:
    """Parse an XD-Violence annotation: ``name s1 e1 s2 e2 ...`` -> video id -> intervals."""
    result: dict[str, list[Interval]] = {}
    for number, line in read_lines(path):
        where = f"{path}:{number}"
        fields = line.split()
        video_id = strip_video_extension(fields[0])
        if video_id in result:
            raise DatasetError(f"{where}: video {video_id} is listed twice")
        result[video_id] = parse_intervals(fields[1:], where)
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


def check_unique(entries: Sequence[VideoEntry], dataset: str) -> None:
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
    for number, line in read_lines(list_file):
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
    check_unique(entries, "UCF-Crime")
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
        if sep and crop.isascii() and crop.isdigit():
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
    check_unique(entries, "XD-Violence")
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
    check_unique(entries, str(root))
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


