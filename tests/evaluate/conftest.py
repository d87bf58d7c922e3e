"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluate.test_class_outputs import _toy_dataset, _toy_settings
from tpwng.scoring.inference import score_test_set
from tpwng.train.loop import train


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[dict, Path]:
    """A toy store with two anomaly classes apart in feature space, a model trained on it, and
    its test scores (one per test module)."""
    d = tmp_path_factory.mktemp("scored")
    manifest, feats = _toy_dataset(d)
    s = _toy_settings()
    train(s, manifest, feats, d / "model.pt", d / "log.tsv")
    score_test_set(s, manifest, feats, d / "model.pt", d / "scores.h5")
    return s, d
