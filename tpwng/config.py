"""The pipeline's configuration: schema validation and per-dataset settings."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml

from tpwng import RESOURCES

SCHEMA_PATH = RESOURCES / "config.schema.yaml"
SECTIONS = ("clip", "extraction", "model", "train")


class ConfigError(ValueError):
    """The configuration does not satisfy the schema or names an unknown dataset."""


def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def schema_defaults(section: str) -> dict:
    """The schema's default of every key of a top-level section that declares one: the one
    place a setting's default is written (typed settings take their field defaults from here)."""
    props = _schema()["properties"][section]
    if "$ref" in props:
        props = _schema()["definitions"][props["$ref"].rsplit("/", 1)[-1]]
    return {k: copy.deepcopy(v["default"]) for k, v in props["properties"].items()
            if "default" in v}


def _with_defaults(validator_cls):
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub and name not in instance:
                instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def validate(config: dict) -> dict:
    """Validate in place against the schema, filling defaults; raise ConfigError on failure.

    Defaults fill the top-level sections only: a dataset's own ``clip`` / ``extraction`` /
    ``model`` / ``train`` keep just the keys it sets, so that the top-level values reach every
    dataset that does not override them (`dataset_settings`).
    """
    given = {(name, section): set(ds[section])
             for name, ds in (config.get("datasets") or {}).items() if isinstance(ds, dict)
             for section in SECTIONS if isinstance(ds.get(section), dict)}
    schema = _schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"invalid config at {where}: {e.message}")
    for (name, section), keys in given.items():
        values = config["datasets"][name][section]
        for key in set(values) - keys:
            del values[key]
    return config


def load(path: str | Path) -> dict:
    with open(path) as f:
        return validate(yaml.safe_load(f) or {})


def dataset_settings(config: dict, name: str) -> dict:
    """Everything one dataset needs: its own keys over the top-level sections."""
    datasets = config.get("datasets", {})
    if name not in datasets:
        raise ConfigError(f"unknown dataset {name!r}; configured: {sorted(datasets)}")
    ds = datasets[name]
    out = {"name": name, "format": ds["format"], "root": ds.get("root"),
           "annotation_tolerance": ds.get("annotation_tolerance"),
           "classes": list(ds.get("classes") or []), "synthetic": dict(ds.get("synthetic") or {}),
           "evaluate": dict(config.get("evaluate") or {}),
           "reproduction": dict(config.get("reproduction") or {})}
    override = config.get(f"{name}_root")
    if override:
        out["root"] = str(override)
    for section in SECTIONS:
        merged = dict(config.get(section) or {})
        merged.update(ds.get(section) or {})
        out[section] = merged
    return out


ALL = None  # every key of a section
# What each stage reads of a dataset's settings: top-level keys, then sections (ALL, or the
# keys it reads). A rule passes only these, so Snakemake re-runs a stage exactly when
# something it depends on changed (a model setting re-runs training, not extraction).
_STORE = ["source", "stride", "sample", "crop_mode"]  # what a feature store's consumer checks
STAGES: dict[str, dict[str, list[str] | None]] = {
    "synthesize": {"": ["name", "synthetic"]},
    "manifest": {"": ["name", "format", "root", "annotation_tolerance"],
                 "extraction": ["source", "released_dir", "stride", "sample", "decode_chunk",
                                "decode_timeout", "decoder", "on_bad_video"]},
    "extract": {"": ["name"], "clip": ALL,
                "extraction": ["source", "stride", "sample", "crop_mode", "batch_size",
                               "precision", "decode_workers", "decode_chunk", "decode_timeout",
                               "decoder", "dtype"]},
    "import": {"": ["name"], "clip": ["model"], "extraction": ["source", "released_dir", "stride"]},
    "train": {"": ["name", "root", "classes"], "clip": ALL, "extraction": _STORE,
              "model": ALL, "train": ALL},
    "infer": {"": ["name", "classes"], "clip": ALL, "extraction": _STORE, "model": ALL,
              "train": ["test_crop", "device", "threads"]},
    "evaluate": {"": ["name", "format"], "evaluate": ALL},
    "viewer": {"": ["name"], "evaluate": ["threshold"]},
    # the baselines read the store like `infer`, and score like `evaluate`
    "baselines": {"": ["name", "classes"], "clip": ALL, "extraction": _STORE, "model": ALL,
                  "train": ["test_crop", "device", "threads"],
                  "evaluate": ["threshold", "frames"]},
    "diagnostics": {"": ["name", "root", "classes"], "clip": ALL, "extraction": _STORE,
                    "model": ALL, "train": ALL, "evaluate": ["plot_videos"]},
    # the reproduction table scores like `evaluate`, and bootstraps
    "reproduction": {"": ["name", "format"], "evaluate": ALL, "reproduction": ALL},
    # an ablation table compares its variants' training settings
    "ablations": {"": ["name", "format", "root", "classes"], "clip": ALL, "extraction": _STORE,
                  "model": ALL, "train": ALL},
}


# How many CPUs a job uses is the rule's `threads` (passed as --threads), how many GPUs an
# extraction job encodes on is its `gpu` resource (passed as --gpus), and how much of a GPU a
# training job takes is its `gpu_share` resource, never tracked settings: changing them must not
# re-run anything. Nor must the list of seeds: each seed's model reads only its own
# `train.seed` (`with_seed`).
UNTRACKED = {"extraction": ("threads", "gpus"), "train": ("threads", "gpu_share", "seeds")}


def stage_settings(settings: dict, stage: str) -> dict:
    """The part of a dataset's merged settings that one stage reads (see ``STAGES``), less
    the CPU and GPU counts (``UNTRACKED``)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    out: dict = {}
    for section, keys in STAGES[stage].items():
        if section == "":
            out |= {k: copy.deepcopy(settings.get(k)) for k in keys}
            continue
        values = settings.get(section) or {}
        chosen = values if keys is ALL else {k: values[k] for k in keys if k in values}
        out[section] = {k: copy.deepcopy(v) for k, v in chosen.items()
                        if k not in UNTRACKED.get(section, ())}
    return out


def training_hash(settings: dict) -> str:
    """The hash of what training reads of a dataset's settings (CPU counts aside): the
    ``settings_hash`` a model records, and its metrics carry."""
    return settings_hash(stage_settings(settings, "train"))


def settings_hash(settings: dict) -> str:
    """A short stable hash of a dataset's settings (recorded in every output)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def seeds(settings: dict) -> list[int]:
    """The seeds of a dataset's reproduction: ``train.seeds``, or ``train.seed`` alone."""
    listed = settings["train"].get("seeds")
    return [int(settings["train"]["seed"])] if listed is None else [int(s) for s in listed]


def with_seed(settings: dict, seed: int) -> dict:
    """A copy of a dataset's settings that trains with ``seed``: the main model's settings when
    ``seed`` is ``train.seed``, so its settings hash is the main model's."""
    out = copy.deepcopy(settings)
    out["train"]["seed"] = int(seed)
    return out
