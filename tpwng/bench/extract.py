"""`tpwng bench extract`: extraction rates on given videos or a generated set.

Measured in one run: the decode-only rate with the same workers, the encoder-only rate at the
configured batch and precision, the end-to-end rate of the extraction stage, and a peer-style
baseline (every frame decoded, each sampled frame preprocessed through PIL one at a time, the
encoder run per video).
"""

from __future__ import annotations

import argparse
import math
import platform
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tpwng.bench.common import (
    add_decode_options,
    add_model_options,
    bench_parser,
    clip_spec,
    host,
    peak_rss_mb,
    report,
    sync,
)
from tpwng.bench.videos import given_or_generated, video_rows

if TYPE_CHECKING:
    from tpwng.features.clip_backbone import ClipSpec
    from tpwng.features.extract import ExtractionSettings, ImageEncoder


def decode_rate(rows, settings: ExtractionSettings, workers: int,
                budget_s: float = math.inf) -> dict:
    """Video frames/s of extraction's decoding alone (the sampled frames, through its decoding
    processes: `workers` of them, 0 = this process's), stopped after `budget_s`; a video
    counts the frames of the snippets decoded so far.

    Also the start-up (from the loader's creation to the first chunk: the processes starting,
    importing and opening their first videos) and the steady rate after it, so that a rate
    held down by start-up within a short budget shows as such. The steady rate counts
    ``stride`` frames per snippet (the generated videos have no partial snippet)."""
    from torch.utils.data import DataLoader

    from tpwng.features.extract import DecodeStream, plan_jobs

    jobs = plan_jobs(rows, settings)
    loader = DataLoader(DecodeStream(jobs, settings.decode_chunk, settings.decode_timeout),
                        batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    seen = [0] * len(jobs)
    t0 = time.perf_counter()
    first, after_first = None, 0
    batches = iter(loader)
    for j, _, frames in batches:
        seen[j] += len(frames)
        if first is None:
            first = time.perf_counter()
        else:
            after_first += len(frames)
        if time.perf_counter() - t0 > budget_s:
            break
    end = time.perf_counter()
    del batches  # stops the workers
    frames = sum(min(n * settings.stride, job.frames) for n, job in zip(seen, jobs, strict=True))
    steady_s = end - first if first is not None else 0.0
    return {"fps": frames / (end - t0), "frames": frames, "seconds": end - t0,
            "startup_s": (first if first is not None else end) - t0,
            "steady_fps": after_first * settings.stride / steady_s if steady_s > 0 else 0.0}


def physical_cores() -> int | None:
    """Cores (not hardware threads) this process may run on, from sysfs; None where unknown."""
    import os

    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores)


def encode_only(encoder: ImageEncoder, settings: ExtractionSettings, seconds: float = 5.0) -> float:
    """Images per second through preprocessing-free encoding at the configured batch size
    (results left on the device; one synchronisation at the end)."""
    import torch

    per = max(1, settings.batch_size // encoder.crops)
    x = torch.randn(per, encoder.crops, 3, 224, 224, device=encoder.device, dtype=encoder.dtype)
    encoder.encode(x)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        encoder.embed(x)
        n += per * encoder.crops
    sync(encoder.device)
    return n / (time.perf_counter() - t0)


def peer_baseline(rows, spec: ClipSpec, settings: ExtractionSettings,
                  budget_s: float | None = None) -> float:
    """Video frames/s of the common script style: decode every frame, PIL per frame, the
    float32 model run per video. With ``budget_s``: stops after the video that ends past it."""
    import decord
    import open_clip
    import torch
    from PIL import Image

    from tpwng.device import resolve_device
    from tpwng.features.clip_backbone import load_clip

    model, _ = load_clip(spec)
    device = resolve_device(settings.device)
    model = model.to(device)
    pil = open_clip.image_transform(224, is_train=False)
    with torch.no_grad():  # warm-up: CUDA kernels and libraries load outside the timing
        model.encode_image(torch.zeros(2, 3, 224, 224, device=device))
    total, t0 = 0, time.perf_counter()
    for r in rows:
        vr = decord.VideoReader(r.path)
        frames = [vr[i].asnumpy() for i in range(len(vr))]  # every frame
        sampled = frames[settings.stride // 2 :: settings.stride]
        batch = torch.stack([pil(Image.fromarray(f)) for f in sampled]).to(device)
        with torch.no_grad():
            model.encode_image(batch)
        sync(device)
        total += r.frames
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    return total / (time.perf_counter() - t0)


def bench_extract(videos: list[Path], spec: ClipSpec, settings: ExtractionSettings,
                  out: Path | None, baseline: bool = True) -> dict:
    import torch

    from tpwng.bench.trivial import TrivialCLIP
    from tpwng.features.clip_backbone import load_clip
    from tpwng.features.extract import ImageEncoder, decode_workers_for, extract

    rows = video_rows(videos)
    trivial = spec.model == "trivial"
    model = TrivialCLIP() if trivial else load_clip(spec)[0]
    encoder = ImageEncoder(model, settings)
    result: dict = {
        "host": socket.gethostname(), "machine": platform.processor() or platform.machine(),
        "device": str(encoder.device), "model": spec.model, "precision": str(encoder.dtype),
        "crop_mode": settings.crop_mode, "batch_size": settings.batch_size,
        "decode_workers": settings.decode_workers, "videos": len(rows),
        "video_frames": sum(r.frames for r in rows), "stride": settings.stride,
        "torch_threads": torch.get_num_threads(),
    }
    workers = decode_workers_for(settings.decode_workers)
    result["decode_fps"] = decode_rate(rows, settings, workers)["fps"]
    imgs = encode_only(encoder, settings)
    result["encode_images_per_s"] = imgs
    result["encode_equiv_fps"] = imgs * settings.stride / encoder.crops
    tmp = Path(out.parent if out else ".") / ".bench-store.h5"
    stats = extract(rows, tmp, spec, settings, dataset="bench", progress=False,
                    clip_model=model)
    tmp.unlink(missing_ok=True)
    result["end_to_end_fps"] = stats["video_frames"] / stats["seconds"]
    result["end_to_end_crops_per_s"] = stats["snippets"] * encoder.crops / stats["seconds"]
    ceiling = min(result["decode_fps"], result["encode_equiv_fps"])
    result["ratio_to_ceiling"] = result["end_to_end_fps"] / ceiling
    result["ratio_to_decode"] = result["end_to_end_fps"] / result["decode_fps"]
    result["ratio_to_encode"] = result["end_to_end_fps"] / result["encode_equiv_fps"]
    if baseline and not trivial:
        result["peer_baseline_fps"] = peer_baseline(rows, spec, settings)
        result["speedup_over_peer"] = result["end_to_end_fps"] / result["peer_baseline_fps"]
    result["peak_rss_mb"] = peak_rss_mb()
    report(result, out)
    return result


HELP = "decode-only, encoder-only and end-to-end extraction rates, and the peer-style baseline"


def add_extract_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench extract` and its options."""
    p = bench_parser(sub, "extract", HELP, __doc__, run_extract,
                     "benchmarks/extract-<host>-<crop mode>.json")
    p.add_argument("videos", nargs="*", help="videos or folders (default: a generated set, "
                                             "WORKDIR/bench-videos)")
    add_model_options(p)
    add_decode_options(p, "2")
    p.add_argument("--crop-mode", default="center", choices=["center", "tencrop"])
    p.add_argument("--precision", default="auto")
    p.add_argument("--generate", type=int, default=8, help="generated videos when none given")
    p.add_argument("--frames", type=int, default=1500, help="frames per generated video")
    p.add_argument("--workdir", default="benchmarks",
                   help="work folder: generated videos (default benchmarks)")
    p.add_argument("--no-baseline", action="store_true", help="leave the peer-style baseline out")
    return p


def run_extract(a: argparse.Namespace) -> None:
    """`tpwng bench extract`: the figures on stdout and in the JSON."""
    from tpwng.features.extract import ExtractionSettings

    settings = ExtractionSettings(batch_size=a.batch_size, decode_workers=a.workers,
                                  crop_mode=a.crop_mode, precision=a.precision)
    out = Path(a.out or f"benchmarks/extract-{host()}-{a.crop_mode}.json")
    bench_extract(given_or_generated(a), clip_spec(a), settings, out,
                  baseline=not a.no_baseline)


def stored_vs_direct(store: Path, row, clip_model, settings) -> float:
    """Least cosine between the features `extract` stored for the video of `row` and those of
    the same frames encoded at once by one encoder on the default stream: the pipelined lanes
    (upload, preprocessing, encoding and copies back on their own streams) must compute the
    same thing. Batch sizes differ between the two, so reduced-precision results agree to
    rounding only."""
    import torch

    from tpwng.features.extract import ImageEncoder, plan_jobs, precision_check_frames
    from tpwng.features.store import FeatureStore

    job = plan_jobs([row], settings)[0]
    with FeatureStore(store) as fs:
        stored = torch.from_numpy(fs.get(job.video_id)[: len(job.indices)]).float()
    encoder = ImageEncoder(clip_model, settings, copy_tower=True)
    frames = precision_check_frames(job, settings)  # the first frames the video samples
    direct = encoder.encode(encoder.prepare(frames))
    n = len(direct)
    cos = torch.nn.functional.cosine_similarity(stored[:n].flatten(0, 1),
                                                direct.flatten(0, 1).float(), dim=-1)
    return float(cos.min())
