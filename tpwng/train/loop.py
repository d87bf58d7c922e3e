"""Training TPWNG on a feature store (pseudo-labels and classifier learned together each step)."""

from __future__ import annotations

import csv
import logging
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tpwng import __version__
from tpwng.config import schema_defaults, training_hash
from tpwng.data.datasets import DatasetError, load_interval_file
from tpwng.data.manifest import read_manifest
from tpwng.data.sequences import TrainVideo, cap_length, epoch_batches, pad_batch, snippet_truth
from tpwng.device import resolve_device
from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.provenance import expected_store_provenance
from tpwng.features.store import FeatureStore, StoreError
from tpwng.grid import frame_labels
from tpwng.model.tpwng import LOG_KEYS, TPWNG, ModelConfig
from tpwng.train.batches import feature_sources, multi_hot, plan_epoch
from tpwng.train.checkpoint import save_checkpoint
from tpwng.train.label_quality import pseudo_label_quality

log = logging.getLogger(__name__)
_DEFAULTS = schema_defaults("train")


@dataclass(frozen=True)
class TrainSettings:
    """What training reads of the ``train`` settings (defaults: the config schema's)."""

    seed: int = _DEFAULTS["seed"]
    lr: float = _DEFAULTS["lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    epochs: int = _DEFAULTS["epochs"]
    batch_normal: int = _DEFAULTS["batch_normal"]
    batch_anomalous: int = _DEFAULTS["batch_anomalous"]
    max_seq_len: int = _DEFAULTS["max_seq_len"]
    device: str = _DEFAULTS["device"]
    threads: int = _DEFAULTS["threads"]
    precision: str = _DEFAULTS["precision"]
    epoch_over: str = _DEFAULTS["epoch_over"]
    # the schema fills no default for compile (absent: none), so that models trained before
    # the setting existed keep their settings hash
    compile: str = "none"

    @classmethod
    def from_settings(cls, settings: dict) -> TrainSettings:
        """From a dataset's settings (the keys of ``train`` it gives over the defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings["train"].items() if k in known})


def dataset_classes(settings: dict, rows) -> list[str]:
    """Prompt class names: from config, else normal first and the manifest's classes sorted."""
    classes = list(settings.get("classes") or [])
    seen = sorted({c for r in rows for c in r.classes} - {"normal"})
    if not classes:
        classes = ["normal", *seen]
    if classes[0] != "normal":
        raise DatasetError(f"datasets.{settings['name']}.classes must start with 'normal'")
    unknown = [c for c in seen if c not in classes]
    if unknown:
        raise DatasetError(
            f"manifest classes {unknown} are not in datasets.{settings['name']}.classes")
    return classes


def load_train_videos(settings: dict, manifest: Path, features: Path) -> list[TrainVideo]:
    """Training videos with capped features (and truth where a diagnostics file exists)."""
    rows = [r for r in read_manifest(manifest) if r.split == "train"]
    max_len = int(TrainSettings.from_settings(settings).max_seq_len)
    stride = int(settings["extraction"]["stride"])
    truth_file = Path(settings["root"] or "") / "train_intervals.txt"
    truth = load_interval_file(truth_file) if settings["root"] and truth_file.is_file() else {}
    videos = []
    with FeatureStore(features) as store:
        store.check_compatible(expected_store_provenance(settings))
        for r in tqdm(rows, desc="load features", file=sys.stderr, unit="video"):
            feats = store.get(r.video_id)
            if not np.isfinite(feats).all():
                raise StoreError(f"{features}: features of {r.video_id} contain NaN or inf")
            t = None
            if r.video_id in truth:

                t = snippet_truth(frame_labels(truth[r.video_id], r.frames), stride,
                                  max_len)
            videos.append(TrainVideo(r.video_id, cap_length(feats, max_len).astype(np.float16),
                                     list(r.classes), r.frames, feats.shape[0], t))
    return videos


def feature_stats(videos: list[TrainVideo]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over every snippet and crop of the training videos."""
    flat = np.concatenate([v.features.reshape(-1, v.features.shape[-1]) for v in videos])
    flat = flat.astype(np.float64)
    return torch.from_numpy(flat.mean(0)).float(), torch.from_numpy(flat.std(0)).float()


EPOCH_MODES = ("crops", "videos")


def training_autocast(precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast for ``bf16``, and for ``auto`` on CUDA; otherwise float32 (disabled).

    The similarities, the pseudo-label threshold and the losses run in float32 inside it
    (``TPWNG`` leaves autocast for them)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {precision!r}")
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


COMPILE_MODES = ("none", "reduce-overhead")


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Adam:
    """Adam; on CUDA its fused kernel (one launch updates every parameter), elsewhere the
    default implementation."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def compile_mode(mode: str, device: torch.device) -> str:
    """The compilation a step gets: ``reduce-overhead`` (torch.compile, CUDA graphs) on CUDA
    only; on any other device training runs uncompiled, with a warning (CUDA graphs exist only
    on CUDA, and the CPU results stay those of the uncompiled step)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode != "none" and device.type != "cuda":
        log.warning("train.compile: %s applies on CUDA only; training on %s runs uncompiled",
                    mode, device)
        return "none"
    return mode


class TrainingStep:
    """Forward pass of one step (pseudo-labels and every loss) returning the total loss and
    the ``LOG_KEYS`` values stacked in float64, both left on the device; with ``compile``
    ``reduce-overhead`` the forward is compiled (CUDA graphs), batches then of fixed shapes."""

    def __init__(self, model: TPWNG, opt: torch.optim.Optimizer, precision: str,
                 device: torch.device, compile: str = "none") -> None:
        training_autocast(precision, device)  # checks the setting
        self.model, self.opt, self.compile = model, opt, compile
        self.precision, self.device = precision, device
        self.stats_dtype = torch.float32 if device.type == "mps" else torch.float64
        self._forward = self.forward
        if compile != "none":
            self._forward = torch.compile(self.forward, mode=compile)

    def forward(self, xn: torch.Tensor, mn: torch.Tensor, xa: torch.Tensor, ma: torch.Tensor,
                ya: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with training_autocast(self.precision, self.device):
            loss, logs, _ = self.model.training_terms(xn, mn, xa, ma, ya)
        return loss, torch.stack([logs[k].to(self.stats_dtype) for k in LOG_KEYS])

    def __call__(self, xn: torch.Tensor, mn: torch.Tensor, xa: torch.Tensor, ma: torch.Tensor,
                 ya: torch.Tensor) -> torch.Tensor:
        """Forward, backward and update; the stacked ``LOG_KEYS`` values (on the device, to
        be read once an epoch: nothing here waits for the device)."""
        if self.compile != "none":
            torch.compiler.cudagraph_mark_step_begin()
        loss, stats = self._forward(xn, mn, xa, ma, ya)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return stats


def epoch_items(videos: list[TrainVideo], epoch_over: str) -> tuple[list[int], list[int] | None]:
    """What one epoch visits once: (video index, crop) pairs, or every video once.

    ``crops`` visits every (video, crop) pair of a multi-crop store, as loaders over the
    released feature lists (one row per video and crop) do; ``videos`` visits every video once
    with a crop drawn at random per step. The two are the same for a single-crop store, which
    takes the ``videos`` path. Returns (video index per item, crop per item or None).
    """
    if epoch_over not in EPOCH_MODES:
        raise ValueError(f"train.epoch_over must be one of {EPOCH_MODES}, got {epoch_over!r}")
    if epoch_over == "videos" or all(v.features.shape[1] == 1 for v in videos):
        return list(range(len(videos))), None
    pairs = [(i, c) for i, v in enumerate(videos) for c in range(v.features.shape[1])]
    return [i for i, _ in pairs], [c for _, c in pairs]


def class_targets(videos: list[TrainVideo], idx, classes: list[str], device) -> torch.Tensor:
    """Multi-hot class targets ``[len(idx), k]`` of videos ``idx``."""
    return multi_hot([videos[i] for i in idx], classes).to(device)


def run_epoch(step: TrainingStep, plan, source_n, source_a) -> dict[str, float]:
    """Every step of ``plan``; the sums of the ``LOG_KEYS`` values over its steps, read from
    the device once, at the end (the step indices go to the device once, at the start)."""
    idx_n, crop_n = source_n.upload(plan.idx_n), source_n.upload(plan.crop_n)
    idx_a, crop_a = source_a.upload(plan.idx_a), source_a.upload(plan.crop_a)
    sums = None
    for s in range(plan.steps):
        xn, mn, _ = source_n.batch(idx_n[s], crop_n[s], plan.t_n[s])
        xa, ma, ya = source_a.batch(idx_a[s], crop_a[s], plan.t_a[s])
        stats = step(xn, mn, xa, ma, ya)
        sums = torch.zeros_like(stats) if sums is None else sums
        sums.add_(stats)  # in float64 from 0, as Python sums floats
    return dict(zip(LOG_KEYS, sums.cpu().tolist(), strict=True))


def pseudo_label_diagnostics(model: TPWNG, normal: list[TrainVideo], anomalous: list[TrainVideo],
                             classes: list[str], device, crop: int = 0) -> dict[str, float]:
    """Pseudo-labels of every anomalous training video against its true intervals."""
    scored = [v for v in anomalous if v.truth is not None]
    if not scored:
        return {}
    preds, truths = [], []
    model.eval()
    with torch.no_grad():
        xn, mn = pad_batch([v.features[:, min(crop, v.features.shape[1] - 1)].astype(np.float32)
                            for v in normal[:32]])
        for k in range(0, len(scored), 32):
            chunk = scored[k : k + 32]
            xa, ma = pad_batch([v.features[:, min(crop, v.features.shape[1] - 1)]
                                .astype(np.float32) for v in chunk])
            y = class_targets(chunk, range(len(chunk)), classes, device)
            out = model.pseudo_and_similarities(xa.to(device), ma.to(device), y, xn.to(device),
                                                mn.to(device))
            p = out["pseudo"].cpu().numpy()
            for i, v in enumerate(chunk):
                preds.append(p[i, : len(v.truth)])
                truths.append(v.truth)
    model.train()
    q = pseudo_label_quality(np.concatenate(preds).astype(np.uint8), np.concatenate(truths))
    return {f"pl_{k}": float(v) for k, v in q.items()}


def train(settings: dict, manifest: Path, features: Path, out: Path, log_path: Path,
          resident: str = "auto") -> dict:
    """Train, checkpoint to ``out`` and log each epoch to ``log_path``.

    ``resident``: the training features kept on the device and batches gathered there
    (``auto``: when they take at most half its free memory; ``on``: an error where they do
    not; ``off``: each batch copied from the host). The results are the same either way."""
    tr = TrainSettings.from_settings(settings)
    seed = int(tr.seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(int(tr.threads))
    device = resolve_device(tr.device)

    videos = load_train_videos(settings, manifest, features)
    rows = read_manifest(manifest)
    classes = dataset_classes(settings, rows)
    normal = [v for v in videos if v.normal]
    anomalous = [v for v in videos if not v.normal]
    if not normal or not anomalous:
        raise DatasetError(f"{manifest}: training needs normal and anomalous videos "
                           f"(found {len(normal)} normal, {len(anomalous)} anomalous)")
    spec = ClipSpec.from_config(settings["clip"])
    clip_model, identity = load_clip(spec)
    cfg = ModelConfig.from_dict(settings["model"])
    dim = int(videos[0].features.shape[-1])
    model = TPWNG(clip_model, classes, cfg, dim=dim)
    model.set_feature_stats(*feature_stats(videos))
    model = model.to(device)
    params = list(model.trainable_parameters())
    opt = make_optimizer(params, float(tr.lr), float(tr.weight_decay), device)

    compiled = compile_mode(str(tr.compile), device)
    step_fn = TrainingStep(model, opt, str(tr.precision), device, compiled)
    # compiled steps take batches of one shape: every one padded to max_seq_len
    pad_to = int(tr.max_seq_len) if compiled != "none" else None
    source_n, source_a = feature_sources([normal, anomalous], classes, device, resident)
    epoch_over = str(tr.epoch_over)
    items_n, crops_n = epoch_items(normal, epoch_over)
    items_a, crops_a = epoch_items(anomalous, epoch_over)
    steps = len(epoch_batches(len(items_n), len(items_a), int(tr.batch_normal),
                              int(tr.batch_anomalous), np.random.default_rng(0)))
    log.info("an epoch is %d steps over %d normal and %d anomalous %s (train.epoch_over: %s)",
             steps, len(items_n), len(items_a),
             "(video, crop) pairs" if crops_n is not None else "videos", epoch_over)
    rows_log: list[dict] = []
    epochs = int(tr.epochs)
    t_start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=f"train {settings['name']}", file=sys.stderr,
               unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        plan = plan_epoch(normal, anomalous, (items_n, crops_n, items_a, crops_a),
                          int(tr.batch_normal), int(tr.batch_anomalous), rng, pad_to)
        sums = run_epoch(step_fn, plan, source_n, source_a)
        row = {"epoch": epoch, "steps": plan.steps,
               **{k: v / plan.steps for k, v in sums.items()},
               "seconds": time.perf_counter() - t0}
        row.update(pseudo_label_diagnostics(model, normal, anomalous, classes, device))
        rows_log.append(row)
        bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}",
                        f1=f"{row.get('pl_f1', float('nan')):.2f}")
    seconds = time.perf_counter() - t_start
    meta = {
        "dataset": settings["name"],
        "classes": classes,
        "model_config": cfg.to_dict(),
        "clip": {"model": spec.model, "pretrained": spec.pretrained, "weights": identity,
                 "random_init": spec.random_init, "seed": spec.seed,
                 "quick_gelu": spec.quick_gelu},
        "store": expected_store_provenance(settings) | {"weights": identity},
        "dim": dim,
        "epochs": epochs,
        "epoch_over": epoch_over,
        "steps_per_epoch": steps,
        "seed": seed,
        "compile": compiled,
        "resident_features": source_n.resident,
        "settings_hash": training_hash(settings),
        "train_videos": {"normal": len(normal), "anomalous": len(anomalous)},
        "train_seconds": seconds,
        "tpwng_version": __version__,
    }
    save_checkpoint(model, meta, out)
    write_log(rows_log, log_path)
    log.info("trained %d epochs in %.1f s", epochs, seconds)
    return meta


def write_log(rows: list[dict], path: Path) -> None:
    from tpwng.files import atomic_path

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in r.items()}
                for r in csv.DictReader(f, delimiter="\t")]
