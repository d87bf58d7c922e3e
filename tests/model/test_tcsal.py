"""TCSAL: soft span mask (Eq. 7), spans (Eq. 8), masked attention (Eq. 9), causality; both
attention implementations (fused SDPA and the hand-written Eq. 9)."""

from __future__ import annotations

import math

import pytest
import torch

from tpwng.model.tcsal import (
    ATTENTION_IMPLS,
    TCSAL,
    AdaptiveSpanAttention,
    PlainTransformer,
    make_temporal,
    soft_mask,
)

D = 16


def _x(B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def test_soft_mask_eq7_by_hand():
    h = torch.arange(9, dtype=torch.float32)
    chi = soft_mask(torch.tensor(2.0), h, R=4)
    # (4 + 2 - h) / 4 clamped to [0, 1]
    assert chi.tolist() == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]


def _naive_weights(att: AdaptiveSpanAttention, x: torch.Tensor, mask: torch.Tensor):
    """Eq. 9 written out with loops, from the module's own projections."""
    B, T, _ = x.shape
    H, dh = att.heads, att.head_dim
    q, k, _ = att.qkv(x).view(B, T, 3, H, dh).unbind(2)
    z = att.spans(x, mask)
    w = torch.zeros(B, H, T, T)
    for b in range(B):
        for hd in range(H):
            for t in range(T):
                num = torch.zeros(T)
                for r in range(t + 1):
                    if not mask[b, r]:
                        continue
                    beta = q[b, t, hd] @ k[b, r, hd] / math.sqrt(dh)
                    chi = min(max((att.R + z[b, hd, t] - (t - r)) / att.R, 0.0), 1.0)
                    num[r] = chi * torch.exp(beta)
                w[b, hd, t] = num / num.sum()
    return w


@pytest.mark.parametrize("span_scale", [3.0, None])
def test_attention_weights_match_eq9(span_scale):
    torch.manual_seed(0)
    att = AdaptiveSpanAttention(D, heads=2, R=2, span_scale=span_scale).eval()
    x = _x(T=8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        _, w, z = att(x, mask, return_weights=True)
        expected = _naive_weights(att, x, mask)
    valid_q = mask[:, None, :, None].expand_as(w)
    torch.testing.assert_close(w[valid_q], expected[valid_q], atol=1e-5, rtol=1e-4)
    if span_scale is not None:  # z < 3, so χ = 0 at distances h >= 5
        assert (w[0, :, 7, :3] == 0).all() and (w[0, :, 7, 6:] > 0).all()


def test_rows_sum_to_one_and_no_future_or_padded_keys():
    torch.manual_seed(0)
    att = AdaptiveSpanAttention(D, heads=4, R=4, span_scale=6).eval()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    _, w, _ = att(_x(), mask, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 12))
    future = torch.triu(torch.ones(12, 12, dtype=torch.bool), diagonal=1)
    assert (w[:, :, future] == 0).all()
    assert (w[1, :, :, 9:] == 0).all()


def test_span_range():
    torch.manual_seed(0)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 5:] = False
    fixed = AdaptiveSpanAttention(D, heads=4, span_scale=7).spans(_x(), mask)
    assert fixed.shape == (2, 4, 12)
    assert (fixed > 0).all() and (fixed < 7).all()
    per_length = AdaptiveSpanAttention(D, heads=4, span_scale=None).spans(_x(), mask)
    assert (per_length[0] < 12).all() and (per_length[1] < 5).all() and (per_length > 0).all()


def _model(span_scale=6, **kw) -> TCSAL:
    torch.manual_seed(0)
    return TCSAL(D, layers=2, heads=2, R=4, span_scale=span_scale, ff_dim=32, **kw).eval()


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_causal_future_does_not_change_the_past(impl):
    model = _model(attention_impl=impl)
    x = _x(T=10)
    with torch.no_grad():
        y = model(x)
        changed = x.clone()
        changed[:, 6:] = torch.randn(2, 4, D)
        y_changed = model(changed)
        y_longer = model(torch.cat([x, torch.randn(2, 5, D)], dim=1))
    torch.testing.assert_close(y_changed[:, :6], y[:, :6])
    torch.testing.assert_close(y_longer[:, :10], y)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
@pytest.mark.parametrize("span_scale", [6, None])
def test_padding_does_not_change_valid_outputs(span_scale, impl):
    model = _model(span_scale, attention_impl=impl)
    x = _x(B=1, T=7)
    padded = torch.cat([x, torch.randn(1, 5, D)], dim=1)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, :7] = True
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask)[:, :7], model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_chunked_attention_equals_whole(impl):
    model = _model(span_scale=3, attention_impl=impl)
    x = _x(T=40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 33:] = False
    with torch.no_grad():
        whole = model(x, mask)
        for layer in model.layers:
            layer.attn.chunk_size = 8  # key window F + R = 7 < chunk
        chunked = model(x, mask)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_span_parameters_get_gradient_when_the_mask_bites(impl):
    model = _model(span_scale=2, attention_impl=impl).train()
    model(_x(T=12)).pow(2).sum().backward()
    span = model.layers[0].attn.span
    assert span.weight.grad is not None and span.weight.grad.abs().sum() > 0


def test_forward_with_attention():
    model = _model()
    y, weights, spans = model.forward_with_attention(_x())
    torch.testing.assert_close(y, model(_x()))
    assert len(weights) == 2 and weights[0].shape == (2, 2, 12, 12)
    assert spans[1].shape == (2, 2, 12)


def test_plain_transformer_and_factory():
    torch.manual_seed(0)
    plain = make_temporal("transformer", dim=D, layers=1, heads=2, R=4, span_scale=6,
                          ff_dim=32, dropout=0.0).eval()
    assert isinstance(plain, PlainTransformer)
    x = _x(B=1, T=7)
    padded = torch.cat([x, torch.randn(1, 3, D)], dim=1)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, :7] = True
    with torch.no_grad():
        torch.testing.assert_close(plain(padded, mask)[:, :7], plain(x), atol=1e-5, rtol=1e-5)
        # Bidirectional: the future changes the past.
        changed = x.clone()
        changed[:, 5:] += 1.0
        assert not torch.allclose(plain(changed)[:, :5], plain(x)[:, :5])
    assert isinstance(make_temporal("tcsal", dim=D, layers=1, heads=2, ff_dim=32), TCSAL)
    with pytest.raises(ValueError):
        make_temporal("lstm")
