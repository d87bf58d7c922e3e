"""Snippet anomaly classifier (supplement 7): LayerNorm → Linear(D→1) → Sigmoid."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Anomaly score ``η ∈ (0, 1)`` per snippet: ``[B, T, D] -> [B, T]``."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.norm(x))).squeeze(-1)
