"""`tpwng bench train`: seconds per training epoch on a UCF-sized set of random features.

Also the split of a step (text side / temporal module / rest) and the temporal module's
GFLOP/s against the matmul rate of its own matrix products (`tpwng.bench.timing`); and, for
`tpwng bench gpu`, several seeds' training processes sharing one device (`bench_seeds`).
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from tpwng.bench.common import (
    add_model_options,
    add_training_options,
    bench_parser,
    clip_spec,
    host,
    peak_rss_mb,
    report,
    sync,
)
from tpwng.bench.timing import step_split

if TYPE_CHECKING:
    import torch

    from tpwng.features.clip_backbone import ClipSpec


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
    import numpy as np
    import torch

    from tpwng.data.sequences import TrainVideo, cap_length
    from tpwng.device import resolve_device
    from tpwng.features.clip_backbone import load_clip
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
        xn, mn, xa, ma, ya = step_batch(setup, p, up, s)
        train_step(xn, mn, xa, ma, ya)
        sync(dev)
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
    (`PartClock`): the text side (prompt and CLIP text encoder, forward + backward), the
    temporal module (forward + backward), and the rest (features, NVP, similarities, PLG,
    losses, classifier, optimiser). The temporal module's rate counts the FLOPs of its matrix
    products (`temporal_gemms`); the same products run alone after each step give the matmul
    rate it is held to (their ratio: the share of the module's time spent in matmuls).
    """
    import numpy as np
    import torch

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
        result |= step_split(model, t.step, steps, dev)
    result["peak_rss_mb"] = peak_rss_mb()
    report(result, out)
    return result


def _seed_worker(setup: dict, steps: int, phases: int, go, report) -> None:
    """In a fresh process: one seed's training set-up; then per phase, once ``go`` is set,
    ``steps`` steps (waiting for the device after the last), reported as (seed, seconds)."""
    import torch

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
                    t.train_step(*step_batch(t, plan, up, s))
                done += min(plan.steps, steps - done)
            sync(t.device)
            report.put(("done", seed, time.perf_counter() - t0))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        report.put(("error", seed, f"{type(exc).__name__}: {exc}"))
        raise


def step_batch(t: SimpleNamespace, plan, up, s: int) -> tuple[torch.Tensor, ...]:
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


HELP = "seconds per training epoch on a UCF-sized set of random features"


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench train` and its options."""
    p = bench_parser(sub, "train", HELP, __doc__, run_train, "benchmarks/train-<host>.json")
    add_model_options(p)
    add_training_options(p, epochs=2)
    p.add_argument("--steps", type=int, help="time this many steps, extrapolate the epoch")
    return p


def run_train(a: argparse.Namespace) -> None:
    """`tpwng bench train`, with the heap settings of `tpwng train`."""
    from tpwng.heap import keep_freed_memory

    spec = clip_spec(a)  # loads torch before the heap settings, as it always has
    keep_freed_memory()  # as `tpwng train`
    out = Path(a.out or f"benchmarks/train-{host()}.json")
    bench_train(a.n_videos or 1610, spec, a.epochs or 2, a.train_batch or 32, out=out,
                max_steps=a.steps)
