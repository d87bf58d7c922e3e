"""Training objective (paper Sec. 3.5, Eq. 10-14; design §5-7), every term masking-aware.

Shapes: ``B`` videos, ``T`` snippets (``mask [B, T]`` True on valid snippets), ``C = k - 1``
anomaly classes. Similarities are cosine similarities (design §1); ``*_norm`` inputs are min-max
normalised per video over the valid snippets (`tpwng.model.plg.minmax_normalize`). Per-video
terms are averaged over the videos that have at least one valid snippet.
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def _video_mean(per_video: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_video`` ``[B]`` over ``counted`` videos; 0 (kept in the graph) if none."""
    counted = counted.to(per_video.dtype)
    return (per_video * counted).sum() / counted.sum().clamp_min(1.0)


def _masked_max(s: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max of each video's entries where ``valid`` (over all non-batch dims) and whether any."""
    flat = s.reshape(s.shape[0], -1)
    keep = valid.expand_as(s).reshape(s.shape[0], -1)
    m = flat.masked_fill(~keep, float("-inf")).amax(dim=1)
    has = keep.any(dim=1)
    return torch.where(has, m, torch.zeros_like(m)), has


def rank_normal(s_nn: torch.Tensor, s_na: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 10: ``mean_i max(0, 1 - max_t S_nn + max_{t,τ} S_na)`` over normal videos.

    Args:
        s_nn: ``[B, T]`` similarity of each normal video to the normal text.
        s_na: ``[B, T, C]`` similarity of each normal video to every anomaly class text.
        mask: ``[B, T]`` valid snippets.
    """
    mask = mask.to(torch.bool)
    top_n, has = _masked_max(s_nn, mask)
    top_a, _ = _masked_max(s_na, mask.unsqueeze(-1))
    return _video_mean(torch.relu(1.0 - top_n + top_a), has)


def rank_anomalous(
    s_an: torch.Tensor,
    s_aa: torch.Tensor,
    s_other: torch.Tensor,
    mask: torch.Tensor,
    other_mask: torch.Tensor,
) -> torch.Tensor:
    """Eq. 11 over anomalous videos, ``φaa`` the classes other than the video's own (design §7):

    ``max(0, 1 - max S_an + max φaa) + max(0, 1 - max S_aa + max φaa)``.

    Args:
        s_an: ``[B, T]`` similarity to the (NVP-enhanced) normal text.
        s_aa: ``[B, T]`` similarity to the video's true anomaly class.
        s_other: ``[B, T, C]`` similarity to every anomaly class.
        mask: ``[B, T]`` valid snippets.
        other_mask: ``[B, C]`` True for the classes allowed in ``φaa`` (all but the true ones);
            a video without any contributes 0.
    """
    mask = mask.to(torch.bool)
    allowed = mask.unsqueeze(-1) & other_mask.to(torch.bool).unsqueeze(1)
    top_other, has_other = _masked_max(s_other, allowed)
    top_an, has = _masked_max(s_an, mask)
    top_aa, _ = _masked_max(s_aa, mask)
    per_video = torch.relu(1.0 - top_an + top_other) + torch.relu(1.0 - top_aa + top_other)
    per_video = torch.where(has_other, per_video, torch.zeros_like(per_video))
    return _video_mean(per_video, has)


def dil(s_aa_norm: torch.Tensor, s_an_norm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Distribution inconsistency loss (Eq. 12): cosine similarity of the two normalised
    similarity vectors of each anomalous video over its valid snippets, averaged over videos.

    (Eq. 12 as printed divides per element, which is the sign of a product of two scalars and
    carries no gradient; the cosine between the vectors is the stated intent.)
    """
    m = mask.to(s_aa_norm.dtype)
    a, b = s_aa_norm * m, s_an_norm * m
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(_EPS)
    return _video_mean(cos, mask.to(torch.bool).any(1))


def smoothness(s_aa_norm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_j (S̃aa_j - S̃aa_{j+1})²`` over valid neighbouring pairs per video, batch mean.

    The paper prints this term as ``L_sp``; its weight λ1 = 0.1 is applied by the caller
    (design §6).
    """
    mask = mask.to(torch.bool)
    pairs = (mask[:, :-1] & mask[:, 1:]).to(s_aa_norm.dtype)
    diff = s_aa_norm[:, :-1] - s_aa_norm[:, 1:]
    return _video_mean((diff.pow(2) * pairs).sum(1), mask.any(1))


def sparsity(s_aa_norm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ_j S̃aa_j`` over valid snippets per video, batch mean.

    The paper prints this term as ``L_sm``; its weight λ2 = 0.01 is applied by the caller
    (design §6).
    """
    mask = mask.to(torch.bool)
    return _video_mean((s_aa_norm * mask.to(s_aa_norm.dtype)).sum(1), mask.any(1))


_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3


def classification(
    scores: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Eq. 13 as binary cross-entropy of the scores ``η`` against the pseudo-labels ``γ``
    (targets, detached; design §5), averaged over the valid snippets of all videos.

    Scores are clamped to ``[eps, 1 - eps]``; computed in float32 (safe under autocast).
    Under ``torch.compile`` the mean is a masked sum over all snippets (no data-dependent
    shapes, so the step stays one graph); eagerly the valid snippets are selected, as before.
    """
    mask = mask.to(torch.bool)
    if _compiling():
        m = mask.float()
        s = scores.float().clamp(eps, 1.0 - eps)
        t = pseudo.detach().float()
        bce = -(t * torch.log(s) + (1.0 - t) * torch.log1p(-s))
        return (bce * m).sum() / m.sum().clamp_min(1.0)
    s = scores.float()[mask].clamp(eps, 1.0 - eps)
    t = pseudo.detach().float()[mask]
    if s.numel() == 0:
        return scores.sum() * 0.0
    return -(t * torch.log(s) + (1.0 - t) * torch.log1p(-s)).mean()
