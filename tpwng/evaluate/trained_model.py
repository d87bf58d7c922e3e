"""The trained model rebuilt from its checkpoint, and the test crop of stored features: what
the evaluation's diagnostics and baselines share with scoring (`tpwng.scoring`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.model.tpwng import TPWNG, ModelConfig
from tpwng.train.checkpoint import check_against_settings, load_checkpoint, load_into


def build_model(ckpt: dict, ckpt_path: Path, clip_model: torch.nn.Module,
                device: torch.device | str = "cpu") -> TPWNG:
    """TPWNG of a loaded checkpoint on the loaded CLIP model it was trained with, in eval
    mode on ``device``."""
    meta = ckpt["meta"]
    model = TPWNG(clip_model, meta["classes"], ModelConfig.from_dict(meta["model_config"]),
                  dim=int(meta["dim"]))
    load_into(model, ckpt, ckpt_path)
    return model.to(device).eval()


def load_model(ckpt_path: Path, settings: dict | None = None,
               device: torch.device | str = "cpu") -> tuple[TPWNG, dict]:
    """Rebuild TPWNG from a checkpoint (the frozen CLIP parts come from its recorded weights)."""
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt["meta"]
    if settings is not None:
        check_against_settings(ckpt, settings, ckpt_path)
    clip_cfg = settings["clip"] if settings is not None else meta["clip"]
    clip_model, _ = load_clip(ClipSpec.from_config(clip_cfg))
    return build_model(ckpt, ckpt_path, clip_model, device), meta


def pick_crop(feats: np.ndarray, crop: int) -> np.ndarray:
    """The configured test crop, or the only crop a store has (released test features)."""
    return feats[:, crop] if feats.shape[1] > crop else feats[:, 0]
