"""Importing released CLIP features named as in the real feature lists."""

import csv

import numpy as np
import pytest

from tests.conftest import REPO
from tpwng.data.datasets import entries_for
from tpwng.data.manifest import build_manifest
from tpwng.features.released import import_released, released_probe
from tpwng.features.store import FeatureStore, StoreError

LISTS = REPO / "tpwng" / "resources" / "vadclip_lists"


def _names(list_file, n):
    with open(list_file) as f:
        return [r["path"].rsplit("/", 1)[-1] for r in csv.DictReader(f)][:n]


@pytest.fixture
def released(tmp_path):
    """The first three training videos (10 crops) and two test videos (crop 5) of UCF-Crime."""
    d = tmp_path / "UCFClipFeatures"
    rng = np.random.default_rng(0)
    lengths = {}
    for name in _names(LISTS / "ucf_CLIP_rgb.csv", 30) + _names(LISTS / "ucf_CLIP_rgbtest.csv", 2):
        vid = name.rsplit("__", 1)[0]
        # test videos long enough for their annotated intervals (Abuse030: frames 1275-1360)
        t = lengths.setdefault(vid, int(rng.integers(3, 40)) + (100 if "__5" in name else 0))
        (d / "sub").mkdir(parents=True, exist_ok=True)
        np.save(d / "sub" / name, rng.normal(size=(t, 512)).astype(np.float32))
    return d, lengths


def _settings(d):
    return {"name": "ucf", "clip": {"model": "ViT-B-16"},
            "extraction": {"stride": 16, "source": "released", "released_dir": str(d)}}


def test_import_released_into_a_store(released, tmp_path):
    d, lengths = released
    entries = [e for e in entries_for("ucf", tmp_path / "nowhere", require_files=False)
               if e.video_id in lengths]
    assert len(entries) == 5
    rows = build_manifest(entries, released_probe(_settings(d)), progress=False)
    assert {r.video_id: r.frames for r in rows} == {v: 16 * t for v, t in lengths.items()}
    n = import_released(rows, _settings(d), tmp_path / "r.h5")
    assert n == 5
    with FeatureStore(tmp_path / "r.h5") as s:
        train = s.get("Abuse001_x264")
        assert train.shape == (lengths["Abuse001_x264"], 10, 512)
        assert s.video_attrs("Abuse001_x264")["crop_ids"] == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
        test = s.get("Abuse028_x264")
        assert test.shape == (lengths["Abuse028_x264"], 1, 512)
        assert s.video_attrs("Abuse028_x264")["crop_ids"] == "[5]"
        assert s.provenance["crop_mode"] == "released"
        np.testing.assert_allclose(
            train[:, 3], np.load(d / "sub" / "Abuse001_x264__3.npy"), atol=2e-3)


def test_missing_features_name_the_video(released, tmp_path):
    d, lengths = released
    entries = [e for e in entries_for("ucf", tmp_path, require_files=False)][:40]
    with pytest.raises(StoreError, match="Abuse004_x264"):
        build_manifest(entries, released_probe(_settings(d)), progress=False)
    with pytest.raises(StoreError, match="released_dir"):
        released_probe(_settings(tmp_path / "absent"))
