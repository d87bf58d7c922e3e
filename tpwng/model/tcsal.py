"""Temporal context self-adaptive learning, TCSAL (paper Sec. 3.4, Eq. 7-9; supplement 7).

A stack of post-norm transformer-encoder layers whose self-attention is causal (query ``t``
attends keys ``r ≤ t``, distance ``h = t - r ≥ 0``; DESIGN 8) and whose span adapts to the
input, per head and per query position (adaptive attention span, Sukhbaatar et al. 2019):

    χ_z(h) = min(max((R + z - h) / R, 0), 1)                         (Eq. 7)
    z      = F · σ(cᵀ x_t + b)                                        (Eq. 8)
    ω_t,r  = χ_z(t - r) exp(β_t,r) / Σ_q χ_z(t - q) exp(β_t,q)        (Eq. 9)

with ``β = q·k / √d_head``. ``F`` is fixed, ``span_scale`` (`SPAN_SCALE`, the training cap): a
stream scores as the whole video, as in training; ``None``: each sequence's valid length (DESIGN 8).

Eq. 7 is one function, `span_mask`, that every path uses. Eq. 9 is a softmax with an additive
mask, ``ω = softmax(β + log χ)`` (``log 0 = -inf``), and `AdaptiveSpanAttention.implementation`
chooses who computes it (``attention_impl``): ``"sdpa"``, PyTorch's fused attention with the mask
``log χ`` (`log_span_mask`), through which the span parameters ``c, b`` get their gradient;
``"fused"``, the softmax's forward and backward written out per head (`attention_kernels`), the
fastest on a CPU while training, where SDPA runs only its unfused MATH backend; ``"manual"``,
Eq. 9 written out with autograd (the reference, and the path that returns the weights ω).
``"auto"`` is ``fused`` while training on the CPU and ``sdpa`` elsewhere.

No positional encoding is added: the causal mask and the distance-based span supply the order.
Because χ is 0 for ``h ≥ F + R``, long sequences are attended in query chunks over a key window
of that width, which is exact and keeps memory linear in the length; the same window bounds the
key/value cache of `TCSALStream`, which scores a sequence piece by piece.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .attention_kernels import (
    FeedForwardResidual,
    LogSpanMask,
    MergeHeads,
    ResidualDropout,
    SpanAttention,
    SplitHeads,
    dropout_mask,
)
from .hyperparameters import DROPOUT, FF_DIM, HEADS, LAYERS, RAMP_R, SPAN_SCALE
from .masks import valid_mask
from .transformer import PlainTransformer, sinusoidal_encoding

__all__ = ["ATTENTION_IMPLS", "TEMPORAL_KINDS", "TCSAL", "AdaptiveSpanAttention", "KVCache",
           "PlainTransformer", "TCSALLayer", "TCSALStream", "distance_ramp", "dropout_mask",
           "log_span_mask", "make_temporal", "sinusoidal_encoding", "soft_mask", "span_mask"]

TEMPORAL_KINDS = ("tcsal", "transformer")
ATTENTION_IMPLS = ("auto", "sdpa", "fused", "manual")

# SDPA backends for a mask that needs a gradient (training: Eq. 8's c, b learn through it). On
# CUDA the flash kernel takes no attn_mask and cuDNN's backward does not differentiate attn_bias;
# the memory-efficient kernel's does (MATH as fallback). The CPU's flash kernel does not either:
# there it runs MATH (``auto`` fuses instead). Without a gradient the default dispatch runs.
_GRAD_MASK_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def distance_ramp(Tq: int, Tk: int, q0: int, k0: int, R: float, key_valid: torch.Tensor | None,
                  device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(R - h) / R`` ``[1 or B, 1, Tq, Tk]`` for queries at ``q0 + i`` and keys at ``k0 + j``,
    ``-inf`` for the future (``h < 0``) and padded keys (``key_valid`` ``[B, Tk]`` False), in
    ``dtype`` promoted to float32 at least (χ and its gradient are computed in it: float32 under
    mixed precision, float64 for float64). A padded key stays visible to its own query, so no
    row is empty: no backend sees an all ``-inf`` row (a NaN on some kernels)."""
    h = (torch.arange(q0, q0 + Tq, device=device)[:, None]
         - torch.arange(k0, k0 + Tk, device=device)[None, :])
    ramp = (R - h).to(torch.promote_types(dtype, torch.float32)).div_(R)
    ramp.masked_fill_(h < 0, float("-inf"))
    if key_valid is None:
        return ramp[None, None]
    hidden = ~key_valid[:, None, :] & (h != 0)  # [B, Tq, Tk]
    return ramp.masked_fill(hidden, float("-inf"))[:, None]


def span_mask(z: torch.Tensor, ramp: torch.Tensor, R: float, log: bool = False,
              floor: float = 0.0) -> torch.Tensor:
    """Eq. 7, ``χ_z(h) = clamp((R - h) / R + z / R, 0, 1)``, in one new tensor of the promoted
    dtype, from the ramp ``(R - h) / R`` (`distance_ramp`) and spans ``z`` ``[..., Tq, 1]``.

    ``log``: ``log χ``, ``-inf`` where χ = 0 (χ is clamped to the dtype's smallest normal number,
    and the log set to ``-inf`` by a threshold: the CPU's vectorised log is several times slower
    on exact zeros). ``floor``: χ clamped from below at ``floor`` instead of 0.
    """
    chi = torch.add(ramp, z, alpha=1.0 / R)
    if not log:
        return chi.clamp_(floor, 1.0)
    tiny = torch.finfo(chi.dtype).tiny
    chi.clamp_(tiny, 1.0).log_()
    return F.threshold(chi, math.log(tiny) + 1e-3, float("-inf"), inplace=True)


def soft_mask(z: torch.Tensor, h: torch.Tensor, R: float) -> torch.Tensor:
    """Eq. 7 for distances ``h`` (`span_mask`, ``z`` broadcasting against ``h``)."""
    return span_mask(z, (R - h) / R, R)


def log_span_mask(z: torch.Tensor, R: float, q0: int = 0, k0: int = 0, key_len: int | None = None,
                  key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """The additive mask ``log χ_z(h)`` of Eq. 9 ``[B, H, Tq, Tk]`` (float32, or float64):
    ``softmax(β + log χ) = χ·exp(β) / Σ χ·exp(β)``.

    ``z`` ``[B, H, Tq]`` are the spans of queries at ``q0 + i``; keys are at ``k0 + j``
    (``key_len`` of them, default ``Tq``; ``key_valid`` ``[B, Tk]``, see `distance_ramp`).
    Differentiable in ``z`` (`LogSpanMask`).
    """
    Tk = z.shape[-1] if key_len is None else key_len
    ramp = distance_ramp(z.shape[-1], Tk, q0, k0, float(R), key_valid, z.device, z.dtype)
    z = z.to(ramp.dtype)
    if torch.is_grad_enabled() and z.requires_grad:
        return LogSpanMask.apply(z, ramp, float(R), span_mask)
    return span_mask(z.detach().unsqueeze(-1), ramp, float(R), log=True)


def _fusable(x: torch.Tensor) -> bool:
    """The hand-fused layer pieces run in the tensor's own dtype, so not under autocast."""
    return not torch.is_autocast_enabled(x.device.type)


@dataclass
class KVCache:
    """One attention layer's keys and values ``[B, H, ≤ window, d]`` of the positions seen last."""

    window: int
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    seen: int = 0


class AdaptiveSpanAttention(nn.Module):
    """Causal multi-head self-attention with a soft, input-dependent span per head (Eq. 7-9).

    Args:
        dim: model width.
        heads: attention heads (each with its own span ``z``).
        R: softness of the mask ramp (paper: 256).
        span_scale: ``F`` of Eq. 8; None uses each sequence's valid length.
        dropout: dropout on the attention weights.
        chunk_size: queries per block for long sequences (fixed ``F`` only).
        attention_impl: one of `ATTENTION_IMPLS` (see `implementation`); an attribute,
            switchable any time.
    """

    def __init__(self, dim: int, heads: int = HEADS, R: float = RAMP_R,
                 span_scale: float | None = SPAN_SCALE, dropout: float = 0.0,
                 chunk_size: int = 1024, attention_impl: str = "auto") -> None:
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
        self.attention_impl = attention_impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.span = nn.Linear(dim, heads)  # c, b of Eq. 8, one per head
        self.attn_drop = nn.Dropout(dropout)

    @property
    def attention_impl(self) -> str:
        """One of `ATTENTION_IMPLS` (see `implementation`)."""
        return self._impl

    @attention_impl.setter
    def attention_impl(self, impl: str) -> None:
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self._impl = impl

    @property
    def window(self) -> int | None:
        """Widest distance with χ > 0, ``ceil(F + R)`` (None when F follows the length)."""
        return None if self.span_scale is None else math.ceil(self.span_scale + self.R)

    def spans(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``z = F·σ(cᵀx_t + b)`` ``[B, heads, T]``, in ``(0, F)`` (Eq. 8)."""
        gate = torch.sigmoid(self.span(x)).transpose(1, 2)
        if self.span_scale is not None:
            return self.span_scale * gate
        valid = valid_mask(x, mask)
        length = valid.sum(1).clamp_min(1).to(gate.dtype)
        return length[:, None, None] * gate

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, heads, T, head_dim]`` of ``x`` ``[B, T, D]``."""
        return SplitHeads.apply(self.qkv(x), self.heads)

    def implementation(self, x: torch.Tensor, weights: bool = False, stream: bool = False) -> str:
        """Which implementation attends ``x`` now: ``"fused"``, ``"sdpa"`` or ``"manual"``.

        ``attention_impl``, ``auto`` resolved to ``fused`` while training on the CPU (a gradient
        to compute, no autocast) and to ``sdpa`` elsewhere. ``fused`` serves whole, unchunked
        sequences outside autocast, SDPA the rest (chunks, ``stream`` pieces); the weights ω
        (``weights``) come from ``manual`` alone."""
        if weights:
            return "manual"
        impl = self.attention_impl
        if impl == "auto":
            grad = torch.is_grad_enabled() and self.qkv.weight.requires_grad
            impl = "fused" if x.device.type == "cpu" and _fusable(x) and grad else "sdpa"
        chunked = self.span_scale is not None and x.shape[1] > self.chunk_size
        if impl == "fused" and (stream or chunked or not _fusable(x)):
            return "sdpa"
        return impl

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend ``x`` ``[B, T, D]``; valid queries never attend padded keys (``mask`` False).
        With ``return_weights`` (manual Eq. 9, whole sequence) also ω ``[B, heads, T, T]`` and z
        ``[B, heads, T]``."""
        valid = None if mask is None else valid_mask(x, mask)
        impl = self.implementation(x, weights=return_weights)
        if impl == "fused":
            return self.out_proj(self._attend_fused(x, valid))
        q, k, v = self.project(x)
        z = self.spans(x, valid)
        if return_weights:
            ctx, weights = self._attend_manual(q, k, v, z, valid_mask(x, valid), 0, 0)
            return self._merge(ctx), weights, z
        return self._merge(self.attend(q, k, v, z, valid, 0, 0, impl))

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Attend the next positions ``x`` ``[B, n, D]`` (all valid) of a sequence whose last
        ``cache.window`` keys and values ``cache`` holds; update the cache (Eq. 7: χ = 0 beyond)."""
        if self.span_scale is None:
            raise ValueError("streaming needs a fixed span_scale F")
        q, k, v = self.project(x)
        if cache.k is not None:
            k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
        n = x.shape[1]
        ctx = self.attend(q, k, v, self.spans(x), None, cache.seen, cache.seen + n - k.shape[2],
                          self.implementation(x, stream=True))
        cache.k, cache.v = k[:, :, -cache.window :], v[:, :, -cache.window :]
        cache.seen += n
        return self._merge(ctx)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
               key_valid: torch.Tensor | None, q0: int, k0: int, impl: str) -> torch.Tensor:
        """Eq. 9 by ``impl`` (``"sdpa"``, ``"manual"``) for queries at ``q0 + i`` against keys at
        ``k0 + j`` (the last key is the last query); ``[B, heads, Tq, head_dim]``. With a fixed F,
        long query runs go in chunks of ``chunk_size`` over the key window ``ceil(F + R)``."""
        one = {"sdpa": self._attend_sdpa, "manual": self._attend_manual}[impl]
        Tq = q.shape[2]
        if self.span_scale is None or Tq <= self.chunk_size:
            return one(q, k, v, z, key_valid, q0, k0)[0]
        blocks = []
        for start in range(0, Tq, self.chunk_size):
            end = min(Tq, start + self.chunk_size)
            j0 = max(0, q0 + start - self.window - k0)  # first key within the window
            j1 = q0 + end - k0
            block, _ = one(
                q[:, :, start:end], k[:, :, j0:j1], v[:, :, j0:j1], z[:, :, start:end],
                None if key_valid is None else key_valid[:, j0:j1], q0 + start, k0 + j0,
            )
            blocks.append(block)
        return torch.cat(blocks, dim=2)

    def _merge(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.out_proj(MergeHeads.apply(ctx))

    def _attend_fused(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Eq. 9 over the whole of ``x`` by `SpanAttention`, before the output projection."""
        T = x.shape[1]
        ramp = distance_ramp(T, T, 0, 0, self.R, valid, x.device, x.dtype)[:, 0]
        z = self.spans(x, valid).to(ramp.dtype)
        p = self.attn_drop.p if self.training else 0.0
        return SpanAttention.apply(self.qkv(x), z, ramp, self.R, self.heads, p, span_mask)

    def _attend_sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                     key_valid: torch.Tensor | None, q0: int, k0: int) -> tuple[torch.Tensor, None]:
        """Eq. 9 as ``softmax(β + log χ) V`` through `scaled_dot_product_attention`."""
        m = log_span_mask(z, self.R, q0, k0, k.shape[2], key_valid).to(q.dtype)
        p = self.attn_drop.p if self.training else 0.0
        limit = m.requires_grad and q.device.type == "cuda"
        with sdpa_kernel(_GRAD_MASK_BACKENDS) if limit else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p), None

    def _attend_manual(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                       key_valid: torch.Tensor | None, q0: int, k0: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9 written out: context and weights ω ``[B, heads, Tq, Tk]``.

        The mask and the weights are computed in float32, or float64 for float64 inputs (stable
        weights under mixed precision, and the float64 reference of the other paths); a query
        with no live key gets weight 0 throughout.
        """
        ramp = distance_ramp(q.shape[2], k.shape[2], q0, k0, self.R, None, q.device, q.dtype)
        chi = span_mask(z.to(ramp.dtype).unsqueeze(-1), ramp, self.R)  # [B, H, Tq, Tk], causal
        if key_valid is not None:
            chi = chi * key_valid[:, None, None, :]  # unpadded keys
        beta = (q @ k.transpose(-1, -2)).to(ramp.dtype) / math.sqrt(self.head_dim)
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
    (``ff_dim``) + residual + LayerNorm (supplement 7). Outside autocast the residual branches
    run as `ResidualDropout` and `FeedForwardResidual`; ``ff`` keeps the
    ``Linear-ReLU-Dropout-Linear`` parameters and is the reference they equal."""

    def __init__(self, dim: int = 512, heads: int = HEADS, R: float = RAMP_R,
                 span_scale: float | None = SPAN_SCALE, ff_dim: int = FF_DIM,
                 dropout: float = DROPOUT, attention_impl: str = "auto") -> None:
        super().__init__()
        self.attn = AdaptiveSpanAttention(dim, heads, R, span_scale, dropout,
                                          attention_impl=attention_impl)
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
        out = self.attn(x, mask, return_weights=return_weights)
        if return_weights:
            return self._block(x, out[0]), out[1], out[2]
        return self._block(x, out)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The layer on the next positions of a stream (see `AdaptiveSpanAttention.step`)."""
        return self._block(x, self.attn.step(x, cache))

    def _block(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        p = self.drop1.p if self.training else 0.0
        if not _fusable(x):
            x = self.norm1(x + self.drop1(attended))
            return self.norm2(x + self.drop2(self.ff(x)))
        x = self.norm1(ResidualDropout.apply(x, attended, p))
        lin1, lin2 = self.ff[0], self.ff[3]
        p_hidden, p_out = (self.ff[2].p, self.drop2.p) if self.training else (0.0, 0.0)
        y = FeedForwardResidual.apply(x.reshape(-1, x.shape[-1]), lin1.weight, lin1.bias,
                                      lin2.weight, lin2.bias, p_hidden, p_out)
        return self.norm2(y.view(x.shape))


class TCSAL(nn.Module):
    """TCSAL: ``layers`` × `TCSALLayer` (paper: 4 layers, 4 heads, D = 512, R = 256), no
    positional encoding. ``forward(x [B, T, D], mask [B, T]) -> [B, T, D]``; `stream` scores
    piece by piece."""

    def __init__(self, dim: int = 512, layers: int = LAYERS, heads: int = HEADS,
                 R: float = RAMP_R, span_scale: float | None = SPAN_SCALE, ff_dim: int = FF_DIM,
                 dropout: float = DROPOUT, attention_impl: str = "auto") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TCSALLayer(dim, heads, R, span_scale, ff_dim, dropout, attention_impl)
            for _ in range(layers)
        )

    @property
    def attention_impl(self) -> str:
        """One of `ATTENTION_IMPLS` (see the module docstring); setting it sets every layer's."""
        return self.layers[0].attn.attention_impl

    @attention_impl.setter
    def attention_impl(self, impl: str) -> None:
        for layer in self.layers:
            layer.attn.attention_impl = impl

    @property
    def streamable(self) -> bool:
        """Whether `stream` can serve this module: every layer has a fixed span scale F."""
        return all(layer.attn.span_scale is not None for layer in self.layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward_with_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Output plus each layer's attention weights ω and spans z (for tests and plots)."""
        weights, spans = [], []
        for layer in self.layers:
            x, w, z = layer(x, mask, return_weights=True)
            weights.append(w)
            spans.append(z)
        return x, weights, spans

    def stream(self) -> TCSALStream:
        """A `TCSALStream` over this module (needs a fixed span scale F)."""
        return TCSALStream(self)


class TCSALStream:
    """TCSAL fed a sequence piece by piece: ``push(x [B, n, D]) -> [B, n, D]``.

    Each layer caches the keys and values of the last ``ceil(F + R)`` positions, beyond which
    χ (Eq. 7) is exactly 0, so the outputs equal those of the whole sequence (all positions
    valid). Runs in the module's current mode; wrap calls in `torch.no_grad` for inference.
    """

    def __init__(self, model: TCSAL) -> None:
        if not model.streamable:
            raise ValueError("streaming needs a fixed span_scale F (span_scale=None scales the "
                             "spans by the whole sequence's length)")
        self.model = model
        self.caches = [KVCache(layer.attn.window) for layer in model.layers]

    @property
    def seen(self) -> int:
        """Positions pushed so far."""
        return self.caches[0].seen

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the next positions ``x`` ``[B, n, D]``."""
        for layer, cache in zip(self.model.layers, self.caches, strict=True):
            x = layer.step(x, cache)
        return x

    def reset(self) -> None:
        """Forget the past: the next push starts a new sequence."""
        self.caches = [KVCache(c.window) for c in self.caches]


def make_temporal(kind: str = "tcsal", **kw: object) -> nn.Module:
    """The temporal module by name: ``"tcsal"`` (TCSAL) or ``"transformer"`` (Table 4, which
    ignores the TCSAL-only arguments ``R``, ``span_scale`` and ``attention_impl``)."""
    if kind == "tcsal":
        return TCSAL(**kw)
    if kind == "transformer":
        kw = {key: val for key, val in kw.items()
              if key not in ("R", "span_scale", "attention_impl")}
        return PlainTransformer(**kw)
    raise ValueError(f"temporal module must be one of {TEMPORAL_KINDS}, got {kind!r}")
