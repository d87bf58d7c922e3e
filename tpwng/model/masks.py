"""Padding masks: which positions of a padded batch ``[B, T, ...]`` are real snippets."""

from __future__ import annotations

import torch


def valid_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A bool mask ``[B, T]`` of the valid positions of ``x``: ``mask``, or all when None."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.to(device=x.device, dtype=torch.bool)
