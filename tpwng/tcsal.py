"""Temporal context self-adaptive learning, TCSAL (paper Sec. 3.4, Eq. 7-9; supplement 7).

A stack of post-norm transformer-encoder layers whose self-attention is causal (query ``t``
attends keys ``r ≤ t``, distance ``h = t - r ≥ 0``; DESIGN 8) and whose span adapts to the
input, per head and per query position (adaptive attention span, Sukhbaatar et al. 2019):

    χ_z(h) = min(max((R + z - h) / R, 0), 1)                         (Eq. 7)
    z      = F · σ(cᵀ x_t + b)                                        (Eq. 8)
    ω_t,r  = χ_z(t - r) exp(β_t,r) / Σ_q χ_z(t - q) exp(β_t,q)        (Eq. 9)

with ``β = q·k / √d_head``. ``F`` is a fixed constant, ``span_scale`` (256, the training sequence
cap), so that a video scored whole or as a stream gives the same result and training and test
agree; ``span_scale=None`` uses each sequence's valid length instead (DESIGN 8 as written).

No positional encoding is added: the causal mask and the distance-based span supply the order.
Because χ is 0 for ``h ≥ F + R``, long sequences are attended in query chunks over a key window
of that width, which is exact and keeps memory linear in the length.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TEMPORAL_KINDS = ("tcsal", "transformer")


def soft_mask(z: torch.Tensor, h: torch.Tensor, R: float) -> torch.Tensor:
    """Eq. 7: ``χ_z(h) = clamp((R + z - h) / R, 0, 1)`` (broadcasting ``z`` against ``h``)."""
    return ((R + z - h) / R).clamp(0.0, 1.0)


class AdaptiveSpanAttention(nn.Module):
    """Causal multi-head self-attention with a soft, input-dependent span per head (Eq. 7-9).

    Args:
        dim: model width.
        heads: attention heads (each with its own span ``z``).
        R: softness of the mask ramp (paper: 256).
        span_scale: ``F`` of Eq. 8; None uses each sequence's valid length.
        dropout: dropout on the attention weights.
        chunk_size: queries per block for long sequences (fixed ``F`` only).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        R: float = 256,
        span_scale: float | None = 256,
        dropout: float = 0.0,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if R <= 0:
            raise ValueError(f"R must be > 0, got {R}")
        if span_scale is not None and span_scale <= 0:
            raise ValueError(f"span_scale must be > 0 or None, got {span_scale}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.R = float(R)
        self.span_scale = None if span_scale is None else float(span_scale)
        self.chunk_size = int(chunk_size)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.span = nn.Linear(dim, heads)  # c, b of Eq. 8, one per head
        self.attn_drop = nn.Dropout(dropout)

    def spans(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``z = F·σ(cᵀx_t + b)`` ``[B, heads, T]``, in ``(0, F)`` (Eq. 8)."""
        gate = torch.sigmoid(self.span(x)).transpose(1, 2)
        if self.span_scale is not None:
            return self.span_scale * gate
        valid = _valid(x, mask)
        length = valid.sum(1).clamp_min(1).to(gate.dtype)
        return length[:, None, None] * gate

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend ``x`` ``[B, T, D]``; padded keys (``mask`` False) are never attended.

        With ``return_weights`` also returns ω ``[B, heads, T, T]`` and z ``[B, heads, T]``.
        """
        B, T, D = x.shape
        valid = _valid(x, mask)
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        z = self.spans(x, valid)
        weights = None
        if return_weights or self.span_scale is None or T <= self.chunk_size:
            ctx, weights = self._attend(q, k, v, z, valid, 0, 0)
        else:
            window = math.ceil(self.span_scale + self.R)  # χ = 0 at h ≥ F + R
            blocks = []
            for start in range(0, T, self.chunk_size):
                end = min(T, start + self.chunk_size)
                k0 = max(0, start - window)
                block, _ = self._attend(
                    q[:, :, start:end], k[:, :, k0:end], v[:, :, k0:end],
                    z[:, :, start:end], valid[:, k0:end], start, k0,
                )
                blocks.append(block)
            ctx = torch.cat(blocks, dim=2)
        out = self.out_proj(ctx.transpose(1, 2).reshape(B, T, D))
        if return_weights:
            return out, weights, z
        return out

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        z: torch.Tensor,
        key_valid: torch.Tensor,
        q0: int,
        k0: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9 for queries at ``q0 + i`` against keys at ``k0 + j``.

        Distances, the mask and the weights are computed in float32 (exact integer distances and
        stable weights under mixed precision).
        """
        tq = torch.arange(q0, q0 + q.shape[2], device=q.device)
        tk = torch.arange(k0, k0 + k.shape[2], device=q.device)
        h = (tq[:, None] - tk[None, :]).float()  # [Tq, Tk]
        allowed = (h >= 0)[None, None] & key_valid[:, None, None, :]  # causal, unpadded keys
        chi = soft_mask(z.float().unsqueeze(-1), h, self.R) * allowed  # [B, H, Tq, Tk]
        beta = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        live = chi > 0
        # Stabilise by the largest logit among keys that carry weight (the result is invariant).
        top = beta.masked_fill(~live, float("-inf")).amax(-1, keepdim=True).detach()
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        e = torch.exp((beta - top).masked_fill(~live, float("-inf"))) * chi
        w = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
        w = self.attn_drop(w)
        return w.to(v.dtype) @ v, w


class TCSALLayer(nn.Module):
    """Post-norm encoder layer: adaptive-span attention + residual + LayerNorm, then a ReLU FFN
    (``ff_dim``) + residual + LayerNorm (supplement 7)."""

    def __init__(
        self,
        dim: int = 512,
        heads: int = 4,
        R: float = 256,
        span_scale: float | None = 256,
        ff_dim: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.attn = AdaptiveSpanAttention(dim, heads, R, span_scale, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attended = self.attn(x, mask, return_weights=return_weights)
        if return_weights:
            attended, w, z = attended
        x = self.norm1(x + self.drop1(attended))
        x = self.norm2(x + self.drop2(self.ff(x)))
        return (x, w, z) if return_weights else x


class TCSAL(nn.Module):
    """TCSAL: ``layers`` × `TCSALLayer` (paper: 4 layers, 4 heads, D = 512, R = 256).

    No positional encoding: causal attention and the distance-based soft span give the order.
    ``forward(x [B, T, D], mask [B, T]) -> [B, T, D]``.
    """

    def __init__(
        self,
        dim: int = 512,
        layers: int = 4,
        heads: int = 4,
        R: float = 256,
        span_scale: float | None = 256,
        ff_dim: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TCSALLayer(dim, heads, R, span_scale, ff_dim, dropout) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward_with_attention(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Output plus each layer's attention weights ω and spans z (for tests and plots)."""
        weights, spans = [], []
        for layer in self.layers:
            x, w, z = layer(x, mask, return_weights=True)
            weights.append(w)
            spans.append(z)
        return x, weights, spans


class PlainTransformer(nn.Module):
    """The "TF-encoder" of Table 4: a standard bidirectional post-norm transformer encoder of the
    same sizes with a key padding mask and sinusoidal positional encoding (Vaswani et al.)."""

    def __init__(
        self,
        dim: int = 512,
        layers: int = 4,
        heads: int = 4,
        ff_dim: int = 2048,
        dropout: float = 0.1,
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
        valid = _valid(x, mask)
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


def make_temporal(kind: str = "tcsal", **kw: object) -> nn.Module:
    """The temporal module by name: ``"tcsal"`` (TCSAL) or ``"transformer"`` (Table 4).

    The TCSAL-only arguments ``R`` and ``span_scale`` are ignored for the plain transformer.
    """
    if kind == "tcsal":
        return TCSAL(**kw)
    if kind == "transformer":
        kw = {key: val for key, val in kw.items() if key not in ("R", "span_scale")}
        return PlainTransformer(**kw)
    raise ValueError(f"temporal module must be one of {TEMPORAL_KINDS}, got {kind!r}")


def _valid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.to(device=x.device, dtype=torch.bool)
