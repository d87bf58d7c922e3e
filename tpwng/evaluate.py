"""Metric tables and plots from a scores file and the manifest's ground truth."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np

from tpwng import __version__
from tpwng.checkpoint import load_checkpoint
from tpwng.datasets import read_manifest
from tpwng.files import write_json, write_lines
from tpwng.inference import read_scores, read_stride
from tpwng.metrics import VideoResult, intervals_to_labels, metrics_table
from tpwng.plots import plot_roc_pr, plot_score_curves

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


FRAME_CONVENTIONS = ("video", "snippets")


def video_results(manifest: Path, scores: Path, frames: str = "video") -> list[VideoResult]:
    """Scores and ground truth of every scored test video, in the scores file's order.

    ``frames="video"`` scores each video's own frames (``scores.h5`` frame scores);
    ``"snippets"`` scores stride x snippets frames, each snippet's score repeated over its
    stride and the last partial snippet padded with its own score, as the published evaluation
    scripts do; the padded frames lie past the video's end, where no annotation reaches, so
    their ground truth is normal.
    """
    if frames not in FRAME_CONVENTIONS:
        raise ValueError(f"evaluate.frames must be one of {FRAME_CONVENTIONS}, got {frames!r}")
    rows = {r.video_id: r for r in read_manifest(manifest) if r.split == "test"}
    order, frame_scores, snippet_scores = read_scores(scores)
    missing = sorted(set(rows) - set(order))
    if missing:
        raise ValueError(f"{scores}: no scores for test videos {missing[:5]}")
    stride = read_stride(scores)
    out = []
    for v in order:
        if frames == "video":
            values, n = frame_scores[v], rows[v].frames
        else:
            values = np.repeat(snippet_scores[v].astype(np.float64), stride)
            n = len(values)
            if n < rows[v].frames:
                raise ValueError(f"{scores}: video {v} has {len(snippet_scores[v])} snippets of "
                                 f"{stride} frames, fewer than its {rows[v].frames} frames")
        out.append(VideoResult(v, list(rows[v].classes), values,
                               intervals_to_labels(rows[v].intervals, n)))
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def evaluate(settings: dict, manifest: Path, scores: Path, model: Path, prefix: str) -> dict:
    convention = settings["evaluate"].get("frames", "video")
    videos = video_results(manifest, scores, convention)
    threshold = float(settings["evaluate"]["threshold"])
    table = metrics_table(videos, threshold=threshold)
    meta = load_checkpoint(model)["meta"]
    rows = read_manifest(manifest)
    record = {
        "dataset": settings["name"],
        "split_sizes": {s: sum(r.split == s for r in rows) for s in ("train", "test")},
        "settings_hash": meta["settings_hash"],  # of the settings the model was trained with
        "git_commit": git_commit(),
        "clip_weights": meta["clip"]["weights"],
        "random_init_clip": bool(meta["clip"]["random_init"]),
        "clip_model": meta["clip"]["model"],
        "epochs": meta["epochs"],
        "seed": meta["seed"],
        "tpwng_version": __version__,
        "frame_convention": convention,
        "frames_evaluated": int(sum(v.frame_scores.size for v in videos)),
        "videos_evaluated": len(videos),
    }
    full = {**record, "metrics": table}
    write_json(Path(f"{prefix}_metrics.json"), full)
    write_json(Path(f"{prefix}_auc.json"),
               {**record, "metric": "frame_auc", "value": table["frame_auc"]})
    write_json(Path(f"{prefix}_ap.json"),
               {**record, "metric": "frame_ap", "value": table["frame_ap"]})
    flat = _flatten(table)
    write_lines(Path(f"{prefix}_metrics.tsv"), ["metric\tvalue"] + [
        f"{k}\t{v:.6f}" if isinstance(v, float) else f"{k}\t{v}" for k, v in flat.items()])
    plots = Path(prefix) / "plots"
    n = int(settings["evaluate"]["plot_videos"])
    plot_score_curves(videos, plots / "score_curves.png", max_videos=n,
                      title=f"{settings['name']}: frame AUC {table['frame_auc']:.4f}")
    plot_roc_pr(videos, plots / "roc_pr.png")
    log.info("%s: frame AUC %.4f, AP %.4f", settings["name"], table["frame_auc"],
             table["frame_ap"])
    return full
