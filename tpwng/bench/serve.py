"""`tpwng bench serve`: how many live sources one `tpwng serve` process keeps up with.

For each K, K ffmpeg processes serve the same generated video in real time (``-re``, MPEG-TS
over HTTP on 127.0.0.1, stream copy: they cost next to no CPU) and one `Service` scores them
all for a fixed time with the demo model configuration (`tpwng.bench.live.live_scorer`: random
TPWNG weights on the chosen image tower). Per K: p50 / p95 / max latency (a snippet's last
frame decoded to its score; the first `WARMUP_S` of each source left out), snippets scored
and dropped, frames decoded against real time, and the process's CPU use. K holds when p95 <
1 s, nothing was dropped and decoding kept up (>= `KEEP_UP` of the frames real time sends).
K grows until one fails; the largest K that held is printed and written to the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tpwng.bench.common import add_model_options, bench_parser, clip_spec, host, peak_rss_mb
from tpwng.bench.videos import long_video
from tpwng.loopback import free_port, loopback_server

if TYPE_CHECKING:
    from tpwng.features.clip_backbone import ClipSpec

WARMUP_S = 2.0  # seconds of each source's stream left out of the latencies
KEEP_UP = 0.95  # frames decoded / frames sent in real time, at least
P95_BOUND_S = 1.0


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_k(scorer, video: Path, k: int, seconds: float, ffmpeg: str, stride: int) -> dict:
    """One `Service` over ``k`` loopback sources of ``video`` for ``seconds`` s."""
    import numpy as np

    from tpwng.serve.config import ServeConfig, SourceSpec
    from tpwng.serve.service import Service

    ports = [free_port() for _ in range(k)]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(loopback_server(video, port, ffmpeg=ffmpeg))
        config = ServeConfig(
            path=Path(tmp) / "bench.yaml",
            sources=[SourceSpec(f"s{i}", "url", f"http://127.0.0.1:{p}", timeout=10.0)
                     for i, p in enumerate(ports)])
        service = Service(config, scorer, Path(tmp) / "out")
        cpu0, t0 = os.times(), time.monotonic()
        service.start()
        time.sleep(seconds)
        cpu1, wall = os.times(), time.monotonic() - t0
        states = [(s.counters.frames, s.fps) for s in service.sources]
        service.request_stop("bench")
        service.wait(60)
        latencies, dropped = [], 0
        for s in service.sources:
            lines = [json.loads(x) for x in s.log.path.read_text().splitlines()]
            snips = [x for x in lines if x["event"] == "snippet"]
            latencies += [x["latency_s"] for x in snips
                          if not x.get("dropped") and x["time_s"] >= WARMUP_S]
            dropped += sum(1 for x in snips if x.get("dropped"))
        batches = dict(service.batches)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    fps = states[0][1] or 25.0
    sent = k * fps * wall
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    row = {"sources": k, "seconds": round(wall, 2), "snippets_scored": len(latencies),
           "snippets_dropped": dropped,
           "latency_p50_s": float(np.percentile(lat, 50)),
           "latency_p95_s": float(np.percentile(lat, 95)),
           "latency_max_s": float(lat.max()),
           "decoded_vs_realtime": sum(f for f, _ in states) / sent if sent else 0.0,
           "cpu_cores_used": cpu / wall,
           "cpu_use_of_machine": cpu / wall / _usable_cpus(),
           "mean_batch": (sum(b * c for b, c in batches.items()) / sum(batches.values())
                          if batches else 0.0)}
    row["holds"] = bool(row["latency_p95_s"] < P95_BOUND_S and dropped == 0
                        and row["decoded_vs_realtime"] >= KEEP_UP)
    return row


def bench_serve(spec: ClipSpec, ks: list[int], seconds: float, workdir: Path,
                out: Path | None, width: int = 1280, height: int = 720,
                stride: int = 16) -> dict:
    """The table over ``ks`` (stopping at the first K that fails) and the largest K that
    held; printed, and written as JSON to ``out``."""
    import platform

    from tpwng.bench.live import live_scorer
    from tpwng.scoring.live import scoring_threads

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("tpwng bench serve needs ffmpeg to serve its loopback sources "
                           "(Debian's ffmpeg: tests/install/ffmpeg.sh)")
    video = long_video(workdir / f"serve-{width}x{height}-{int(seconds) + 15}s.mp4",
                       seconds + 15, 25.0, width, height)
    scorer = live_scorer(spec, stride)
    result: dict = {"host": socket.gethostname(),
                    "machine": platform.processor() or platform.machine(),
                    "cpus": _usable_cpus(), "model": spec.model, "device": str(scorer.device),
                    "torch_threads": scoring_threads(), "video": f"{width}x{height} H.264 "
                    "at 25 fps, ffmpeg -re over HTTP on 127.0.0.1", "stride": stride,
                    "seconds_per_k": seconds, "warmup_s": WARMUP_S,
                    "holds_when": f"p95 < {P95_BOUND_S:g} s, no drops, decoded >= "
                                  f"{KEEP_UP:g} x real time", "runs": []}
    header = (f"{'K':>3} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'scored':>7} {'dropped':>7} "
              f"{'decoded':>8} {'CPU':>6} {'batch':>6}  holds")
    print(header, flush=True)
    best = 0
    for k in ks:
        row = run_k(scorer, video, k, seconds, ffmpeg, stride)
        result["runs"].append(row)
        print(f"{k:>3} {row['latency_p50_s']:>7.3f} {row['latency_p95_s']:>7.3f} "
              f"{row['latency_max_s']:>7.3f} {row['snippets_scored']:>7} "
              f"{row['snippets_dropped']:>7} {row['decoded_vs_realtime']:>8.2f} "
              f"{row['cpu_use_of_machine']:>6.0%} {row['mean_batch']:>6.2f}  "
              f"{'yes' if row['holds'] else 'no'}", flush=True)
        if not row["holds"]:
            break
        best = k
    result["largest_k_that_holds"] = best
    result["peak_rss_mb"] = peak_rss_mb()
    print(f"largest K that holds ({result['holds_when']}): {best}", flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


HELP = ("tpwng serve with K loopback ffmpeg sources (1280x720 at 25 fps): the largest K that "
        "holds p95 < 1 s with no drops")


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench serve` and its options."""
    p = bench_parser(sub, "serve", HELP, __doc__, run_serve, "benchmarks/serve-<host>.json")
    add_model_options(p)
    p.add_argument("--sources", type=int, nargs="+", metavar="K",
                   help="the numbers of sources to try, in order (default 1 2 4 6 8 12 16)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds per K (default 30)")
    p.add_argument("--workdir", default="benchmarks",
                   help="work folder: the generated video (default benchmarks)")
    return p


def run_serve(a: argparse.Namespace) -> None:
    """`tpwng bench serve`: the table on stdout, the figures in the JSON."""
    bench_serve(clip_spec(a), a.sources or [1, 2, 4, 6, 8, 12, 16], a.seconds,
                Path(a.workdir), Path(a.out or f"benchmarks/serve-{host()}.json"))
