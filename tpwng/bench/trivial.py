"""A stand-in for CLIP that costs almost nothing (imports torch: load it only to run)."""

from __future__ import annotations

import torch


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
