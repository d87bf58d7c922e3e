"""Scoring: stored image features -> temporal module -> classifier, whole test videos."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tpwng.checkpoint import check_against_settings, load_checkpoint, load_into
from tpwng.clip_backbone import ClipSpec, load_clip
from tpwng.datasets import read_manifest
from tpwng.device import resolve_device
from tpwng.files import atomic_path
from tpwng.metrics import expand_to_frames
from tpwng.model import TPWNG, ModelConfig
from tpwng.store import FeatureStore, h5_create, open_sealed

log = logging.getLogger(__name__)


def load_model(ckpt_path: Path, settings: dict | None = None,
               device: torch.device | str = "cpu") -> tuple[TPWNG, dict]:
    """Rebuild TPWNG from a checkpoint (the frozen CLIP parts come from its recorded weights)."""
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt["meta"]
    if settings is not None:
        check_against_settings(ckpt, settings, ckpt_path)
    clip_cfg = settings["clip"] if settings is not None else meta["clip"]
    clip_model, _ = load_clip(ClipSpec.from_config(clip_cfg))
    model = TPWNG(clip_model, meta["classes"], ModelConfig.from_dict(meta["model_config"]),
                  dim=int(meta["dim"]))
    load_into(model, ckpt, ckpt_path)
    return model.to(device).eval(), meta


@torch.no_grad()
def score_features(model: TPWNG, feats: np.ndarray, device="cpu") -> np.ndarray:
    """Snippet scores of one video from its features [T, D]."""
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))[None].to(device)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    return model.score(x, mask)[0].float().cpu().numpy()


def pick_crop(feats: np.ndarray, crop: int) -> np.ndarray:
    """The configured test crop, or the only crop a store has (released test features)."""
    return feats[:, crop] if feats.shape[1] > crop else feats[:, 0]


def score_test_set(settings: dict, manifest: Path, features: Path, model_path: Path,
                   out: Path) -> int:
    device = resolve_device(settings["train"].get("device", "auto"))
    torch.set_num_threads(int(settings["train"].get("threads", 2)))
    model, meta = load_model(model_path, settings, device)
    stride = int(settings["extraction"]["stride"])
    crop = int(settings["train"]["test_crop"])
    rows = [r for r in read_manifest(manifest) if r.split == "test"]
    with FeatureStore(features) as store, atomic_path(out) as tmp, h5_create(tmp) as f:
        from tpwng.provenance import expected_store_provenance

        store.check_compatible(expected_store_provenance(settings))
        f.attrs["dataset"] = settings["name"]
        f.attrs["model"] = str(model_path)
        f.attrs["weights"] = meta["clip"]["weights"]
        f.attrs["stride"] = stride
        f.attrs["test_crop"] = crop
        f.attrs["order"] = "\n".join(r.video_id for r in rows)
        snip, frames = f.create_group("snippets"), f.create_group("frames")
        for r in tqdm(rows, desc=f"score {settings['name']}", file=sys.stderr, unit="video"):
            s = score_features(model, pick_crop(store.get(r.video_id), crop), device)
            snip[r.video_id] = s.astype(np.float32)
            frames[r.video_id] = expand_to_frames(s, r.frames, stride).astype(np.float32)
    log.info("%s: %d test videos scored", out, len(rows))
    return len(rows)


def read_scores(path: Path) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Video order, frame scores and snippet scores from a scores file."""
    with open_sealed(path) as f:
        order = str(f.attrs["order"]).split("\n") if f.attrs["order"] else []
        frames = {v: f["frames"][v][()] for v in order}
        snippets = {v: f["snippets"][v][()] for v in order}
    return order, frames, snippets


def read_stride(path: Path) -> int:
    """Frames per snippet of the scores in a scores file."""
    with open_sealed(path) as f:
        return int(f.attrs["stride"])
