"""The manifest stage: one row per listed video, probed, its annotation fitted to its frames.

``data/NAME/manifest.tsv`` (id, path, split, label, classes, test intervals, frames, fps, size),
``skipped.tsv`` (bad videos left out) and ``annotation_cuts.tsv`` (intervals cut to their
video's end). Frame intervals are 0-based and end-exclusive throughout.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tpwng.data.datasets import (
    SPLITS,
    DatasetError,
    Interval,
    UnusableVideoError,
    VideoEntry,
    check_unique,
    entries_for,
    parse_int,
    parse_intervals,
    read_lines,
)
from tpwng.features.store import StoreError
from tpwng.features.video import VideoError, VideoInfo, check_decodable, probe_video
from tpwng.files import write_lines, write_table

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "video_id", "path", "split", "label", "classes", "intervals", "frames", "fps", "width",
    "height", "decoder",
]
MANIFEST_DECODERS = ("decord", "pyav", "none")  # none: released features, nothing decoded
SKIPPED_COLUMNS = ["video_id", "path", "split", "label", "reason"]
BAD_VIDEO_ACTIONS = ("error", "skip")

@dataclass
class ManifestRow(VideoEntry):
    """A :class:`VideoEntry` together with its probed :class:`VideoInfo`."""

    frames: int
    fps: float
    width: int
    height: int
    decoder: str = "decord"  # what extraction decodes it with (tpwng.features.routing)




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
    check_unique(entries, "manifest")
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
            info.decoder,
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
    value = settings["annotation_tolerance"]
    return int(settings["extraction"]["stride"] if value is None else value)


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
    ex = settings["extraction"]
    released = ex["source"] == "released"
    action = ex["on_bad_video"]
    skip = action == "skip"
    root = settings["root"] or (ex["released_dir"] if released else None)
    if not root:
        raise DatasetError(f"dataset {settings.get('name')!r} has no root: set "
                           f"datasets.{settings.get('name')}.root")
    entries = entries_for(settings["format"], Path(root), require_files=not released,
                          missing_ok=skip)
    timeout = float(ex["decode_timeout"])
    check = None
    if released:
        from tpwng.features.released import released_probe

        probe = released_probe(settings)
    else:
        setting = ex["decoder"]

        def probe(path: str) -> VideoInfo:
            return probe_video(path, timeout=timeout, decoder_setting=setting)

        if skip:
            def check(path: str, info: VideoInfo) -> None:
                check_decodable(path, info.frames, int(ex["stride"]), ex["sample"],
                                int(ex["decode_chunk"]), timeout, info.decoder)
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
    lines = read_lines(path)
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
        repr(float(row.fps)), str(int(row.width)), str(int(row.height)), row.decoder,
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
    intervals = parse_intervals(fields, where)
    if len(intervals) * 2 != len(fields):
        raise DatasetError(f"{where}: bad intervals {text!r}")
    return intervals


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Read a manifest written by :func:`write_manifest`."""
    lines = read_lines(path)
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
        frames, width, height = (parse_int(value[k], where, k) for k in ("frames", "width",
                                                                          "height"))
        try:
            fps = float(value["fps"])
        except ValueError:
            raise DatasetError(f"{where}: fps must be a number, got {value['fps']!r}") from None
        if value["decoder"] not in MANIFEST_DECODERS:
            raise DatasetError(f"{where}: decoder must be one of {MANIFEST_DECODERS}, got "
                               f"{value['decoder']!r}")
        if value["split"] not in SPLITS:
            raise DatasetError(f"{where}: split must be train or test, got {value['split']!r}")
        classes = [c for c in value["classes"].split("|") if c]
        if not value["video_id"] or not value["path"] or not classes:
            raise DatasetError(f"{where}: empty video_id, path or classes")
        row = ManifestRow(
            value["video_id"], value["path"], value["split"], classes,
            _parse_manifest_intervals(value["intervals"], where), frames, fps, width, height,
            value["decoder"],
        )
        if row.label != value["label"]:
            raise DatasetError(f"{where}: label {value['label']!r} contradicts classes "
                               f"{value['classes']!r}")
        if row.video_id in seen:
            raise DatasetError(f"{where}: video {row.video_id} is listed twice")
        seen.add(row.video_id)
        rows.append(row)
    return rows
