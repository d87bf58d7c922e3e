"""Loading the frozen CLIP model (open_clip) with an explicit weights identity.

`pretrained` is one of:
- ``"openai"``: open_clip's tag for OpenAI's weights (QuickGELU activations);
- a path to a local checkpoint file (open_clip state dict or OpenAI's archive);
- ``"none"``: random initialisation, allowed only when asked for explicitly, and recorded.

The identity string returned with the model is written into every store, checkpoint and metrics
file, so an output made with random weights always says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from tpwng import RESOURCES
from tpwng.config import schema_defaults

_CONFIG_DIR = RESOURCES / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

PRETRAINED_KEY = "clip.pretrained"
_DEFAULTS = schema_defaults("clip")


class ClipWeightsError(RuntimeError):
    """The configured CLIP weights cannot be had."""


@dataclass(frozen=True)
class ClipSpec:
    """What the config says about CLIP (defaults: the config schema's)."""

    model: str = _DEFAULTS["model"]
    pretrained: str = _DEFAULTS["pretrained"]
    seed: int = _DEFAULTS["seed"]  # used for random initialisation only
    quick_gelu: bool = _DEFAULTS["quick_gelu"]  # OpenAI's CLIP weights need QuickGELU

    @classmethod
    def from_config(cls, cfg: dict) -> ClipSpec:
        """The ``clip`` settings, or a checkpoint's record of them (older ones lack keys)."""
        given = _DEFAULTS | cfg
        return cls(model=str(given["model"]), pretrained=str(given["pretrained"]),
                   seed=int(given["seed"]), quick_gelu=bool(given["quick_gelu"]))

    @property
    def random_init(self) -> bool:
        return self.pretrained.lower() == "none"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_identity(spec: ClipSpec) -> str:
    """A string that names the weights: tag, checkpoint sha256, or random init with its seed."""
    if spec.random_init:
        return f"random-init:seed={spec.seed}"
    if spec.pretrained == "openai":
        return "open_clip:openai"
    path = Path(spec.pretrained).expanduser()
    if not path.is_file():
        raise ClipWeightsError(
            f"CLIP checkpoint file {path} does not exist; set {PRETRAINED_KEY} in config.yaml "
            "to a readable checkpoint file, or to 'openai'"
        )
    return f"sha256:{file_sha256(path)}"


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, str]:
    """The open_clip model for `spec`, frozen and in eval mode, with its weights identity."""
    identity = weights_identity(spec)
    if spec.model not in open_clip.list_models():
        raise ClipWeightsError(f"unknown CLIP model {spec.model!r} in clip.model")
    if spec.random_init:
        torch.manual_seed(spec.seed)
        model = open_clip.create_model(spec.model, pretrained=None, device=device,
                                       force_quick_gelu=spec.quick_gelu)
    elif spec.pretrained == "openai":
        model = _load_openai(spec, device)
    else:
        try:
            model = open_clip.create_model(
                spec.model, pretrained=str(Path(spec.pretrained).expanduser()), device=device,
                force_quick_gelu=spec.quick_gelu, weights_only=True,  # never runs pickled code
            )
        except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
            raise ClipWeightsError(
                f"could not load CLIP checkpoint {spec.pretrained} for {spec.model}: {exc}; "
                f"set {PRETRAINED_KEY} in config.yaml to a checkpoint of this model"
            ) from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, identity


def _load_openai(spec: ClipSpec, device: str | torch.device) -> torch.nn.Module:
    # open_clip takes the weights from the local hub cache or downloads them (HF_HUB_OFFLINE=1
    # makes a machine without network fail at once instead of retrying).
    try:
        return open_clip.create_model(
            spec.model, pretrained="openai", device=device, force_quick_gelu=spec.quick_gelu,
            require_pretrained=True,
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
        raise ClipWeightsError(
            f"could not obtain OpenAI CLIP weights for {spec.model} (open_clip tag 'openai'): "
            f"{type(exc).__name__}: {exc}. Without network access, download the checkpoint "
            f"elsewhere and set {PRETRAINED_KEY} in config.yaml to the local file"
        ) from exc
