"""The fast paths of TCSAL (`tpwng.model.tcsal`): autograd functions with hand-written backwards.

Each equals an autograd composition of ordinary operations
(`tests/model/test_attention_equivalence.py` holds them to it) and is faster or lighter on
memory than that composition on the CPU:

* `SpanAttention`: Eq. 9 over whole sequences, per head, forward and backward written out
  (``attention_impl="fused"``);
* `LogSpanMask`: the additive mask ``log χ`` that SDPA takes, with its gradient sent straight to
  the spans ``z``;
* `ResidualDropout`, `FeedForwardResidual`: a layer's residual branches, with in-place
  activations and `dropout_mask`;
* `SplitHeads`, `MergeHeads`: the head reshapes, one copy each way.

The soft mask of Eq. 7 is not written here: the functions that need it take it as an argument
(`SoftMask`, which `tpwng.model.tcsal.span_mask` is), so that every path computes χ the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F


class SoftMask(Protocol):
    """Eq. 7 from a distance ramp: χ, or ``log χ`` (``log``), or χ clamped at ``floor`` from
    below (`tpwng.model.tcsal.span_mask`)."""

    def __call__(self, z: torch.Tensor, ramp: torch.Tensor, R: float, log: bool = False,
                 floor: float = 0.0) -> torch.Tensor: ...


def _span_grad(g: torch.Tensor, chi: SoftMask, z: torch.Tensor, ramp: torch.Tensor,
               R: float) -> torch.Tensor:
    """``∂L/∂z`` ``[..., Tq]`` from the gradient ``g`` reaching the mask ``log χ`` of spans ``z``
    ``[..., Tq]``: ``∂ log χ / ∂z = 1 / (R χ)`` on the ramp ``0 < χ < 1`` and 0 elsewhere, so
    ``∂L/∂z = Σ_r g_r / (R χ_r)`` over the ramp."""
    # 1/χ: > 1 on the ramp, 1 on the plateau (zeroed by the threshold), capped where χ = 0
    # (there g = 0: those keys have weight 0)
    inv = chi(z.unsqueeze(-1), ramp, R, floor=torch.finfo(z.dtype).tiny).reciprocal_()
    F.threshold(inv, 1.0, 0.0, inplace=True)
    return inv.mul_(g).sum(-1).div_(R)


class LogSpanMask(torch.autograd.Function):
    """``log χ`` ``[..., Tq, Tk]`` of spans ``z`` ``[..., Tq]`` over ``ramp`` (`SoftMask` ``chi``
    with ``log``), with a hand-written backward: no ``B×H×Tq×Tk`` autograd chain, and only ``z``
    and the ramp saved."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, ramp: torch.Tensor, R: float,
                chi: SoftMask) -> torch.Tensor:
        ctx.save_for_backward(z, ramp)
        ctx.R, ctx.chi = R, chi
        return chi(z.unsqueeze(-1), ramp, R, log=True)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        z, ramp = ctx.saved_tensors
        return _span_grad(g, ctx.chi, z, ramp, ctx.R), None, None, None


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


class ResidualDropout(torch.autograd.Function):
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


class FeedForwardResidual(torch.autograd.Function):
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


class SplitHeads(torch.autograd.Function):
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


class MergeHeads(torch.autograd.Function):
    """``[B, H, T, D/H]`` to ``[B, T, D]``; the gradient goes back contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        B, H, T, d = x.shape
        ctx.shape = (B, T, H, d)
        return x.transpose(1, 2).reshape(B, T, H * d)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(ctx.shape).transpose(1, 2).contiguous()


def _head_views(qkv: torch.Tensor, heads: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(q, k, v)`` of each head: ``[B, T, D/H]`` views into the projections ``[B, T, 3D]``."""
    D = qkv.shape[-1] // 3
    d = D // heads
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        yield tuple(qkv[:, :, i * D + cols.start : i * D + cols.stop] for i in range(3))


class SpanAttention(torch.autograd.Function):
    """Eq. 9 over whole sequences, forward and backward written out per head:
    ``apply(qkv [B, T, 3D], z [B, H, T], ramp [1 or B, T, T], R, heads, p, chi) -> [B, T, D]``.

    Reads ``q, k, v`` of head ``h`` as strided views of the projections and writes each head's
    context into its columns of ``[B, T, D]``: no head is split or merged by a copy. Per head one
    ``[B, T, T]`` score tensor is made: ``log χ`` (``chi`` with ``log``), the scores added into
    it (``baddbmm``), the softmax taken in place; dropout (rate ``p``) uses `dropout_mask`.
    Saved: the weights ``P`` and, with dropout, the dropped and rescaled ``P̃``. The backward uses
    ``Σ_r ∂L/∂P̃_r · P̃_r = ∂L/∂o · o`` (no ``[T, T]`` reduction), returns the gradient of ``log χ``
    straight to the spans (``∂ log χ / ∂z = 1 / (R χ)`` on the ramp, 0 elsewhere), and writes
    ``∂L/∂q, ∂L/∂k, ∂L/∂v`` into the columns of one ``[B, T, 3D]`` gradient.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, z: torch.Tensor, ramp: torch.Tensor, R: float,
                heads: int, p: float, chi: SoftMask) -> torch.Tensor:
        B, T, D3 = qkv.shape
        D = D3 // 3
        d = D // heads
        scale = 1.0 / math.sqrt(d)
        out = qkv.new_empty(B, T, D)
        saved = []
        for h, (q, k, v) in enumerate(_head_views(qkv, heads)):
            s = chi(z[:, h, :, None], ramp, R, log=True)  # [B, T, T]
            s.baddbmm_(q, k.transpose(1, 2), alpha=scale)
            w = torch.ops.aten._softmax.out(s, -1, False, out=s)
            wd = w
            if p > 0:
                drop, keep_scale = dropout_mask(w.shape, p, w.device)
                wd = w.mul(keep_scale).masked_fill_(drop, 0.0)
                del drop
            torch.bmm(wd, v, out=out[:, :, h * d : (h + 1) * d])
            saved += [w] if p == 0 else [w, wd]
        ctx.save_for_backward(qkv, z, ramp, out, *saved)
        ctx.R, ctx.heads, ctx.dropout, ctx.scale, ctx.chi = R, heads, p > 0, scale, chi
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        qkv, z, ramp, out, *saved = ctx.saved_tensors
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
            gz[:, h] = _span_grad(gs, ctx.chi, z[:, h], ramp, R)  # ∂L/∂s reaches log χ as is
            gs.mul_(scale)  # ∂L/∂β → ∂L/∂(q·k)
            torch.bmm(gs, k, out=gqkv[:, :, cols])
            torch.bmm(gs.transpose(1, 2), q, out=gqkv[:, :, D + cols.start : D + cols.stop])
        return gqkv, gz, None, None, None, None, None
