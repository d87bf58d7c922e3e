"""`tpwng bench memory`: the peak memory of extracting a one-minute and a one-hour video."""

from __future__ import annotations

import argparse
import resource
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tpwng.bench.common import add_decode_options, bench_parser, host, report
from tpwng.bench.videos import long_video, video_rows

if TYPE_CHECKING:
    from tpwng.features.extract import ExtractionSettings


def _rss_child(video: str, settings: ExtractionSettings, store: str) -> None:
    """In a fresh process: extract one video with the trivial encoder."""
    from tpwng.bench.trivial import TrivialCLIP
    from tpwng.features.clip_backbone import ClipSpec
    from tpwng.features.extract import extract

    rows = video_rows([Path(video)])
    extract(rows, store, ClipSpec("trivial", "none", 0), settings, progress=False,
            clip_model=TrivialCLIP())
    Path(store).unlink(missing_ok=True)


def _process_tree_rss_mb(root: int) -> tuple[float, float]:
    """(RSS of `root`, RSS of `root` and all its descendants) in MB, from /proc (Linux)."""
    parent, rss = {}, {}
    page = resource.getpagesize() / 2**20
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            statm = (d / "statm").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(d.name)] = int(fields[1])
        rss[int(d.name)] = int(statm.split()[1]) * page
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    return rss.get(root, 0.0), sum(rss.get(p, 0.0) for p in tree)


def bench_memory(workdir: Path, settings: ExtractionSettings, out: Path | None,
                 lengths_s: tuple[int, ...] = (60, 3600)) -> dict:
    """Peak memory of extracting one 320x240 video of each length, each in a fresh process.

    The extracting process and all its descendants (decode workers, their decoding processes)
    are sampled from /proc every 0.2 s. The trivial encoder stands in for CLIP: the model's
    weights are a constant; what must not grow with the video's length is the data path.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    result: dict = {"host": socket.gethostname(), "decode_workers": settings.decode_workers,
                    "decode_chunk": settings.decode_chunk, "batch_size": settings.batch_size}
    for seconds in lengths_s:
        video = long_video(workdir / f"long-{seconds}s.mp4", seconds)
        proc = ctx.Process(target=_rss_child,
                           args=(str(video), settings, str(workdir / ".rss-store.h5")))
        t0 = time.perf_counter()
        proc.start()
        main_peak = tree_peak = 0.0
        while proc.is_alive():
            main, tree = _process_tree_rss_mb(proc.pid)
            main_peak, tree_peak = max(main_peak, main), max(tree_peak, tree)
            time.sleep(0.2)
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"memory benchmark on {video} failed (exit {proc.exitcode})")
        result[f"main_peak_rss_mb_{seconds}s"] = main_peak
        result[f"all_processes_peak_rss_mb_{seconds}s"] = tree_peak
        result[f"seconds_{seconds}s"] = time.perf_counter() - t0
    short, long_ = lengths_s[0], lengths_s[-1]
    for k in ("main_peak_rss_mb", "all_processes_peak_rss_mb"):
        result[f"{k}_ratio"] = result[f"{k}_{long_}s"] / result[f"{k}_{short}s"]
    report(result, out)
    return result


HELP = "peak memory of extracting a one-minute and a one-hour video"


def add_memory_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench memory` and its options."""
    p = bench_parser(sub, "memory", HELP, __doc__, run_memory, "benchmarks/memory-<host>.json")
    add_decode_options(p, "2")
    p.add_argument("--workdir", default="benchmarks",
                   help="work folder: the generated videos go to WORKDIR/bench-videos "
                        "(default benchmarks)")
    return p


def run_memory(a: argparse.Namespace) -> None:
    """`tpwng bench memory`: the figures on stdout and in the JSON."""
    from tpwng.features.extract import ExtractionSettings

    settings = ExtractionSettings(batch_size=a.batch_size, decode_workers=a.workers)
    out = Path(a.out or f"benchmarks/memory-{host()}.json")
    bench_memory(Path(a.workdir) / "bench-videos", settings, out)
