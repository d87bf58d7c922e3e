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
from tpwng.store import StoreError, atomic_path, is_write_error

FORMAT = "tpwng-checkpoint/1"


def expected_store_provenance(settings: dict) -> dict:
    """What a feature store must record to be used with these settings."""
    from tpwng.clip_backbone import ClipSpec, weights_identity

    spec = ClipSpec.from_config(settings["clip"])
    ex = settings["extraction"]
    out = {"model": spec.model, "stride": ex["stride"]}
    if ex.get("source", "extract") == "extract":
        out |= {"weights": weights_identity(spec), "sample": ex["sample"],
                "crop_mode": ex["crop_mode"]}
    return out


def save_checkpoint(model: torch.nn.Module, meta: dict, path: str | Path) -> None:
    """Write the trainable weights and `meta` atomically (temporary file, then rename)."""
    state = {n: t.detach().cpu().clone() for n, t in model.trainable_state_dict().items()}
    buffer = io.BytesIO()  # serialised in memory, so that a failed write is a plain OSError
    torch.save({"format": FORMAT, "meta": meta, "state": state}, buffer)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    except StoreError as exc:
        raise CheckpointError(str(exc)) from exc
    except OSError as exc:
        if is_write_error(exc):
            raise CheckpointError(f"{path}: cannot write ({exc.strerror})") from exc
        raise


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


def check_against_settings(ckpt: dict, settings: dict, path: str | Path) -> None:
    """Refuse a checkpoint trained for another CLIP model or weights, stride, class list or
    model configuration (`settings["model"]`, when given) than `settings` ask for."""
    from tpwng.clip_backbone import ClipSpec, weights_identity
    from tpwng.model import ModelConfig

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
