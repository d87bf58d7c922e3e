"""Diagnostic plots: pseudo-labels against truth (paper Fig. 7), S̃aa / S̃an curves (Fig. 8),
and the per-epoch training log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tpwng.data.datasets import load_interval_file
from tpwng.data.manifest import read_manifest
from tpwng.data.sequences import cap_length, pad_batch
from tpwng.evaluate.plots import plot_pseudo_labels, plot_similarities, plot_training_log
from tpwng.features.store import FeatureStore, pick_crop
from tpwng.grid import expand_to_frames, frame_labels, snippet_fractions
from tpwng.train.checkpoint import load_model
from tpwng.train.loop import read_log


def _labels(classes: list[str], all_classes: list[str]) -> torch.Tensor:
    y = torch.zeros(1, len(all_classes))
    for c in classes:
        y[0, all_classes.index(c)] = 1.0
    return y


def _normal_batch(store: FeatureStore, rows, crop: int, n: int = 32):
    normals = [r for r in rows if r.split == "train" and r.label == "normal"][:n]
    if not normals:
        return None, None
    return pad_batch([cap_length(pick_crop(store.get(r.video_id), crop)) for r in normals])


@torch.no_grad()
def _similarity_items(model, store, rows, classes, crop, stride, split, truth_of, limit):
    xn, mn = _normal_batch(store, rows, crop)
    items = []
    for r in [r for r in rows if r.split == split and r.label == "anomalous"][:limit]:
        feats = pick_crop(store.get(r.video_id), crop)
        x, m = pad_batch([feats])
        out = model.pseudo_and_similarities(x, m, _labels(r.classes, classes), xn, mn)
        truth = truth_of(r)
        items.append({
            "video_id": r.video_id, "r": r,
            "s_aa": out["s_aa"][0].numpy(), "s_an": out["s_an"][0].numpy(),
            "pseudo": out["pseudo"][0].numpy(), "truth_frames": truth,
        })
    return items


def diagnostics(settings: dict, manifest: Path, features: Path, model_path: Path,
                train_log: Path, out_dir: Path) -> None:
    model, meta = load_model(model_path, settings)
    classes = meta["classes"]
    stride = int(settings["extraction"]["stride"])
    crop = int(settings["train"]["test_crop"])
    n = int(settings["evaluate"]["plot_videos"])
    rows = read_manifest(manifest)
    truth_file = Path(settings["root"] or "") / "train_intervals.txt"
    train_truth = load_interval_file(truth_file) if settings["root"] and truth_file.is_file() \
        else {}

    def train_truth_of(r):
        iv = train_truth.get(r.video_id)
        return None if iv is None else frame_labels(iv, r.frames)

    def test_truth_of(r):
        return frame_labels(r.intervals, r.frames)

    with FeatureStore(features) as store:
        train_items = _similarity_items(model, store, rows, classes, crop, stride, "train",
                                        train_truth_of, n)
        test_items = _similarity_items(model, store, rows, classes, crop, stride, "test",
                                       test_truth_of, n)
    plot_pseudo_labels([
        {"video_id": it["video_id"],
         "pseudo": expand_to_frames(it["pseudo"], it["r"].frames, stride),
         "truth": it["truth_frames"]} for it in train_items], out_dir / "pseudo_labels.png",
        max_videos=n)
    plot_similarities([
        {"video_id": it["video_id"], "s_aa": it["s_aa"], "s_an": it["s_an"],
         "truth": _snippet_truth(it["truth_frames"], stride)} for it in test_items],
        out_dir / "similarities.png", max_videos=n)
    plot_training_log(read_log(train_log), out_dir / "training.png")


def _snippet_truth(frames: np.ndarray | None, stride: int) -> np.ndarray | None:
    return None if frames is None else (snippet_fractions(frames, stride) >= 0.5).astype(np.uint8)
