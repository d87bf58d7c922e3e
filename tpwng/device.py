"""Where torch work runs: the device a setting names, and the precision used on it."""

from __future__ import annotations

import logging

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
