"""Feature extraction: decord decoding -> CLIP preprocessing -> frozen image encoder -> store.

Decoding runs in worker processes (a torch DataLoader over an iterable of videos) so that it
overlaps encoding; the encoder sees batches that span video boundaries; each video is written
to the store as soon as all its snippets are encoded. Memory is bounded by the decode chunk and
the encoder batch, whatever the videos' lengths.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from tpwng.data.grid import sample_indices
from tpwng.device import encoder_dtype, resolve_device
from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.preprocess import n_crops, preprocess
from tpwng.features.provenance import extracted_provenance
from tpwng.features.store import StoreWriter
from tpwng.features.video import DECODE_TIMEOUT, read_frames

log = logging.getLogger(__name__)


@dataclass
class ExtractionSettings:
    stride: int = 16
    sample: str = "center"
    crop_mode: str = "center"
    batch_size: int = 64
    precision: str = "auto"  # auto: bf16 weights on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
    decode_workers: int | str = "auto"  # or the CPUs given (see `decode_workers_for`)
    decode_chunk: int = 32
    decode_timeout: float = 600.0  # seconds a decode worker may take for one chunk
    dtype: str = "float16"
    device: str = "auto"

    @classmethod
    def from_config(cls, cfg: dict) -> ExtractionSettings:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in cfg.items() if k in known})


@dataclass
class VideoJob:
    video_id: str
    path: str
    frames: int
    fps: float
    indices: np.ndarray = field(repr=False)
    decoder: str = "auto"  # the manifest's choice; auto: routed when opened (features.routing)


def plan_jobs(rows: Sequence, settings: ExtractionSettings) -> list[VideoJob]:
    """One job per manifest row: which frames to sample, and with which decoder (the row's
    ``decoder``; rows without one are routed when the video is opened)."""
    return [
        VideoJob(r.video_id, r.path, int(r.frames), float(r.fps),
                 sample_indices(int(r.frames), settings.stride, settings.sample),
                 getattr(r, "decoder", "auto"))
        for r in rows
    ]


class DecodeStream(IterableDataset):
    """Yields (job index, snippet offset, uint8 frames [n, H, W, 3]) for this worker's videos."""

    def __init__(self, jobs: list[VideoJob], chunk: int,
                 timeout: float | None = DECODE_TIMEOUT) -> None:
        self.jobs = jobs
        self.chunk = chunk
        self.timeout = timeout  # seconds per decoding call, enforced from outside the decoder

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for j in range(wid, len(self.jobs), nw):
            job = self.jobs[j]
            for off, frames in read_frames(job.path, job.indices, chunk=self.chunk,
                                           timeout=self.timeout, decoder=job.decoder):
                yield j, off, torch.from_numpy(frames)


def bound_heap_growth(threshold: int = 1 << 20) -> bool:
    """Have glibc serve allocations of `threshold` bytes or more with mmap (Linux only).

    By default glibc raises its mmap threshold each time a large block is freed, after which
    the per-chunk frame tensors come from the heap, which fragments: the extracting process
    then grew by 114 MB over a one-hour video. A fixed threshold returns such blocks to the
    system when freed, so memory no longer depends on the video's length.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


class ImageEncoder:
    """The frozen CLIP image tower with CLIP preprocessing, on one device and precision."""

    def __init__(self, clip_model: torch.nn.Module, settings: ExtractionSettings) -> None:
        self.device = resolve_device(settings.device)
        self.dtype = encoder_dtype(settings.precision, self.device)
        self.visual = clip_model.visual.to(self.device, self.dtype).eval()
        self.crop_mode = settings.crop_mode
        self.crops = n_crops(settings.crop_mode)

    @torch.inference_mode()
    def prepare(self, frames: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, crops, 3, 224, 224] on the device (into `out`)."""
        return preprocess(frames.to(self.device, non_blocking=True), self.crop_mode, out=out)

    def batch_buffer(self, frames: int) -> torch.Tensor:
        """A reusable float32 buffer for `frames` preprocessed frames on the device.

        Zero-filled, so that its memory is committed up front: a process's footprint is set by
        the batch size, not by how much of the batch its videos happen to fill.
        """
        return torch.zeros((frames, self.crops, 3, 224, 224), device=self.device)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed [N, crops, 3, 224, 224] -> float32 [N, crops, D] on the CPU."""
        n = x.shape[0]
        return self.visual(x.flatten(0, 1).to(self.dtype)).float().view(n, self.crops, -1).cpu()


def decode_workers_for(setting: int | str, threads: int | None = None) -> int:
    """Decoding processes for ``extraction.decode_workers``: a number as given; ``auto`` the
    CPUs the job was given (``threads``, capped by the CPUs this process may run on) less one
    for the main process."""
    if setting != "auto":
        return int(setting)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(0, min(threads or usable, usable) - 1)


def extract(rows: Sequence, out: str | Path, spec: ClipSpec, settings: ExtractionSettings,
            dataset: str = "", shard: str = "", progress: bool = True,
            clip_model: torch.nn.Module | None = None, threads: int | None = None) -> dict:
    """Embed every video of `rows` into the store `out`; return timing figures.

    ``threads`` is the CPUs the job was given (``decode_workers: auto`` uses all but one).
    `clip_model` replaces the configured model (benchmarks measure the pipeline with a trivial
    encoder); the store then records the weights as `custom`.
    """
    import time

    if not bound_heap_growth():
        log.debug("cannot set the malloc mmap threshold here; memory may grow with video length")
    if clip_model is None:
        clip_model, identity = load_clip(spec)
    else:
        identity = "custom"
    encoder = ImageEncoder(clip_model, settings)
    dim = int(clip_model.visual.output_dim)
    del clip_model
    jobs = plan_jobs(rows, settings)
    prov = extracted_provenance(spec, identity, settings, dim, dataset) | {"shard": shard}
    workers = decode_workers_for(settings.decode_workers, threads)
    routed = sum(job.decoder == "pyav" for job in jobs)
    log.info("%d videos (%d decoded in order with PyAV, the rest with decord), %d decoding "
             "processes", len(jobs), routed, workers)
    loader = DataLoader(
        DecodeStream(jobs, settings.decode_chunk, settings.decode_timeout),
        batch_size=None,
        num_workers=workers,
        # a backstop only: each decoding call (open, chunk) has its own deadline, whose error
        # names the file, so this must not fire first
        timeout=2 * settings.decode_timeout + 60 if workers > 0 else 0,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    pending: dict[int, np.ndarray] = {}
    remaining: dict[int, int] = {j: len(job.indices) for j, job in enumerate(jobs)}
    per_batch = max(1, settings.batch_size // encoder.crops)  # batch_size counts images (crops)
    buffer = encoder.batch_buffer(per_batch)  # reused: no per-batch allocation or concatenation
    batch_slots: list[tuple[int, int, int]] = []  # job, offset, count
    n_batch = 0
    total_snippets = int(sum(remaining.values()))
    t0 = time.perf_counter()
    bar = tqdm(total=total_snippets, unit="snippet", desc=f"extract {dataset} {shard}".strip(),
               disable=not progress, file=sys.stderr)

    with bar, StoreWriter(out, prov, dtype=settings.dtype) as writer:

        def flush() -> None:
            nonlocal n_batch
            if not n_batch:
                return
            emb = encoder.encode(buffer[:n_batch]).numpy()
            pos = 0
            for j, off, cnt in batch_slots:
                pending[j][off : off + cnt] = emb[pos : pos + cnt]
                pos += cnt
                remaining[j] -= cnt
                if remaining[j] == 0:
                    job = jobs[j]
                    writer.add(job.video_id, pending.pop(j), frames=job.frames, fps=job.fps,
                               crop_ids=list(range(encoder.crops)), decoder=job.decoder)
            bar.update(pos)
            batch_slots.clear()
            n_batch = 0

        for j, off, frames in loader:
            if j not in pending:
                pending[j] = np.zeros((len(jobs[j].indices), encoder.crops, dim), np.float32)
            start = 0
            while start < len(frames):
                take = min(per_batch - n_batch, len(frames) - start)
                encoder.prepare(frames[start : start + take], out=buffer[n_batch : n_batch + take])
                batch_slots.append((j, off + start, take))
                n_batch += take
                start += take
                if n_batch >= per_batch:
                    flush()
        flush()
        if pending:
            missing = [jobs[j].video_id for j in pending]
            raise RuntimeError(f"videos left incomplete after decoding: {missing}")
    seconds = time.perf_counter() - t0
    frames_total = int(sum(job.frames for job in jobs))
    return {"videos": len(jobs), "snippets": total_snippets, "video_frames": frames_total,
            "seconds": seconds, "device": str(encoder.device)}
