"""The feature-store contract: what a store records, and what its readers ask of it.

A store records what made it (`extracted_provenance`, `released_provenance`). Training and
scoring ask for the keys their settings fix (`expected_store_provenance`), and
``FeatureStore.check_compatible`` refuses a store that differs in one of `COMPATIBILITY_KEYS`.
A checkpoint keeps what its training store recorded (``meta["store"]``), from which
`recorded_settings` gives back the settings that make such features again (`tpwng score`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from tpwng import __version__

if TYPE_CHECKING:
    from tpwng.features.clip_backbone import ClipSpec


class Sampling(Protocol):
    """How frames were sampled and cropped (as `tpwng.features.extract.ExtractionSettings`)."""

    stride: int
    sample: str
    crop_mode: str

# Provenance keys that must agree between a store and the config that reads it.
COMPATIBILITY_KEYS = ("model", "weights", "stride", "sample", "crop_mode", "dim")
RELEASED_WEIGHTS = "released-features"
_PREPROCESSING = {
    "center": "resize shorter side 224 bicubic antialias, centre crop 224",
    "tencrop": "resize 340x256 bicubic antialias, 5 crops 224 + mirrored",
}


def extracted_provenance(spec: ClipSpec, identity: str, settings: Sampling, dim: int,
                         dataset: str) -> dict:
    """What a store of features extracted here records."""
    from tpwng.features.preprocess import CLIP_MEAN, CLIP_STD, n_crops

    return {
        "dataset": dataset,
        "model": spec.model,
        "weights": identity,
        "random_init": spec.random_init,
        "stride": settings.stride,
        "sample": settings.sample,
        "crop_mode": settings.crop_mode,
        "crops": n_crops(settings.crop_mode),
        "dim": dim,
        "preprocessing": _PREPROCESSING[settings.crop_mode]
        + f", mean {CLIP_MEAN}, std {CLIP_STD}",
        "tpwng_version": __version__,
        "source": "extracted",
    }


def released_provenance(settings: dict, source: str) -> dict:
    """What a store of imported released features records (they carry no sampling or crops)."""
    return {
        "dataset": settings["name"], "model": settings["clip"]["model"],
        "weights": RELEASED_WEIGHTS, "random_init": False,
        "stride": int(settings["extraction"]["stride"]), "sample": "released",
        "crop_mode": "released", "crops": 10, "dim": 512,
        "preprocessing": "as released (10-crop CLIP ViT-B/16)",
        "tpwng_version": __version__, "source": source,
    }


def expected_store_provenance(settings: dict) -> dict:
    """What a feature store must record to be used with these settings."""
    from tpwng.features.clip_backbone import ClipSpec, weights_identity

    spec = ClipSpec.from_config(settings["clip"])
    ex = settings["extraction"]
    out = {"model": spec.model, "stride": ex["stride"]}
    if ex["source"] == "extract":
        out |= {"weights": weights_identity(spec), "sample": ex["sample"],
                "crop_mode": ex["crop_mode"]}
    return out


def store_source(store: dict) -> str:
    """``extracted`` or ``released``: where the features a checkpoint's ``meta["store"]``
    describes came from (released features record no sampling or crops)."""
    return "extracted" if "sample" in store else "released"


def recorded_settings(meta: dict) -> dict:
    """The CLIP and extraction settings a checkpoint's ``meta`` records, in config form.

    Checkpoints record the CLIP seed; for those written before they did, it is read from the
    weights identity (``random-init:seed=S``).
    """
    from tpwng.features.clip_backbone import ClipSpec

    clip, store = meta["clip"], meta["store"]
    seed = clip.get("seed")
    if seed is None:
        m = re.fullmatch(r"random-init:seed=(-?\d+)", str(clip.get("weights", "")))
        seed = int(m[1]) if m else 0
    extracted = store_source(store) == "extracted"
    return {
        "clip": {"model": clip["model"], "pretrained": clip["pretrained"], "seed": seed,
                 "quick_gelu": clip.get("quick_gelu", ClipSpec.quick_gelu)},
        "extraction": {"stride": int(store["stride"]),
                       "source": "extract" if extracted else "released",
                       "sample": store.get("sample", "center"),
                       "crop_mode": store.get("crop_mode", "center")},
        "classes": list(meta["classes"]),
    }
