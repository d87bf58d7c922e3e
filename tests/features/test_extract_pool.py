"""One decoding pool, several encoders: the store does not depend on how many encoded.

The CUDA path (streams, events, pinned buffers) needs a GPU; here the encoders run on the CPU,
which goes through the same dispatch (round robin, batches completed in the order they formed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.features.test_features import probed_rows
from tests.helpers.dag import snakemake
from tpwng.config import dataset_settings, stage_settings, validate
from tpwng.device import DeviceCountError, encoder_devices
from tpwng.features.clip_backbone import ClipSpec
from tpwng.features.extract import (
    DecodeStream,
    ExtractionSettings,
    ImageEncoder,
    extract,
    plan_jobs,
)
from tpwng.features.store import FeatureStore, StoreWriter

SPEC = ClipSpec("tpwng-tiny-ViT-B-16", "none", 0)
VIDEOS = ["bikes", "carphone_pristine", "carphone_distorted"]


def synchronous_reference(rows, settings: ExtractionSettings, clip_model) -> dict:
    """The extraction loop as it was before encoder lanes: videos decoded in order, each batch
    encoded and scattered at once; float16 arrays as the store holds them."""
    encoder = ImageEncoder(clip_model, settings)
    jobs = plan_jobs(rows, settings)
    per_batch = max(1, settings.batch_size // encoder.crops)
    buffer = encoder.batch_buffer(per_batch)
    out = {j: np.zeros((len(job.indices), encoder.crops, 512), np.float32)
           for j, job in enumerate(jobs)}
    slots: list[tuple[int, int, int]] = []

    def flush() -> None:
        emb = encoder.encode(buffer[: sum(c for _, _, c in slots)]).numpy()
        pos = 0
        for j, off, cnt in slots:
            out[j][off : off + cnt] = emb[pos : pos + cnt]
            pos += cnt
        slots.clear()

    for j, off, frames in DecodeStream(jobs, settings.decode_chunk, timeout=None):
        start = 0
        while start < len(frames):
            n = sum(c for _, _, c in slots)
            take = min(per_batch - n, len(frames) - start)
            encoder.prepare(frames[start : start + take], out=buffer[n : n + take])
            slots.append((j, off + start, take))
            start += take
            if n + take >= per_batch:
                flush()
    if slots:
        flush()
    return {jobs[j].video_id: a.astype(np.float16) for j, a in out.items()}


@pytest.mark.parametrize("crop_mode", ["center", "tencrop"])
def test_one_cpu_encoder_writes_what_the_synchronous_loop_computes(sample_videos, tiny_clip,
                                                                   tmp_path, crop_mode):
    """Bit for bit: batches of 7 images spanning videos, decode chunks of 3 frames."""
    names = VIDEOS if crop_mode == "center" else VIDEOS[1:]
    rows = probed_rows(sample_videos, names)
    settings = ExtractionSettings(batch_size=7 if crop_mode == "center" else 25,
                                  decode_workers=0, decode_chunk=3, crop_mode=crop_mode)
    extract(rows, tmp_path / "s.h5", SPEC, settings, progress=False)
    expected = synchronous_reference(rows, settings, tiny_clip[0])
    with FeatureStore(tmp_path / "s.h5") as s:
        assert sorted(s.video_ids()) == sorted(names)
        for name in names:
            got = s.get(name)  # the stored float16, read as float32
            assert got.shape == expected[name].shape
            assert np.array_equal(got, expected[name].astype(np.float32)), name


@pytest.fixture
def write_order(monkeypatch) -> list[str]:
    """The video ids the store writer is given, in order."""
    order: list[str] = []
    add = StoreWriter.add

    def recording(self, video_id, features, **attrs):
        order.append(video_id)
        return add(self, video_id, features, **attrs)

    monkeypatch.setattr(StoreWriter, "add", recording)
    return order


@pytest.mark.parametrize(("devices", "crop_mode"), [(["cpu", "cpu"], "center"),
                                                    (["cpu", "cpu", "cpu"], "tencrop")])
def test_several_encoders_over_one_decode_pool_write_the_same_store(
        sample_videos, tmp_path, write_order, devices, crop_mode):
    """Two or three encoders (each its own copy of the tower) fed round robin by one pool of
    2 decoding processes: every video, same snippets in the same order, same bytes, written
    in the same order as with one encoder."""
    names = VIDEOS if crop_mode == "center" else VIDEOS[1:]
    rows = probed_rows(sample_videos, names)
    settings = ExtractionSettings(batch_size=7 if crop_mode == "center" else 20,
                                  decode_workers=2, decode_chunk=3, crop_mode=crop_mode)
    one = extract(rows, tmp_path / "one.h5", SPEC, settings, progress=False)
    order_one = list(write_order)
    write_order.clear()
    many = extract(rows, tmp_path / "many.h5", SPEC, settings, progress=False, devices=devices)
    assert (one["encoders"], many["encoders"]) == (1, len(devices))
    assert write_order == order_one and sorted(order_one) == sorted(names)
    with FeatureStore(tmp_path / "one.h5") as a, FeatureStore(tmp_path / "many.h5") as b:
        assert a.provenance == b.provenance
        assert list(a.video_ids()) == list(b.video_ids())
        for name in names:
            assert np.array_equal(a.get(name), b.get(name)), name
            assert a.video_attrs(name) == b.video_attrs(name)


def test_gpus_setting_resolves_to_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cuda = [torch.device("cuda", i) for i in range(4)]
    assert encoder_devices("cuda", "auto") == cuda
    assert encoder_devices("cuda", 2) == cuda[:2]
    assert encoder_devices("cuda", 1) == cuda[:1]
    assert encoder_devices("cuda:3", "auto") == [torch.device("cuda", 3)]
    assert encoder_devices("cpu", "auto") == [torch.device("cpu")]
    assert encoder_devices("cpu", 1) == [torch.device("cpu")]
    with pytest.raises(DeviceCountError, match=r"gpus is 5, but only 4 CUDA device\(s\) are "
                                               r"visible \(CUDA_VISIBLE_DEVICES='0,1,2,3'\)"):
        encoder_devices("cuda", 5)
    with pytest.raises(DeviceCountError, match="gpus is 2, but extraction runs on cpu"):
        encoder_devices("cpu", 2)
    with pytest.raises(DeviceCountError, match="names one device"):
        encoder_devices("cuda:1", 2)


def test_too_many_gpus_is_one_clear_error_before_anything_runs(sample_videos, tmp_path):
    rows = probed_rows(sample_videos, ["carphone_pristine"])
    with pytest.raises(DeviceCountError, match="gpus is 3"):
        extract(rows, tmp_path / "s.h5", SPEC, ExtractionSettings(device="cpu", gpus=3),
                progress=False)
    assert not (tmp_path / "s.h5").exists()


def test_gpus_is_a_setting_of_the_job_not_of_the_features():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["synthetic"]["extraction"]["gpus"] = 2
    settings = dataset_settings(validate(cfg), "synthetic")
    assert settings["extraction"]["gpus"] == 2
    assert "gpus" not in stage_settings(settings, "extract")["extraction"]
    assert ExtractionSettings.from_config(settings["extraction"]).gpus == 2
    cfg["datasets"]["synthetic"]["extraction"]["gpus"] = 0
    with pytest.raises(ValueError, match="extraction.gpus"):
        validate(cfg)


def test_the_rule_requests_and_passes_the_configured_gpus(tmp_path):
    """extraction.gpus is the rule's gpu resource (what the SLURM profile requests) and the
    job's --gpus; auto requests one."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for gpus, expected in (("auto", 1), (2, 2)):
        cfg["datasets"]["synthetic"]["extraction"]["gpus"] = gpus
        config = tmp_path / f"c-{gpus}.yaml"
        config.write_text(yaml.safe_dump(cfg))
        out = snakemake("-n", "-p", "--profile", str(REPO / "workflow/profiles/slurm"),
                        "features/synthetic/features.h5", cwd=tmp_path, config=config)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        text = out.stdout + out.stderr
        assert text.count(f"--gpus {expected} ") == 2, text  # both shards
        blocks = text.split("rule extract_shard:")[1:]
        assert len(blocks) == 2
        assert all(f"gpu={expected}" in b.split("\n\n")[0] for b in blocks), blocks
