"""Scoring one's own videos with a trained checkpoint: frame scores, detected intervals, plots.

The checkpoint records the CLIP image encoder and the extraction settings (stride, sampled frame,
crops) of its training features; videos are decoded and encoded the same way, scored by the
temporal module and classifier, and expanded to frames as the evaluation does. Stream mode
scores a video snippet by snippet through the causal TCSAL, each layer keeping the keys and
values of the last ceil(F + R) positions, beyond which the soft mask (Eq. 7) is exactly 0: the
stream's scores equal the whole video's.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tpwng.data.datasets import VIDEO_EXTENSIONS
from tpwng.errors import CheckpointError
from tpwng.evaluate.metrics import score_segments
from tpwng.evaluate.plots import SCORE_COLOR, figure, shade
from tpwng.features.store import pick_crop
from tpwng.features.video import VideoError, VideoInfo, probe_video, read_frames
from tpwng.files import WriteError, atomic_path, write_json
from tpwng.grid import expand_to_frames, frame_labels, sample_indices, snippets_of
from tpwng.model.tcsal import TCSAL, TCSALStream
from tpwng.model.tpwng import TPWNG
from tpwng.scoring.inference import score_features, snippet_class_probs
from tpwng.scoring.scorer import SCORE_BATCH, Scorer, load_scorer

log = logging.getLogger(__name__)

SnippetCallback = Callable[[int, float, float], None]  # index, start time (s), score


@dataclass(frozen=True)
class ScoreOptions:
    """How to score and what counts as a detection."""

    threshold: float = 0.5
    min_length: float = 0.0  # seconds; shorter runs above the threshold are not reported
    stream: bool = False
    device: str = "auto"
    batch_size: int = SCORE_BATCH  # images per encoder batch
    html: bool = False  # also a page per video (and index.html for a folder): tpwng.scoring.viewer

    @property
    def mode(self) -> str:
        return "stream" if self.stream else "offline"


# --------------------------------------------------------------------------- inputs


def find_videos(path: Path) -> list[Path]:
    """The video itself, or the folder's video files (by extension, sorted by name)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise VideoError(f"{path}: no such video file or folder")
    videos = sorted(p for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise VideoError(f"{path}: folder has no video files ({', '.join(VIDEO_EXTENSIONS)})")
    stems: dict[str, Path] = {}
    for v in videos:
        if v.stem in stems:
            raise VideoError(f"{path}: {stems[v.stem].name} and {v.name} would write the same "
                             "output files; rename one")
        stems[v.stem] = v
    return videos


# --------------------------------------------------------------------------- scoring


def snippet_features(scorer: Scorer, path: Path, info: VideoInfo,
                     stream: bool = False) -> Iterator[np.ndarray]:
    """Image features [n, D] of the video's snippets: one at a time when streaming, else in
    encoder batches."""
    ex = scorer.extraction
    chunk = 1 if stream else max(1, ex.batch_size // scorer.encoder.crops)
    for _, frames in read_frames(path, sample_indices(info.frames, ex.stride, ex.sample), chunk,
                                 decoder=info.decoder):
        x = scorer.encoder.prepare(torch.from_numpy(frames))
        yield pick_crop(scorer.encoder.encode(x).numpy(), scorer.crop)


def score_offline(scorer: Scorer, path: Path, info: VideoInfo,
                  features: list[np.ndarray] | None = None) -> np.ndarray:
    """Snippet scores of the whole video at once (its features appended to ``features``)."""
    feats = np.concatenate(list(snippet_features(scorer, path, info)))
    if features is not None:
        features.append(feats)
    return score_features(scorer.model, feats, scorer.device)


def check_streamable(model: TPWNG, path: Path) -> None:
    """Stream scoring needs the causal TCSAL with a fixed span scale F."""
    if not isinstance(model.temporal, TCSAL):
        raise CheckpointError(f"{path}: stream mode needs the causal TCSAL temporal module, but "
                              f"this model uses model.temporal: {model.cfg.temporal} "
                              "(bidirectional); score it without --stream")
    if not model.temporal.streamable:
        raise CheckpointError(f"{path}: stream mode needs a fixed model.span_scale, but this "
                              "model scales spans by each video's length (span_scale: null)")


class _StreamedTemporal(nn.Module):
    """Stands in for ``model.temporal`` during a push: the new snippets go through the stream."""

    def __init__(self, stream: TCSALStream) -> None:
        super().__init__()
        self.stream = stream

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.stream.push(x)


class SnippetStream:
    """Scores one video's snippets as they come; the scores equal those of the whole video.

    The temporal module's `TCSALStream` keeps each layer's keys and values of the last
    ceil(F + R) snippets; the rest of the scoring is the model's own (`TPWNG.score`).
    """

    def __init__(self, model: TPWNG, path: Path, device: torch.device | str = "cpu") -> None:
        check_streamable(model, path)
        self.model = model
        self.device = device
        self.stream = model.temporal.stream()

    def push(self, feats: np.ndarray) -> np.ndarray:
        """Scores of the next snippets from their features [n, D]."""
        temporal = self.model.temporal
        self.model.temporal = _StreamedTemporal(self.stream)
        try:
            return score_features(self.model, feats, self.device)
        finally:
            self.model.temporal = temporal


def score_stream(scorer: Scorer, path: Path, info: VideoInfo,
                 on_snippet: SnippetCallback | None = None,
                 features: list[np.ndarray] | None = None) -> np.ndarray:
    """Snippet scores decided one snippet at a time (decode, encode, score); each snippet's
    features are appended to ``features``."""
    stream = SnippetStream(scorer.model, scorer.path, scorer.device)
    stride = scorer.extraction.stride
    scores: list[float] = []
    for feats in snippet_features(scorer, path, info, stream=True):
        if features is not None:
            features.append(feats)
        for s in stream.push(feats):
            if on_snippet is not None:
                on_snippet(len(scores), len(scores) * stride / info.fps, float(s))
            scores.append(float(s))
    return np.asarray(scores, dtype=np.float32)


# --------------------------------------------------------------------------- outputs


@dataclass
class VideoScores:
    """One scored video: snippet and frame scores and the detected intervals."""

    path: Path
    info: VideoInfo
    snippets: np.ndarray
    frames: np.ndarray
    intervals: list[dict]
    class_probs: np.ndarray | None = None  # [snippets, k], column 0 = normal
    classes: list[str] = field(default_factory=list)
    source: str = ""  # a live source (URL or device) recorded instead of ``path``
    stem: str = ""  # the output files' stem (default: ``path``'s)

    @property
    def name(self) -> str:
        """What was scored, as the outputs record it."""
        return self.source or str(self.path)


def detect_intervals(frame_scores: np.ndarray, fps: float, threshold: float,
                     min_length: float, class_probs: np.ndarray | None = None,
                     classes: list[str] | None = None, stride: int = 16) -> list[dict]:
    """Runs of frames scored ≥ threshold lasting ≥ min_length seconds (frames end-exclusive).

    With per-snippet ``class_probs`` each interval also names its most likely anomaly class:
    the largest mean p(c) over the interval's snippets (c ≠ normal), with that mean."""
    out = []
    for s, e, mean in score_segments(frame_scores, threshold,
                                     max(1, math.ceil(min_length * fps))):
        iv = {"start_frame": s, "end_frame": e, "start_s": s / fps, "end_s": e / fps,
              "mean_score": mean, "max_score": float(frame_scores[s:e].max())}
        if class_probs is not None and classes:
            within = class_probs[snippets_of(s, e, stride), 1:].mean(axis=0)
            best = int(np.argmax(within))
            iv |= {"class": classes[best + 1], "class_probability": float(within[best])}
        out.append(iv)
    return out


def score_video(scorer: Scorer, path: Path, options: ScoreOptions,
                on_snippet: SnippetCallback | None = None) -> VideoScores:
    """Decode, encode and score one video; expand to frames; detect intervals."""
    info = probe_video(path)  # a VideoError unless frames and frame rate are known
    features: list[np.ndarray] = []
    if options.stream:
        snippets = score_stream(scorer, path, info, on_snippet, features)
    else:
        snippets = score_offline(scorer, path, info, features)
    stride = scorer.extraction.stride
    frames = expand_to_frames(snippets, info.frames, stride)
    probs = None
    if scorer.text is not None:
        probs = snippet_class_probs(np.concatenate(features), snippets, scorer.text,
                                    scorer.logit_scale)
    intervals = detect_intervals(frames, info.fps, options.threshold, options.min_length,
                                 probs, scorer.classes, stride)
    return VideoScores(Path(path), info, snippets, frames, intervals, probs, scorer.classes)


def write_csv(result: VideoScores, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "time_s", "score"])
        for i, s in enumerate(result.frames):
            w.writerow([i, f"{i / result.info.fps:.4f}", f"{s:.6f}"])


def plot_video_scores(result: VideoScores, path: Path, threshold: float) -> None:
    """Frame score curve with the detected intervals shaded and the threshold line."""
    n, fps = result.info.frames, result.info.fps
    detected = frame_labels([(iv["start_frame"], iv["end_frame"])
                                    for iv in result.intervals], n)
    with figure(path, 1, 1, (9.0, 3.0)) as (_, axes):
        ax = axes[0, 0]
        shade(ax, detected, label="detected")
        ax.plot(np.arange(n), result.frames, color=SCORE_COLOR, lw=1.2, label="score")
        ax.axhline(threshold, color="0.3", ls="--", lw=1.0, label=f"threshold {threshold:g}")
        ax.set_xlim(0, max(n, 1))
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("frame")
        ax.set_ylabel("anomaly score")
        top = ax.secondary_xaxis("top", functions=(lambda f: f / fps, lambda t: t * fps))
        top.set_xlabel("seconds")
        for iv in result.intervals:
            if "class" in iv:
                ax.text((iv["start_frame"] + iv["end_frame"]) / 2, 0.97,
                        f"{iv['class']} {iv['class_probability']:.2f}", ha="center",
                        va="top", fontsize=7, clip_on=True)
        ax.set_title(result.source or result.path.name, fontsize=10)
        ax.legend(loc="upper right", fontsize=8)


def _video_record(result: VideoScores) -> dict:
    info = result.info
    return {"path": result.name, **asdict(info),
            "duration_s": info.frames / info.fps, "snippets": len(result.snippets)}


def write_video_outputs(result: VideoScores, scorer: Scorer, options: ScoreOptions,
                        out_dir: Path, failures: dict[Path, BaseException] | None = None
                        ) -> dict:
    """`<stem>_scores.csv`, `<stem>_scores.png` and `<stem>_intervals.json`; a summary entry.

    With ``failures`` (live scoring: write what can be written) an output that cannot be
    written (`WriteError`, any OSError) is recorded there, left out of the entry's outputs,
    and the others are still written; without, the first such error is raised.
    """
    stem = result.stem or result.path.stem
    files = {"csv": out_dir / f"{stem}_scores.csv", "png": out_dir / f"{stem}_scores.png",
             "intervals": out_dir / f"{stem}_intervals.json"}
    record = {
        "video": _video_record(result),
        "model": str(scorer.path),
        "dataset": scorer.meta.get("dataset"),
        "clip_weights": scorer.meta["clip"]["weights"],
        "stride": scorer.extraction.stride,
        "mode": options.mode,
        "threshold": options.threshold,
        "min_length_s": options.min_length,
        "interval_frames": "0-based, end-exclusive",
        "intervals": result.intervals,
    }
    writers: dict[str, Callable[[], object]] = {
        "csv": lambda: write_csv(result, files["csv"]),
        "png": lambda: plot_video_scores(result, files["png"], options.threshold),
        "intervals": lambda: write_json(files["intervals"], record),
    }
    for key, write in writers.items():
        try:
            write()
        except (WriteError, OSError) as exc:
            if failures is None:
                raise
            failures[files.pop(key)] = exc
    if options.html:
        from tpwng.scoring.viewer import write_scored_page

        files |= write_scored_page(result, files, options.threshold, scorer.extraction.stride)
    return {"video": result.name, "frames": result.info.frames,
            "duration_s": result.info.frames / result.info.fps,
            "max_score": float(result.frames.max()),
            "intervals": len(result.intervals),
            "anomalous_s": sum(iv["end_s"] - iv["start_s"] for iv in result.intervals),
            "outputs": {k: str(p) for k, p in files.items()}}


def write_scores_summary(model_path: Path, target: str, options: ScoreOptions,
                         entries: list[dict], out_dir: Path) -> dict:
    """`summary.json`: the model, what was scored, how, and one entry per video."""
    summary = {"model": str(model_path), "target": target, "mode": options.mode,
               "threshold": options.threshold, "min_length_s": options.min_length,
               "videos": entries}
    write_json(out_dir / "summary.json", summary)
    return summary


def score_paths(target: Path, model_path: Path, out_dir: Path, options: ScoreOptions,
                on_snippet: Callable[[Path], SnippetCallback] | None = None,
                on_video: Callable[[dict], None] | None = None) -> dict:
    """Score a video or every video of a folder; write per-video outputs and `summary.json`.

    In a folder, a video that cannot be decoded is recorded with its error and the others are
    still scored; a single video's error is raised.
    """
    videos = find_videos(target)
    scorer = load_scorer(model_path, options.device, options.batch_size)
    if options.stream:
        check_streamable(scorer.model, scorer.path)
    entries = []
    for video in videos:
        try:
            result = score_video(scorer, video, options,
                                 on_snippet(video) if on_snippet else None)
            entry = write_video_outputs(result, scorer, options, Path(out_dir))
        except VideoError as exc:
            if not Path(target).is_dir():
                raise
            entry = {"video": str(video), "error": str(exc)}
        entries.append(entry)
        if on_video is not None:
            on_video(entry)
    summary = write_scores_summary(model_path, str(target), options, entries, Path(out_dir))
    if options.html and Path(target).is_dir():
        from tpwng.scoring.viewer import write_scores_index

        write_scores_index(summary, Path(out_dir))
    return summary
