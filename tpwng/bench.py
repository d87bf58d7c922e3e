"""Benchmarks that print figures: extraction rates, training speed, memory and live latency.

`tpwng bench extract` measures in one run, on given videos or a generated set: the decode-only
rate with the same workers, the encoder-only rate at the configured batch and precision, the
end-to-end rate of the extraction stage, and a peer-style baseline (every frame decoded, each
sampled frame preprocessed through PIL one at a time, the encoder run per video).
`tpwng bench train` measures seconds per epoch on a UCF-sized set of random features, the split
of a step (text side / temporal module / rest) and the temporal module's GFLOP/s against the
matmul rate of its own matrix products.
`tpwng bench memory` compares the peak memory of extracting a one-hour and a one-minute video.
`tpwng bench live` measures the per-snippet latency of live scoring (`tpwng.evaluate.live`): a
video served in real time over loopback HTTP by ffmpeg (without ffmpeg: the file read through
PyAV at its frame rate), scored with the demo model on the tiny CLIP and on ViT-B/16.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import resource
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.extract import (
    DecodeStream,
    ExtractionSettings,
    ImageEncoder,
    decode_workers_for,
    extract,
    plan_jobs,
)
from tpwng.features.video import probe_video


class TrivialVisual(torch.nn.Module):
    """A stand-in image tower that costs almost nothing: average colour -> 512-d."""

    output_dim = 512

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


class TrivialCLIP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = TrivialVisual()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rows(videos: list[Path]) -> list[SimpleNamespace]:
    rows = []
    for p in videos:
        info = probe_video(p)
        rows.append(SimpleNamespace(video_id=p.stem, path=str(p), frames=info.frames,
                                    fps=info.fps, decoder=info.decoder))
    return rows


def decode_rate(rows, settings: ExtractionSettings, workers: int,
                budget_s: float = math.inf) -> dict:
    """Video frames/s of extraction's decoding alone (the sampled frames, through its decoding
    processes: `workers` of them, 0 = this process's), stopped after `budget_s`; a video
    counts the frames of the snippets decoded so far."""
    from torch.utils.data import DataLoader

    jobs = plan_jobs(rows, settings)
    loader = DataLoader(DecodeStream(jobs, settings.decode_chunk), batch_size=None,
                        num_workers=workers, prefetch_factor=4 if workers else None)
    seen = [0] * len(jobs)
    t0 = time.perf_counter()
    batches = iter(loader)
    for j, _, frames in batches:
        seen[j] += len(frames)
        if time.perf_counter() - t0 > budget_s:
            break
    seconds = time.perf_counter() - t0
    del batches  # stops the workers
    frames = sum(min(n * settings.stride, job.frames) for n, job in zip(seen, jobs, strict=True))
    return {"fps": frames / seconds, "frames": frames, "seconds": seconds}


def encode_only(encoder: ImageEncoder, settings: ExtractionSettings, seconds: float = 5.0) -> float:
    """Images per second through preprocessing-free encoding at the configured batch size
    (results left on the device; one synchronisation at the end)."""
    per = max(1, settings.batch_size // encoder.crops)
    x = torch.randn(per, encoder.crops, 3, 224, 224, device=encoder.device, dtype=encoder.dtype)
    encoder.encode(x)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        encoder.embed(x)
        n += per * encoder.crops
    _sync(encoder.device)
    return n / (time.perf_counter() - t0)


def peer_baseline(rows, spec: ClipSpec, settings: ExtractionSettings,
                  budget_s: float | None = None) -> float:
    """Video frames/s of the common script style: decode every frame, PIL per frame, the
    float32 model run per video. With ``budget_s``: stops after the video that ends past it."""
    import decord
    import open_clip
    from PIL import Image

    from tpwng.device import resolve_device

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
        _sync(device)
        total += r.frames
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    return total / (time.perf_counter() - t0)


def bench_extract(videos: list[Path], spec: ClipSpec, settings: ExtractionSettings,
                  out: Path | None, baseline: bool = True) -> dict:
    rows = _rows(videos)
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
    _report(result, out)
    return result


Gemm = tuple[str, tuple[int, int], tuple[int, int], int, bool, bool]


def temporal_gemms(temporal: torch.nn.Module, batch: int, length: int,
                   input_grad: bool = False) -> list[Gemm]:
    """The matrix products of one TCSAL forward + backward on ``[batch, length, D]``.

    ``(name, a_shape, b_shape, batch_count, a_transposed, b_transposed)`` per product
    (``batch_count`` 0 for ``mm``; a transposed operand is a transposed view, as autograd passes
    it): per layer the QKV, output and feed-forward projections (forward, input gradient, weight
    gradient) and QKᵀ and AV (forward and two gradients each). The first layer's input gradient
    is counted only with ``input_grad`` (the training step's features need none). The span gates
    ``cᵀx`` (``[D, heads]``, under 0.3 % of the work) are left out.
    """
    n = batch * length
    plan: list[Gemm] = []
    for i, layer in enumerate(temporal.layers):
        attn = layer.attn
        d, heads, dh = attn.dim, attn.heads, attn.head_dim
        ff = layer.ff[0].out_features
        bh, t = batch * heads, length
        for name, k, m, dx in (("qkv", d, 3 * d, input_grad or i > 0), ("out", d, d, True),
                               ("ff1", d, ff, True), ("ff2", ff, d, True)):
            plan.append((f"{name} fwd", (n, k), (k, m), 0, False, True))  # x @ Wᵀ
            if dx:
                plan.append((f"{name} dx", (n, m), (m, k), 0, False, False))  # dy @ W
            plan.append((f"{name} dw", (m, n), (n, k), 0, True, False))  # dyᵀ @ x
        plan += [("qk fwd", (t, dh), (dh, t), bh, False, True),  # Q Kᵀ
                 ("av fwd", (t, t), (t, dh), bh, False, False),  # P V
                 ("av dp", (t, dh), (dh, t), bh, False, True),  # dO Vᵀ
                 ("av dv", (t, t), (t, dh), bh, True, False),  # Pᵀ dO
                 ("qk dq", (t, t), (t, dh), bh, False, False),  # dS K
                 ("qk dk", (t, t), (t, dh), bh, True, False)]  # dSᵀ Q
    return plan


def gemm_flops(plan: list[Gemm]) -> float:
    """Floating-point operations (2 per multiply-add) of the products in ``plan``."""
    return float(sum(2 * a[0] * a[1] * b[1] * max(1, nb) for _, a, b, nb, _, _ in plan))


def time_gemms(plan: list[Gemm], device: torch.device) -> float:
    """Seconds for torch to run every product of ``plan`` once (fresh outputs, as autograd)."""

    def operand(shape: tuple[int, int], nb: int, transposed: bool) -> torch.Tensor:
        lead = (nb,) if nb else ()
        if transposed:
            return torch.randn(*lead, shape[1], shape[0], device=device).transpose(-1, -2)
        return torch.randn(*lead, *shape, device=device)

    ops = {key: (operand(key[0], key[2], key[3]), operand(key[1], key[2], key[4]))
           for key in {(a, b, nb, at, bt) for _, a, b, nb, at, bt in plan}}
    for x, y in ops.values():  # warm-up
        torch.matmul(x, y)
    _sync(device)
    t0 = time.perf_counter()
    for _, *key in plan:
        x, y = ops[tuple(key)]
        torch.matmul(x, y)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(n_videos: int, spec: ClipSpec, epochs: int, batch: int, seed: int = 0,
                out: Path | None = None, device: str = "auto",
                max_steps: int | None = None, split_steps: int = 3,
                budget_s: float | None = None, max_len: int = 256) -> dict:
    """Seconds per epoch of TPWNG on random features with UCF-Crime-like lengths.

    With `max_steps`, only the first steps of one epoch are timed (after one warm-up step) and
    the epoch time is extrapolated from the median step; the result says so. With
    ``budget_s``, no epoch starts once that many seconds of epochs have run; the time of all
    `epochs` is then extrapolated from the median epoch (``epochs_extrapolated``). Videos are
    cut to `max_len` snippets, as training cuts them (``train.max_seq_len``).

    The split of a step (``split_steps`` more batches, medians) is timed inside the step
    (`_PartClock`): the text side (prompt and CLIP text encoder, forward + backward), the
    temporal module (forward + backward), and the rest (features, NVP, similarities, PLG,
    losses, classifier, optimiser). The temporal module's rate counts the FLOPs of its matrix
    products (`temporal_gemms`); the same products run alone after each step give the matmul
    rate it is held to (their ratio: the share of the module's time spent in matmuls).
    """
    from tpwng.data.sequences import TrainVideo, cap_length
    from tpwng.device import resolve_device
    from tpwng.model.tpwng import TPWNG, ModelConfig
    from tpwng.train.loop import (
        batch_features,
        class_targets,
        feature_stats,
        optimisation_step,
        training_autocast,
    )

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # UCF-Crime: 13.8 M frames over 1,900 videos, lengths spread over two orders of magnitude
    snippets = np.clip(rng.lognormal(mean=np.log(300), sigma=1.0, size=n_videos), 8, 6000)
    classes = ["normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion",
               "fighting", "road accidents", "robbery", "shooting", "shoplifting", "stealing",
               "vandalism"]
    videos = []
    for i, s in enumerate(snippets.astype(int)):
        c = "normal" if i % 2 == 0 else classes[1 + (i // 2) % 13]
        f = rng.normal(size=(s, 1, 512)).astype(np.float16)
        videos.append(TrainVideo(f"v{i}", cap_length(f, max_len), [c], s * 16, s))
    dev = resolve_device(device)
    clip_model, _ = load_clip(spec)
    model = TPWNG(clip_model, classes, ModelConfig(), dim=512)
    model.set_feature_stats(*feature_stats(videos[:200]))
    model = model.to(dev)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3, weight_decay=0.005)
    autocast = training_autocast("auto", dev)  # as training: bf16 on CUDA, float32 on the CPU
    normal = [v for v in videos if v.normal]
    anomalous = [v for v in videos if not v.normal]
    from tpwng.data.sequences import epoch_batches

    def step(idx_n: np.ndarray, idx_a: np.ndarray) -> torch.Tensor:
        """One training step; the mask ``[B, T]`` its temporal module saw."""
        xn, mn = batch_features(normal, idx_n, rng, dev)
        xa, ma = batch_features(anomalous, idx_a, rng, dev)
        ya = class_targets(anomalous, idx_a, classes, dev)
        optimisation_step(model, opt, autocast, xn, mn, xa, ma, ya)
        _sync(dev)
        T = max(mn.shape[1], ma.shape[1])
        pad = [torch.nn.functional.pad(m, (0, T - m.shape[1])) for m in (mn, ma)]
        return torch.cat(pad)

    result = {"host": socket.gethostname(), "device": str(dev), "model": spec.model,
              "videos": n_videos, "batch": f"{batch}+{batch}", "max_len": max_len,
              "torch_threads": torch.get_num_threads(),
              "attention_impl": getattr(model.temporal, "attention_impl", "n/a")}
    batches = epoch_batches(len(normal), len(anomalous), batch, batch, rng)
    result["steps_per_epoch"] = len(batches)
    step(*batches[0])  # warm-up
    if max_steps:
        times = []
        for idx_n, idx_a in batches[1 : 1 + max_steps]:
            t0 = time.perf_counter()
            step(idx_n, idx_a)
            times.append(time.perf_counter() - t0)
        result |= {"steps_timed": len(times),
                   "seconds_per_step": float(np.median(times)),
                   "seconds_per_epoch_extrapolated": float(np.median(times)) * len(batches)}
    else:
        times = []
        for _ in range(epochs):
            if budget_s is not None and times and sum(times) > budget_s:
                break
            t0 = time.perf_counter()
            for idx_n, idx_a in epoch_batches(len(normal), len(anomalous), batch, batch, rng):
                step(idx_n, idx_a)
            times.append(time.perf_counter() - t0)
        median = float(np.median(times))
        result |= {"epochs_timed": len(times), "seconds_per_epoch": median,
                   "all_epochs": times, "epochs_asked": epochs,
                   "epochs_extrapolated": epochs - len(times),
                   "seconds_all_epochs": sum(times) + median * (epochs - len(times))}
    if split_steps and hasattr(model.temporal, "layers"):
        result |= _step_split(model, step, batches[1 : 1 + split_steps], dev)
    result["peak_rss_mb"] = peak_rss_mb()
    _report(result, out)
    return result


class _PartClock:
    """Forward and backward seconds of one part of a training step, timed inside the step.

    Forward: between pre- and post-forward hooks of ``modules``. Backward: from the moment the
    gradient of the last module's output is ready to the moment the last of ``params`` has its
    gradient accumulated (the CPU engine runs the part's backward in one stretch: its nodes are
    newer than those of everything it depends on)."""

    def __init__(self, modules: list[torch.nn.Module], params: list[torch.Tensor],
                 device: torch.device) -> None:
        self.device = device
        self.handles = []
        for m in modules:
            self.handles += [m.register_forward_pre_hook(self._pre),
                             m.register_forward_hook(self._post)]
        self.last = modules[-1]
        self.handles += [p.register_post_accumulate_grad_hook(self._accumulated)
                         for p in params if p.requires_grad]
        self.reset()

    def reset(self) -> None:
        self.forward = 0.0
        self.grad_start: float | None = None
        self.grad_end: float | None = None

    @property
    def backward(self) -> float:
        return self.grad_end - self.grad_start

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def _pre(self, module, args) -> None:
        self._t0 = self._now()

    def _post(self, module, args, out) -> None:
        self.forward += self._now() - self._t0
        if module is self.last and out.requires_grad:
            out.register_hook(self._grad_ready)

    def _grad_ready(self, grad: torch.Tensor) -> None:
        t = self._now()
        self.grad_start = t if self.grad_start is None else min(self.grad_start, t)

    def _accumulated(self, param: torch.Tensor) -> None:
        t = self._now()
        self.grad_end = t if self.grad_end is None else max(self.grad_end, t)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _step_split(model, step, batches, dev: torch.device) -> dict:
    """Medians over ``batches`` of one step's time, its text side and temporal module (timed
    inside the step by `_PartClock`), and the temporal module's matrix products run alone
    right after; see `bench_train`."""
    text = _PartClock([model.prompt, model.text_encoder],
                      [model.prompt.ctx, *model.text_encoder.parameters()], dev)
    temporal = _PartClock([model.temporal], list(model.temporal.parameters()), dev)
    rows = []
    try:
        for idx_n, idx_a in batches:
            text.reset()
            temporal.reset()
            t0 = time.perf_counter()
            mask = step(idx_n, idx_a)
            total = time.perf_counter() - t0
            plan = temporal_gemms(model.temporal, *mask.shape)
            rows.append((total, text.forward + text.backward, temporal.forward,
                         temporal.backward, time_gemms(plan, dev), gemm_flops(plan),
                         mask.shape[1]))
    finally:
        text.remove()
        temporal.remove()
    cols = (float(np.median(c)) for c in zip(*rows, strict=True))
    total, text_s, fwd, bwd, mm, flops, length = cols
    temporal_s = fwd + bwd
    ratios = [r[4] / (r[2] + r[3]) for r in rows]  # per round: matmul time / module time
    return {
        "split_steps": len(rows), "split_length": int(length),
        "split_step_s": total, "split_text_s": text_s, "split_temporal_s": temporal_s,
        "split_temporal_forward_s": fwd, "split_temporal_backward_s": bwd,
        "split_rest_s": total - text_s - temporal_s,
        "temporal_gflop": flops / 1e9,
        "temporal_gflop_per_s": flops / temporal_s / 1e9,
        "matmul_s": mm, "matmul_gflop_per_s": flops / mm / 1e9,
        "temporal_to_matmul_ratio": float(np.median(ratios)),
    }


def _moving_pattern(n: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Cheap frames for long test videos: a blocky image drifting across the screen.

    16x16 blocks keep the H.264 stream small (an hour of noise would be gigabytes).
    """
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (-(-height // 16), -(-width * 2 // 16), 3), dtype=np.uint8)
    base = np.kron(cells, np.ones((16, 16, 1), np.uint8))[:height, : width * 2]
    for t in range(n):
        off = t % width
        yield base[:, off : off + width]


def long_video(path: Path, seconds: float, fps: float = 25.0, width: int = 320,
               height: int = 240, seed: int = 0) -> Path:
    """A generated H.264 video of the given length (kept for later runs)."""
    from tpwng.data.synthetic import SyntheticSpec, write_video

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSpec(fps=fps, width=width, height=height)
        print(f"writing {path} ({seconds:g} s)", file=sys.stderr)
        write_video(path, _moving_pattern(round(seconds * fps), width, height, seed), spec)
    return path


def _rss_child(video: str, settings: ExtractionSettings, store: str) -> None:
    """In a fresh process: extract one video with the trivial encoder."""
    rows = _rows([Path(video)])
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
    _report(result, out)
    return result


LIVE_CLASSES = ["normal", "explosion", "fighting", "robbery", "vandalism"]  # the demo's


def live_scorer(spec: ClipSpec, stride: int = 16, classes: list[str] = LIVE_CLASSES):
    """A `Scorer` of the demo model configuration (``ModelConfig()``, random TPWNG weights) on
    the image tower of ``spec``: what a trained checkpoint costs to run, not what it scores."""
    from tpwng.evaluate.score_video import Scorer
    from tpwng.model.tpwng import TPWNG, ModelConfig

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a process listens on the loopback TCP port (from /proc: a test connection
    would take ffmpeg's only client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


@contextlib.contextmanager
def loopback_server(video: Path, port: int, *output_args: str, ffmpeg: str = "ffmpeg",
                    wait: float = 10.0) -> Iterator:
    """ffmpeg serving ``video`` in real time (``-re``) to one HTTP client on 127.0.0.1:`port`
    as MPEG-TS (stream copy; ``output_args`` before the output, e.g. ``-t 2``); the process,
    once it listens (a RuntimeError if it exits or does not listen within `wait` s)."""
    import subprocess

    proc = subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-i",
                             str(video), *output_args, "-c", "copy", "-f", "mpegts",
                             "-listen", "1", f"http://127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + wait
        while not listening(port):
            if proc.poll() is not None:
                raise RuntimeError(f"ffmpeg exited ({proc.returncode}) before listening on "
                                   f"port {port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ffmpeg did not listen on port {port} within {wait:g} s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _live_run(scorer, video: Path, ffmpeg: str | None) -> tuple[list[float], float]:
    """Per-snippet latencies of one live run of ``video`` and its wall time."""
    import tempfile

    from tpwng.evaluate.live import LiveOptions, score_live
    from tpwng.evaluate.score_video import ScoreOptions

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

    from tpwng.evaluate.live import scoring_threads

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
    _report(result, out)
    return result


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
    train_s: float = 150.0  # at most; the time left before `total_s` if less
    total_s: float = 470.0


# Tiny sizes for a CPU: every phase of the full run, end to end, in well under a minute.
QUICK_SIZES = GpuBenchSizes(distinct=2, frames=64, decode_frames=384, batch_size=16,
                            one_process_s=0.5, all_processes_s=1.0, encoder_s=0.5,
                            end_to_end_s=1.0, peer_s=0.2, train_videos=4, train_epochs=2,
                            train_batch=2, train_max_len=32, train_s=2.0, total_s=60.0)

# The GPU box's targets: figure key, comparison, bound (a number, or the key and factor of one).
GPU_TARGETS = {
    "centre_crop_vs_decode": ("end_to_end_center_fps", ">=", ("decode_all_fps", 0.85)),
    "tencrop_vs_encoder": ("end_to_end_tencrop_crops_per_s", ">=",
                           ("encoder_images_per_s", 0.85)),
    "speedup_over_peer": ("speedup_over_peer", ">=", 15.0),
    "train_50_epochs": ("train_seconds_all_epochs", "<", 120.0),
}


def _write_pattern_video(job: tuple[Path, int, int]) -> None:
    """In a worker process: one generated 320x240 video at 25 fps (path, frames, seed)."""
    path, frames, seed = job
    long_video(path, frames / 25.0, seed=seed)


def pattern_videos(workdir: Path, count: int, frames: int) -> list[Path]:
    """`count` distinct 320x240 H.264 videos of `frames` frames in `workdir`, written in
    parallel processes the first time and kept."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    paths = [workdir / f"pattern-{frames}f-{i:02d}.mp4" for i in range(count)]
    todo = [(p, frames, i) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"writing {len(todo)} videos of {frames} frames in {workdir}", file=sys.stderr)
        # fork: the workers need no fresh interpreter (nothing has touched CUDA yet)
        with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1),
                                 mp_context=mp.get_context("fork")) as pool:
            list(pool.map(_write_pattern_video, todo))
    return paths


def repeated_rows(rows: list, frames: int) -> list[SimpleNamespace]:
    """`rows` cycled, each repeat under its own video id, until they hold `frames` frames."""
    out: list[SimpleNamespace] = []
    total = 0
    while total < frames:
        r = rows[len(out) % len(rows)]
        out.append(SimpleNamespace(**{**vars(r), "video_id": f"{r.video_id}-{len(out)}"}))
        total += r.frames
    return out


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
        ok = value >= limit if op == ">=" else value < limit
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

    from tpwng.device import resolve_device

    start = time.perf_counter()

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {what}", file=sys.stderr, flush=True)

    workdir = Path(workdir)
    paths = pattern_videos(workdir, sizes.distinct, sizes.frames)
    distinct = _rows(paths)
    device = resolve_device("auto")
    workers = decode_workers_for(decode_workers)
    settings = ExtractionSettings(batch_size=sizes.batch_size, decode_workers=workers)
    result: dict = {
        "host": socket.gethostname(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "device": str(device),
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
    result |= {"decode_1proc_fps": one["fps"], "decode_1proc_frames": one["frames"]}
    say(f"decode, 1 process: {one['fps']:,.0f} frames/s; with {workers} processes "
        f"({sizes.all_processes_s:g} s)")
    decode_rows = repeated_rows(distinct, sizes.decode_frames)
    every = decode_rate(decode_rows, settings, workers, sizes.all_processes_s)
    result |= {"decode_all_fps": every["fps"], "decode_all_processes": max(1, workers),
               "decode_all_frames": every["frames"]}
    say(f"decode, {workers} processes: {every['fps']:,.0f} frames/s; encoder "
        f"({sizes.encoder_s:g} s)")
    model, _ = load_clip(spec)
    encoder = ImageEncoder(model, settings)
    images = encode_only(encoder, settings, sizes.encoder_s)
    result |= {"precision": str(encoder.dtype).removeprefix("torch."),
               "encoder_images_per_s": images}
    del encoder
    say(f"encoder: {images:,.0f} images/s; extraction end to end")
    for crop_mode in ("center", "tencrop"):
        crops = 10 if crop_mode == "tencrop" else 1
        ceiling = min(every["fps"], images * settings.stride / crops)
        rows = repeated_rows(distinct, int(ceiling * sizes.end_to_end_s))
        run = ExtractionSettings(batch_size=sizes.batch_size, decode_workers=workers,
                                 crop_mode=crop_mode)
        store = workdir / f".bench-{crop_mode}.h5"
        stats = extract(rows, store, spec, run, dataset="bench", progress=False,
                        clip_model=model)
        store.unlink(missing_ok=True)
        fps = stats["video_frames"] / stats["seconds"]
        result |= {f"end_to_end_{crop_mode}_fps": fps,
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
    epochs = train_epochs or sizes.train_epochs
    budget = max(1.0, min(sizes.train_s, sizes.total_s - (time.perf_counter() - start) - 20))
    say(f"peer: {peer:,.0f} frames/s; training, {epochs} epochs (budget {budget:.0f} s)")
    with contextlib.redirect_stdout(sys.stderr):
        train = bench_train(train_videos or sizes.train_videos, spec, epochs,
                            train_batch or sizes.train_batch, split_steps=0, budget_s=budget,
                            max_len=sizes.train_max_len)
    timed, rest = train["epochs_timed"], train["epochs_extrapolated"]
    result |= {
        "train_videos": train["videos"], "train_batch": train["batch"],
        "train_max_len": train["max_len"],
        "train_steps_per_epoch": train["steps_per_epoch"],
        "train_epochs_timed": timed, "train_seconds_per_epoch": train["seconds_per_epoch"],
        "train_seconds_all_epochs": train["seconds_all_epochs"],
        "train_timed": (f"{timed} of {epochs} epochs timed (every step, after one warm-up "
                        "step)" + (f"; the other {rest} extrapolated from their median"
                                   if rest else "")),
    }
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
    }
    result["peak_rss_mb"] = peak_rss_mb()
    result["total_s"] = time.perf_counter() - start
    say("done")
    _report_gpu(result, out)
    return result


def _report_gpu(result: dict, out: Path | None) -> None:
    """The figures, then one line per target, on stdout; the JSON to `out`."""
    flat = {k: v for k, v in result.items() if not isinstance(v, dict)}
    _report(flat, None)
    print()
    width = max(len(k) for k in result["targets"])
    for name, t in result["targets"].items():
        verdict = "pass" if t["pass"] else "FAIL"
        print(f"{name:<{width}}  {verdict}  {t['figure']:,.3f} (bound {t['bound']:,.3f}: "
              f"{t['rule']})")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")


def _report(result: dict, out: Path | None) -> None:
    width = max(len(k) for k in result)
    for k, v in result.items():
        v = f"{v:,.3f}" if isinstance(v, float) else v
        print(f"{k:<{width}}  {v}", file=sys.stdout)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")
