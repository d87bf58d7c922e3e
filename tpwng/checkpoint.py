"""Model checkpoints: trainable weights plus the settings that made them.

Only tensors and plain Python values are stored, so loading uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tpwng.errors import CheckpointError
from tpwng.store import atomic_path

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
    state = {n: t.detach().cpu().clone() for n, t in model.trainable_state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "meta": meta, "state": state}, tmp)


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
    """Refuse a checkpoint trained for another CLIP model, stride or class list."""
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


def load_into(model: torch.nn.Module, ckpt: dict, path: str | Path) -> None:
    """Load the saved weights; every saved tensor must find its place and none may be missing."""
    try:
        model.load_trainable_state_dict(ckpt["state"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model built from this config "
                              f"({exc})") from exc
