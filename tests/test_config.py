import copy

import pytest
import yaml

from tests.conftest import REPO
from tpwng.config import ConfigError, dataset_settings, load, validate


def test_shipped_config_is_valid_and_complete():
    cfg = load(REPO / "config.yaml")
    ucf = dataset_settings(cfg, "ucf")
    assert ucf["classes"][0] == "normal" and len(ucf["classes"]) == 14
    assert (ucf["train"]["lr"], ucf["train"]["epochs"], ucf["model"]["theta"]) == (0.001, 50, 0.55)
    xd = dataset_settings(cfg, "xd")
    assert len(xd["classes"]) == 7
    assert (xd["train"]["lr"], xd["train"]["epochs"], xd["model"]["theta"]) == (0.0001, 20, 0.35)
    for s in (ucf, xd):
        assert s["model"]["alpha"] == 0.2 and s["model"]["n_ctx"] == 8
        assert s["model"]["R"] == 256 and s["model"]["layers"] == 4 and s["model"]["heads"] == 4
        assert s["train"]["weight_decay"] == 0.005
        assert (s["train"]["batch_normal"], s["train"]["batch_anomalous"]) == (32, 32)
        assert (s["model"]["lambda_smooth"], s["model"]["lambda_sparse"]) == (0.1, 0.01)
        assert s["clip"] == {"model": "ViT-B-16", "pretrained": "openai", "seed": 0,
                             "quick_gelu": True}
    syn = dataset_settings(cfg, "synthetic")
    assert syn["clip"]["pretrained"] == "none"


def test_root_override_from_command_line_key():
    cfg = load(REPO / "config.yaml")
    cfg["ucf_root"] = "/data/UCF"
    assert dataset_settings(cfg, "ucf")["root"] == "/data/UCF"


def test_defaults_are_filled():
    cfg = validate({"datasets": {"mine": {"format": "folder", "root": "/x"}}})
    s = dataset_settings(cfg, "mine")
    assert s["extraction"]["stride"] == 16 and s["model"]["nvp"] == "as"
    assert s["train"]["epochs"] == 50


@pytest.mark.parametrize("mutate,where", [
    (lambda c: c["extraction"].update(stride="x"), "extraction.stride"),
    (lambda c: c["model"].update(nvp="maybe"), "model.nvp"),
    (lambda c: c["datasets"]["ucf"].update(format="avi"), "datasets.ucf.format"),
    (lambda c: c.update(unknown_key=1), r"\(top level\)"),
])
def test_bad_config_gets_the_schema_message(mutate, where):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    mutate(cfg)
    with pytest.raises(ConfigError, match=f"invalid config at {where}"):
        validate(cfg)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        dataset_settings(load(REPO / "config.yaml"), "nope")


def test_typed_settings_take_the_schemas_defaults():
    """Each default is declared once: the model's (`ModelConfig`, which reads no configuration)
    equal the schema's field by field, and the pipeline's typed settings take the schema's."""
    from dataclasses import fields

    from tpwng.config import schema_defaults
    from tpwng.features.clip_backbone import ClipSpec
    from tpwng.features.extract import ExtractionSettings
    from tpwng.model.tpwng import ModelConfig
    from tpwng.train.loop import TrainSettings

    model = schema_defaults("model")
    assert {f.name for f in fields(ModelConfig)} == set(model)
    for f in fields(ModelConfig):
        assert (f.name, getattr(ModelConfig(), f.name)) == (f.name, model[f.name])
    for cls, section in ((ClipSpec, "clip"), (ExtractionSettings, "extraction"),
                         (TrainSettings, "train")):
        schema = schema_defaults(section)
        given = {f.name: getattr(cls(), f.name) for f in fields(cls) if f.name in schema}
        assert given == {k: schema[k] for k in given}, cls.__name__
    assert ClipSpec.from_config({}) == ClipSpec()
