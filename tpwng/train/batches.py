"""Training batches: an epoch's plan drawn up front, gathered on the host or on the device.

An epoch's plan (`plan_epoch`) holds every step's video indices and crops; it makes the random
draws of the old per-step batch assembly in the same order (the epoch's permutations, then per
step a crop for each normal and each anomalous video when the crop is drawn), so a seed trains
the same whichever source gathers the batches.

`ResidentFeatures` keeps one group's features in one ``[snippets, crops, D]`` float16 tensor on
the training device (on the CPU: host memory, the videos' arrays becoming views of it) and
gathers a batch by index there, padding and masking in the same step: no per-step copy of
features from the host. `HostFeatures` pads NumPy arrays and copies each batch to the device
(the path for sets that do not fit). Both return the same float32 values, zero-padded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from tpwng.data.sequences import TrainVideo, epoch_batches, pad_batch

log = logging.getLogger(__name__)

RESIDENT_MODES = ("auto", "on", "off")
# At most this share of the device's free memory goes to resident features (the rest is the
# step's activations, and other jobs sharing the device).
RESIDENT_SHARE = 0.5


class ResidentError(ValueError):
    """Resident features were asked for and do not fit the device's free memory."""


@dataclass
class EpochPlan:
    """Every step of one epoch: video indices and crops ``[steps, B]`` per group, and the
    padded length of each step's batches (the longest video of both groups, or the fixed
    length static shapes ask for)."""

    idx_n: np.ndarray
    crop_n: np.ndarray
    idx_a: np.ndarray
    crop_a: np.ndarray
    t_n: list[int]
    t_a: list[int]

    @property
    def steps(self) -> int:
        return len(self.idx_n)


def plan_epoch(normal: list[TrainVideo], anomalous: list[TrainVideo],
               items: tuple[list[int], list[int] | None, list[int], list[int] | None],
               b_normal: int, b_anomalous: int, rng: np.random.Generator,
               pad_to: int | None = None) -> EpochPlan:
    """Draw one epoch: `epoch_batches` over ``items`` (video index and crop per item, crop
    None = drawn per step, see `tpwng.train.loop.epoch_items`), then per step the random
    crops of the normal, then the anomalous videos. ``pad_to`` fixes every batch's length."""
    items_n, crops_n, items_a, crops_a = items
    batches = epoch_batches(len(items_n), len(items_a), b_normal, b_anomalous, rng)
    idx_n, crop_n, idx_a, crop_a, t_n, t_a = [], [], [], [], [], []
    for pos_n, pos_a in batches:
        for videos, items_g, crops_g, pos, idx_out, crop_out, t_out in (
                (normal, items_n, crops_n, pos_n, idx_n, crop_n, t_n),
                (anomalous, items_a, crops_a, pos_a, idx_a, crop_a, t_a)):
            idx = [items_g[p] for p in pos]
            if crops_g is None:
                crop = [int(rng.integers(videos[i].features.shape[1])) for i in idx]
            else:
                crop = [crops_g[p] for p in pos]
            idx_out.append(idx)
            crop_out.append(crop)
            t_out.append(pad_to or max(videos[i].features.shape[0] for i in idx))
    as_array = np.asarray
    return EpochPlan(as_array(idx_n, dtype=np.int64), as_array(crop_n, dtype=np.int64),
                     as_array(idx_a, dtype=np.int64), as_array(crop_a, dtype=np.int64),
                     t_n, t_a)


def multi_hot(videos: list[TrainVideo], classes: list[str]) -> torch.Tensor:
    """Class targets ``[len(videos), k]`` (multi-hot, float32)."""
    y = torch.zeros(len(videos), len(classes))
    for row, v in enumerate(videos):
        for c in v.classes:
            y[row, classes.index(c)] = 1.0
    return y


class HostFeatures:
    """A group's batches padded from its NumPy arrays and copied to ``device`` per step."""

    resident = False

    def __init__(self, videos: list[TrainVideo], classes: list[str],
                 device: torch.device) -> None:
        self.videos, self.device = videos, device
        self.targets = multi_hot(videos, classes)

    def batch(self, idx: np.ndarray, crops: np.ndarray, t: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features ``[B, t, D]`` float32, mask ``[B, t]`` and targets ``[B, k]``."""
        x, mask = pad_batch([self.videos[i].features[:, c].astype(np.float32)
                             for i, c in zip(idx, crops, strict=True)], t)
        y = self.targets[torch.from_numpy(np.asarray(idx))]
        return x.to(self.device), mask.to(self.device), y.to(self.device)

    def upload(self, plan_part: np.ndarray) -> np.ndarray:
        """The host path indexes with the plan's own arrays."""
        return plan_part


class ResidentFeatures:
    """A group's features in one float16 tensor on ``device``, batches gathered there.

    On the CPU the videos' feature arrays become views of that tensor (no second copy)."""

    resident = True

    def __init__(self, videos: list[TrainVideo], classes: list[str],
                 device: torch.device) -> None:
        self.device = device
        lengths = [v.features.shape[0] for v in videos]
        crops, dim = videos[0].features.shape[1:]
        if any(v.features.shape[1:] != (crops, dim) for v in videos):
            raise ValueError("resident features need every video with the same crops and "
                             "feature width")
        flat = torch.empty((sum(lengths), crops, dim), dtype=torch.float16)
        view = flat.numpy()
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        for v, off, n in zip(videos, offsets, lengths, strict=True):
            view[off : off + n] = v.features
            if device.type == "cpu":
                v.features = view[off : off + n]
        self.flat = flat.to(device)
        self.offsets = torch.from_numpy(offsets).to(device)
        self.lengths = torch.tensor(lengths, dtype=torch.int64, device=device)
        self.targets = multi_hot(videos, classes).to(device)
        self._pos: dict[int, torch.Tensor] = {}

    def upload(self, plan_part: np.ndarray) -> torch.Tensor:
        """A plan's index array on the device (one copy per epoch)."""
        return torch.from_numpy(plan_part).to(self.device)

    def batch(self, idx: torch.Tensor, crops: torch.Tensor, t: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features ``[B, t, D]`` float32 (zero past each video's end), mask ``[B, t]`` and
        targets ``[B, k]``, gathered on the device from indices already there."""
        pos = self._pos.get(t)
        if pos is None:
            pos = self._pos[t] = torch.arange(t, device=self.device)
        length = self.lengths[idx]
        mask = pos < length[:, None]
        rows = self.offsets[idx][:, None] + torch.minimum(pos, (length[:, None] - 1).clamp_min(0))
        x = self.flat[rows, crops[:, None]].float().masked_fill_(~mask[..., None], 0.0)
        return x, mask, self.targets[idx]


def feature_bytes(videos: list[TrainVideo]) -> int:
    """Bytes of the videos' features as float16."""
    return sum(v.features.size for v in videos) * 2


def free_memory(device: torch.device) -> int:
    """Free bytes of ``device``: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def feature_sources(groups: list[list[TrainVideo]], classes: list[str], device: torch.device,
                    mode: str = "auto") -> list[HostFeatures | ResidentFeatures]:
    """One batch source per group: resident on ``device`` when ``mode`` is ``on``, or ``auto``
    and the features take at most `RESIDENT_SHARE` of its free memory; else on the host."""
    if mode not in RESIDENT_MODES:
        raise ValueError(f"resident features must be one of {RESIDENT_MODES}, got {mode!r}")
    need = sum(feature_bytes(g) for g in groups)
    free = free_memory(device) if mode != "off" else 0
    fits = need <= RESIDENT_SHARE * free
    if mode == "on" and not fits:
        raise ResidentError(f"training features take {need / 2**30:.2f} GiB, over "
                            f"{RESIDENT_SHARE:g} x the {free / 2**30:.2f} GiB free on {device}")
    resident = mode == "on" or (mode == "auto" and fits)
    if mode == "auto":
        log.info("training features (%.2f GiB) %s %s (%.2f GiB free)", need / 2**30,
                 "resident on" if resident else "too large to keep on", device, free / 2**30)
    kind = ResidentFeatures if resident else HostFeatures
    return [kind(g, classes, device) for g in groups]
