"""TPWNG: prompts, NVP, pseudo-label generation, TCSAL and classifier in one module (Fig. 2).

Training (supplement 9, design §10) runs everything in one step: the text side fine-tunes the
prompt context and the text projection with the ranking losses and L_dil (Eq. 10-12), PLG turns
the similarities into pseudo-labels (Eq. 5-6), and the temporal module + classifier learn from
them (Eq. 13); the total is Eq. 14. Inference uses only image features → temporal module →
classifier (design §11).

Class index 0 is "normal"; indices 1..k-1 are the anomaly classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .class_probs import class_probabilities as _class_probabilities
from .classifier import Classifier
from .hyperparameters import (
    ALPHA,
    DROPOUT,
    FF_DIM,
    HEADS,
    LAYERS,
    N_CTX,
    NVP_MODE,
    NVP_TEMPERATURE,
    RAMP_R,
    SPAN_SCALE,
    THETA,
)
from .masks import valid_mask
from .nvp import NVP_MODES, NormalityVisualPrompt
from .plg import anomaly_evidence, minmax_normalize, pseudo_labels
from .prompt import PromptLearner, TextEncoder
from .tcsal import TEMPORAL_KINDS, make_temporal

LOG_KEYS = (
    "loss", "loss_rank_n", "loss_rank_a", "loss_dil", "loss_cl", "loss_smooth", "loss_sparse",
    "pl_pos_rate",
)


@dataclass
class ModelConfig:
    """Model and objective settings (paper Sec. 4.2 defaults, `hyperparameters`; UCF-Crime θ).

    The config schema's ``model`` defaults equal these (tests/test_config.py)."""

    n_ctx: int = N_CTX
    class_specific_ctx: bool = False
    finetune_text_projection: bool = True
    nvp: str = NVP_MODE
    nvp_temperature: float = NVP_TEMPERATURE
    guidance: bool = True
    alpha: float = ALPHA
    theta: float = THETA
    temporal: str = "tcsal"
    layers: int = LAYERS
    heads: int = HEADS
    R: int = RAMP_R
    span_scale: int | None = SPAN_SCALE
    ff_dim: int = FF_DIM
    dropout: float = DROPOUT
    lambda_smooth: float = 0.1
    lambda_sparse: float = 0.01
    use_rank_normal: bool = True
    use_rank_anomalous: bool = True
    use_dil: bool = True
    use_cl: bool = True
    use_smooth: bool = True
    use_sparse: bool = True
    # Ours: standardise features per dimension with training-set statistics before the temporal
    # module (CLIP features share a large common component); similarities use raw features.
    standardize_features: bool = True

    def __post_init__(self) -> None:
        if self.nvp not in NVP_MODES:
            raise ValueError(f"model.nvp must be one of {NVP_MODES}, got {self.nvp!r}")
        if self.temporal not in TEMPORAL_KINDS:
            raise ValueError(
                f"model.temporal must be one of {TEMPORAL_KINDS}, got {self.temporal!r}"
            )
        if self.n_ctx < 0:
            raise ValueError(f"model.n_ctx must be >= 0, got {self.n_ctx}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"model.alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"model.theta must be in [0, 1], got {self.theta}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ModelConfig:
        """Build from a plain dict; unknown keys are an error (they are usually typos)."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TPWNG(nn.Module):
    """The TPWNG model on stored CLIP image features.

    Args:
        clip_model: frozen open_clip CLIP model (only its text parts are kept, by reference).
        classnames: ``k`` class names, ``classnames[0] == "normal"``.
        cfg: `ModelConfig`.
        dim: feature dimension D (CLIP's embedding width, 512 for ViT-B/16).
    """

    def __init__(
        self, clip_model: nn.Module, classnames: list[str], cfg: ModelConfig, dim: int = 512
    ) -> None:
        super().__init__()
        if len(classnames) < 2 or classnames[0].strip().lower() != "normal":
            raise ValueError(f"classnames must start with 'normal' and name >= 1 anomaly class, "
                             f"got {classnames}")
        self.cfg = cfg
        self.classnames = list(classnames)
        self.dim = dim
        self.prompt = PromptLearner(
            clip_model, classnames, n_ctx=cfg.n_ctx, class_specific=cfg.class_specific_ctx
        )
        self.text_encoder = TextEncoder(
            clip_model, finetune_projection=cfg.finetune_text_projection
        )
        self.nvp = NormalityVisualPrompt(dim, mode=cfg.nvp, temperature=cfg.nvp_temperature)
        self.temporal = make_temporal(
            cfg.temporal, dim=dim, layers=cfg.layers, heads=cfg.heads, R=cfg.R,
            span_scale=cfg.span_scale, ff_dim=cfg.ff_dim, dropout=cfg.dropout,
        )
        self.classifier = Classifier(dim)
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        # CLIP's learned logit scale τ = exp(logit_scale), capped at 100 as CLIP trains it; a
        # plain float (not state), used only for class probabilities.
        self.logit_scale = clip_logit_scale(clip_model)
        with torch.no_grad():
            out_dim = self.text_embeddings().shape[-1]
        if out_dim != dim:
            raise ValueError(f"CLIP text embeddings have {out_dim} dimensions, the model {dim}")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    # -- parameters ------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Prompt context, text projection copy, NVP, temporal module and classifier."""
        params = [self.prompt.ctx]
        params += [p for p in self.text_encoder.projection_parameters() if p.requires_grad]
        for module in (self.nvp, self.temporal, self.classifier):
            params += list(module.parameters())
        return params

    def _frozen_keys(self) -> set[str]:
        shared = {id(p) for p in self.text_encoder.transformer.parameters()}
        shared |= {id(p) for p in self.text_encoder.ln_final.parameters()}
        shared.add(id(self.text_encoder.positional_embedding))
        return {name for name, p in self.named_parameters() if id(p) in shared}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen CLIP text tower (which the CLIP identity determines)."""
        frozen = self._frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` saved; every other key must be frozen CLIP's."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = sorted(set(missing) - self._frozen_keys())
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit the model: missing {missing}, "
                           f"unexpected {list(unexpected)}")

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training features (used when standardising)."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp_min(1e-6))

    # -- forward paths ---------------------------------------------------------------------

    def text_embeddings(self) -> torch.Tensor:
        """``E`` ``[k, D]``: one text embedding per class (Eq. 1-2), index 0 = normal."""
        return self.text_encoder(self.prompt(), self.prompt.eot_positions)

    def score(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Anomaly scores ``η`` ``[B, T]`` from raw image features ``[B, T, D]`` (design §11).

        Padded positions score 0.
        """
        x = self._features(x)
        valid = valid_mask(x, mask)
        if self.cfg.standardize_features:
            x = (x - self.feat_mean.to(x.dtype)) / self.feat_std.to(x.dtype)
        eta = self.classifier(self.temporal(x, valid))
        return eta.masked_fill(~valid, 0.0)

    def class_probabilities(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        logit_scale: float | None = None,
    ) -> torch.Tensor:
        """Class distribution ``[B, T, k]`` per snippet from raw image features ``[B, T, D]``.

        ``p(normal) = 1 - η`` and ``p(c) = η · softmax_c(τ · cos(x, T_c))`` over the anomaly
        classes (`tpwng.model.class_probs.class_probabilities`), with ``η`` = `score` and the
        cosines on the features `similarities` compares. The text embeddings are computed once
        per call; pass ``text`` (and ``logit_scale``), e.g. those a checkpoint stores, to skip
        the text tower. Padded positions are all 0.
        """
        eta = self.score(x, mask)
        x = self._features(x)
        text = self.text_embeddings() if text is None else text
        scale = self.logit_scale if logit_scale is None else float(logit_scale)
        with _full_precision(x):
            return _class_probabilities(x, text, scale, eta, valid_mask(x, mask))

    def similarities(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cosine similarities ``[B, T, k]`` of snippets to the texts (design §1); padded → 0."""
        x = self._features(x)
        text = self.text_embeddings() if text is None else text
        with _full_precision(x):
            s = F.normalize(x.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
        return s.masked_fill(~valid_mask(x, mask).unsqueeze(-1), 0.0)

    def _anomalous_similarities(
        self, xa: torch.Tensor, mask_a: torch.Tensor, labels_a: torch.Tensor,
        text: torch.Tensor, t_normal_pairs: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """S_an, S_aa (max over the true classes), all anomaly similarities and φaa's mask."""
        s_all = self.similarities(xa, mask_a, text[1:])  # [Ba, T, k-1]
        with _full_precision(xa):
            s_an = torch.einsum(
                "btd,bd->bt",
                F.normalize(xa.float(), dim=-1),
                F.normalize(t_normal_pairs.float(), dim=-1),
            ).masked_fill(~mask_a, 0.0)
        if labels_a.shape != (xa.shape[0], self.num_classes):
            raise ValueError(
                f"labels_a must be [{xa.shape[0]}, {self.num_classes}] (multi-hot over all "
                f"classes), got {list(labels_a.shape)}"
            )
        true = labels_a[:, 1:].to(device=xa.device) > 0.5  # [Ba, k-1]
        # A video without an anomaly class takes its best-matching class, and has no φaa.
        pick = torch.where(true.any(1, keepdim=True), true, torch.ones_like(true))
        s_aa = s_all.masked_fill(~pick.unsqueeze(1), float("-inf")).amax(-1)
        s_aa = s_aa.masked_fill(~mask_a, 0.0)
        return {"s_an": s_an, "s_aa": s_aa, "s_all": s_all, "other": ~pick}

    def training_terms(
        self,
        xn: torch.Tensor,
        mask_n: torch.Tensor,
        xa: torch.Tensor,
        mask_a: torch.Tensor,
        labels_a: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One step of the full objective (Eq. 14), nothing read back to the host.

        Args:
            xn, xa: normal / anomalous video features ``[Bn, Tn, D]``, ``[Ba, Ta, D]``; anomalous
                video ``i`` is paired with normal video ``i mod Bn`` for the NVP (design §4).
            mask_n, mask_a: ``[B, T]`` bool, True on valid snippets.
            labels_a: ``[Ba, k]`` multi-hot over all classes (column 0, normal, is ignored).

        Returns:
            The total loss, the value of each term (``LOG_KEYS``, detached 0-d tensors on the
            device) and the anomalous videos' pseudo-labels ``[Ba, Ta]`` (0 on padding).
        """
        cfg = self.cfg
        xn, xa = self._features(xn), self._features(xa)
        if xn.shape[0] == 0 or xa.shape[0] == 0:
            raise ValueError("a training step needs at least one normal and one anomalous video")
        mask_n, mask_a = valid_mask(xn, mask_n), valid_mask(xa, mask_a)
        text = self.text_embeddings().to(xn.dtype)  # E, [k, D]

        # Normal videos: S_nn against the un-enhanced T_normal (Eq. 3) and S_na (Eq. 10).
        s_n = self.similarities(xn, mask_n, text)
        s_nn, s_na = s_n[..., 0], s_n[..., 1:]
        # NVP (Eq. 3-4): enhanced normal text per normal video, paired with anomalous videos.
        enhanced = self.nvp(xn, mask_n, text[0])
        pair = torch.arange(xa.shape[0], device=xa.device) % xn.shape[0]
        sims = self._anomalous_similarities(xa, mask_a, labels_a, text, enhanced[pair])
        s_aa_norm = minmax_normalize(sims["s_aa"], mask_a)
        s_an_norm = minmax_normalize(sims["s_an"], mask_a)

        # PLG (Eq. 5-6): targets, no gradient.
        with torch.no_grad():
            phi = anomaly_evidence(
                s_aa_norm.detach(), s_an_norm.detach(), mask_a, cfg.alpha, cfg.guidance
            )
            pseudo = pseudo_labels(phi, mask_a, cfg.theta)

        # Scores of both kinds of video in one pass of the temporal module + classifier.
        T = max(xn.shape[1], xa.shape[1])
        x_all = torch.cat([_pad_time(xn, T), _pad_time(xa, T)])
        m_all = torch.cat([_pad_time(mask_n, T), _pad_time(mask_a, T)])
        targets = torch.cat([torch.zeros_like(m_all[: xn.shape[0]], dtype=pseudo.dtype),
                             _pad_time(pseudo, T)])
        eta = self.score(x_all, m_all)

        terms = {
            "loss_rank_n": losses.rank_normal(s_nn, s_na, mask_n),
            "loss_rank_a": losses.rank_anomalous(
                sims["s_an"], sims["s_aa"], sims["s_all"], mask_a, sims["other"]
            ),
            "loss_dil": losses.dil(s_aa_norm, s_an_norm, mask_a),
            "loss_cl": losses.classification(eta, targets, m_all),
            "loss_smooth": losses.smoothness(s_aa_norm, mask_a),
            "loss_sparse": losses.sparsity(s_aa_norm, mask_a),
        }
        weights = {
            "loss_rank_n": float(cfg.use_rank_normal),
            "loss_rank_a": float(cfg.use_rank_anomalous),
            "loss_dil": float(cfg.use_dil),
            "loss_cl": float(cfg.use_cl),
            "loss_smooth": cfg.lambda_smooth if cfg.use_smooth else 0.0,
            "loss_sparse": cfg.lambda_sparse if cfg.use_sparse else 0.0,
        }
        loss = sum(w * terms[k] for k, w in weights.items() if w != 0.0)
        if not isinstance(loss, torch.Tensor):  # every term switched off
            loss = eta.sum() * 0.0
        logs = {k: v.detach() for k, v in terms.items()}
        logs["loss"] = loss.detach()
        logs["pl_pos_rate"] = pseudo.sum() / mask_a.sum().clamp_min(1)
        return loss, logs, pseudo

    def training_step(
        self,
        xn: torch.Tensor,
        mask_n: torch.Tensor,
        xa: torch.Tensor,
        mask_a: torch.Tensor,
        labels_a: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """`training_terms` with each logged value read back as a float (one host
        synchronisation per value: the training loop keeps them on the device instead)."""
        loss, logs, pseudo = self.training_terms(xn, mask_n, xa, mask_a, labels_a)
        return loss, {k: float(v) for k, v in logs.items()}, pseudo

    @torch.no_grad()
    def pseudo_and_similarities(
        self,
        xa: torch.Tensor,
        mask_a: torch.Tensor | None,
        labels_a: torch.Tensor,
        xn: torch.Tensor | None = None,
        mask_n: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """PLG's view of anomalous videos, for diagnostics and plots (no gradient).

        The normal text for ``S_an`` is the NVP-enhanced normal text averaged over the supplied
        normal videos ``xn``, or the un-enhanced ``T_normal`` when none are given (e.g. at test
        time). Returns ``[Ba, T]`` tensors: ``s_aa``, ``s_an`` (min-max normalised), ``s_aa_raw``,
        ``s_an_raw`` (cosines), ``phi`` (normalised anomaly evidence) and ``pseudo``.
        """
        xa = self._features(xa)
        mask_a = valid_mask(xa, mask_a)
        text = self.text_embeddings().to(xa.dtype)
        if xn is not None and xn.shape[0] > 0:
            xn = self._features(xn)
            t_normal = self.nvp(xn, valid_mask(xn, mask_n), text[0]).mean(0)
        else:
            t_normal = text[0]
        pairs = t_normal.unsqueeze(0).expand(xa.shape[0], -1)
        sims = self._anomalous_similarities(xa, mask_a, labels_a, text, pairs)
        s_aa = minmax_normalize(sims["s_aa"], mask_a)
        s_an = minmax_normalize(sims["s_an"], mask_a)
        phi = anomaly_evidence(s_aa, s_an, mask_a, self.cfg.alpha, self.cfg.guidance)
        return {
            "s_aa": s_aa, "s_an": s_an, "s_aa_raw": sims["s_aa"], "s_an_raw": sims["s_an"],
            "phi": phi, "pseudo": pseudo_labels(phi, mask_a, self.cfg.theta),
        }

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Stored features (possibly float16) in the model's dtype and device."""
        ref = self.classifier.fc.weight
        return x.to(device=ref.device, dtype=ref.dtype)


def clip_logit_scale(clip_model: nn.Module, cap: float = 100.0) -> float:
    """``exp(clip_model.logit_scale)`` capped at ``cap`` (100 if the model has none)."""
    raw = getattr(clip_model, "logit_scale", None)
    if raw is None:
        return cap
    return min(float(torch.as_tensor(raw).detach().float().exp()), cap)


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Similarities in float32 even under autocast: min-max normalisation and the pseudo-label
    threshold resolve differences of cosines that half precision rounds away."""
    return torch.autocast(device_type=x.device.type, enabled=False)



def _pad_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """Right-pad dimension 1 of ``x`` with zeros (False for masks) to length ``T``."""
    if x.shape[1] == T:
        return x
    pad = x.new_zeros((x.shape[0], T - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)
