"""A trained checkpoint loaded once for scoring: the model, its record, its class text
embeddings and, for videos, the CLIP image encoder of its training features."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tpwng.device import resolve_device
from tpwng.errors import CheckpointError
from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.extract import ExtractionSettings, ImageEncoder
from tpwng.features.provenance import recorded_settings
from tpwng.model.tpwng import TPWNG
from tpwng.train.checkpoint import (
    build_model,
    check_against_settings,
    load_checkpoint,
    stored_text_embeddings,
)

log = logging.getLogger(__name__)

SCORE_BATCH = 64  # images per encoder batch when scoring videos (`tpwng score`, live)


@dataclass
class Scorer:
    """A loaded checkpoint with what scoring needs; ``encoder`` and ``extraction`` (the image
    encoder and extraction settings of its training features) only for scoring videos."""

    model: TPWNG
    meta: dict
    path: Path
    device: torch.device
    text: torch.Tensor | None = None  # class text embeddings [k, D] saved with the checkpoint
    logit_scale: float = 100.0
    encoder: ImageEncoder | None = None
    extraction: ExtractionSettings | None = None
    crop: int = 0  # the test crop (0 = centre) of multi-crop extraction

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def class_text(ckpt: dict, model: TPWNG, path: Path, text_tower: bool
               ) -> tuple[torch.Tensor | None, float]:
    """The class text embeddings and logit scale a checkpoint stores. For one written before
    they were stored: with ``text_tower`` the model's text tower computes them, otherwise there
    are none (None, 100); either with a warning."""
    if text_tower:
        if "text_embeddings" not in ckpt:
            log.warning("%s stores no class text embeddings: computing them with the text tower",
                        path)
            with torch.no_grad():
                return model.text_embeddings().detach().float().cpu(), float(model.logit_scale)
        return stored_text_embeddings(ckpt, path)
    try:
        return stored_text_embeddings(ckpt, path)
    except CheckpointError as exc:
        log.warning("%s; detected intervals get no class", exc)
        return None, 100.0


def load_scorer(model_path: Path, device: str = "auto", batch_size: int = SCORE_BATCH,
                settings: dict | None = None, images: bool = True) -> Scorer:
    """The checkpoint's model, read once, on the CLIP model its training features were made
    with, loaded once.

    Without ``settings`` the checkpoint's own recorded settings are checked and used (scoring
    one's own videos); with them (the test set), the checkpoint must fit them and a checkpoint
    without stored class text embeddings gets them from the text tower. With ``images`` the
    scorer also gets the image encoder of the same CLIP model and the extraction settings of
    its training features.
    """
    model_path = Path(model_path)
    ckpt = load_checkpoint(model_path)
    meta = ckpt["meta"]
    if settings is None:
        settings = recorded_settings(meta)
        text_tower = False
    else:
        text_tower = True
    if images and settings["extraction"]["source"] == "released":
        log.warning("%s: trained on released features; scoring with centre-crop features of "
                    "the snippets' middle frames", model_path)
    dev = resolve_device(device)
    check_against_settings(ckpt, settings, model_path)  # the CLIP weights' identity, too
    clip_model, _ = load_clip(ClipSpec.from_config(settings["clip"]))
    model = build_model(ckpt, model_path, clip_model, dev)
    text, scale = class_text(ckpt, model, model_path, text_tower)
    scorer = Scorer(model, meta, model_path, dev, text, scale)
    if images:
        ex = settings["extraction"]
        scorer.extraction = ExtractionSettings(
            **{k: ex[k] for k in ("stride", "sample", "crop_mode")}, batch_size=batch_size,
            device=str(dev))
        scorer.encoder = ImageEncoder(clip_model, scorer.extraction)
    return scorer
