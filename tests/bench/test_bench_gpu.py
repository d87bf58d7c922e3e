"""`tpwng bench gpu`: the one-shot GPU-box benchmark, run end to end at tiny sizes here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tpwng.cli import build_parser

TPWNG = Path(sys.executable).parent / "tpwng"
FIGURES = [
    "decode_1proc_fps", "decode_all_fps", "encoder_images_per_s",
    "end_to_end_center_fps", "end_to_end_center_crops_per_s",
    "end_to_end_tencrop_fps", "end_to_end_tencrop_crops_per_s",
    "peer_baseline_fps", "speedup_over_peer",
    "train_seconds_per_epoch", "train_seconds_all_epochs", "total_s",
    "decode_single_thread_fps", "decode_ceiling_fps", "encoder_bf16_weights_images_per_s",
    "end_to_end_center_vs_decode_ceiling", "seeds_sequential_s", "seeds_concurrent_s",
    "seeds_concurrent_speedup", "seeds_five_by_50_epochs_s", "decode_all_steady_fps",
    "decode_single_thread_steady_fps", "decode_all_startup_s", "decode_all_vs_single_steady",
]
TARGETS = {"centre_crop_vs_decode", "centre_crop_vs_decode_ceiling", "tencrop_vs_encoder",
           "tencrop_vs_bf16_encoder", "speedup_over_peer", "train_50_epochs",
           "five_seeds_50_epochs", "center_lanes_match", "tencrop_lanes_match"}


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(TPWNG), "bench", "gpu", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def test_quick_run_writes_every_figure_and_target(tmp_path):
    out = tmp_path / "gpu.json"
    run = _bench("--quick", "--model", "tpwng-tiny-ViT-B-16", "--workdir", str(tmp_path / "w"),
                 "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in FIGURES:
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["sizes"] == "quick" and r["videos"]["distinct"] == 2
    assert len(list((tmp_path / "w").glob("pattern-*.mp4"))) == 2  # kept for the next run
    assert not list((tmp_path / "w").glob("*.h5"))
    assert r["decode_all_frames"] > 0 and r["end_to_end_tencrop_frames"] > 0
    assert r["speedup_over_peer"] == pytest.approx(r["end_to_end_center_fps"]
                                                   / r["peer_baseline_fps"])
    assert 1 <= r["train_epochs_timed"] <= 2 and "of 2 epochs timed" in r["train_timed"]
    assert set(r["targets"]) == TARGETS
    for name, t in r["targets"].items():
        assert set(t) == {"figure", "bound", "rule", "pass"} and isinstance(t["pass"], bool)
        assert name in run.stdout
    t = r["targets"]
    assert t["centre_crop_vs_decode"]["bound"] == pytest.approx(0.85 * r["decode_all_fps"])
    assert t["tencrop_vs_encoder"]["bound"] == pytest.approx(0.85 * r["encoder_images_per_s"])
    assert (t["speedup_over_peer"]["bound"], t["train_50_epochs"]["bound"]) == (15.0, 240.0)
    assert t["train_50_epochs"]["pass"] == (r["train_seconds_all_epochs"] <= 240)
    assert t["centre_crop_vs_decode_ceiling"]["bound"] == pytest.approx(
        0.85 * r["decode_single_thread_steady_fps"] * r["decode_all_processes"])
    # the ceiling is a decoder's rate once started: one process's start-up (importing,
    # opening its first video) is not part of it
    assert r["decode_ceiling_fps"] == pytest.approx(
        r["decode_single_thread_steady_fps"] * r["decode_all_processes"])
    assert 0 < r["decode_single_thread_startup_s"] < r["decode_single_thread_s"]
    assert t["tencrop_vs_bf16_encoder"]["bound"] == pytest.approx(
        0.95 * r["encoder_bf16_weights_images_per_s"])
    # training as `epoch_over: crops` (4 videos x 2 crops, batches of 2 + 2: 2 steps), on the
    # CPU with resident features, the default Adam and no compilation
    assert (r["train_epoch_over"], r["train_crops"], r["train_steps_per_epoch"]) == ("crops", 2, 2)
    assert r["train_resident_features"] and not r["train_fused_adam"]
    assert r["train_compile"] == "none"
    # two seeds' processes, alone one after another, then together
    assert (r["seeds"], r["seed_steps_each"], len(r["seeds_alone_s"])) == (2, 2, 2)
    assert r["seeds_sequential_s"] == pytest.approx(sum(r["seeds_alone_s"]))
    assert r["seeds_five_by_50_epochs_s"] == pytest.approx(5 * 50 * 2 / max(
        r["seeds_sequential_steps_per_s"], r["seeds_concurrent_steps_per_s"]))
    assert t["five_seeds_50_epochs"]["bound"] == 600.0
    # what extraction stored is what one encoder computes from the same frames
    for crop_mode in ("center", "tencrop"):
        cosine = r[f"end_to_end_{crop_mode}_min_cosine_to_direct"]
        assert t[f"{crop_mode}_lanes_match"]["pass"], cosine
    assert "[" in run.stderr and "done" in run.stderr  # progress on stderr
    check = r["attention_float64"]  # TCSAL's attention paths against float64 `manual`
    assert check["shape"] == [2, 32, 64] and check["layers"] == 2
    assert 0 < check["chi_zero_fraction"] < 1 and check["chi_ramp_fraction"] > 0  # mask cuts
    assert set(check["errors"]) == {"float32", "float64"}
    for dtype, bound in (("float32", 1e-4), ("float64", 1e-10)):
        assert set(check["errors"][dtype]) == {"manual", "sdpa", "fused"}
        for impl, e in check["errors"][dtype].items():
            for key in ("output", "param_grads", "span_grads"):
                assert math.isfinite(e[key]) and 0 <= e[key] <= bound, (dtype, impl, key)
            assert e["param_grads_worst"].startswith("layers."), (dtype, impl)
    assert check["float64_agree"] and check["float64_max_rel_err"] <= 1e-10
    assert "float64 paths agree" in run.stdout and "attention paths vs manual" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_full_run_without_cuda_refuses_in_one_line(tmp_path):
    run = _bench("--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "tpwng bench: error: no usable CUDA device here: the full run measures a GPU box; "
        "--quick runs every phase at tiny sizes on this machine"]
    assert not (tmp_path / "w").exists()


def test_help_documents_the_one_shot_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "gpu", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("at most 9 minutes", "benchmarks/gpu-<host>.json", "benchmarks/.gpu-work",
                   "--quick", "0.85 x the all-process decode rate", "15 x the peer-style",
                   "50 epochs <= 240 s", "five seeds <= 600 s"):
        assert phrase in text, phrase


def test_bench_takes_its_videos_before_or_after_its_options():
    from tpwng.cli import parse_args

    after = parse_args(["bench", "extract", "--model", "trivial", "--no-baseline", "a.mp4",
                        "b.mp4"])
    before = parse_args(["bench", "extract", "a.mp4", "b.mp4", "--model", "trivial",
                         "--no-baseline"])
    assert after.videos == before.videos == ["a.mp4", "b.mp4"]
    assert after.model == before.model == "trivial" and after.no_baseline
    with pytest.raises(SystemExit):
        parse_args(["bench", "extract", "--model", "trivial", "a.mp4", "--no-such-option"])
    with pytest.raises(SystemExit):
        parse_args(["synth", "--settings", "{}", "--out", "x", "stray"])  # valid but the stray
