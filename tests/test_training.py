"""Sequences, training determinism, checkpoints and the store/config checks of the trainer."""

import numpy as np
import pytest
import torch

from tpwng.data.manifest import ManifestRow, write_manifest
from tpwng.data.sequences import cap_length, epoch_batches, pad_batch, snippet_truth
from tpwng.errors import CheckpointError
from tpwng.evaluate.inference import load_model
from tpwng.features.store import StoreError, StoreWriter
from tpwng.train.checkpoint import load_checkpoint
from tpwng.train.loop import epoch_items, load_train_videos, read_log, train


def test_cap_length_averages_uniform_bins():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    got = cap_length(x, 4)
    # independent: bins [0,2.5)->[0,1,2]? edges round(linspace(0,10,5)) = 0,2,5,8,10
    ref = [np.mean([0, 1]), np.mean([2, 3, 4]), np.mean([5, 6, 7]), np.mean([8, 9])]
    np.testing.assert_allclose(got[:, 0], ref)
    assert cap_length(x, 10) is x and cap_length(x, 20) is x
    big = np.random.default_rng(0).normal(size=(1000, 3, 4)).astype(np.float16)
    capped = cap_length(big, 256)
    assert capped.shape == (256, 3, 4) and capped.dtype == np.float16
    np.testing.assert_allclose(capped.astype(np.float64).mean(), big.astype(np.float64).mean(),
                               atol=1e-2)


def test_pad_batch_masks():
    x, m = pad_batch([np.ones((3, 2)), np.ones((5, 2))])
    assert x.shape == (2, 5, 2) and m.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert x[0, 3:].abs().sum() == 0


def test_epoch_batches_cover_the_larger_group_once():
    rng = np.random.default_rng(0)
    batches = epoch_batches(10, 25, 4, 4, rng)
    assert len(batches) == 7
    anomalous = np.concatenate([a for _, a in batches])
    assert set(anomalous[:25]) == set(range(25))
    assert all(len(n) == 4 and len(a) == 4 for n, a in batches)
    small = epoch_batches(2, 3, 32, 32, rng)
    assert [(len(n), len(a)) for n, a in small] == [(2, 3)]


def test_snippet_truth_majority_then_capped():
    labels = np.zeros(100, dtype=np.uint8)
    labels[20:60] = 1  # snippets of 16: [0,16) 0, [16,32) 12/16, [32,48) 1, [48,64) 12/16
    assert snippet_truth(labels, 16, 256).tolist() == [0, 1, 1, 1, 0, 0, 0]


def _toy_dataset(tmp_path, prov_model="tpwng-tiny-ViT-B-16", n=6, stride=16, crops=1):
    rng = np.random.default_rng(0)
    rows = []
    prov = {"model": prov_model, "weights": "random-init:seed=0", "stride": stride,
            "sample": "center", "crop_mode": "center", "dim": 512}
    with StoreWriter(tmp_path / "f.h5", prov) as w:
        for i in range(n):
            for split in ("train", "test"):
                normal = i % 2 == 0
                t = int(rng.integers(5, 40))
                feats = rng.normal(size=(t, crops, 512)) + (0 if normal else 0.5)
                vid = f"{split}{i}"
                w.add(vid, feats)
                iv = [] if normal or split == "train" else [(16, 16 * t - 1)]
                rows.append(ManifestRow(vid, f"/x/{vid}.mp4", split,
                                        ["normal"] if normal else ["fighting"], iv,
                                        16 * t, 25.0, 32, 32))
    write_manifest(rows, tmp_path / "m.tsv")
    return tmp_path / "m.tsv", tmp_path / "f.h5"


def _settings(epochs=2):
    return {
        "name": "toy", "format": "folder", "root": None, "classes": ["normal", "fighting"],
        "clip": {"model": "tpwng-tiny-ViT-B-16", "pretrained": "none", "seed": 0},
        "extraction": {"stride": 16, "sample": "center", "crop_mode": "center",
                       "source": "extract"},
        "model": {"ff_dim": 128, "layers": 2},
        "train": {"lr": 1e-3, "weight_decay": 0.005, "epochs": epochs, "batch_normal": 2,
                  "batch_anomalous": 2, "max_seq_len": 16, "test_crop": 0, "seed": 3,
                  "device": "cpu", "threads": 1},
        "evaluate": {"threshold": 0.5, "plot_videos": 2},
    }


def test_training_is_deterministic_and_checkpoints_load_weights_only(tmp_path):
    manifest, feats = _toy_dataset(tmp_path)
    s = _settings()
    train(s, manifest, feats, tmp_path / "a.pt", tmp_path / "a.tsv")
    train(s, manifest, feats, tmp_path / "b.pt", tmp_path / "b.tsv")
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["meta"]["clip"]["weights"] == "random-init:seed=0"
    assert (tmp_path / "a.tsv").read_text().count("\n") == 3  # header + 2 epochs
    model, meta = load_model(tmp_path / "a.pt", s)
    x = torch.randn(1, 7, 512)
    s1 = model.score(x, torch.ones(1, 7, dtype=torch.bool))
    assert s1.shape == (1, 7) and torch.all((s1 >= 0) & (s1 <= 1))
    # the frozen CLIP text tower is not stored in the checkpoint
    assert not any("transformer.resblocks" in k and "temporal" not in k for k in a["state"])


def test_trainer_refuses_a_store_of_another_model(tmp_path):
    manifest, feats = _toy_dataset(tmp_path, prov_model="ViT-B-16")
    with pytest.raises(StoreError, match="model='ViT-B-16'.*tpwng-tiny-ViT-B-16"):
        train(_settings(1), manifest, feats, tmp_path / "a.pt", tmp_path / "a.tsv")
    assert not (tmp_path / "a.pt").exists()


def test_checkpoint_from_another_config_is_refused(tmp_path):
    manifest, feats = _toy_dataset(tmp_path)
    s = _settings(1)
    train(s, manifest, feats, tmp_path / "a.pt", tmp_path / "a.tsv")
    other = _settings(1) | {"classes": ["normal", "fighting", "riot"]}
    with pytest.raises(CheckpointError, match="classes"):
        load_model(tmp_path / "a.pt", other)
    stride = _settings(1)
    stride["extraction"] = stride["extraction"] | {"stride": 8}
    with pytest.raises(CheckpointError, match="stride"):
        load_model(tmp_path / "a.pt", stride)
    arch = _settings(1)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(tmp_path / "bad.pt", arch)


def test_multi_crop_epoch_visits_every_video_and_crop_pair_once(tmp_path):
    """A 10-crop store: epoch_over crops = every (video, crop) pair once per epoch (10x the
    steps of epoch_over videos); logged per epoch and recorded in the checkpoint."""
    manifest, feats = _toy_dataset(tmp_path, crops=10)
    s = _settings(1)
    videos = load_train_videos(s, manifest, feats)
    normal = [v for v in videos if v.normal]
    idx, crops = epoch_items(normal, "crops")
    assert len(normal) == 3 and sorted(zip(idx, crops, strict=True)) == [
        (i, c) for i in range(3) for c in range(10)]
    assert epoch_items(normal, "videos") == ([0, 1, 2], None)
    steps = {}
    for mode in ("crops", "videos"):
        s["train"] = s["train"] | {"epoch_over": mode}
        meta = train(s, manifest, feats, tmp_path / f"{mode}.pt", tmp_path / f"{mode}.tsv")
        steps[mode] = meta["steps_per_epoch"]
        assert meta["epoch_over"] == mode
        assert [r["steps"] for r in read_log(tmp_path / f"{mode}.tsv")] == [steps[mode]]
    # 3 normal + 3 anomalous training videos, batches of 2 + 2
    assert steps == {"crops": 15, "videos": 2}


def test_single_crop_stores_train_the_same_in_both_epoch_modes(tmp_path):
    manifest, feats = _toy_dataset(tmp_path)
    states = []
    for mode in ("crops", "videos"):
        s = _settings(1)
        s["train"] = s["train"] | {"epoch_over": mode}
        meta = train(s, manifest, feats, tmp_path / f"{mode}.pt", tmp_path / f"{mode}.tsv")
        assert meta["steps_per_epoch"] == 2
        states.append(load_checkpoint(tmp_path / f"{mode}.pt")["state"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    with pytest.raises(ValueError, match="epoch_over"):
        epoch_items([], "clips")


def test_bf16_autocast_training_runs_with_float32_similarities(tmp_path):
    """train.precision bf16 (auto on CUDA): the step runs under autocast, the similarities stay
    float32, the losses stay finite and differ from float32 training only by rounding."""
    manifest, feats = _toy_dataset(tmp_path)
    losses = {}
    for precision in ("fp32", "bf16"):
        s = _settings(1)
        s["train"] = s["train"] | {"precision": precision}
        train(s, manifest, feats, tmp_path / f"{precision}.pt", tmp_path / f"{precision}.tsv")
        losses[precision] = read_log(tmp_path / f"{precision}.tsv")[0]["loss"]
    assert np.isfinite(losses["bf16"]) and losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_fused_attention_trains_as_sdpa_does(tmp_path, monkeypatch):
    """Training on the CPU runs the hand-fused attention (``auto``); without dropout (the one
    random draw that differs) its losses and weights equal SDPA's over every step."""
    from tpwng.model import tcsal

    manifest, feats = _toy_dataset(tmp_path)
    s = _settings(3)
    s["model"] = s["model"] | {"dropout": 0.0}
    calls = []
    real = tcsal._SpanAttention.apply
    monkeypatch.setattr(tcsal._SpanAttention, "apply", lambda *a: calls.append(1) or real(*a))
    train(s, manifest, feats, tmp_path / "fused.pt", tmp_path / "fused.tsv")
    assert calls  # the fused path did run
    monkeypatch.setattr(tcsal.AdaptiveSpanAttention, "_fused_here", lambda self, x: False)
    calls.clear()
    train(s, manifest, feats, tmp_path / "sdpa.pt", tmp_path / "sdpa.tsv")
    assert not calls
    fused, sdpa = read_log(tmp_path / "fused.tsv"), read_log(tmp_path / "sdpa.tsv")
    assert len(fused) == len(sdpa) == 3
    for a, b in zip(fused, sdpa, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    wf = load_checkpoint(tmp_path / "fused.pt")["state"]
    ws = load_checkpoint(tmp_path / "sdpa.pt")["state"]
    for k in wf:  # Adam scales rounding differences of near-zero gradients up to its step size
        torch.testing.assert_close(wf[k], ws[k], atol=1e-4, rtol=0, msg=k)
