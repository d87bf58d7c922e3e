"""Pages that show what the model sees: each video beside its anomaly-score timeline.

Three pages share one script and stylesheet (``resources/viewer/``), inlined into every page:

- a scored video (``tpwng score --html``): the video playing above its timeline (the detected
  intervals shaded, the threshold drawn, per-class probability curves where given), a playhead
  that follows playback; clicking the timeline seeks, ``n`` / ``p`` jump between intervals;
- a folder's ``index.html``: the scored videos by highest score, with duration, intervals, a
  thumbnail and a small timeline each;
- a test set (``tpwng view``): every test video's timeline with its ground truth beside the
  prediction, sortable by per-video AUC, false-alarm and missed frames, the chosen one playing
  beside the table (timelines alone, with the reason, where the raw videos are absent).

Nothing is fetched at view time. Scores are embedded once per snippet as base64 of little-endian
uint16 (0..65535 for 0..1: 2 bytes a snippet, steps of 1.5e-5); the page draws them on a canvas,
one vertex per pixel column (the column's maximum) once snippets outnumber pixels, so a two-hour
video costs as much to draw as a short one. Videos are linked by relative path, or by a
browser-playable H.264 MP4 copy written beside the page where the source does not play in
browsers. `tpwng.scoring.viewer_server` serves a folder answering HTTP Range requests, without
which browsers cannot seek a served video.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from urllib.parse import quote

import numpy as np

from tpwng import RESOURCES
from tpwng.files import atomic_path

log = logging.getLogger(__name__)

VIEWER_FILES = RESOURCES / "viewer"  # the page's script and styles
QUANT = 65535
Interval = tuple[int, int]

# What Chromium, Firefox and Safari all play: container (by extension) -> video codecs.
BROWSER_VIDEO = {".mp4": ("mp4", {"h264", "av1", "vp9"}), ".m4v": ("mp4", {"h264", "av1"}),
                 ".webm": ("webm", {"vp8", "vp9", "av1"})}
BROWSER_AUDIO = {"aac", "mp3", "opus", "vorbis", "flac"}
BROWSER_PIXELS = {"yuv420p", "yuvj420p"}  # 8-bit 4:2:0; H.264 in 4:2:2, 4:4:4 or 10 bits is not


# --------------------------------------------------------------------------- page data


def encode_values(values: np.ndarray) -> str:
    """Values in [0, 1] as base64 of little-endian uint16 (the pages' score encoding)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64).ravel(), nan=0.0)
    q = np.round(np.clip(v, 0.0, 1.0) * QUANT).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_values(text: str) -> np.ndarray:
    """Inverse of `encode_values` (float32, within 1 / 131070 of the encoded values)."""
    return np.frombuffer(base64.b64decode(text), dtype="<u2").astype(np.float32) / QUANT


def video_stats(frame_scores: np.ndarray, threshold: float,
                truth: Sequence[Interval] | None = None) -> dict:
    """Highest score and frames above the threshold; against the truth, when given: frame AUC
    (None unless the video has both classes), false alarms (frames ≥ threshold outside the
    truth) and missed frames (true frames < threshold)."""
    from sklearn.metrics import roc_auc_score

    from tpwng.grid import frame_labels

    scores = np.asarray(frame_scores, dtype=np.float64)
    above = scores >= threshold
    finite = scores[np.isfinite(scores)]
    out: dict = {"max": float(finite.max()) if finite.size else None,
                 "mean": float(finite.mean()) if finite.size else None,
                 "above": int(above.sum())}
    if truth is not None:
        labels = frame_labels(truth, scores.size).astype(bool)
        both = labels.any() and not labels.all() and finite.size == scores.size
        out |= {"truth_frames": int(labels.sum()),
                "false_alarms": int((above & ~labels).sum()),
                "missed": int((~above & labels).sum()),
                "auc": float(roc_auc_score(labels, scores)) if both else None}
    return out


def track(video_id: str, name: str, snippets: np.ndarray, frames: int, fps: float | None,
          stride: int, detected: Sequence[Interval], *, truth: Sequence[Interval] | None = None,
          classes: Sequence[str] = (), class_probs: tuple[Sequence[str], np.ndarray] | None = None,
          src: str | None = None, note: str | None = None, stats: dict | None = None) -> dict:
    """One video's entry in a page's data (intervals: frames, 0-based, end-exclusive).

    ``class_probs``: class names and snippet probabilities ``[snippets, k]``, drawn as curves
    (a ``normal`` column is left out: it is 1 - the anomaly score).
    """
    fps = float(fps) if fps is not None and math.isfinite(fps) and fps > 0 else None
    curves = []
    if class_probs is not None:
        names, probs = class_probs
        probs = np.asarray(probs, dtype=np.float64).reshape(len(snippets), len(names))
        curves = [{"name": str(c), "values": encode_values(probs[:, k])}
                  for k, c in enumerate(names) if str(c).lower() != "normal"]
    return {
        "id": video_id, "name": name, "frames": int(frames), "fps": fps, "stride": int(stride),
        "n": len(snippets), "scores": encode_values(snippets), "class_curves": curves,
        "detected": [[int(s), int(e)] for s, e in detected],
        "truth": None if truth is None else [[int(s), int(e)] for s, e in truth],
        "classes": list(classes), "src": src, "note": note, "stats": stats or {},
    }


def _json_for_script(obj: dict) -> str:
    """JSON that cannot end its <script> element early."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_plain)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def render_page(kind: str, title: str, subtitle: str, data: dict) -> str:
    """A complete, self-contained page: the data, script and stylesheet inline."""
    script = (VIEWER_FILES / "viewer.js").read_text(encoding="utf-8")
    style = (VIEWER_FILES / "viewer.css").read_text(encoding="utf-8")
    if "</script" in script.lower() or "</style" in style.lower():
        raise ValueError("viewer resources must not close their own elements")
    blob = _json_for_script({"kind": kind, **data})
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"generator\" content=\"tpwng\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{style}</style>\n</head>\n"
        f"<body data-kind=\"{kind}\">\n<header><h1>{html.escape(title)}</h1>"
        f"<p class=\"tp-sub\">{html.escape(subtitle)}</p></header>\n"
        "<main id=\"tp-main\"><noscript>This page draws its timelines with JavaScript."
        "</noscript></main>\n"
        f"<script id=\"tpwng-data\" type=\"application/json\">{blob}</script>\n"
        f"<script>\n{script}</script>\n</body>\n</html>\n"
    )


def write_page(path: Path, kind: str, title: str, subtitle: str, data: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(render_page(kind, title, subtitle, data), encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------- video files


def href(relative: str | Path) -> str:
    """The one rule for every link a page writes: a file's path relative to the page, each
    character but letters, digits, ``_.-~`` and ``/`` percent-encoded. So a name is always a
    relative path to that very file, never a scheme (``javascript:`` becomes
    ``javascript%3A``: no ``:`` is left), a query (``?``), a fragment (``#``), an escape
    (``%``) or another host (it never starts with ``/``)."""
    path = Path(relative).as_posix()
    if path.startswith("/"):
        raise ValueError(f"{relative}: a page links files by relative path")
    return quote(path, safe="/")


def link(target: Path, page_dir: Path) -> str:
    """The URL of `target` relative to a page in `page_dir`."""
    return href(os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir)))


def playability(path: Path) -> str | None:
    """None where browsers play the file as it is; else the reason they do not."""
    import av

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in BROWSER_VIDEO:
        return f"{ext or 'no extension'} is not a browser video container"
    family, codecs = BROWSER_VIDEO[ext]
    try:
        with av.open(str(path)) as c:
            if family not in c.format.name.split(","):
                return f"the file holds {c.format.long_name}, not {family}"
            if not c.streams.video:
                return "the file has no video stream"
            cc = c.streams.video[0].codec_context
            if cc.name not in codecs:
                return f"{cc.name} video does not play in browsers"
            if cc.name == "h264" and cc.pix_fmt not in BROWSER_PIXELS:
                return f"H.264 in {cc.pix_fmt} does not play in browsers"
            for a in c.streams.audio:
                if a.codec_context.name not in BROWSER_AUDIO:
                    return f"{a.codec_context.name} audio does not play in browsers"
    except (av.error.FFmpegError, OSError) as exc:
        return f"the file cannot be read ({exc})"
    return None


def transcode(src: Path, dst: Path, fps: float | None = None) -> Path:
    """A browser-playable copy: H.264 (yuv420p, even size, a keyframe a second) in an MP4 with
    its index first; frames renumbered in order at `fps` (the rate the scores assume), no
    audio."""
    import av

    with av.open(str(src)) as inp, atomic_path(dst) as tmp:
        ivs = inp.streams.video[0]
        ivs.thread_type = "AUTO"
        rate = (Fraction(fps).limit_denominator(1001) if fps
                else ivs.average_rate or ivs.guessed_rate or Fraction(25))
        w = max(2, ivs.codec_context.width // 2 * 2)
        h = max(2, ivs.codec_context.height // 2 * 2)
        with av.open(str(tmp), mode="w", format="mp4",
                     options={"movflags": "+faststart"}) as out:
            st = out.add_stream("libx264", rate=rate, options={
                "crf": "23", "preset": "veryfast", "g": str(max(1, round(float(rate))))})
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            for frame in inp.decode(ivs):
                picture = frame.reformat(width=w, height=h, format="yuv420p")
                picture.pts = None
                out.mux(st.encode(picture))
            out.mux(st.encode(None))
    return Path(dst)


def media_for(video: Path, page_dir: Path, copy: Path, fps: float | None,
              convert: bool = True) -> tuple[str | None, str | None, Path | None]:
    """(URL for the page's <video>, note when there is none, the copy written if any)."""
    import av

    video = Path(video)
    reason = playability(video)
    if reason is None:
        return link(video, page_dir), None, None
    if not convert:
        return None, f"{video.name} does not play in browsers ({reason}); timeline only.", None
    try:
        if not copy.exists() or copy.stat().st_mtime < video.stat().st_mtime:
            log.info("%s: %s; writing a browser-playable copy %s", video, reason, copy)
            transcode(video, copy, fps)
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        log.warning("%s: no browser-playable copy: %s", video, exc)  # the timeline remains
        note = (f"{video.name} does not play in browsers ({reason}) and could not be converted "
                f"({exc}); timeline only.")
        return None, note, None
    return link(copy, page_dir), None, copy


def write_thumbnail(video: Path, frame: int, path: Path, width: int = 192) -> Path | None:
    """One frame as a JPEG `width` pixels wide; None if it cannot be decoded."""
    from PIL import Image

    from tpwng.features.video import VideoError, read_frames

    try:
        _, frames = next(iter(read_frames(video, np.array([frame]), 1)))
    except (VideoError, StopIteration, OSError) as exc:
        log.warning("%s: no thumbnail: %s", video, exc)
        return None
    image = Image.fromarray(np.asarray(frames[0], dtype=np.uint8))
    image.thumbnail((width, width * 4))
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=82)
    return Path(path)


# --------------------------------------------------------------------------- one's own videos


def write_scored_page(result, files: dict[str, Path], threshold: float, stride: int,
                      convert: bool = True) -> dict[str, Path]:
    """``<stem>.html`` beside a scored video's outputs (`files`: csv, png, intervals), with
    ``<stem>_thumb.jpg`` (the frame of the highest score) and, for a source browsers do not
    play, ``<stem>_view.mp4``. `result` is a `tpwng.scoring.score_video.VideoScores`."""
    out_dir = Path(files["csv"]).parent
    stem = result.path.stem
    page = out_dir / f"{stem}.html"
    info = result.info
    src, note, copy = media_for(result.path, out_dir, out_dir / f"{stem}_view.mp4", info.fps,
                                convert)
    written: dict[str, Path] = {"html": page}
    if copy is not None:
        written["playable"] = copy
    peak = int(np.argmax(result.snippets)) if len(result.snippets) else 0
    frame = min(info.frames - 1, peak * stride + stride // 2)
    thumb = write_thumbnail(result.path, frame, out_dir / f"{stem}_thumb.jpg")
    if thumb is not None:
        written["thumbnail"] = thumb
    detected = [(iv["start_frame"], iv["end_frame"]) for iv in result.intervals]
    stats = video_stats(result.frames, threshold) | {
        "anomalous_s": sum(iv["end_s"] - iv["start_s"] for iv in result.intervals)}
    v = track(stem, result.path.name, result.snippets, info.frames, info.fps, stride, detected,
              src=src, note=note, stats=stats)
    subtitle = (f"{info.frames} frames at {info.fps:.3f} fps, {info.frames / info.fps:.1f} s · "
                f"{len(result.snippets)} snippets of {stride} frames · threshold {threshold:g} · "
                f"{len(detected)} detected interval(s)")
    data = {"threshold": threshold, "videos": [v],
            "files": [{"name": Path(p).name, "href": href(Path(p).name)}
                      for p in files.values()]}
    write_page(page, "video", result.path.name, subtitle, data)
    return written


def write_scores_index(summary: dict, out_dir: Path) -> Path:
    """``index.html`` of a scored folder: its videos by highest score, from the outputs that
    `tpwng.scoring.score_video.score_paths` wrote (`summary`: its summary.json)."""
    out_dir = Path(out_dir)
    videos = []
    for entry in summary["videos"]:
        name = Path(entry["video"]).name
        if "error" in entry:
            videos.append({"id": name, "name": name, "error": entry["error"]})
            continue
        outputs = {k: Path(p) for k, p in entry["outputs"].items()}
        record = json.loads(outputs["intervals"].read_text())
        info, stride = record["video"], int(record["stride"])
        frame_scores = np.loadtxt(outputs["csv"], delimiter=",", skiprows=1, usecols=2, ndmin=1)
        detected = [(iv["start_frame"], iv["end_frame"]) for iv in record["intervals"]]
        stats = video_stats(frame_scores, summary["threshold"]) | {
            "anomalous_s": entry["anomalous_s"]}
        v = track(Path(entry["video"]).stem, name, frame_scores[::stride], info["frames"],
                  info["fps"], stride, detected, stats=stats)
        v["page"] = href(outputs["html"].name) if "html" in outputs else None
        v["thumb"] = href(outputs["thumbnail"].name) if "thumbnail" in outputs else None
        videos.append(v)
    videos.sort(key=lambda v: (-v["stats"]["max"] if "stats" in v else math.inf, v["name"]))
    ok = sum("error" not in v for v in videos)
    subtitle = (f"{ok} scored video(s)" + (f", {len(videos) - ok} failed" if ok < len(videos)
                                            else "")
                + f" · threshold {summary['threshold']:g} · model {summary['model']}")
    data = {"threshold": summary["threshold"], "videos": videos}
    return write_page(out_dir / "index.html", "folder", f"Scores of {summary['target']}",
                      subtitle, data)


# --------------------------------------------------------------------------- a test set


def _media_name(video_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[:80]
    return f"{safe}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}.mp4"


def view_test_set(manifest: Path, scores: Path, out_dir: Path, threshold: float = 0.5,
                  convert: bool = True, title: str | None = None) -> Path:
    """``out_dir/index.html``: every scored test video's timeline beside its ground truth,
    sortable by per-video AUC, false alarms and missed frames; the raw videos play where the
    manifest's files exist (copies in ``out_dir/media/`` of those browsers cannot play)."""
    from tpwng.data.manifest import read_manifest
    from tpwng.evaluate.metrics import score_segments
    from tpwng.evaluate.scores_file import (
        read_class_probabilities,
        read_header,
        read_scores,
        read_stride,
    )

    out_dir = Path(out_dir)
    rows = {r.video_id: r for r in read_manifest(manifest) if r.split == "test"}
    order, frame_scores, snippet_scores = read_scores(scores, {v: r.frames
                                                              for v, r in rows.items()})
    missing = [v for v in order if v not in rows]
    if missing:
        raise ValueError(f"{scores}: videos {missing[:5]} are not test videos of {manifest}")
    stride = read_stride(scores)
    attrs = read_header(scores)
    probs = read_class_probabilities(scores)
    videos, playable, absent = [], 0, []
    for vid in order:
        r = rows[vid]
        fps = r.fps if math.isfinite(r.fps) and r.fps > 0 else None
        src = note = None
        if fps is None:
            note = ("No video: the manifest records no frame rate (the dataset comes from "
                    "released features, not videos), so only the timelines are shown.")
        elif not os.path.isfile(r.path):
            absent.append(vid)
            note = f"No video: {r.path} is not on this machine; timeline only."
        else:
            src, note, _ = media_for(Path(r.path), out_dir, out_dir / "media" / _media_name(vid),
                                     fps, convert)
            playable += src is not None
        fs = np.asarray(frame_scores[vid], dtype=np.float64)
        curves = probs.get(vid)
        if curves is not None and curves[1].shape != (len(snippet_scores[vid]), len(curves[0])):
            log.warning("%s: class probabilities of %s are %s for %d snippets and %d classes; "
                        "not drawn", scores, vid, curves[1].shape, len(snippet_scores[vid]),
                        len(curves[0]))
            curves = None
        detected = [(s, e) for s, e, _ in score_segments(fs, threshold)]
        videos.append(track(vid, vid, snippet_scores[vid], r.frames, fps, stride, detected,
                            truth=r.intervals, classes=r.classes, class_probs=curves,
                            src=src, note=note, stats=video_stats(fs, threshold, r.intervals)))
    name = attrs["dataset"] or Path(manifest).parent.name
    subtitle = (f"{len(videos)} test videos, {playable} playable here · {stride}-frame snippets"
                f" · threshold {threshold:g} · model {attrs['model']} ({attrs['weights']})")
    if len(videos) and not playable:
        subtitle += (" · no raw videos: timelines only" if not absent else
                     f" · {len(absent)} video files are absent: timelines only")
    data = {"threshold": threshold, "videos": videos, "dataset": name}
    page = write_page(out_dir / "index.html", "testset", title or f"{name}: test-set scores",
                      subtitle, data)
    log.info("%s: %d test videos, %d playable", page, len(videos), playable)
    return page
