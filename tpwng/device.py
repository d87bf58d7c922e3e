"""Where torch work runs: the device a setting names, and the precision used on it."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when a device really is usable, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda")
            return torch.device("cuda")
        except RuntimeError as exc:  # e.g. CUDA_VISIBLE_DEVICES set on a node without a GPU
            log.warning("CUDA reported but unusable (%s); using the CPU", exc)
    return torch.device("cpu")


def encoder_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The image encoder's dtype: ``auto`` is bf16 on CUDA and float32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class DeviceCountError(ValueError):
    """``extraction.gpus`` asks for more CUDA devices than this process sees."""


def encoder_devices(device: str = "auto", gpus: int | str = "auto") -> list[torch.device]:
    """The devices extraction encodes on, one encoder each.

    With ``device`` resolving to CUDA without an index: ``gpus`` devices ``cuda:0..``, ``auto``
    every visible one (CUDA_VISIBLE_DEVICES). Otherwise the one device ``device`` names. Asking
    for more GPUs than are visible (on the CPU: none) is a DeviceCountError.
    """
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    visible = torch.cuda.device_count() if cuda else 0
    if gpus != "auto" and int(gpus) > 1:
        where = (f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
                 if "CUDA_VISIBLE_DEVICES" in os.environ else "CUDA_VISIBLE_DEVICES unset")
        if not cuda:
            raise DeviceCountError(f"extraction.gpus is {gpus}, but extraction runs on {dev} "
                                   f"(0 CUDA devices visible, {where})")
        if int(gpus) > visible:
            raise DeviceCountError(f"extraction.gpus is {gpus}, but only {visible} CUDA "
                                   f"device(s) are visible ({where})")
        if dev.index is not None:
            raise DeviceCountError(f"extraction.gpus is {gpus}, but extraction.device names "
                                   f"one device ({dev}); use device cuda or auto")
    if not cuda or dev.index is not None:
        return [dev]
    n = max(1, visible) if gpus == "auto" else int(gpus)
    return [torch.device("cuda", i) for i in range(n)]
