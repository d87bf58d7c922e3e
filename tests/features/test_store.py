import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tpwng.features.store import FeatureStore, StoreError, StoreWriter, merge_view

PROV = {"model": "ViT-B-16", "weights": "open_clip:openai", "stride": 16, "sample": "center",
        "crop_mode": "center", "dim": 8}


def _write(path, videos, prov=PROV):
    with StoreWriter(path, prov) as w:
        for vid, arr in videos.items():
            w.add(vid, arr, frames=len(arr) * 16, fps=25.0, crop_ids=[0])


def test_round_trip_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    vids = {"a": rng.normal(size=(5, 1, 8)),
            "v=S-7rRLrxnVQ__#1_label_B4-0-0": rng.normal(size=(3, 1, 8))}
    _write(tmp_path / "s.h5", vids)
    with FeatureStore(tmp_path / "s.h5") as s:
        assert sorted(s.video_ids()) == sorted(vids)
        for k, v in vids.items():
            np.testing.assert_allclose(s.get(k), v.astype(np.float16).astype(np.float32))
        assert s.provenance["weights"] == "open_clip:openai"
        assert s.provenance["dtype"] == "float16"
        assert s.video_attrs("a") == {"frames": 80, "fps": 25.0, "crop_ids": "[0]"}
        s.check_compatible(PROV)
        with pytest.raises(StoreError, match="stride=16.*stride=8"):
            s.check_compatible({**PROV, "stride": 8})
        with pytest.raises(StoreError, match="weights"):
            s.check_compatible({**PROV, "weights": "sha256:abc"})


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(StoreError, match="NaN"):
        _write(out, {"a": np.ones((2, 1, 8)), "b": np.full((2, 1, 8), np.nan)})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_complete_looking_file(tmp_path):
    out = tmp_path / "s.h5"
    code = (
        "import numpy as np, os, signal\n"
        "from tpwng.features.store import StoreWriter\n"
        f"w = StoreWriter({str(out)!r}, {{'model': 'm'}})\n"
        "w.add('a', np.ones((4, 1, 8)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert not out.exists()
    assert [p.name.startswith(".s.h5.tmp-") for p in tmp_path.iterdir()] == [True]


def test_merge_view_links_without_copies(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "features" / "shards"
    _write(d / "000-of-002.h5", {"a": rng.normal(size=(4, 1, 8))}, PROV | {"shard": "0/2"})
    _write(d / "001-of-002.h5", {"b": rng.normal(size=(6, 1, 8))}, PROV | {"shard": "1/2"})
    view = tmp_path / "features" / "features.h5"
    assert merge_view(sorted(d.glob("*.h5")), view) == 2
    assert view.stat().st_size < 10_000
    cwd = os.getcwd()
    try:
        os.chdir("/")  # links resolve beside the view, not against the working directory
        with FeatureStore(view) as s:
            assert sorted(s.video_ids()) == ["a", "b"]
            assert s.get("b").shape == (6, 1, 8)
            assert s.provenance["model"] == "ViT-B-16"
    finally:
        os.chdir(cwd)
    with h5py.File(view) as f:
        assert isinstance(f["videos"].get("a", getlink=True), h5py.ExternalLink)


def test_merge_refuses_mixed_provenance(tmp_path):
    _write(tmp_path / "0.h5", {"a": np.ones((1, 1, 8))})
    _write(tmp_path / "1.h5", {"b": np.ones((1, 1, 8))}, PROV | {"stride": 8})
    with pytest.raises(StoreError, match="stride"):
        merge_view([tmp_path / "0.h5", tmp_path / "1.h5"], tmp_path / "v.h5")
    assert not (tmp_path / "v.h5").exists()


def test_corrupt_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(StoreError, match="bad.h5"):
        FeatureStore(bad)
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore(tmp_path / "none.h5")
