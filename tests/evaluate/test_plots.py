"""Every plot writes one complete PNG and leaves no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from tpwng.evaluate.metrics import VideoResult
from tpwng.evaluate.plots import (
    plot_pseudo_labels,
    plot_roc_pr,
    plot_score_curves,
    plot_similarities,
    plot_training_log,
    select_videos,
)
from tpwng.grid import frame_labels


def check_png(path: Path, min_size: tuple[int, int] = (300, 200)) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        assert img.size[0] <= 4000 and img.size[1] <= 4000
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert leftovers == [], leftovers
    assert plt.get_fignums() == []


def make_videos(n_anom: int = 5, n_norm: int = 4) -> list[VideoResult]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_anom):
        n = 120 + 10 * i
        labels = frame_labels([(30, 60), (80, 90)], n)
        scores = np.clip(0.6 * labels + 0.4 * rng.random(n), 0, 1)
        out.append(VideoResult(f"Abuse{i:03d}", ["abuse"], scores, labels))
    for i in range(n_norm):
        out.append(VideoResult(f"Normal{i:03d}", ["normal"], 0.4 * rng.random(100), np.zeros(100)))
    return out


def test_select_videos_mixes_anomalous_first():
    chosen = select_videos(make_videos(), 6)
    assert [v.label for v in chosen] == ["anomalous"] * 3 + ["normal"] * 3
    assert chosen[0].video_id == "Abuse000" and chosen[2].video_id == "Abuse004"
    assert len(select_videos(make_videos(5, 0), 4)) == 4
    assert [v.label for v in select_videos(make_videos(1, 4), 4)] == ["anomalous"] + ["normal"] * 3


def test_plot_score_curves(tmp_path):
    path = tmp_path / "deep" / "scores.png"
    plot_score_curves(make_videos(), path, max_videos=6, title="test scores")
    check_png(path)
    single = tmp_path / "single" / "one.png"
    plot_score_curves(make_videos(1, 0), single)
    check_png(single, (200, 100))


def test_plot_roc_pr(tmp_path):
    path = tmp_path / "roc_pr.png"
    plot_roc_pr(make_videos(), path)
    check_png(path)


def test_plot_pseudo_labels(tmp_path):
    items = []
    for i in range(3):
        truth = frame_labels([(20, 50)], 100)
        pseudo = frame_labels([(25, 55)], 100)
        item = {"video_id": f"v{i}", "pseudo": pseudo, "truth": truth if i != 1 else None}
        if i == 2:
            item["score"] = np.linspace(0, 1, 100)
        items.append(item)
    path = tmp_path / "pl.png"
    plot_pseudo_labels(items, path)
    check_png(path)
    with pytest.raises(ValueError, match="truth"):
        plot_pseudo_labels([{"video_id": "x", "pseudo": np.zeros(5), "truth": np.zeros(4)}], path)
    assert plt.get_fignums() == []


def test_plot_similarities(tmp_path):
    x = np.linspace(0, 1, 40)
    items = [
        {"video_id": "a", "s_aa": x, "s_an": 1 - x, "truth": (x > 0.5).astype(int)},
        {"video_id": "b", "s_aa": x[::-1], "s_an": x, "truth": None},
    ]
    path = tmp_path / "sim.png"
    plot_similarities(items, path)
    check_png(path)


def test_plot_training_log(tmp_path):
    rows = [
        {
            "epoch": e,
            "loss": 1.0 / e,
            "loss_cl": 0.5 / e,
            "loss_rank": 0.3 / e,
            "pl_pos_rate": 0.2 + 0.01 * e,
            "pl_precision": 0.5,
            "pl_recall": 0.6,
            "pl_f1": 0.55,
        }
        for e in range(1, 6)
    ]
    path = tmp_path / "log.png"
    plot_training_log(rows, path)
    check_png(path)
    plain = tmp_path / "plain" / "log.png"
    plot_training_log([{"loss": 1.0}, {"loss": 0.5}], plain)
    check_png(plain)


def test_failed_plot_keeps_previous_file(tmp_path):
    path = tmp_path / "scores.png"
    plot_score_curves(make_videos(), path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        plot_score_curves([], path)
    with pytest.raises(ValueError):
        plot_training_log([], path)
    assert path.read_bytes() == before
    check_png(path)
