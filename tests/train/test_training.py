"""Sequences, training determinism, checkpoints and the store/config checks of the trainer."""

import os
import sys

import numpy as np
import pytest
import torch

from tpwng.data.manifest import ManifestRow, write_manifest
from tpwng.data.sequences import cap_length, epoch_batches, pad_batch, snippet_truth
from tpwng.errors import CheckpointError
from tpwng.features.store import StoreError, StoreWriter
from tpwng.train.checkpoint import load_checkpoint, load_model
from tpwng.train.loop import epoch_items, load_train_videos, read_log, train, write_log


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
    from tpwng.model.attention_kernels import SpanAttention
    from tpwng.model.tcsal import AdaptiveSpanAttention

    manifest, feats = _toy_dataset(tmp_path)
    s = _settings(3)
    s["model"] = s["model"] | {"dropout": 0.0}
    calls = []
    real = SpanAttention.apply
    monkeypatch.setattr(SpanAttention, "apply", lambda *a: calls.append(1) or real(*a))
    train(s, manifest, feats, tmp_path / "fused.pt", tmp_path / "fused.tsv")
    assert calls  # the fused path did run
    chosen = AdaptiveSpanAttention.implementation
    monkeypatch.setattr(AdaptiveSpanAttention, "implementation",
                        lambda self, x, **kw: chosen(self, x, **kw).replace("fused", "sdpa"))
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


def _videos(lengths, crops=3, dim=8, seed=0):
    from tpwng.data.sequences import TrainVideo

    rng = np.random.default_rng(seed)
    return [TrainVideo(f"v{i}", rng.normal(size=(n, crops, dim)).astype(np.float16),
                       ["normal"] if i % 2 == 0 else ["fighting"], 16 * n, n)
            for i, n in enumerate(lengths)]


def test_an_epoch_plan_draws_as_per_step_batch_assembly_did():
    """The plan makes the epoch's permutations, then per step one crop per normal video and
    one per anomalous video, in that order (the draws of the per-step assembly)."""
    from tpwng.train.batches import plan_epoch

    normal, anomalous = _videos([5, 9, 3, 7]), _videos([4, 6, 8], seed=1)
    items = (list(range(4)), None, list(range(3)), None)
    plan = plan_epoch(normal, anomalous, items, 2, 2, np.random.default_rng(7))
    ref = np.random.default_rng(7)
    batches = epoch_batches(4, 3, 2, 2, ref)
    assert plan.steps == len(batches) == 2
    for s, (pos_n, pos_a) in enumerate(batches):
        crops_n = [ref.integers(3) for _ in pos_n]
        crops_a = [ref.integers(3) for _ in pos_a]
        assert plan.idx_n[s].tolist() == list(pos_n) and plan.crop_n[s].tolist() == crops_n
        assert plan.idx_a[s].tolist() == list(pos_a) and plan.crop_a[s].tolist() == crops_a
        assert plan.t_n[s] == max(normal[i].features.shape[0] for i in pos_n)
    fixed = plan_epoch(normal, anomalous, (list(range(4)), [2, 1, 0, 2], list(range(3)),
                                           [1, 1, 0]), 2, 2, np.random.default_rng(7), 10)
    assert fixed.t_n == fixed.t_a == [10, 10]
    assert all(c == [2, 1, 0, 2][i] for i, c in zip(fixed.idx_n.ravel(), fixed.crop_n.ravel(),
                                                     strict=True))


def test_resident_batches_equal_the_host_padded_ones():
    """Gathered on the device by index (CPU here: the same code) = padded on the host, to the
    bit, at the batch's own length and at a fixed one; the videos' arrays become views."""
    from tpwng.train.batches import HostFeatures, ResidentFeatures

    classes = ["normal", "fighting"]
    videos = _videos([5, 1, 7, 3])
    host = HostFeatures(_videos([5, 1, 7, 3]), classes, torch.device("cpu"))
    res = ResidentFeatures(videos, classes, torch.device("cpu"))
    assert all(v.features.base is not None for v in videos)  # views of the resident tensor
    idx, crops = np.array([2, 1, 3, 2]), np.array([0, 2, 1, 1])
    for t in (7, 9):
        xh, mh, yh = host.batch(idx, crops, t)
        xr, mr, yr = res.batch(res.upload(idx), res.upload(crops), t)
        assert xr.dtype == torch.float32 and xr.shape == (4, t, 8)
        assert torch.equal(xh, xr) and torch.equal(mh, mr) and torch.equal(yh, yr)
        assert mr.sum(1).tolist() == [7, 1, 3, 7]
        assert torch.equal(xr[1, 0], torch.from_numpy(videos[1].features[0, 2]).float())
        assert (xr[~mr] == 0).all() and not torch.signbit(xr[~mr]).any()
    with pytest.raises(ValueError, match="shorter"):
        host.batch(idx, crops, 3)


def test_resident_features_respect_the_memory_budget(monkeypatch, caplog):
    from tpwng.train import batches

    videos = _videos([5, 6])
    cpu = torch.device("cpu")
    need = batches.feature_bytes(videos)
    assert need == 11 * 3 * 8 * 2
    monkeypatch.setattr(batches, "free_memory", lambda device: need)  # 2 x need is the bound
    with pytest.raises(batches.ResidentError, match="over 0.5 x the .* GiB free on cpu"):
        batches.feature_sources([videos], ["normal", "fighting"], cpu, "on")
    with caplog.at_level("INFO", logger="tpwng.train.batches"):
        (src,) = batches.feature_sources([videos], ["normal", "fighting"], cpu, "auto")
    assert not src.resident and "too large to keep on cpu" in caplog.text
    monkeypatch.setattr(batches, "free_memory", lambda device: 2 * need)
    assert batches.feature_sources([videos], ["normal", "fighting"], cpu, "auto")[0].resident
    assert not batches.feature_sources([videos], ["normal", "fighting"], cpu, "off")[0].resident
    with pytest.raises(ValueError, match="resident features must be one of"):
        batches.feature_sources([videos], ["normal", "fighting"], cpu, "yes")
    assert batches.free_memory(cpu) > 0


def _train_rows(monkeypatch, tmp_path, settings, name, **kw):
    """train(), with the per-epoch rows at full precision (the log file rounds to 6 digits)."""
    from tpwng.train import loop

    got = []
    monkeypatch.setattr(loop, "write_log", lambda rows, path: (got.extend(rows),
                                                               write_log(rows, path)))
    manifest, feats = _toy_dataset(tmp_path, crops=3)
    meta = train(settings, manifest, feats, tmp_path / f"{name}.pt", tmp_path / f"{name}.tsv",
                 **kw)
    return meta, got, load_checkpoint(tmp_path / f"{name}.pt")["state"]


@pytest.mark.parametrize("epoch_over", ["videos", "crops"])
def test_resident_training_equals_host_training(monkeypatch, tmp_path, epoch_over):
    """Device-resident features (batches gathered by index, statistics summed on the device)
    train exactly as batches padded on the host and copied per step: same losses, pseudo-label
    rates and weights, for random crops (videos) and every crop pair (crops)."""
    s = _settings(2)
    s["train"] = s["train"] | {"epoch_over": epoch_over}
    m_host, host, w_host = _train_rows(monkeypatch, tmp_path, s, "host", resident="off")
    m_dev, dev, w_dev = _train_rows(monkeypatch, tmp_path, s, "dev", resident="on")
    assert (m_host["resident_features"], m_dev["resident_features"]) == (False, True)
    assert len(host) == len(dev) == 2
    for a, b in zip(host, dev, strict=True):
        assert set(a) == set(b) and "pl_pos_rate" in a
        for k in a:
            if k != "seconds":
                assert a[k] == pytest.approx(b[k], abs=1e-6, rel=0), k
    for k in w_host:
        assert torch.equal(w_host[k], w_dev[k]), k


def test_the_step_reads_nothing_back_from_the_device(monkeypatch, tmp_path):
    """Inside an epoch's steps no tensor is read to the host (.item, float, bool, .cpu, .numpy,
    .tolist): the statistics are summed on the device and read once an epoch. (A boolean-mask
    index, which waits for the device on CUDA, is not seen here.)"""
    from tpwng.train import loop

    reads, inside = [], [False]
    for name in ("item", "__float__", "__bool__", "cpu", "numpy", "tolist"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **kw):
            if inside[0]:
                caller = sys._getframe(1).f_code.co_filename
                # Adam's step counters live on the host (on CUDA the fused Adam's do not)
                if f"torch{os.sep}optim{os.sep}" not in caller:
                    reads.append((_name, caller))
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)
    real_call = loop.TrainingStep.__call__

    def call(self, *a):
        inside[0] = True
        try:
            return real_call(self, *a)
        finally:
            inside[0] = False

    monkeypatch.setattr(loop.TrainingStep, "__call__", call)
    meta, rows, _ = _train_rows(monkeypatch, tmp_path, _settings(1), "spy", resident="on")
    assert meta["steps_per_epoch"] == 5 and len(rows) == 1  # 3 crops: 5 steps of 2 + 2
    assert reads == []


def test_compile_is_cuda_only_and_a_warned_no_op_on_the_cpu(monkeypatch, tmp_path, caplog):
    from tpwng.train.loop import compile_mode, make_optimizer

    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger="tpwng.train.loop"):
        assert compile_mode("reduce-overhead", cpu) == "none"
    assert "applies on CUDA only; training on cpu runs uncompiled" in caplog.text
    assert compile_mode("none", cpu) == "none"
    assert compile_mode("reduce-overhead", torch.device("cuda")) == "reduce-overhead"
    with pytest.raises(ValueError, match="train.compile must be one of"):
        compile_mode("max-autotune", cpu)
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0, cpu)
    assert not opt.defaults["fused"] and not opt.defaults["foreach"]  # the CPU's default Adam
    plain, rows, w_plain = _train_rows(monkeypatch, tmp_path, _settings(1), "plain")
    s = _settings(1)
    s["train"] = s["train"] | {"compile": "reduce-overhead"}
    meta, rows_c, w_c = _train_rows(monkeypatch, tmp_path, s, "compiled")
    assert plain["compile"] == meta["compile"] == "none"
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_c]
    assert all(torch.equal(w_plain[k], w_c[k]) for k in w_plain)


def test_fixed_length_batches_change_the_losses_only_by_rounding():
    """Compiled steps pad every batch to max_seq_len: the masked positions leave every loss
    term as it was, up to float32 rounding."""
    from tpwng.features.clip_backbone import ClipSpec, load_clip
    from tpwng.model.tpwng import TPWNG, ModelConfig
    from tpwng.train.batches import HostFeatures

    torch.manual_seed(0)
    clip, _ = load_clip(ClipSpec(model="tpwng-tiny-ViT-B-16", pretrained="none"))
    model = TPWNG(clip, ["normal", "fighting"], ModelConfig(ff_dim=64, layers=2, dropout=0.0),
                  dim=512)
    normal = HostFeatures(_videos([5, 9, 12], dim=512), ["normal", "fighting"],
                          torch.device("cpu"))
    anomalous = HostFeatures(_videos([6, 11, 4], dim=512, seed=1), ["normal", "fighting"],
                             torch.device("cpu"))
    idx, crops = np.array([0, 1, 2]), np.array([0, 1, 2])
    logs = []
    for t_n, t_a in ((12, 11), (32, 32)):
        xn, mn, _ = normal.batch(idx, crops, t_n)
        xa, ma, ya = anomalous.batch(idx, crops, t_a)
        logs.append(model.training_terms(xn, mn, xa, ma, ya)[1])
    for k, v in logs[0].items():
        assert float(v) == pytest.approx(float(logs[1][k]), abs=2e-5), k
