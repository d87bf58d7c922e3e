"""Model checkpoints: trainable weights plus the settings that made them.

Only tensors and plain Python values are stored, so loading uses `torch.load(weights_only=True)`:
a checkpoint file can never run code. A checkpoint is refused when the config asks for another
CLIP model or weights, stride, class list or model configuration than the one it was trained
with.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from tpwng.errors import CheckpointError
from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.provenance import expected_store_provenance
from tpwng.files import write_bytes
from tpwng.model.tpwng import TPWNG, ModelConfig

FORMAT = "tpwng-checkpoint/1"


def _text_side(model: torch.nn.Module) -> dict:
    """The model's class text embeddings and logit scale, if it has learned prompts."""
    if not hasattr(model, "text_embeddings"):
        return {}
    with torch.no_grad():
        text = model.text_embeddings().detach().float().cpu().clone()
    return {"text_embeddings": text, "logit_scale": float(getattr(model, "logit_scale", 100.0))}


def save_checkpoint(model: torch.nn.Module, meta: dict, path: str | Path) -> None:
    """Write the trainable weights, `meta` and the text embeddings atomically (temporary file,
    then rename)."""
    state = {n: t.detach().cpu().clone() for n, t in model.trainable_state_dict().items()}
    buffer = io.BytesIO()  # serialised in memory, so that a failed write is a plain OSError
    torch.save({"format": FORMAT, "meta": meta, "state": state, **_text_side(model)}, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of all kinds
        raise CheckpointError(f"{path}: not a readable tpwng checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tpwng checkpoint (format {FORMAT} expected)")
    return ckpt


def stored_text_embeddings(ckpt: dict, path: str | Path) -> tuple[torch.Tensor, float]:
    """The class text embeddings ``[k, D]`` and logit scale saved with a checkpoint.

    A checkpoint written before they were stored, or whose embeddings do not fit its class list
    and feature dimension, is a `CheckpointError`.
    """
    text, scale = ckpt.get("text_embeddings"), ckpt.get("logit_scale")
    if not isinstance(text, torch.Tensor) or scale is None:
        raise CheckpointError(f"{path}: checkpoint stores no class text embeddings (written by "
                              "an older version; retrain, or compute them with the text tower)")
    meta = ckpt.get("meta") or {}
    want = (len(meta.get("classes", [])), int(meta.get("dim", text.shape[-1])))
    if tuple(text.shape) != want:
        raise CheckpointError(f"{path}: stored text embeddings are {list(text.shape)}, the "
                              f"checkpoint's classes and dimension ask for {list(want)}")
    return text.float(), float(scale)


def check_against_settings(ckpt: dict, settings: dict, path: str | Path) -> None:
    """Refuse a checkpoint trained for another CLIP model or weights, stride, class list or
    model configuration (`settings["model"]`, when given) than `settings` ask for."""
    from tpwng.features.clip_backbone import ClipSpec, weights_identity
    from tpwng.model.tpwng import ModelConfig

    meta = ckpt["meta"]
    want = expected_store_provenance(settings)
    for key in ("model", "stride"):
        if str(meta["store"].get(key)) != str(want[key]):
            raise CheckpointError(
                f"{path}: trained with {key}={meta['store'].get(key)!r}, but the config asks "
                f"for {want[key]!r}")
    classes = list(settings.get("classes") or meta["classes"])
    if classes != meta["classes"]:
        raise CheckpointError(
            f"{path}: trained for classes {meta['classes']}, config has {classes}")
    weights = weights_identity(ClipSpec.from_config(settings["clip"]))
    if meta["clip"].get("weights") != weights:
        raise CheckpointError(
            f"{path}: trained with CLIP weights {meta['clip'].get('weights')!r}, but the config "
            f"gives {weights!r} (clip.pretrained / clip.seed)")
    if settings.get("model") is not None:
        try:
            cfg = ModelConfig.from_dict(settings["model"]).to_dict()
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model settings ({exc})") from exc
        saved = meta.get("model_config") or {}
        diff = sorted(k for k in set(cfg) | set(saved) if cfg.get(k) != saved.get(k))
        if diff:
            k = diff[0]
            raise CheckpointError(
                f"{path}: trained with model.{k}={saved.get(k)!r}, but the config has "
                f"model.{k}={cfg.get(k)!r}" + (f" (and {len(diff) - 1} more model settings "
                                                 "differ)" if len(diff) > 1 else "")
                + "; retrain or use the matching config")


def load_into(model: torch.nn.Module, ckpt: dict, path: str | Path) -> None:
    """Load the saved weights; every saved tensor must find its place and none may be missing."""
    try:
        model.load_trainable_state_dict(ckpt["state"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model built from this config "
                              f"({exc})") from exc


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
