"""Objective terms (Eq. 10-14) against hand computations, with masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tpwng.model import losses

M3 = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


def test_rank_normal_active_and_inactive():
    s_nn = torch.tensor([[0.1, 0.3, 0.2], [0.9, 0.5, 2.0]])  # 2.0 is padding
    s_na = torch.tensor([
        [[0.0, 0.5], [0.2, -0.1], [0.4, 0.1]],
        [[-0.2, -0.3], [-0.5, -0.4], [5.0, 5.0]],  # padding
    ])
    # video 0: 1 - 0.3 + 0.5 = 1.2 (active); video 1: 1 - 0.9 - 0.2 < 0 (inactive)
    torch.testing.assert_close(losses.rank_normal(s_nn, s_na, M3), torch.tensor(0.6))


def test_rank_anomalous_hinges_and_multilabel():
    s_an = torch.tensor([[0.2, 0.4, 0.1], [0.9, 0.8, 0.7]])
    s_aa = torch.tensor([[0.5, 0.1, 0.0], [0.95, 0.6, 0.7]])
    s_other = torch.tensor([
        [[0.3, 0.9, 0.1], [0.2, 0.1, 0.6], [0.0, 0.0, 0.0]],
        [[0.3, 0.9, -0.2], [0.1, 0.1, -0.1], [0.0, 0.0, 3.0]],  # snippet 2 is padding
    ])
    # video 0 has class 1 (so φaa = classes 0, 2, max 0.6):
    #   max(0, 1 - 0.4 + 0.6) + max(0, 1 - 0.5 + 0.6) = 1.2 + 1.1 = 2.3
    # video 1 has classes 0 and 1 (φaa = class 2 only, max -0.1 on valid snippets):
    #   max(0, 1 - 0.9 - 0.1) + max(0, 1 - 0.95 - 0.1) = 0 + 0 = 0
    other = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    out = losses.rank_anomalous(s_an, s_aa, s_other, M3, other)
    torch.testing.assert_close(out, torch.tensor(2.3 / 2))


def test_rank_anomalous_video_without_other_class_contributes_zero():
    s = torch.zeros(2, 3)
    s_other = torch.zeros(2, 3, 1)
    other = torch.tensor([[True], [False]])
    out = losses.rank_anomalous(s, s, s_other, M3, other)
    torch.testing.assert_close(out, torch.tensor(2.0 / 2))  # (1 + 1) for video 0, 0 for video 1


def test_dil_is_the_cosine_of_the_vectors():
    a = torch.tensor([[1.0, 0.0, 0.5, 0.7], [1.0, 0.0, 0.2, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.5, 0.9], [0.0, 1.0, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    cos0 = 0.25 / 1.25  # snippet 3 is padding
    cos1 = 0.04 / 1.04
    torch.testing.assert_close(losses.dil(a, b, mask), torch.tensor((cos0 + cos1) / 2))


def test_dil_carries_gradient_and_handles_zero_vectors():
    a = torch.tensor([[1.0, 0.0, 0.5]], requires_grad=True)
    b = torch.tensor([[0.0, 1.0, 0.5]])
    losses.dil(a, b, torch.ones(1, 3, dtype=torch.bool)).backward()
    assert a.grad.abs().sum() > 0
    zero = losses.dil(torch.zeros(1, 3), b, torch.ones(1, 3, dtype=torch.bool))
    assert zero.item() == 0.0


def test_smoothness_and_sparsity_by_hand():
    s = torch.tensor([[0.0, 1.0, 0.5, 0.9], [0.2, 0.4, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1]], dtype=torch.bool)
    # video 0: 1 + 0.25 + 0.16; video 1: only the pair (0, 1) is valid: 0.04
    torch.testing.assert_close(losses.smoothness(s, mask), torch.tensor((1.41 + 0.04) / 2))
    # video 0: 2.4; video 1: 0.2 + 0.4 + 0.0
    torch.testing.assert_close(losses.sparsity(s, mask), torch.tensor((2.4 + 0.6) / 2))


def test_classification_equals_torch_bce_on_valid_entries():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 6, generator=g) * 0.98 + 0.01
    pseudo = (torch.rand(3, 6, generator=g) > 0.5).float()
    mask = torch.rand(3, 6, generator=g) > 0.3
    expected = F.binary_cross_entropy(scores[mask], pseudo[mask])
    torch.testing.assert_close(losses.classification(scores, pseudo, mask), expected)


def test_classification_targets_are_detached_and_extremes_are_finite():
    scores = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    pseudo = torch.tensor([[1.0, 0.0, 1.0]], requires_grad=True)
    out = losses.classification(scores, pseudo, torch.ones(1, 3, dtype=torch.bool))
    assert math.isfinite(out.item())
    out.backward()
    assert pseudo.grad is None and torch.isfinite(scores.grad).all()


def test_empty_masks_give_zero():
    s = torch.rand(2, 3)
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert losses.rank_normal(s, s.unsqueeze(-1), none).item() == 0.0
    assert losses.smoothness(s, none).item() == 0.0
    assert losses.classification(s, s, none).item() == 0.0


def test_classification_compiles_to_one_graph_with_the_eager_value():
    """Under torch.compile the masked mean is a masked sum (no data-dependent shapes): one
    graph (fullgraph raises on a break), and the value and gradient of the eager selection."""
    torch.manual_seed(0)
    scores = torch.rand(4, 16, requires_grad=True)
    pseudo = (torch.rand(4, 16) > 0.5).float()
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, :10] = True
    mask[2, 10:] = True
    eager = losses.classification(scores, pseudo, mask)
    (g_eager,) = torch.autograd.grad(eager, scores)
    compiled = torch.compile(losses.classification, backend="eager", fullgraph=True)
    value = compiled(scores, pseudo, mask)
    (g_compiled,) = torch.autograd.grad(value, scores)
    assert torch.allclose(value, eager, atol=1e-6, rtol=0)
    assert torch.allclose(g_compiled, g_eager, atol=1e-7, rtol=0)
    empty = compiled(scores, pseudo, torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0
