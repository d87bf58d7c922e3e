"""What kind of anomaly, per snippet: class probabilities from the learned prompts.

Class probabilities (per snippet, index 0 = normal) combine the classifier's anomaly score ``η``
with the learned prompts::

    p(normal) = 1 - η
    p(c)      = η · softmax_{c' ∈ 1..k-1}(τ · cos(x, T_c'))[c]      for c = 1..k-1

where ``x`` is the snippet's image feature on the same path as TPWNG's similarities (the stored
feature, not standardised), ``T_c`` the class text embeddings and ``τ`` CLIP's logit scale
(``exp(logit_scale)``, 100 for OpenAI's weights). The row sums to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_probabilities(
    features: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: float,
    eta: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-snippet class distribution ``[..., T, k]`` (module docstring for the rule).

    Args:
        features: image features ``[..., T, D]`` as TPWNG's similarities see them (stored
            features, no standardisation); cosines are taken, so their scale does not matter.
        text_embeddings: ``[k, D]``, row 0 = normal (its embedding is not used: p(normal) is
            ``1 - η``).
        logit_scale: ``τ``, the multiplier of the cosines before the softmax.
        eta: anomaly scores ``[..., T]`` in [0, 1] (the classifier output).
        mask: optional ``[..., T]`` bool, True on valid snippets; padded rows are all 0.

    Computed in float32.
    """
    if text_embeddings.ndim != 2 or text_embeddings.shape[0] < 2:
        raise ValueError(f"text embeddings must be [k >= 2, D], got {list(text_embeddings.shape)}")
    if features.shape[-1] != text_embeddings.shape[-1]:
        raise ValueError(f"features have {features.shape[-1]} dimensions, the text embeddings "
                         f"{text_embeddings.shape[-1]}")
    if eta.shape != features.shape[:-1]:
        raise ValueError(f"eta must be {list(features.shape[:-1])}, got {list(eta.shape)}")
    x = F.normalize(features.float(), dim=-1)
    text = F.normalize(text_embeddings.to(device=x.device).float(), dim=-1)
    eta = eta.to(device=x.device).float().unsqueeze(-1)
    within = torch.softmax(float(logit_scale) * (x @ text[1:].T), dim=-1)
    probs = torch.cat([1.0 - eta, eta * within], dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~mask.to(device=x.device, dtype=torch.bool).unsqueeze(-1), 0.0)
    return probs
