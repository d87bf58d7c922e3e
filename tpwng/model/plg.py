"""Pseudo-label generation with normality guidance (paper Sec. 3.3, Eq. 5-6; design §2-3).

For an anomalous video, with ``S̃aa`` its min-max normalised similarity to its true anomaly
class text and ``S̃an`` its similarity to the NVP-enhanced normal text:

    φ = (1 - α) · S̃aa + α · (1 - S̃an)      anomaly evidence (design §3; this is 1 - ψ of Eq. 5)
    γ = [φ̃ ≥ θ]                              Eq. 6, on the min-max normalised φ̃

As printed, ψ of Eq. 5 is large on *normal* snippets, so thresholding ψ̃ ≥ θ would mark normal
snippets anomalous; φ = 1 - ψ is the intended evidence. Pseudo-labels are targets: no gradient.
"""

from __future__ import annotations

import torch

from .hyperparameters import ALPHA, THETA


def minmax_normalize(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each row of ``s`` ``[B, T]`` over its valid snippets (design §2).

    Padded positions become 0; a row that is constant over its valid snippets becomes all 0.
    Differentiable (the losses of Eq. 12 and the smoothness/sparsity terms use it).
    """
    valid = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    s = s.float()
    lo = s.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    hi = s.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    span = hi - lo
    ok = torch.isfinite(span) & (span > 1e-12)
    lo = torch.where(ok, lo, torch.zeros_like(lo))
    span = torch.where(ok, span, torch.ones_like(span))
    out = (s - lo) / span
    return torch.where(valid & ok, out, torch.zeros_like(out))


def anomaly_evidence(
    s_aa_norm: torch.Tensor,
    s_an_norm: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = ALPHA,
    guidance: bool = True,
) -> torch.Tensor:
    """Normalised anomaly evidence ``φ̃`` ``[B, T]`` (Eq. 5 as ``1 - ψ``, design §3).

    ``φ = (1 - α)·S̃aa + α·(1 - S̃an)`` with normality guidance, else ``φ = S̃aa`` (Table 3's
    "w/o NG"); then min-max normalised over the valid snippets.
    """
    phi = (1.0 - alpha) * s_aa_norm + alpha * (1.0 - s_an_norm) if guidance else s_aa_norm
    return minmax_normalize(phi, mask)


@torch.no_grad()
def pseudo_labels(
    phi_norm: torch.Tensor, mask: torch.Tensor | None = None, theta: float = THETA
) -> torch.Tensor:
    """Snippet pseudo-labels ``γ = [φ̃ ≥ θ]`` on valid snippets, 0 elsewhere (Eq. 6); detached."""
    labels = phi_norm.detach() >= theta
    if mask is not None:
        labels = labels & mask.to(torch.bool)
    return labels.float()
