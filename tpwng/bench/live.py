"""`tpwng bench live`: the per-snippet latency of live scoring (`tpwng.scoring.live`).

A video served in real time over loopback HTTP by ffmpeg (without ffmpeg: the file read
through PyAV at its frame rate), scored with the demo model on the tiny CLIP and on the chosen
one (default ViT-B/16).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tpwng.bench.common import (
    add_model_options,
    bench_parser,
    clip_spec,
    host,
    peak_rss_mb,
    report,
)
from tpwng.bench.videos import long_video
from tpwng.loopback import free_port, loopback_server

if TYPE_CHECKING:
    from tpwng.features.clip_backbone import ClipSpec


LIVE_CLASSES = ["normal", "explosion", "fighting", "robbery", "vandalism"]  # the demo's


def live_scorer(spec: ClipSpec, stride: int = 16, classes: list[str] = LIVE_CLASSES):
    """A `Scorer` of the demo model configuration (``ModelConfig()``, random TPWNG weights) on
    the image tower of ``spec``: what a trained checkpoint costs to run, not what it scores."""
    import torch

    from tpwng.features.clip_backbone import load_clip
    from tpwng.features.extract import ExtractionSettings, ImageEncoder
    from tpwng.model.tpwng import TPWNG, ModelConfig
    from tpwng.scoring.scorer import Scorer

    clip_model, identity = load_clip(spec)
    torch.manual_seed(0)
    model = TPWNG(clip_model, classes, ModelConfig(), dim=int(clip_model.visual.output_dim))
    with torch.no_grad():
        text = model.text_embeddings().float()
    settings = ExtractionSettings(stride=stride, device="cpu")
    meta = {"classes": classes, "clip": {"weights": identity}, "dataset": "bench"}
    return Scorer(model.eval(), meta, Path(f"bench-{spec.model}"),
                  ImageEncoder(clip_model, settings), settings, text=text,
                  logit_scale=model.logit_scale)


def _live_run(scorer, video: Path, ffmpeg: str | None) -> tuple[list[float], float]:
    """Per-snippet latencies of one live run of ``video`` and its wall time."""
    import tempfile

    from tpwng.scoring.live import score_live
    from tpwng.scoring.live_source import LiveOptions
    from tpwng.scoring.score_video import ScoreOptions

    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        source, live = str(video), LiveOptions(realtime=True)
        if ffmpeg:
            port = free_port()
            stack.enter_context(loopback_server(video, port, ffmpeg=ffmpeg))
            source, live = f"http://127.0.0.1:{port}", LiveOptions()
        t0 = time.perf_counter()
        score_live(scorer, source, Path(tmp), ScoreOptions(stream=True), live,
                   emit=lines.append, notify=lambda m: print(m, file=sys.stderr))
        wall = time.perf_counter() - t0
    records = [json.loads(x) for x in lines]
    return [r["latency_s"] for r in records if r["event"] == "snippet"], wall


def bench_live(video: Path, specs: list[ClipSpec], out: Path | None, stride: int = 16) -> dict:
    """p50 / p95 / max seconds from a snippet's last frame being decoded to its score, per
    image tower; and the run's wall time beside the video's duration (a scorer that cannot
    keep up falls behind the source while its latency stays small: decoding then waits)."""
    import shutil

    import numpy as np

    from tpwng.features.video import probe_video
    from tpwng.scoring.live import scoring_threads

    info = probe_video(video)
    ffmpeg = shutil.which("ffmpeg")
    result: dict = {
        "host": socket.gethostname(), "machine": platform.processor() or platform.machine(),
        "video": str(video), "size": f"{info.width}x{info.height}", "fps": info.fps,
        "duration_s": info.frames / info.fps, "stride": stride,
        "snippet_s": stride / info.fps,
        "source": ("ffmpeg -re, MPEG-TS over HTTP on 127.0.0.1" if ffmpeg else
                   "the file through PyAV, paced at its frame rate (ffmpeg not installed)"),
        "torch_threads": scoring_threads(),
    }
    for spec in specs:
        latencies, wall = _live_run(live_scorer(spec, stride), video, ffmpeg)
        lat = np.asarray(latencies)
        key = spec.model
        result |= {f"{key}_snippets": len(lat),
                   f"{key}_latency_p50_s": float(np.percentile(lat, 50)),
                   f"{key}_latency_p95_s": float(np.percentile(lat, 95)),
                   f"{key}_latency_max_s": float(lat.max()),
                   f"{key}_wall_s": wall}
    result["peak_rss_mb"] = peak_rss_mb()
    report(result, out)
    return result


HELP = "per-snippet latency of live scoring"


def add_live_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench live` and its options."""
    p = bench_parser(sub, "live", HELP, __doc__, run_live, "benchmarks/live-<host>.json")
    p.add_argument("videos", nargs="*", help="the video to serve (default: a generated "
                                             "1280x720 one of --frames frames at 25 fps)")
    add_model_options(p)
    p.add_argument("--frames", type=int, default=1500, help="frames of the generated video")
    p.add_argument("--workdir", default="benchmarks",
                   help="work folder: the generated video (default benchmarks)")
    return p


def run_live(a: argparse.Namespace) -> None:
    """`tpwng bench live`: the figures on stdout and in the JSON."""
    from tpwng.features.clip_backbone import ClipSpec

    spec = clip_spec(a)
    video = (Path(a.videos[0]) if a.videos else
             long_video(Path(a.workdir) / f"live-{a.frames}f-1280x720.mp4",
                        max(1, a.frames // 25), 25.0, 1280, 720))
    out = Path(a.out or f"benchmarks/live-{host()}.json")
    bench_live(video, [ClipSpec("tpwng-tiny-ViT-B-16", "none", 0), spec], out)
