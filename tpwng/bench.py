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


UCF_CLASSES = ["normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion",
               "fighting", "road accidents", "robbery", "shooting", "shoplifting", "stealing",
               "vandalism"]


def training_setup(n_videos: int, spec: ClipSpec, batch: int, seed: int = 0,
                   device: str = "auto", max_len: int = 256, crops: int = 1,
                   epoch_over: str = "crops", compile: str = "none") -> SimpleNamespace:
    """What `tpwng.train.loop.train` runs, on random features with UCF-Crime-like lengths:
    the model, its step (`TrainingStep`), the batch sources (resident on the device when they
    fit) and a plan-maker for epochs (``plan()``); ``step(plan, indices, s)`` runs step ``s``
    and waits for the device, returning the mask ``[B, T]`` its temporal module saw."""
    from tpwng.data.sequences import TrainVideo, cap_length
    from tpwng.device import resolve_device
    from tpwng.model.tpwng import TPWNG, ModelConfig
    from tpwng.train.batches import feature_sources, plan_epoch
    from tpwng.train.loop import (
        TrainingStep,
        compile_mode,
        epoch_items,
        feature_stats,
        make_optimizer,
    )

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # UCF-Crime: 13.8 M frames over 1,900 videos, lengths spread over two orders of magnitude
    snippets = np.clip(rng.lognormal(mean=np.log(300), sigma=1.0, size=n_videos), 8, 6000)
    videos = []
    for i, s in enumerate(snippets.astype(int)):
        c = "normal" if i % 2 == 0 else UCF_CLASSES[1 + (i // 2) % 13]
        if crops == 1:
            f = cap_length(rng.normal(size=(s, 1, 512)).astype(np.float16), max_len)
        else:  # random values time as any others: drawn at the capped length
            f = rng.standard_normal((min(s, max_len), crops, 512), dtype=np.float32)
            f = f.astype(np.float16)
        videos.append(TrainVideo(f"v{i}", f, [c], s * 16, s))
    dev = resolve_device(device)
    clip_model, _ = load_clip(spec)
    model = TPWNG(clip_model, UCF_CLASSES, ModelConfig(), dim=512)
    model.set_feature_stats(*feature_stats(videos[:200]))
    model = model.to(dev)
    opt = make_optimizer(model.trainable_parameters(), 1e-3, 0.005, dev)
    compiled = compile_mode(compile, dev)
    # as training: bf16 autocast on CUDA, float32 on the CPU
    train_step = TrainingStep(model, opt, "auto", dev, compiled)
    normal = [v for v in videos if v.normal]
    anomalous = [v for v in videos if not v.normal]
    src_n, src_a = feature_sources([normal, anomalous], UCF_CLASSES, dev, "auto")
    items = (*epoch_items(normal, epoch_over), *epoch_items(anomalous, epoch_over))
    pad_to = max_len if compiled != "none" else None

    def plan():
        p = plan_epoch(normal, anomalous, items, batch, batch, rng, pad_to)
        return p, (src_n.upload(p.idx_n), src_n.upload(p.crop_n), src_a.upload(p.idx_a),
                   src_a.upload(p.crop_a))

    def step(p, up, s: int) -> torch.Tensor:
        xn, mn, xa, ma, ya = _step_batch(setup, p, up, s)
        train_step(xn, mn, xa, ma, ya)
        _sync(dev)
        T = max(mn.shape[1], ma.shape[1])
        return torch.cat([torch.nn.functional.pad(m, (0, T - m.shape[1])) for m in (mn, ma)])

    setup = SimpleNamespace(model=model, device=dev, train_step=train_step, plan=plan,
                            step=step, sources=(src_n, src_a), compile=compiled,
                            fused_adam=bool(opt.defaults.get("fused")))
    return setup


def bench_train(n_videos: int, spec: ClipSpec, epochs: int, batch: int, seed: int = 0,
                out: Path | None = None, device: str = "auto",
                max_steps: int | None = None, split_steps: int = 3,
                budget_s: float | None = None, max_len: int = 256, crops: int = 1,
                epoch_over: str = "crops", compile: str = "none") -> dict:
    """Seconds per epoch of TPWNG on random features with UCF-Crime-like lengths
    (`training_setup`: the training loop's own step, batch sources and epochs).

    With `max_steps`, only the first steps of one epoch are timed (after one warm-up step) and
    the epoch time is extrapolated from the median step; the result says so. With
    ``budget_s``, no epoch starts once that many seconds of epochs have run; the time of all
    `epochs` is then extrapolated from the median epoch (``epochs_extrapolated``). Videos are
    cut to `max_len` snippets, as training cuts them (``train.max_seq_len``); ``crops`` per
    video, an epoch over every (video, crop) pair or every video (``epoch_over``).

    The split of a step (``split_steps`` more batches, medians) is timed inside the step
    (`_PartClock`): the text side (prompt and CLIP text encoder, forward + backward), the
    temporal module (forward + backward), and the rest (features, NVP, similarities, PLG,
    losses, classifier, optimiser). The temporal module's rate counts the FLOPs of its matrix
    products (`temporal_gemms`); the same products run alone after each step give the matmul
    rate it is held to (their ratio: the share of the module's time spent in matmuls).
    """
    from tpwng.train.loop import run_epoch

    t = training_setup(n_videos, spec, batch, seed, device, max_len, crops, epoch_over,
                       compile)
    model, dev = t.model, t.device
    result = {"host": socket.gethostname(), "device": str(dev), "model": spec.model,
              "videos": n_videos, "crops": crops, "epoch_over": epoch_over,
              "batch": f"{batch}+{batch}", "max_len": max_len,
              "torch_threads": torch.get_num_threads(),
              "attention_impl": getattr(model.temporal, "attention_impl", "n/a"),
              "resident_features": t.sources[0].resident, "fused_adam": t.fused_adam,
              "compile": t.compile}
    plan, up = t.plan()
    result["steps_per_epoch"] = plan.steps
    t.step(plan, up, 0)  # warm-up
    if max_steps:
        times = []
        for s in range(1, min(plan.steps, 1 + max_steps)):
            t0 = time.perf_counter()
            t.step(plan, up, s)
            times.append(time.perf_counter() - t0)
        result |= {"steps_timed": len(times),
                   "seconds_per_step": float(np.median(times)),
                   "seconds_per_epoch_extrapolated": float(np.median(times)) * plan.steps}
    else:
        times = []
        for _ in range(epochs):
            if budget_s is not None and times and sum(times) > budget_s:
                break
            t0 = time.perf_counter()
            run_epoch(t.train_step, t.plan()[0], *t.sources)  # reads the device once, at the end
            times.append(time.perf_counter() - t0)
        median = float(np.median(times))
        result |= {"epochs_timed": len(times), "seconds_per_epoch": median,
                   "all_epochs": times, "epochs_asked": epochs,
                   "epochs_extrapolated": epochs - len(times),
                   "seconds_all_epochs": sum(times) + median * (epochs - len(times))}
    if split_steps and hasattr(model.temporal, "layers"):
        steps = [(plan, up, s) for s in range(1, min(plan.steps, 1 + split_steps))]
        result |= _step_split(model, t.step, steps, dev)
    result["peak_rss_mb"] = peak_rss_mb()
    _report(result, out)
    return result


def _seed_worker(setup: dict, steps: int, phases: int, go, report) -> None:
    """In a fresh process: one seed's training set-up; then per phase, once ``go`` is set,
    ``steps`` steps (waiting for the device after the last), reported as (seed, seconds)."""
    seed = setup["seed"]
    try:
        torch.set_num_threads(1)
        t = training_setup(**setup)
        plan, up = t.plan()
        t.step(plan, up, 0)  # warm-up
        report.put(("ready", seed, 0.0))
        for _ in range(phases):
            go.wait()
            go.clear()
            t0, done = time.perf_counter(), 0
            while done < steps:
                plan, up = t.plan()
                for s in range(min(plan.steps, steps - done)):
                    t.train_step(*_step_batch(t, plan, up, s))
                done += min(plan.steps, steps - done)
            _sync(t.device)
            report.put(("done", seed, time.perf_counter() - t0))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        report.put(("error", seed, f"{type(exc).__name__}: {exc}"))
        raise


def _step_batch(t: SimpleNamespace, plan, up, s: int) -> tuple[torch.Tensor, ...]:
    """Step ``s``'s batches (normal features and mask, anomalous features, mask, targets)."""
    xn, mn, _ = t.sources[0].batch(up[0][s], up[1][s], plan.t_n[s])
    return (xn, mn, *t.sources[1].batch(up[2][s], up[3][s], plan.t_a[s]))


def bench_seeds(n: int, steps: int, setup: dict, timeout_s: float = 600.0) -> dict:
    """``n`` training processes (seeds 0..n-1, each `training_setup` with ``setup``) sharing
    the device: ``steps`` steps of each run alone, one process after another, then all at once.

    Each process builds its set-up and takes one warm-up step before any timing; the times are
    the parent's, from releasing a process (all of them) to its (their last) report. Returns
    both walls, the aggregate steps/s of each way and the faster way's name.
    """
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")  # CUDA in the children
    report = ctx.Queue()
    gos = [ctx.Event() for _ in range(n)]
    procs = [ctx.Process(target=_seed_worker, args=(setup | {"seed": i}, steps, 2, gos[i],
                                                       report), daemon=True)
             for i in range(n)]
    deadline = time.monotonic() + timeout_s

    def wait_for(kind: str, count: int) -> dict[int, float]:
        got: dict[int, float] = {}
        while len(got) < count:
            try:
                what, seed, value = report.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"bench seeds: no {kind} report from "
                                   f"{count - len(got)} process(es) in {timeout_s:g} s") from None
            if what == "error":
                raise RuntimeError(f"bench seeds: the process of seed {seed} failed: {value}")
            got[seed] = value
        return got

    t_start = time.perf_counter()
    for p in procs:
        p.start()
    try:
        wait_for("ready", n)
        ready_s = time.perf_counter() - t_start
        alone = []
        for go in gos:
            t0 = time.perf_counter()
            go.set()
            wait_for("done", 1)
            alone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for go in gos:
            go.set()
        wait_for("done", n)
        together = time.perf_counter() - t0
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    sequential = sum(alone)
    return {"seeds": n, "seed_steps_each": steps, "seeds_ready_s": ready_s,
            "seeds_alone_s": alone, "seeds_sequential_s": sequential,
            "seeds_concurrent_s": together,
            "seeds_sequential_steps_per_s": n * steps / sequential,
            "seeds_concurrent_steps_per_s": n * steps / together,
            "seeds_concurrent_speedup": sequential / together,
            "seeds_faster": "concurrent" if together < sequential else "sequential"}


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
        for args in batches:
            text.reset()
            temporal.reset()
            t0 = time.perf_counter()
            mask = step(*args)
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
    # 50 UCF-Crime epochs over every (video, crop) pair: 12,600 steps of 32 + 32
    "train_50_epochs": ("train_seconds_all_epochs", "<=", 240.0),
    "five_seeds_50_epochs": ("seeds_five_by_50_epochs_s", "<=", 600.0),
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
        ok = {">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]
        out[name] = {"figure": value, "bound": limit, "rule": rule, "pass": bool(ok)}
    return out


ATTENTION_CHECKED = ("manual", "sdpa", "fused")


def attention_check(device: torch.device, batch: int = 8, length: int = 256, dim: int = 512,
                    layers: int = 4, span_bias: float = -2.0, seed: int = 0) -> dict:
    """TCSAL's three attention paths (`attention_impl`) in float32 and float64 on `device`,
    against the float64 ``manual`` path.

    One model (``layers`` × 4 heads, F = ``length``, R = F / 4, FFN 4 × ``dim``, dropout 0, the
    span bias ``b`` of Eq. 8 set to ``span_bias``: the ramp of Eq. 7 bites and χ reaches 0 inside
    the sequence) on random input ``batch`` × ``length`` × ``dim``, one video padded from half its
    length; forward and backward of a fixed random weighting of the valid outputs. Errors:
    ``‖y − y_ref‖ / ‖y_ref‖`` over valid outputs and, per parameter tensor,
    ``‖g − g_ref‖ / ‖g_ref‖``: the worst tensor, and the worst of the spans' ``c, b``.
    """
    import copy

    from tpwng.model.tcsal import TCSAL, soft_mask

    start = time.perf_counter()
    F, R = float(length), length / 4
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=gen, dtype=torch.float64).to(device)
    weight = torch.randn(batch, length, dim, generator=gen, dtype=torch.float64).to(device)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[min(1, batch - 1), length // 2 :] = False
    mask = mask.to(device)
    torch.manual_seed(seed)
    model = TCSAL(dim, layers=layers, heads=4, R=R, span_scale=F, ff_dim=4 * dim, dropout=0.0)
    for layer in model.layers:
        torch.nn.init.constant_(layer.attn.span.bias, span_bias)

    def run(impl: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = copy.deepcopy(model).to(device=device, dtype=dtype).train()
        m.attention_impl = impl
        y = m(x.to(dtype), mask)
        (y * weight.to(dtype))[mask].sum().backward()
        return y.detach()[mask].double(), {n: p.grad.double() for n, p in m.named_parameters()}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    y_ref, g_ref = run("manual", torch.float64)
    ref_model = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    ref_model.attention_impl = "manual"
    with torch.no_grad():
        z = ref_model.forward_with_attention(x, mask)[2][0]  # first layer's spans
    h = torch.arange(length, device=device, dtype=torch.float64)
    h = h[:, None] - h[None, :]
    pairs = (h >= 0) & mask[:, None, :, None] & mask[:, None, None, :]  # causal, both valid
    chi = soft_mask(z.unsqueeze(-1), h, R)[pairs.expand(-1, z.shape[1], -1, -1)]
    errors: dict = {}
    for dtype in (torch.float32, torch.float64):
        for impl in ATTENTION_CHECKED:
            y, grads = run(impl, dtype)
            per = {n: rel(g, g_ref[n]) for n, g in grads.items()}
            worst = max(per, key=per.get)
            errors.setdefault(str(dtype).removeprefix("torch."), {})[impl] = {
                "output": rel(y, y_ref), "param_grads": per[worst], "param_grads_worst": worst,
                "span_grads": max(e for n, e in per.items() if ".attn.span." in n),
            }
    worst64 = max(max(e["output"], e["param_grads"]) for e in errors["float64"].values())
    return {
        "shape": [batch, length, dim], "layers": layers, "heads": 4, "F": F, "R": R,
        "span_bias": span_bias, "padded": "video 1 from snippet length / 2",
        "chi_zero_fraction": (chi == 0).double().mean().item(),
        "chi_ramp_fraction": ((chi > 0) & (chi < 1)).double().mean().item(),
        "reference": f"manual, float64, on {device.type}",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "errors": errors, "float64_max_rel_err": worst64, "float64_agree": worst64 <= 1e-10,
        "seconds": time.perf_counter() - start,
    }


def _attention_table(check: dict) -> None:
    """The relative errors of `attention_check`, one line per dtype and path, on stdout."""
    b, t, d = check["shape"]
    print(f"\nattention paths vs {check['reference']} ({b} x {t} x {d}, {check['layers']} "
          f"layers, R {check['R']:g}; chi = 0 on {check['chi_zero_fraction']:.0%} of causal "
          f"pairs): relative errors")
    print(f"{'dtype':<8} {'path':<7} {'output':>9} {'params':>9} {'spans':>9}  worst tensor")
    for dtype, paths in check["errors"].items():
        for impl, e in paths.items():
            print(f"{dtype:<8} {impl:<7} {e['output']:9.1e} {e['param_grads']:9.1e} "
                  f"{e['span_grads']:9.1e}  {e['param_grads_worst']}")
    verdict = "agree" if check["float64_agree"] else "DISAGREE"
    print(f"float64 paths {verdict} to {check['float64_max_rel_err']:.1e} (bound 1e-10)")


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
    say(f"decode, 1 process: {one['fps']:,.0f} frames/s; 1 decoding process, 1 thread "
        f"({sizes.one_process_s:g} s)")
    single = decode_rate(repeated_rows(distinct, sizes.decode_frames), settings, 1,
                         sizes.one_process_s)
    result |= {"decode_single_thread_fps": single["fps"],
               "decode_single_thread_frames": single["frames"],
               "decode_ceiling_fps": single["fps"] * max(1, workers)}
    say(f"decode, 1 decoding process: {single['fps']:,.0f} frames/s; with {workers} processes "
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
                                "extraction's; decode_ceiling_fps = it x the decoding processes",
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
    _report(flat, None)
    print()
    width = max(len(k) for k in result["targets"])
    for name, t in result["targets"].items():
        verdict = "pass" if t["pass"] else "FAIL"
        print(f"{name:<{width}}  {verdict}  {t['figure']:,.3f} (bound {t['bound']:,.3f}: "
              f"{t['rule']})")
    if "attention_float64" in result:
        _attention_table(result["attention_float64"])
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
