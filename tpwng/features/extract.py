"""Feature extraction: decord decoding -> CLIP preprocessing -> frozen image encoder -> store.

Decoding runs in worker processes (a torch DataLoader over an iterable of videos) so that it
overlaps encoding; the encoder sees batches that span video boundaries; each video is written
to the store as soon as all its snippets are encoded. Memory is bounded by the decode chunk and
the encoder batch, whatever the videos' lengths.

One decoding pool feeds one encoder per device (`EncoderLane`; ``extraction.gpus``), batches
dealt round robin. On CUDA a lane never waits on the host: frames go up and results come down
on side streams while its compute stream encodes, with events between them, and a few batches
stay in flight; the host waits only when it needs a batch's results. Batches complete in the
order they were formed, so the store does not depend on how many encoders ran. On the CPU
everything is synchronous.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from tpwng.config import schema_defaults
from tpwng.device import encoder_devices, encoder_dtype, resolve_device
from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.preprocess import n_crops, preprocess
from tpwng.features.provenance import extracted_provenance
from tpwng.features.store import StoreWriter
from tpwng.features.video import read_frames
from tpwng.grid import sample_indices
from tpwng.heap import bound_heap_growth

log = logging.getLogger(__name__)
_DEFAULTS = schema_defaults("extraction")  # every default below is the schema's


@dataclass
class ExtractionSettings:
    """What extraction reads of the ``extraction`` settings (defaults: the config schema's)."""

    stride: int = _DEFAULTS["stride"]
    sample: str = _DEFAULTS["sample"]
    crop_mode: str = _DEFAULTS["crop_mode"]
    batch_size: int = _DEFAULTS["batch_size"]  # images per encoder batch
    precision: str = _DEFAULTS["precision"]  # auto: bf16 weights on CUDA, fp32 on CPU
    decode_workers: int | str = _DEFAULTS["decode_workers"]  # see `decode_workers_for`
    decode_chunk: int = _DEFAULTS["decode_chunk"]
    decode_timeout: float = _DEFAULTS["decode_timeout"]  # seconds one decoding call may take
    dtype: str = _DEFAULTS["dtype"]
    device: str = "auto"  # not a setting (scoring and the benchmarks choose it)
    gpus: int | str = _DEFAULTS["gpus"]  # CUDA devices to encode on (`encoder_devices`)

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

    def __init__(self, jobs: list[VideoJob], chunk: int, timeout: float | None) -> None:
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



MIN_PRECISION_COSINE = 0.999  # reduced-precision features this close to float32 ones are kept
PRECISION_CHECK_FRAMES = 16  # sampled frames of the first video that the check encodes


def precision_check_frames(job: VideoJob, settings: ExtractionSettings) -> torch.Tensor:
    """Up to `PRECISION_CHECK_FRAMES` sampled frames of one video, decoded here."""
    indices = job.indices[:PRECISION_CHECK_FRAMES]
    chunks = [f for _, f in read_frames(job.path, indices, chunk=len(indices),
                                        timeout=settings.decode_timeout, decoder=job.decoder)]
    return torch.from_numpy(np.concatenate(chunks))


class ImageEncoder:
    """The frozen CLIP image tower with CLIP preprocessing, on one device and precision.

    ``device`` overrides ``settings.device``; ``copy_tower`` encodes with a copy of the tower
    (one per device when several encode), leaving ``clip_model``'s own where it is;
    ``checked`` keeps a float32 copy of a reduced-precision tower for `check_precision`.
    """

    def __init__(self, clip_model: torch.nn.Module, settings: ExtractionSettings,
                 device: str | torch.device | None = None, copy_tower: bool = False,
                 checked: bool = False) -> None:
        self.device = resolve_device(settings.device) if device is None else torch.device(device)
        self.dtype = encoder_dtype(settings.precision, self.device)
        visual = copy.deepcopy(clip_model.visual) if copy_tower else clip_model.visual
        # the float32 tower, kept until `check_precision` has compared the two
        self.float32_tower = (copy.deepcopy(visual).to(self.device, torch.float32).eval()
                              if checked and self.dtype != torch.float32 else None)
        self.visual = visual.to(self.device, self.dtype).eval()
        self.crop_mode = settings.crop_mode
        self.crops = n_crops(settings.crop_mode)

    @torch.inference_mode()
    def prepare(self, frames: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, crops, 3, 224, 224] on the device (into `out`)."""
        return preprocess(frames.to(self.device, non_blocking=True), self.crop_mode, out=out)

    def batch_buffer(self, frames: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reusable buffer for `frames` preprocessed frames on the device.

        Zero-filled, so that its memory is committed up front: a process's footprint is set by
        the batch size, not by how much of the batch its videos happen to fill.
        """
        return torch.zeros((frames, self.crops, 3, 224, 224), device=self.device, dtype=dtype)

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed [N, crops, 3, 224, 224] -> float32 [N, crops, D] on the device."""
        n = x.shape[0]
        return self.visual(x.flatten(0, 1).to(self.dtype)).float().view(n, self.crops, -1)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed [N, crops, 3, 224, 224] -> float32 [N, crops, D] on the CPU."""
        return self.embed(x).cpu()

    @torch.inference_mode()
    def check_precision(self, frames: torch.Tensor, fall_back: bool) -> dict:
        """Hold this encoder's features of uint8 ``frames`` [N, H, W, 3] against those of a
        float32 copy of its tower: the cosine of each image's pair, least and mean. Below
        `MIN_PRECISION_COSINE` with ``fall_back`` (``precision: auto``) the encoder switches to
        the float32 tower (`settle`). Float32 encoders, and those made without ``checked``, are
        not checked."""
        if self.float32_tower is None:
            return {"dtype": "float32", "checked": False}
        x = self.prepare(frames)
        ours = self.embed(x).flatten(0, 1)
        want = self.float32_tower(x.flatten(0, 1)).float()
        cos = torch.nn.functional.cosine_similarity(ours, want, dim=-1)
        out = {"dtype": str(self.dtype).removeprefix("torch."), "checked": True,
               "images": int(cos.numel()), "cosine_min": float(cos.min()),
               "cosine_mean": float(cos.mean()), "threshold": MIN_PRECISION_COSINE}
        close = out["cosine_min"] >= MIN_PRECISION_COSINE
        if not close:
            log.warning("%s features reach cosine %.5f of float32 ones (< %g): %s",
                        out["dtype"], out["cosine_min"], MIN_PRECISION_COSINE,
                        "encoding in float32" if fall_back else
                        "kept, as extraction.precision asks for them")
        if fall_back and not close:
            out["fell_back_to"] = "float32"
        self.settle(float32="fell_back_to" in out)
        return out

    def settle(self, float32: bool) -> None:
        """After the check: encode with the kept float32 tower, or free it."""
        if float32 and self.float32_tower is not None:
            self.visual, self.dtype = self.float32_tower, torch.float32
        self.float32_tower = None


Slot = tuple[int, int, int]  # job index, snippet offset, snippet count


@dataclass
class Batch:
    """One encoded batch: where its rows go, and its results once `done` has completed."""

    slots: list[Slot]
    result: torch.Tensor  # float32 [n, crops, D] on the host (pinned on CUDA)
    done: torch.cuda.Event | None = None  # None: computed synchronously
    keep: list[torch.Tensor] = field(default_factory=list)  # read by copies still in flight

    def wait(self) -> np.ndarray:
        """The results, once the copy back has completed."""
        if self.done is not None:
            self.done.synchronize()
        self.keep.clear()
        return self.result.numpy()


class EncoderLane:
    """One encoder with its batch buffers; on CUDA also its streams and pinned result buffers.

    CUDA: frames are copied up on the ``upload`` stream; preprocessed (resize, crops,
    normalisation, the cast to the encoder's precision) on the ``prep`` stream into one of
    `depth` batch buffers; encoded on the ``compute`` stream once the batch is prepared; and
    the results copied into one of `depth` pinned buffers on the ``download`` stream once the
    encode has finished. Preprocessing the next batch thus overlaps encoding this one, and the
    encoder's stream runs nothing but the encoder. A batch buffer is written again only after
    the encode that read it (its ``free`` event). Nothing here blocks the host. The arithmetic
    is the same as on one stream: the same kernels on the same values. CPU: `add`
    preprocesses and `submit` encodes, at once, in one float32 buffer.
    """

    def __init__(self, encoder: ImageEncoder, per_batch: int, dim: int, depth: int = 2) -> None:
        self.encoder = encoder
        self.cuda = encoder.device.type == "cuda"
        self.depth = depth if self.cuda else 1  # batches in flight at most
        # reused: no per-batch allocation; on CUDA in the encoder's precision
        self.buffers = [encoder.batch_buffer(per_batch, encoder.dtype if self.cuda
                                             else torch.float32) for _ in range(self.depth)]
        self.in_flight = 0
        self.count = 0
        self.turn = 0  # the batch buffer (and pinned result buffer) being filled
        self.slots: list[Slot] = []
        self.keep: list[torch.Tensor] = []
        if self.cuda:
            dev = encoder.device
            self.prep, self.compute, self.upload, self.download = (
                torch.cuda.Stream(dev) for _ in range(4))
            for stream in (self.prep, self.compute):  # weights, zeroed buffers
                stream.wait_stream(torch.cuda.current_stream(dev))
                for buffer in self.buffers:  # freed only once both are done with them
                    buffer.record_stream(stream)
            self.free: list[torch.cuda.Event | None] = [None] * self.depth
            self.results = [torch.empty((per_batch, encoder.crops, dim), pin_memory=True)
                            for _ in range(self.depth)]

    @torch.inference_mode()
    def add(self, frames: torch.Tensor, job: int, offset: int) -> None:
        """Preprocess uint8 frames [n, H, W, 3] into the next rows of the batch."""
        n = len(frames)
        out = self.buffers[self.turn][self.count : self.count + n]
        if self.cuda:
            if self.count == 0 and self.free[self.turn] is not None:
                self.prep.wait_event(self.free[self.turn])  # its last encode has read it
            with torch.cuda.stream(self.upload):
                on_device = frames.to(self.encoder.device, non_blocking=True)
                uploaded = torch.cuda.Event()
                uploaded.record(self.upload)
            self.prep.wait_event(uploaded)
            with torch.cuda.stream(self.prep):
                on_device.record_stream(self.prep)  # its memory is reused after this use
                if out.dtype == torch.float32:
                    self.encoder.prepare(on_device, out=out)
                else:  # normalised in float32, then cast: as the encoder would cast it
                    out.copy_(self.encoder.prepare(on_device))
            self.keep.append(frames)  # host memory the upload reads
        else:
            self.encoder.prepare(frames, out=out)
        self.slots.append((job, offset, n))
        self.count += n

    @torch.inference_mode()
    def submit(self) -> Batch:
        """Encode the batch (CUDA: queue it, and its copy back); the lane starts a new one.

        The caller keeps fewer than `depth` batches of this lane in flight."""
        rows = self.buffers[self.turn][: self.count]
        if self.cuda:
            prepared = torch.cuda.Event()
            prepared.record(self.prep)
            self.compute.wait_event(prepared)
            with torch.cuda.stream(self.compute):
                emb = self.encoder.embed(rows)
                encoded = torch.cuda.Event()
                encoded.record(self.compute)
            self.free[self.turn] = encoded
            self.download.wait_event(encoded)
            host = self.results[self.turn][: self.count]
            with torch.cuda.stream(self.download):
                host.copy_(emb, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.download)
            batch = Batch(self.slots, host, done, [*self.keep, emb])
        else:
            batch = Batch(self.slots, self.encoder.encode(rows))
        self.turn = (self.turn + 1) % self.depth
        self.slots, self.keep, self.count = [], [], 0
        self.in_flight += 1
        return batch


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
            clip_model: torch.nn.Module | None = None, threads: int | None = None,
            devices: Sequence[str | torch.device] | None = None) -> dict:
    """Embed every video of `rows` into the store `out`; return timing figures.

    ``threads`` is the CPUs the job was given (``decode_workers: auto`` uses all but one).
    `clip_model` replaces the configured model (benchmarks measure the pipeline with a trivial
    encoder); the store then records the weights as `custom`. ``devices`` lists the devices
    to encode on, one encoder each (default: `encoder_devices` of the settings).
    """
    import time

    if not bound_heap_growth():
        log.debug("cannot set the malloc mmap threshold here; memory may grow with video length")
    targets = ([torch.device(d) for d in devices] if devices
               else encoder_devices(settings.device, settings.gpus))
    if clip_model is None:
        clip_model, identity = load_clip(spec)
    else:
        identity = "custom"
    # copies first, so that each comes from the tower where it was, not from another device
    encoders = [ImageEncoder(clip_model, settings, d, copy_tower=True, checked=True)
                for d in targets[1:]]
    encoders.insert(0, ImageEncoder(clip_model, settings, targets[0], checked=True))
    dim = int(clip_model.visual.output_dim)
    del clip_model
    crops = encoders[0].crops
    jobs = plan_jobs(rows, settings)
    prov = extracted_provenance(spec, identity, settings, dim, dataset) | {"shard": shard}
    if encoders[0].dtype != torch.float32 and jobs:
        # reduced precision only where its features stay close to float32 ones: measured once,
        # on this shard's first frames, for every encoder of the job; recorded per shard
        # (merged views compare the dtype)
        check = encoders[0].check_precision(precision_check_frames(jobs[0], settings),
                                            settings.precision == "auto")
        for e in encoders[1:]:
            e.settle(float32="fell_back_to" in check)
        prov["shard_precision_check"] = check
    prov["encoder_dtype"] = str(encoders[0].dtype).removeprefix("torch.")
    workers = decode_workers_for(settings.decode_workers, threads)
    routed = sum(job.decoder == "pyav" for job in jobs)
    log.info("%d videos (%d decoded in order with PyAV, the rest with decord), %d decoding "
             "processes, encoding on %s", len(jobs), routed, workers,
             ", ".join(str(d) for d in targets))
    loader = DataLoader(
        DecodeStream(jobs, settings.decode_chunk, settings.decode_timeout),
        batch_size=None,
        num_workers=workers,
        # a backstop only: each decoding call (open, chunk) has its own deadline, whose error
        # names the file, so this must not fire first
        timeout=2 * settings.decode_timeout + 60 if workers > 0 else 0,
        pin_memory=any(d.type == "cuda" for d in targets),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    pending: dict[int, np.ndarray] = {}
    remaining: dict[int, int] = {j: len(job.indices) for j, job in enumerate(jobs)}
    per_batch = max(1, settings.batch_size // crops)  # batch_size counts images (crops)
    lanes = [EncoderLane(e, per_batch, dim) for e in encoders]
    in_flight: deque[tuple[EncoderLane, Batch]] = deque()  # in the order the batches formed
    turn = 0  # the lane whose batch is being filled
    total_snippets = int(sum(remaining.values()))
    t0 = time.perf_counter()
    bar = tqdm(total=total_snippets, unit="snippet", desc=f"extract {dataset} {shard}".strip(),
               disable=not progress, file=sys.stderr)

    with bar, StoreWriter(out, prov, dtype=settings.dtype) as writer:

        def complete_oldest() -> None:
            """Scatter the oldest batch's results; write the videos it completes."""
            owner, batch = in_flight.popleft()
            emb = batch.wait()
            owner.in_flight -= 1
            pos = 0
            for j, off, cnt in batch.slots:
                pending[j][off : off + cnt] = emb[pos : pos + cnt]
                pos += cnt
                remaining[j] -= cnt
                if remaining[j] == 0:
                    job = jobs[j]
                    writer.add(job.video_id, pending.pop(j), frames=job.frames, fps=job.fps,
                               crop_ids=list(range(crops)), decoder=job.decoder)
            bar.update(pos)

        def flush() -> None:
            """Submit the filling batch; the next lane in turn fills the next one."""
            nonlocal turn
            lane = lanes[turn]
            if not lane.count:
                return
            while lane.in_flight >= lane.depth:  # its oldest result buffer is reused now
                complete_oldest()
            in_flight.append((lane, lane.submit()))
            turn = (turn + 1) % len(lanes)

        for j, off, frames in loader:
            if j not in pending:
                pending[j] = np.zeros((len(jobs[j].indices), crops, dim), np.float32)
            start = 0
            while start < len(frames):
                lane = lanes[turn]
                take = min(per_batch - lane.count, len(frames) - start)
                lane.add(frames[start : start + take], j, off + start)
                start += take
                if lane.count >= per_batch:
                    flush()
        flush()
        while in_flight:
            complete_oldest()
        if pending:
            missing = [jobs[j].video_id for j in pending]
            raise RuntimeError(f"videos left incomplete after decoding: {missing}")
    seconds = time.perf_counter() - t0
    frames_total = int(sum(job.frames for job in jobs))
    return {"videos": len(jobs), "snippets": total_snippets, "video_frames": frames_total,
            "seconds": seconds, "device": ", ".join(str(d) for d in targets),
            "encoders": len(lanes)}
