"""`tpwng bench gpu`: a GPU box's figures beside its targets, in one run.

One run of at most 9 minutes on a GPU box (16 cores, one H100/H200) that measures,
on generated 320x240 H.264 videos (16 distinct, repeated to ~200k frames; written
once in parallel, kept in WORKDIR, default benchmarks/.gpu-work): the decode-only
rate with 1 and with all decoding processes and in one 1-thread decoding process
(video frames/s, stride 16), the encoder-only rate of ViT-B/16 at random init in bf16
(images/s; and with bf16 weights at batch 1024), extraction end to end with centre
crops and with 10 crops, the peer-style baseline, 50 epochs of training on 1,610
UCF-sized videos of 10 crops (epoch_over crops: 252 steps; epochs past a 120 s budget
are extrapolated from the median one, and the JSON says so), and 5 seeds' training
processes one after another and all at once; beside them the targets, with pass or
fail: centre crop >= 0.85 x the all-process decode rate and >= 0.85 x the 1-thread
rate x the decoding processes, 10-crop crops/s >= 0.85 x the encoder rate and >= 0.95
x the bf16-weights rate, >= 15 x the peer-style baseline, 50 epochs <= 240 s, five
seeds <= 600 s. Prints the table;
writes benchmarks/gpu-<host>.json (--out). Without CUDA it refuses, unless --quick:
every phase at tiny sizes on any machine (with --model tpwng-tiny-ViT-B-16: well
under a minute on 2 CPU cores). --workers, --batch-size, --n-videos, --epochs and
--train-batch override its sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tpwng.bench.attention import attention_check, attention_table
from tpwng.bench.common import (
    add_decode_options,
    add_model_options,
    add_training_options,
    bench_parser,
    clip_spec,
    host,
    peak_rss_mb,
    report,
)
from tpwng.bench.extract import (
    decode_rate,
    encode_only,
    peer_baseline,
    physical_cores,
    stored_vs_direct,
)
from tpwng.bench.train import bench_seeds, bench_train
from tpwng.bench.videos import pattern_videos, repeated_rows, video_rows

if TYPE_CHECKING:
    from tpwng.features.clip_backbone import ClipSpec


@dataclass(frozen=True)
class GpuBenchSizes:
    """What `bench_gpu` measures on, and how long each phase may take (seconds)."""

    distinct: int = 16  # generated 320x240 H.264 videos (one process each)
    frames: int = 3000  # frames of each (2 minutes at 25 fps)
    decode_frames: int = 200_000  # frames of the all-process decode (the videos repeated)
    batch_size: int = 256  # encoder batch, in images
    one_process_s: float = 20.0
    all_processes_s: float = 40.0
    encoder_s: float = 15.0
    end_to_end_s: float = 30.0  # each of centre crop and 10-crop, sized from the rates above
    peer_s: float = 30.0
    train_videos: int = 1610  # UCF-Crime's training videos
    train_epochs: int = 50
    train_batch: int = 32
    train_max_len: int = 256  # snippets per video at most (train.max_seq_len)
    train_s: float = 120.0  # at most; the time left before `total_s` if less
    train_crops: int = 10  # crops per video, every (video, crop) pair an epoch: 252 steps
    encoder_bf16_batch: int = 1024  # images a batch of the bf16-weights encoder ceiling
    seeds: int = 5  # training processes sharing the device, against as many one at a time
    seed_steps: int = 60  # steps each of them times, alone and together
    seeds_s: float = 90.0  # kept free for the seeds after training (not a limit)
    # the attention paths against float64: batch, snippets (= F; R = F / 4), width, layers
    attention: tuple[int, int, int, int] = (8, 256, 512, 4)
    total_s: float = 520.0


# Tiny sizes for a CPU: every phase of the full run, end to end, in well under a minute.
QUICK_SIZES = GpuBenchSizes(distinct=2, frames=64, decode_frames=384, batch_size=16,
                            one_process_s=0.5, all_processes_s=1.0, encoder_s=0.5,
                            end_to_end_s=1.0, peer_s=0.2, train_videos=4, train_epochs=2,
                            train_batch=2, train_max_len=32, train_s=2.0, total_s=60.0,
                            train_crops=2, encoder_bf16_batch=16, seeds=2, seed_steps=2,
                            seeds_s=0.0,
                            attention=(2, 32, 64, 2))


# The GPU box's targets: figure key, comparison, bound (a number, or the key and factor of one).
GPU_TARGETS = {
    "centre_crop_vs_decode": ("end_to_end_center_fps", ">=", ("decode_all_fps", 0.85)),
    "centre_crop_vs_decode_ceiling": ("end_to_end_center_fps", ">=",
                                      ("decode_ceiling_fps", 0.85)),
    "tencrop_vs_encoder": ("end_to_end_tencrop_crops_per_s", ">=",
                           ("encoder_images_per_s", 0.85)),
    "tencrop_vs_bf16_encoder": ("end_to_end_tencrop_crops_per_s", ">=",
                                ("encoder_bf16_weights_images_per_s", 0.95)),
    "speedup_over_peer": ("speedup_over_peer", ">=", 15.0),
    # the pipelined lanes store what one encoder computes directly from the same frames
    "center_lanes_match": ("end_to_end_center_min_cosine_to_direct", ">=", 0.999),
    "tencrop_lanes_match": ("end_to_end_tencrop_min_cosine_to_direct", ">=", 0.999),
    # 50 UCF-Crime epochs over every (video, crop) pair: 12,600 steps of 32 + 32
    "train_50_epochs": ("train_seconds_all_epochs", "<=", 240.0),
    "five_seeds_50_epochs": ("seeds_five_by_50_epochs_s", "<=", 600.0),
}


def _check_targets(result: dict) -> dict:
    """Each target of `GPU_TARGETS`: the figure, the bound it is held to, and whether it passes."""
    out = {}
    for name, (key, op, bound) in GPU_TARGETS.items():
        if isinstance(bound, tuple):
            ref, factor = bound
            limit, rule = result[ref] * factor, f"{key} {op} {factor} x {ref}"
        else:
            limit, rule = bound, f"{key} {op} {bound:g}"
        value = result[key]
        ok = {">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]
        out[name] = {"figure": value, "bound": limit, "rule": rule, "pass": bool(ok)}
    return out


def bench_gpu(workdir: Path, out: Path | None, spec: ClipSpec,
              sizes: GpuBenchSizes = GpuBenchSizes(), decode_workers: int | str = "auto",
              train_videos: int | None = None, train_epochs: int | None = None,
              train_batch: int | None = None) -> dict:
    """The GPU box's figures in one run, beside its targets (`GPU_TARGETS`).

    Measures, on `sizes.distinct` generated 320x240 H.264 videos repeated into longer lists:
    the decode-only rate with one decoding process and with all of them, the encoder-only
    rate at the batch size and precision of extraction (bf16 on CUDA), `extract` end to end
    with centre crops and with 10 crops, the peer-style baseline, and training epochs of a
    UCF-sized set (`bench_train`). Each phase has a time budget (``sizes``); progress goes to
    stderr, the table to stdout, the figures to `out` as JSON.
    """
    import os

    import torch

    from tpwng.device import resolve_device
    from tpwng.features.clip_backbone import load_clip
    from tpwng.features.extract import ExtractionSettings, ImageEncoder, decode_workers_for, extract

    start = time.perf_counter()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {what}", file=sys.stderr, flush=True)

    workdir = Path(workdir)
    paths = pattern_videos(workdir, sizes.distinct, sizes.frames)
    distinct = video_rows(paths)
    device = resolve_device("auto")
    workers = decode_workers_for(decode_workers)
    settings = ExtractionSettings(batch_size=sizes.batch_size, decode_workers=workers)
    result: dict = {
        "host": socket.gethostname(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "physical_cores": physical_cores(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "model": spec.model,
        "weights": "random init" if spec.random_init else spec.pretrained,
        "sizes": "quick" if sizes == QUICK_SIZES else "full",
        "videos": {"distinct": len(distinct), "frames_each": sizes.frames, "size": "320x240",
                   "codec": "H.264 (libx264 ultrafast, GOP 32), generated"},
        "stride": settings.stride, "batch_size": settings.batch_size,
        "decode_workers": workers,
    }
    say(f"{len(distinct)} videos ready; decoding with 1 process ({sizes.one_process_s:g} s)")
    one = decode_rate(repeated_rows(distinct, sizes.decode_frames), settings, 0,
                      sizes.one_process_s)
    result |= {"decode_1proc_fps": one["fps"], "decode_1proc_frames": one["frames"],
               "decode_1proc_steady_fps": one["steady_fps"]}
    say(f"decode, 1 process: {one['fps']:,.0f} frames/s; 1 decoding process, 1 thread "
        f"({sizes.one_process_s:g} s)")
    single = decode_rate(repeated_rows(distinct, sizes.decode_frames), settings, 1,
                         sizes.one_process_s)
    result |= {"decode_single_thread_fps": single["fps"],
               "decode_single_thread_frames": single["frames"],
               "decode_single_thread_s": single["seconds"],
               "decode_single_thread_startup_s": single["startup_s"],
               "decode_single_thread_steady_fps": single["steady_fps"],
               "decode_ceiling_fps": single["steady_fps"] * max(1, workers)}
    say(f"decode, 1 decoding process: {single['fps']:,.0f} frames/s; with {workers} processes "
        f"({sizes.all_processes_s:g} s)")
    decode_rows = repeated_rows(distinct, sizes.decode_frames)
    every = decode_rate(decode_rows, settings, workers, sizes.all_processes_s)
    result |= {"decode_all_fps": every["fps"], "decode_all_processes": max(1, workers),
               "decode_all_frames": every["frames"], "decode_all_startup_s": every["startup_s"],
               "decode_all_steady_fps": every["steady_fps"],
               "decode_all_vs_single_steady": every["steady_fps"] / single["steady_fps"]
               if single["steady_fps"] else 0.0}
    say(f"decode, {workers} processes: {every['fps']:,.0f} frames/s; encoder "
        f"({sizes.encoder_s:g} s)")
    model, _ = load_clip(spec)
    encoder = ImageEncoder(model, settings)
    images = encode_only(encoder, settings, sizes.encoder_s)
    result |= {"precision": str(encoder.dtype).removeprefix("torch."),
               "encoder_images_per_s": images}
    del encoder
    say(f"encoder: {images:,.0f} images/s; with bf16 weights, {sizes.encoder_bf16_batch} "
        f"images a batch ({sizes.encoder_s:g} s)")
    bf16 = ExtractionSettings(batch_size=sizes.encoder_bf16_batch, precision="bf16")
    encoder = ImageEncoder(model, bf16, device=device, copy_tower=True)
    bf16_images = encode_only(encoder, bf16, sizes.encoder_s)
    result |= {"encoder_bf16_weights_images_per_s": bf16_images,
               "encoder_bf16_batch": sizes.encoder_bf16_batch}
    del encoder
    say(f"encoder, bf16 weights: {bf16_images:,.0f} images/s; extraction end to end")
    for crop_mode in ("center", "tencrop"):
        crops = 10 if crop_mode == "tencrop" else 1
        ceiling = min(every["fps"], images * settings.stride / crops)
        rows = repeated_rows(distinct, int(ceiling * sizes.end_to_end_s))
        run = ExtractionSettings(batch_size=sizes.batch_size, decode_workers=workers,
                                 crop_mode=crop_mode)
        store = workdir / f".bench-{crop_mode}.h5"
        stats = extract(rows, store, spec, run, dataset="bench", progress=False,
                        clip_model=model)
        result[f"end_to_end_{crop_mode}_min_cosine_to_direct"] = stored_vs_direct(
            store, rows[0], model, run)
        store.unlink(missing_ok=True)
        fps = stats["video_frames"] / stats["seconds"]
        result |= {f"end_to_end_{crop_mode}_fps": fps,
                   f"end_to_end_{crop_mode}_vs_decode_ceiling":
                       fps / result["decode_ceiling_fps"],
                   f"end_to_end_{crop_mode}_crops_per_s":
                       stats["snippets"] * crops / stats["seconds"],
                   f"end_to_end_{crop_mode}_frames": stats["video_frames"],
                   f"end_to_end_{crop_mode}_s": stats["seconds"],
                   "encoders": stats["encoders"]}
        say(f"end to end, {crop_mode}: {fps:,.0f} frames/s over {stats['video_frames']:,} "
            f"frames")
    del model
    say(f"peer-style baseline ({sizes.peer_s:g} s)")
    peer = peer_baseline(distinct * 100, spec, settings, budget_s=sizes.peer_s)
    result |= {"peer_baseline_fps": peer,
               "speedup_over_peer": result["end_to_end_center_fps"] / peer}
    b, t, d, n = sizes.attention
    say(f"peer: {peer:,.0f} frames/s; attention paths against float64 ({b} x {t} x {d}, "
        f"{n} layers)")
    check = attention_check(device, b, t, d, n)
    result["attention_float64"] = check
    say(f"attention: float64 paths agree to {check['float64_max_rel_err']:.1e} "
        f"({check['seconds']:.1f} s)")
    epochs = train_epochs or sizes.train_epochs
    budget = max(1.0, min(sizes.train_s, sizes.total_s - (time.perf_counter() - start) - 20
                          - sizes.seeds_s))
    say(f"peer: {peer:,.0f} frames/s; training, {epochs} epochs (budget {budget:.0f} s)")
    with contextlib.redirect_stdout(sys.stderr):
        train = bench_train(train_videos or sizes.train_videos, spec, epochs,
                            train_batch or sizes.train_batch, split_steps=0, budget_s=budget,
                            max_len=sizes.train_max_len, crops=sizes.train_crops,
                            epoch_over="crops")
    timed, rest = train["epochs_timed"], train["epochs_extrapolated"]
    result |= {
        "train_videos": train["videos"], "train_batch": train["batch"],
        "train_max_len": train["max_len"], "train_crops": train["crops"],
        "train_epoch_over": train["epoch_over"],
        "train_resident_features": train["resident_features"],
        "train_fused_adam": train["fused_adam"], "train_compile": train["compile"],
        "train_steps_per_epoch": train["steps_per_epoch"],
        "train_epochs_timed": timed, "train_seconds_per_epoch": train["seconds_per_epoch"],
        "train_seconds_all_epochs": train["seconds_all_epochs"],
        "train_timed": (f"{timed} of {epochs} epochs timed (every step, after one warm-up "
                        "step)" + (f"; the other {rest} extrapolated from their median"
                                   if rest else "")),
    }
    say(f"training: {train['seconds_per_epoch']:.2f} s per epoch of "
        f"{train['steps_per_epoch']} steps; {sizes.seeds} seeds, {sizes.seed_steps} steps each, "
        "one process after another, then all at once")
    setup = {"n_videos": train_videos or sizes.train_videos, "spec": spec,
             "batch": train_batch or sizes.train_batch, "max_len": sizes.train_max_len,
             "crops": sizes.train_crops, "epoch_over": "crops"}
    seeds = bench_seeds(sizes.seeds, sizes.seed_steps, setup)
    per_s = max(seeds["seeds_sequential_steps_per_s"], seeds["seeds_concurrent_steps_per_s"])
    result |= seeds | {"seeds_five_by_50_epochs_s":
                       5 * 50 * train["steps_per_epoch"] / per_s}
    say(f"seeds: {seeds['seeds_sequential_s']:.1f} s one after another, "
        f"{seeds['seeds_concurrent_s']:.1f} s at once")
    result["targets"] = _check_targets(result)
    result["timed"] = {
        "decode": "extraction's DataLoader over its decoding processes, nothing else; video "
                  "frames = snippets decoded x stride",
        "encoder": f"the image tower alone on random input, {settings.batch_size} images a "
                   "batch, results left on the device, one synchronisation at the end",
        "end_to_end": "extract() from the start of decoding (its processes starting) to the "
                      f"store written, inputs sized for about {sizes.end_to_end_s:g} s at the "
                      "lower of the decode and encoder rates",
        "peer_baseline": "every frame decoded with decord, each sampled frame through PIL, "
                         "the float32 model once per video; stopped after the video that "
                         f"ends past {sizes.peer_s:g} s",
        "train": result["train_timed"],
        "decode_single_thread": "one decoding process (decoder threads 1), as each of "
                                "extraction's; decode_ceiling_fps = its steady rate x the "
                                "decoding processes",
        "decode_startup": "*_startup_s: from the loader's creation to the first chunk (processes "
                          "starting, importing, opening videos); *_steady_fps: the rate after "
                          "it; decode_all_vs_single_steady: the scaling of the steady rates, "
                          "to hold against physical_cores",
        "encoder_bf16_weights": f"the image tower with bf16 weights (no autocast), "
                                f"{sizes.encoder_bf16_batch} images a batch, as the encoder",
        "seeds": f"{sizes.seeds} processes ({sizes.seed_steps} steps each, after each built "
                 "its set-up and took a warm-up step): released one after another, then all "
                 "at once; seeds_five_by_50_epochs_s extrapolates 5 x 50 epochs from the "
                 "faster way's aggregate steps/s",
    }
    result["peak_rss_mb"] = peak_rss_mb()
    result["total_s"] = time.perf_counter() - start
    say("done")
    _report_gpu(result, out)
    return result


def _report_gpu(result: dict, out: Path | None) -> None:
    """The figures, then one line per target, on stdout; the JSON to `out`."""
    flat = {k: v for k, v in result.items() if not isinstance(v, dict)}
    report(flat, None)
    print()
    width = max(len(k) for k in result["targets"])
    for name, t in result["targets"].items():
        verdict = "pass" if t["pass"] else "FAIL"
        print(f"{name:<{width}}  {verdict}  {t['figure']:,.3f} (bound {t['bound']:,.3f}: "
              f"{t['rule']})")
    if "attention_float64" in result:
        attention_table(result["attention_float64"])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")


HELP = "a GPU box's figures and targets in one run of at most 9 minutes"


def add_gpu_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench gpu` and its options."""
    p = bench_parser(sub, "gpu", HELP, __doc__, run_gpu, "benchmarks/gpu-<host>.json")
    add_model_options(p)
    add_decode_options(p, "the CPUs less one", default=False)
    p.add_argument("--workdir", help="work folder: generated videos (default "
                                     "benchmarks/.gpu-work)")
    add_training_options(p, epochs=50)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, on any device (a CPU included)")
    return p


def run_gpu(a: argparse.Namespace) -> None:
    """`tpwng bench gpu`: the GPU box's figures and targets in one run."""
    import dataclasses

    from tpwng.device import resolve_device
    from tpwng.errors import UserError

    spec = clip_spec(a)
    if not a.quick and resolve_device("auto").type != "cuda":
        raise UserError("no usable CUDA device here: the full run measures a GPU box; "
                        "--quick runs every phase at tiny sizes on this machine")
    sizes = QUICK_SIZES if a.quick else GpuBenchSizes()
    if a.batch_size is not None:
        sizes = dataclasses.replace(sizes, batch_size=a.batch_size)
    bench_gpu(Path(a.workdir or "benchmarks/.gpu-work"),
              Path(a.out or f"benchmarks/gpu-{host()}.json"), spec, sizes,
              decode_workers="auto" if a.workers is None else a.workers,
              train_videos=a.n_videos, train_epochs=a.epochs, train_batch=a.train_batch)
