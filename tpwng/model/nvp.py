"""Normality visual prompt, NVP (paper Sec. 3.2, Eq. 3-4; ablation Table 2).

The normal-event text embedding ``T_n`` is enhanced with a visual prompt ``Q_i`` taken from a
normal video ``X_i^n``:

    S_nn = cos(X_i^n, T_n)                         (Eq. 3, cosine per design §1)
    Q_i  = softmax(S_nn / temperature) · X_i^n     (Eq. 3, over the valid snippets)
    Ṫ_n  = FFN([T_n ; Q_i]) + T_n                  (Eq. 4)

The softmax is taken at CLIP's logit scale (``1 / temperature`` = 100 by default): a softmax of
raw cosines, which lie in [-1, 1], is nearly uniform and would make NVP-AS the frame average.
Modes: ``"as"`` (aggregation by similarity, the paper's NVP), ``"fa"`` (frame average, NVP-FA),
``"none"`` (``T_n`` returned unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tpwng.model.hyperparameters import NVP_MODE, NVP_TEMPERATURE
from tpwng.model.masks import valid_mask

NVP_MODES = ("as", "fa", "none")


class NormalityVisualPrompt(nn.Module):
    """Enhance the normal text embedding with each normal video's visual prompt (Eq. 3-4)."""

    def __init__(self, dim: int = 512, mode: str = NVP_MODE,
                 temperature: float = NVP_TEMPERATURE) -> None:
        super().__init__()
        if mode not in NVP_MODES:
            raise ValueError(f"NVP mode must be one of {NVP_MODES}, got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"NVP temperature must be > 0, got {temperature}")
        self.dim = dim
        self.mode = mode
        self.temperature = float(temperature)
        # FFN = Linear(2D→D) – GELU – Linear(D→D) (design §4); absent without NVP.
        self.ffn: nn.Module | None = None
        if mode != "none":
            self.ffn = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def weights(
        self, xn: torch.Tensor, mask: torch.Tensor | None, t_normal: torch.Tensor
    ) -> torch.Tensor:
        """Aggregation weights ``[B, T]`` over each normal video's valid snippets (sum 1)."""
        valid = valid_mask(xn, mask)
        if self.mode == "fa":
            w = valid.to(xn.dtype)
            return w / w.sum(1, keepdim=True).clamp_min(1.0)
        s_nn = F.normalize(xn, dim=-1) @ F.normalize(t_normal, dim=-1)  # [B, T]
        logits = (s_nn / self.temperature).masked_fill(~valid, float("-inf"))
        # A video without valid snippets gets no weight at all instead of NaN.
        logits = logits.masked_fill(~valid.any(1, keepdim=True), 0.0)
        return torch.softmax(logits, dim=1) * valid

    def visual_prompt(
        self, xn: torch.Tensor, mask: torch.Tensor | None, t_normal: torch.Tensor
    ) -> torch.Tensor:
        """``Q_i`` ``[B, D]``: the weighted sum of the normal video's features (Eq. 3)."""
        w = self.weights(xn, mask, t_normal)
        return torch.einsum("bt,btd->bd", w, xn)

    def forward(
        self, xn: torch.Tensor, mask: torch.Tensor | None, t_normal: torch.Tensor
    ) -> torch.Tensor:
        """Enhanced normal text ``Ṫ_n`` ``[B, D]``, one per normal video (Eq. 4).

        Args:
            xn: normal video features ``[B, T, D]`` (raw CLIP image embeddings).
            mask: ``[B, T]`` bool, True on valid snippets (None: all valid).
            t_normal: the normal-event text embedding ``[D]``.
        """
        t = t_normal.to(xn.dtype).unsqueeze(0).expand(xn.shape[0], -1)
        if self.ffn is None:
            return t
        q = self.visual_prompt(xn, mask, t_normal.to(xn.dtype))
        return self.ffn(torch.cat([t, q], dim=-1)) + t

