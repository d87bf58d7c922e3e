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

Eq. 9 is a softmax with an additive mask: ``ω = softmax(β + log χ)`` (``log 0 = -inf``). Three
implementations compute it (``attention_impl``): ``"sdpa"``, PyTorch's fused
`torch.nn.functional.scaled_dot_product_attention` with the float mask ``log χ`` (`log_span_mask`),
through which the span parameters ``c, b`` get their gradient; ``"fused"``, the same softmax with
its forward and backward written out per head (`_SpanAttention`: no head copies, one score tensor,
the mask's gradient sent straight to the spans), the fastest on a CPU while training, where SDPA
can only run its unfused MATH backend; ``"manual"``, Eq. 9 written out with autograd (the
reference, and the path that returns the weights ω). The default ``"auto"`` is ``fused`` while
training on the CPU and ``sdpa`` everywhere else (inference, CUDA, autocast).

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

TEMPORAL_KINDS = ("tcsal", "transformer")
ATTENTION_IMPLS = ("auto", "sdpa", "fused", "manual")

# On CUDA the flash kernel takes no attn_mask, and cuDNN attention does not differentiate its
# attn_bias (its backward returns dq, dk, dv only; attn_bias is non-differentiable in
# derivatives.yaml). The memory-efficient kernel's backward returns grad_bias, so a mask that
# needs a gradient (training: Eq. 8's c, b learn through it) is limited to it, MATH as fallback.
_GRAD_MASK_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def soft_mask(z: torch.Tensor, h: torch.Tensor, R: float) -> torch.Tensor:
    """Eq. 7: ``χ_z(h) = clamp((R + z - h) / R, 0, 1)`` (broadcasting ``z`` against ``h``)."""
    return ((R + z - h) / R).clamp(0.0, 1.0)


def _ramp_base(
    Tq: int, Tk: int, q0: int, k0: int, R: float, key_valid: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """``(R - h) / R`` for queries at ``q0 + i`` and keys at ``k0 + j``, ``-inf`` for the future
    (``h < 0``) and for padded keys; ``[1 or B, 1, Tq, Tk]``, float32.

    A padded key stays visible to its own (padded) query, so no row is empty: no backend sees an
    all ``-inf`` row (a NaN on some kernels), and valid queries are unaffected.
    """
    h = (torch.arange(q0, q0 + Tq, device=device)[:, None]
         - torch.arange(k0, k0 + Tk, device=device)[None, :])
    base = (R - h).float().div_(R).masked_fill_(h < 0, float("-inf"))
    if key_valid is None:
        return base[None, None]
    hidden = ~key_valid[:, None, :] & (h != 0)  # [B, Tq, Tk]
    return base.masked_fill(hidden, float("-inf"))[:, None]


_TINY = torch.finfo(torch.float32).tiny
_LOG_TINY = math.log(_TINY) + 1e-3  # log χ at or below this: χ = 0


def _log_chi(z: torch.Tensor, base: torch.Tensor, R: float) -> torch.Tensor:
    """``log χ = log clamp((R + z - h) / R, 0, 1)`` (Eq. 7), ``-inf`` where χ = 0, in one new
    tensor.

    χ = 0 is clamped to the smallest normal float before the log and then set to ``-inf`` by a
    threshold: the CPU's vectorised log is several times slower on exact zeros.
    """
    m = torch.add(base, z.unsqueeze(-1), alpha=1.0 / R)  # (R + z - h) / R
    m.clamp_(_TINY, 1.0).log_()
    return F.threshold(m, _LOG_TINY, float("-inf"), inplace=True)


def _span_grad(g: torch.Tensor, z: torch.Tensor, base: torch.Tensor, R: float) -> torch.Tensor:
    """``∂L/∂z`` from the gradient ``g`` reaching the mask ``log χ`` (`_log_chi` of ``z``,
    ``base``): ``∂ log χ / ∂z = 1 / (R χ)`` on the ramp ``0 < χ < 1`` and 0 elsewhere, so
    ``∂L/∂z = Σ_r g_r / (R χ_r)`` over the ramp."""
    inv = torch.add(base, z.unsqueeze(-1), alpha=1.0 / R)  # χ before clamping
    # 1/χ: > 1 on the ramp, ≤ 1 on the plateau (zeroed by the threshold), capped where χ = 0
    # (there g = 0: those keys have weight 0)
    inv.clamp_min_(_TINY).reciprocal_()
    F.threshold(inv, 1.0, 0.0, inplace=True)
    return inv.mul_(g).sum(-1).div_(R)


class _LogSpanMask(torch.autograd.Function):
    """``log χ`` from ``z`` with a hand-written backward (`_span_grad`: no ``B×H×Tq×Tk``
    autograd chain, and only ``z`` and the ramp base saved)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, base: torch.Tensor, R: float) -> torch.Tensor:
        ctx.save_for_backward(z, base)
        ctx.R = R
        return _log_chi(z, base, R)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        z, base = ctx.saved_tensors
        return _span_grad(g, z, base, ctx.R), None, None


def log_span_mask(
    z: torch.Tensor,
    R: float,
    q0: int = 0,
    k0: int = 0,
    key_len: int | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The additive mask ``log χ_z(h)`` of Eq. 9 ``[B, H, Tq, Tk]`` (float32).

    ``softmax(β + log χ) = χ·exp(β) / Σ χ·exp(β)`` (Eq. 9). ``z`` ``[B, H, Tq]`` are the spans of
    queries at ``q0 + i``; keys are at ``k0 + j`` (``key_len`` of them, default ``Tq``). The
    future and padded keys (``key_valid`` ``[B, Tk]`` False) are ``-inf`` except that a padded
    position sees itself (see `_ramp_base`). Differentiable in ``z``.
    """
    Tk = z.shape[-1] if key_len is None else key_len
    base = _ramp_base(z.shape[-1], Tk, q0, k0, float(R), key_valid, z.device)
    z = z.float()
    if torch.is_grad_enabled() and z.requires_grad:
        return _LogSpanMask.apply(z, base, float(R))
    return _log_chi(z.detach(), base, float(R))


def dropout_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """Where to drop (bool ``shape``) and the kept values' scale ``1 / (1 - p)``.

    Each element compares 16 bits of 64-bit random words (from the default generator) with a cut,
    so ``p`` is rounded to a multiple of 2⁻¹⁶ (the scale uses the rounded value); about 5×
    faster on the CPU than ``bernoulli_``, which draws a float per element.
    """
    cut = round(p * 65536)
    n = math.prod(shape)
    if cut >= 65536:
        return torch.ones(shape, dtype=torch.bool, device=device), 0.0
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    drop = words.view(torch.int16)[:n].view(shape) < (cut - 32768)
    return drop, 65536.0 / (65536 - cut)


class _ResidualDropout(torch.autograd.Function):
    """``x + dropout(a)`` in one new tensor (``a`` is a projection's output, a view: changing it
    in place would have autograd copy the whole base back in the backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, p: float) -> torch.Tensor:
        out, drop, scale = _residual_dropout(x, a, p, in_place=False)
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        (drop,) = ctx.saved_tensors
        if drop is None:
            return g, g, None
        return g, g.masked_fill(drop, 0.0).mul_(ctx.scale), None


def _residual_dropout(
    x: torch.Tensor, a: torch.Tensor, p: float, in_place: bool
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``x + dropout(a)``, written into ``a`` or into a new tensor; with the drop mask (None
    without dropout) and the kept values' scale."""
    drop, scale = None, 1.0
    if p > 0:
        drop, scale = dropout_mask(a.shape, p, a.device)
        a = a.masked_fill_(drop, 0.0) if in_place else a.masked_fill(drop, 0.0)
    elif not in_place:
        return x + a, None, 1.0
    return torch.add(x, a, alpha=scale, out=a), drop, scale


class _FeedForwardResidual(torch.autograd.Function):
    """``x + dropout(W2 dropout(relu(W1 x + b1)) + b2)`` on ``[N, D]`` rows.

    Only one ``[N, ff]`` activation is made and saved: it is rectified and dropped in place, the
    hidden dropout's scale is folded into the second product (``addmm``'s alpha), and the
    backward recovers the ReLU-and-dropout mask from it (``h > 0``). The residual is added in
    the output's own buffer.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, p_hidden: float, p_out: float) -> torch.Tensor:
        h = torch.addmm(b1, x, w1.t())
        h.relu_()
        alpha = 1.0
        if p_hidden > 0:
            drop, alpha = dropout_mask(h.shape, p_hidden, h.device)
            h.masked_fill_(drop, 0.0)
            del drop
        y = torch.addmm(b2, h, w2.t(), alpha=alpha)
        y, drop, scale = _residual_dropout(x, y, p_out, in_place=True)
        ctx.save_for_backward(x, h, w1, w2, drop)
        ctx.alpha, ctx.scale = alpha, scale
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, h, w1, w2, drop = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = g.contiguous()
        gy = g if drop is None else g.masked_fill(drop, 0.0)  # ∂L/∂y / scale
        s, a = ctx.scale, ctx.alpha * ctx.scale
        gw2 = torch.mm(gy.t(), h).mul_(a) if need[3] else None
        gb2 = gy.sum(0).mul_(s) if need[4] else None
        # ∂L/∂h / a, masked by ReLU and dropout (h > 0); out of place: the in-place form copies
        gh = torch.ops.aten.threshold_backward(torch.mm(gy, w2), h, 0.0)
        gx = torch.addmm(g, gh, w1, alpha=a) if need[0] else None
        gw1 = torch.mm(gh.t(), x).mul_(a) if need[1] else None
        gb1 = gh.sum(0).mul_(a) if need[2] else None
        return gx, gw1, gb1, gw2, gb2, None, None


class _SplitHeads(torch.autograd.Function):
    """``[B, T, 3D]`` projections to contiguous ``q, k, v`` ``[B, H, T, D/H]``: one copy each way
    (the kernels then need no copies of their own)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int):
        B, T, D3 = qkv.shape
        ctx.shape = (B, T, 3, heads, D3 // (3 * heads))
        return qkv.view(ctx.shape).permute(2, 0, 3, 1, 4).contiguous().unbind(0)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        g = next(gi for gi in grads if gi is not None).new_empty(ctx.shape)
        for i, gi in enumerate(grads):
            if gi is None:
                g[:, :, i].zero_()
            else:
                g[:, :, i].copy_(gi.transpose(1, 2))
        return g.view(*ctx.shape[:2], -1), None


class _MergeHeads(torch.autograd.Function):
    """``[B, H, T, D/H]`` to ``[B, T, D]``; the gradient goes back contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        B, H, T, d = x.shape
        ctx.shape = (B, T, H, d)
        return x.transpose(1, 2).reshape(B, T, H * d)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(ctx.shape).transpose(1, 2).contiguous()


class _SpanAttention(torch.autograd.Function):
    """Eq. 9 over whole sequences, forward and backward written out per head (the CPU's
    training path, ``attention_impl="fused"``).

    Reads ``q, k, v`` of head ``h`` as strided views of the projections ``[B, T, 3D]`` and writes
    each head's context into its columns of ``[B, T, D]``: no head is split or merged by a copy.
    Per head one ``[B, T, T]`` score tensor is made: ``log χ`` (`_log_chi`), the scores added
    into it (``baddbmm``), the softmax taken in place; dropout uses `dropout_mask`. Saved: the
    weights ``P`` and, with dropout, the dropped and rescaled ``P̃``. The backward uses
    ``Σ_r ∂L/∂P̃_r · P̃_r = ∂L/∂o · o`` (no ``[T, T]`` reduction), returns the gradient of ``log χ``
    straight to the spans (``∂ log χ / ∂z = 1 / (R χ)`` on the ramp, 0 elsewhere), and writes
    ``∂L/∂q, ∂L/∂k, ∂L/∂v`` into the columns of one ``[B, T, 3D]`` gradient.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, z: torch.Tensor, base: torch.Tensor, R: float,
                heads: int, p: float) -> torch.Tensor:
        B, T, D3 = qkv.shape
        D = D3 // 3
        d = D // heads
        scale = 1.0 / math.sqrt(d)
        out = qkv.new_empty(B, T, D)
        saved = []
        for h, (q, k, v) in enumerate(_head_views(qkv, heads)):
            s = _log_chi(z[:, h], base, R)  # [B, T, T]
            s.baddbmm_(q, k.transpose(1, 2), alpha=scale)
            w = torch.ops.aten._softmax.out(s, -1, False, out=s)
            wd = w
            if p > 0:
                drop, keep_scale = dropout_mask(w.shape, p, w.device)
                wd = w.mul(keep_scale).masked_fill_(drop, 0.0)
                del drop
            torch.bmm(wd, v, out=out[:, :, h * d : (h + 1) * d])
            saved += [w] if p == 0 else [w, wd]
        ctx.save_for_backward(qkv, z, base, out, *saved)
        ctx.R, ctx.heads, ctx.dropout, ctx.scale = R, heads, p > 0, scale
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        qkv, z, base, out, *saved = ctx.saved_tensors
        heads, scale, R = ctx.heads, ctx.scale, ctx.R
        B, T, D = out.shape
        d = D // heads
        g = g.contiguous()
        delta = (g * out).view(B, T, heads, d).sum(-1).transpose(1, 2)  # [B, H, T]: ∂L/∂o · o
        gqkv = qkv.new_empty(qkv.shape)
        gz = z.new_empty(z.shape)
        per_head = 2 if ctx.dropout else 1
        for h, (q, k, v) in enumerate(_head_views(qkv, heads)):
            w = saved[per_head * h]
            wd = saved[per_head * h + 1] if ctx.dropout else w
            cols = slice(h * d, (h + 1) * d)
            go = g[:, :, cols]
            gv = gqkv[:, :, 2 * D + cols.start : 2 * D + cols.stop]
            torch.bmm(wd.transpose(1, 2), go, out=gv)
            gs = torch.bmm(go, v.transpose(1, 2))  # ∂L/∂P̃, then ∂L/∂s in place
            dh = delta[:, h, :, None]
            if ctx.dropout:
                gs.mul_(wd).addcmul_(w, dh, value=-1.0)  # P̃ ⊙ ∂L/∂P̃ − P ⊙ (∂L/∂o · o)
            else:
                gs.sub_(dh).mul_(w)
            gz[:, h] = _span_grad(gs, z[:, h], base, R)  # ∂L/∂s reaches log χ as it is
            gs.mul_(scale)  # ∂L/∂β → ∂L/∂(q·k)
            torch.bmm(gs, k, out=gqkv[:, :, cols])
            torch.bmm(gs.transpose(1, 2), q, out=gqkv[:, :, D + cols.start : D + cols.stop])
        return gqkv, gz, None, None, None, None


def _head_views(qkv: torch.Tensor, heads: int):
    """``(q, k, v)`` of each head: ``[B, T, D/H]`` views into the projections ``[B, T, 3D]``."""
    D = qkv.shape[-1] // 3
    d = D // heads
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        yield tuple(qkv[:, :, i * D + cols.start : i * D + cols.stop] for i in range(3))


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
        attention_impl: ``"auto"``, ``"sdpa"`` (`scaled_dot_product_attention` with the mask
            ``log χ``), ``"fused"`` (`_SpanAttention`, whole unchunked sequences; chunks and
            streams go through SDPA) or ``"manual"`` (Eq. 9 written out); see the module
            docstring. An attribute, switchable any time.

    SDPA backends: while the mask needs a gradient (training), the CPU runs the MATH backend (its
    flash kernel does not differentiate the mask: ``auto`` uses ``fused`` there), and on CUDA
    SDPA is limited to the memory-efficient kernel, MATH as fallback (the flash kernel takes no
    mask, cuDNN's does not differentiate it). Without a gradient the default dispatch runs: the
    flash kernel, with the mask, on the CPU (no dropout).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        R: float = 256,
        span_scale: float | None = 256,
        dropout: float = 0.0,
        chunk_size: int = 1024,
        attention_impl: str = "auto",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if R <= 0:
            raise ValueError(f"R must be > 0, got {R}")
        if span_scale is not None and span_scale <= 0:
            raise ValueError(f"span_scale must be > 0 or None, got {span_scale}")
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, "
                             f"got {attention_impl!r}")
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
    def window(self) -> int | None:
        """Widest distance with χ > 0, ``ceil(F + R)`` (None when F follows the length)."""
        return None if self.span_scale is None else math.ceil(self.span_scale + self.R)

    def spans(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``z = F·σ(cᵀx_t + b)`` ``[B, heads, T]``, in ``(0, F)`` (Eq. 8)."""
        gate = torch.sigmoid(self.span(x)).transpose(1, 2)
        if self.span_scale is not None:
            return self.span_scale * gate
        valid = _valid(x, mask)
        length = valid.sum(1).clamp_min(1).to(gate.dtype)
        return length[:, None, None] * gate

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, heads, T, head_dim]`` of ``x`` ``[B, T, D]``."""
        return _SplitHeads.apply(self.qkv(x), self.heads)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend ``x`` ``[B, T, D]``; padded keys (``mask`` False) are never attended by valid
        queries.

        With ``return_weights`` (manual Eq. 9, whole sequence) also returns ω ``[B, heads, T, T]``
        and z ``[B, heads, T]``.
        """
        valid = None if mask is None else _valid(x, mask)
        if not return_weights and self._fused_here(x):
            z = self.spans(x, valid).float()
            base = _ramp_base(x.shape[1], x.shape[1], 0, 0, self.R, valid, x.device)[:, 0]
            p = self.attn_drop.p if self.training else 0.0
            return self.out_proj(_SpanAttention.apply(self.qkv(x), z, base, self.R,
                                                      self.heads, p))
        q, k, v = self.project(x)
        z = self.spans(x, valid)
        if return_weights:
            ctx, weights = self._attend_manual(q, k, v, z, _valid(x, valid), 0, 0)
            return self._merge(ctx), weights, z
        return self._merge(self.attend(q, k, v, z, valid, 0, 0))

    def _fused_here(self, x: torch.Tensor) -> bool:
        """Whether `_SpanAttention` attends ``x`` whole: ``fused``, or ``auto`` while training
        on the CPU (a gradient to compute, no autocast); never for a chunked sequence."""
        if self.span_scale is not None and x.shape[1] > self.chunk_size:
            return False
        if self.attention_impl == "fused":
            return True
        return (self.attention_impl == "auto" and x.device.type == "cpu" and _fusable(x)
                and torch.is_grad_enabled() and self.qkv.weight.requires_grad)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Attend the next positions ``x`` ``[B, n, D]`` (all valid) of a sequence whose last
        ``cache.window`` keys and values ``cache`` holds; update the cache (Eq. 7: χ = 0 beyond)."""
        if self.span_scale is None:
            raise ValueError("streaming needs a fixed span_scale F")
        q, k, v = self.project(x)
        if cache.k is not None:
            k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
        n = x.shape[1]
        ctx = self.attend(q, k, v, self.spans(x), None, cache.seen, cache.seen + n - k.shape[2])
        cache.k, cache.v = k[:, :, -cache.window :], v[:, :, -cache.window :]
        cache.seen += n
        return self._merge(ctx)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        z: torch.Tensor,
        key_valid: torch.Tensor | None,
        q0: int,
        k0: int,
    ) -> torch.Tensor:
        """Eq. 9 for queries at ``q0 + i`` against keys at ``k0 + j`` (the last key is the last
        query); ``[B, heads, Tq, head_dim]``. With a fixed F, long query runs go in chunks of
        ``chunk_size`` over the key window ``ceil(F + R)`` each needs."""
        Tq = q.shape[2]
        one = self._attend_manual if self.attention_impl == "manual" else self._attend_sdpa
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
        return self.out_proj(_MergeHeads.apply(ctx))

    def _attend_sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
        key_valid: torch.Tensor | None, q0: int, k0: int,
    ) -> tuple[torch.Tensor, None]:
        """Eq. 9 as ``softmax(β + log χ) V`` through `scaled_dot_product_attention`."""
        m = log_span_mask(z, self.R, q0, k0, k.shape[2], key_valid).to(q.dtype)
        p = self.attn_drop.p if self.training else 0.0
        limit = m.requires_grad and q.device.type == "cuda"
        with sdpa_kernel(_GRAD_MASK_BACKENDS) if limit else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p), None

    def _attend_manual(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
        key_valid: torch.Tensor | None, q0: int, k0: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9 written out: context and weights ω ``[B, heads, Tq, Tk]``.

        Distances, the mask and the weights are computed in float32 (exact integer distances and
        stable weights under mixed precision); a query with no live key gets weight 0 throughout.
        """
        tq = torch.arange(q0, q0 + q.shape[2], device=q.device)
        tk = torch.arange(k0, k0 + k.shape[2], device=q.device)
        h = (tq[:, None] - tk[None, :]).float()  # [Tq, Tk]
        allowed = (h >= 0)[None, None]
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, None, :]  # causal, unpadded keys
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
    (``ff_dim``) + residual + LayerNorm (supplement 7).

    Outside autocast the dropout + residual and the FFN run as hand-fused autograd functions
    (in-place activations, one ``[N, ff]`` tensor saved, `dropout_mask`); ``ff`` keeps the
    ``Linear-ReLU-Dropout-Linear`` parameters and is the reference they equal.
    """

    def __init__(
        self,
        dim: int = 512,
        heads: int = 4,
        R: float = 256,
        span_scale: float | None = 256,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        attention_impl: str = "auto",
    ) -> None:
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
        attended = self.attn(x, mask, return_weights=return_weights)
        if return_weights:
            attended, w, z = attended
            return self._block(x, attended), w, z
        return self._block(x, attended)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The layer on the next positions of a stream (see `AdaptiveSpanAttention.step`)."""
        return self._block(x, self.attn.step(x, cache))

    def _block(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        p = self.drop1.p if self.training else 0.0
        if not _fusable(x):
            x = self.norm1(x + self.drop1(attended))
            return self.norm2(x + self.drop2(self.ff(x)))
        x = self.norm1(_ResidualDropout.apply(x, attended, p))
        lin1, lin2 = self.ff[0], self.ff[3]
        p_hidden, p_out = (self.ff[2].p, self.drop2.p) if self.training else (0.0, 0.0)
        y = _FeedForwardResidual.apply(x.reshape(-1, x.shape[-1]), lin1.weight, lin1.bias,
                                       lin2.weight, lin2.bias, p_hidden, p_out)
        return self.norm2(y.view(x.shape))


class TCSAL(nn.Module):
    """TCSAL: ``layers`` × `TCSALLayer` (paper: 4 layers, 4 heads, D = 512, R = 256).

    No positional encoding: causal attention and the distance-based soft span give the order.
    ``forward(x [B, T, D], mask [B, T]) -> [B, T, D]``; `stream` scores piece by piece.
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
        attention_impl: str = "auto",
    ) -> None:
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
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
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

    The TCSAL-only arguments ``R``, ``span_scale`` and ``attention_impl`` are ignored for the
    plain transformer.
    """
    if kind == "tcsal":
        return TCSAL(**kw)
    if kind == "transformer":
        kw = {key: val for key, val in kw.items()
              if key not in ("R", "span_scale", "attention_impl")}
        return PlainTransformer(**kw)
    raise ValueError(f"temporal module must be one of {TEMPORAL_KINDS}, got {kind!r}")


def _valid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.to(device=x.device, dtype=torch.bool)
