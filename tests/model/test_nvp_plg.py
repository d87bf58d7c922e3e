"""Normality visual prompt (Eq. 3-4) and pseudo-label generation (Eq. 5-6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tpwng.model.nvp import NormalityVisualPrompt
from tpwng.model.plg import anomaly_evidence, minmax_normalize, pseudo_labels

D = 8


def _normal_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xn = torch.randn(2, 5, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    t = torch.randn(D, generator=g)
    return xn, mask, t


def test_nvp_as_weights_by_hand():
    xn, mask, t = _normal_batch()
    nvp = NormalityVisualPrompt(D, "as", temperature=0.1)
    w = nvp.weights(xn, mask, t)
    for i, n in enumerate((5, 3)):
        cos = torch.stack([F.cosine_similarity(xn[i, j], t, dim=0) for j in range(n)])
        expected = torch.softmax(cos / 0.1, dim=0)
        torch.testing.assert_close(w[i, :n], expected)
        assert (w[i, n:] == 0).all()
        torch.testing.assert_close(nvp.visual_prompt(xn, mask, t)[i], expected @ xn[i, :n])


def test_nvp_fa_is_the_valid_mean():
    xn, mask, t = _normal_batch()
    q = NormalityVisualPrompt(D, "fa").visual_prompt(xn, mask, t)
    torch.testing.assert_close(q[0], xn[0].mean(0))
    torch.testing.assert_close(q[1], xn[1, :3].mean(0))


def test_nvp_forward_is_ffn_of_concat_plus_skip():
    xn, mask, t = _normal_batch()
    nvp = NormalityVisualPrompt(D, "as")
    out = nvp(xn, mask, t)
    q = nvp.visual_prompt(xn, mask, t)
    expected = nvp.ffn(torch.cat([t.expand(2, D), q], dim=-1)) + t
    assert out.shape == (2, D)
    torch.testing.assert_close(out, expected)
    torch.nn.init.zeros_(nvp.ffn[2].weight)
    torch.nn.init.zeros_(nvp.ffn[2].bias)
    torch.testing.assert_close(nvp(xn, mask, t), t.expand(2, D))


def test_nvp_none_returns_t_normal_and_has_no_parameters():
    xn, mask, t = _normal_batch()
    nvp = NormalityVisualPrompt(D, "none")
    torch.testing.assert_close(nvp(xn, mask, t), t.expand(2, D))
    assert list(nvp.parameters()) == []


def test_nvp_video_without_valid_snippets_is_finite():
    xn, _, t = _normal_batch()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    for mode in ("as", "fa"):
        assert torch.isfinite(NormalityVisualPrompt(D, mode)(xn, mask, t)).all()


def test_nvp_rejects_unknown_mode():
    with pytest.raises(ValueError):
        NormalityVisualPrompt(D, "xx")


def test_minmax_with_mask():
    s = torch.tensor([[0.2, 0.6, 1.0, 9.0], [0.5, 0.5, 0.5, 0.5], [3.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    out = minmax_normalize(s, mask)
    expected = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0] * 4, [1.0, 0.0, 0.5, 0.5]])
    torch.testing.assert_close(out, expected)


def test_minmax_of_an_all_padded_row_is_zero():
    out = minmax_normalize(torch.randn(1, 4), torch.zeros(1, 4, dtype=torch.bool))
    assert (out == 0).all()


def test_evidence_formula_by_hand():
    aa = torch.tensor([[0.0, 0.5, 1.0]])
    an = torch.tensor([[1.0, 0.0, 0.0]])
    phi = (1 - 0.2) * aa + 0.2 * (1 - an)  # [0, 0.6, 1.0], already spans [0, 1]
    torch.testing.assert_close(anomaly_evidence(aa, an, None, 0.2), phi)
    torch.testing.assert_close(anomaly_evidence(aa, an, None, 0.2, guidance=False), aa)


def _designed_video(distractor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S_aa high on snippets 5-9, S_an low there; snippet 12 a normal-looking distractor.

    After normalisation S̃aa is 1 on 5-9, ``distractor`` on 12 and 0 elsewhere; S̃an is 0 on
    5-9 and 1 elsewhere. Snippets 14-15 are padding.
    """
    T = 16
    s_aa = torch.full((1, T), 0.1)
    s_aa[0, 5:10] = 0.9
    s_aa[0, 12] = 0.1 + 0.8 * distractor
    s_an = torch.full((1, T), 0.4)
    s_an[0, 5:10] = -0.2
    mask = torch.ones(1, T, dtype=torch.bool)
    mask[0, 14:] = False
    s_aa[0, 14:] = 5.0  # padding must not count in the normalisation
    return s_aa, s_an, mask


def _labels(s_aa, s_an, mask, guidance):
    aa, an = minmax_normalize(s_aa, mask), minmax_normalize(s_an, mask)
    return pseudo_labels(anomaly_evidence(aa, an, mask, 0.2, guidance), mask, 0.55)


def test_plg_labels_exactly_the_anomalous_part():
    s_aa, s_an, mask = _designed_video(distractor=0.0)
    labels = _labels(s_aa, s_an, mask, guidance=True)
    assert torch.nonzero(labels[0]).flatten().tolist() == [5, 6, 7, 8, 9]


def test_normality_guidance_removes_a_distractor():
    # With S̃aa = 0.6 on snippet 12 and S̃an = 1 there: φ̃ = 0.6 without guidance (≥ 0.55,
    # labelled) but 0.8·0.6 = 0.48 with it (< 0.55, not labelled).
    s_aa, s_an, mask = _designed_video(distractor=0.6)
    with_ng = _labels(s_aa, s_an, mask, guidance=True)
    without_ng = _labels(s_aa, s_an, mask, guidance=False)
    assert torch.nonzero(with_ng[0]).flatten().tolist() == [5, 6, 7, 8, 9]
    assert torch.nonzero(without_ng[0]).flatten().tolist() == [5, 6, 7, 8, 9, 12]


def test_pseudo_labels_are_detached_and_zero_on_padding():
    phi = torch.tensor([[0.9, 0.2, 0.55, 0.99]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    labels = pseudo_labels(phi, mask, 0.55)
    assert not labels.requires_grad
    assert labels.tolist() == [[1.0, 0.0, 1.0, 0.0]]
