"""The "TF-encoder" baseline of Table 4: TCSAL replaced by a standard transformer encoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from .hyperparameters import DROPOUT, FF_DIM, HEADS, LAYERS
from .masks import valid_mask


class PlainTransformer(nn.Module):
    """The "TF-encoder" of Table 4: a standard bidirectional post-norm transformer encoder of the
    same sizes with a key padding mask and sinusoidal positional encoding (Vaswani et al.)."""

    def __init__(
        self,
        dim: int = 512,
        layers: int = LAYERS,
        heads: int = HEADS,
        ff_dim: int = FF_DIM,
        dropout: float = DROPOUT,
        positional: bool = True,
    ) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            dim, heads, ff_dim, dropout, activation="relu", batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.dim = dim
        self.positional = positional

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = valid_mask(x, mask)
        padding = ~valid
        padding = padding & valid.any(1, keepdim=True)  # an all-padded row attends everything
        if self.positional:
            x = x + sinusoidal_encoding(x.shape[1], self.dim, x.device, x.dtype)
        return self.encoder(x, src_key_padding_mask=padding)


def sinusoidal_encoding(
    length: int, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The sine/cosine positional encoding ``[length, dim]`` of Vaswani et al. (2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.to(dtype or torch.float32)
