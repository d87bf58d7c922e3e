"""Figures for scored videos, pseudo-labels, text-frame similarities and training logs.

Each function writes one PNG: parent folders are created, the image is written to a temporary
file beside the target and renamed over it, and the figure is closed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tpwng.evaluate.metrics import (  # noqa: E402
    VideoResult,
    frame_ap,
    frame_auc,
    labels_to_intervals,
    roc_pr_points,
)
from tpwng.files import atomic_path  # noqa: E402

TRUTH_COLOR = "#9ecae1"  # light blue, as the paper's figures shade ground truth
SCORE_COLOR = "#d62728"
PSEUDO_COLOR = "#ff7f0e"
DPI = 100


@contextmanager
def figure(path: str | Path, nrows: int, ncols: int, panel: tuple[float, float]) -> Iterator:
    """Make a figure with a grid of axes, then write it atomically to ``path`` and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False
    )
    try:
        yield fig, axes
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _grid(n: int) -> tuple[int, int]:
    ncols = 1 if n == 1 else 2
    return math.ceil(n / ncols), ncols


def _hide_unused(axes: np.ndarray, n: int) -> None:
    for ax in axes.flat[n:]:
        ax.set_visible(False)


def shade(ax: Axes, truth: np.ndarray | None, label: str = "ground truth") -> None:
    """Shade the runs of non-zero per-frame ``truth`` on ``ax`` (nothing when None)."""
    if truth is None:
        return
    for k, (start, end) in enumerate(labels_to_intervals(np.asarray(truth))):
        ax.axvspan(start, end, color=TRUTH_COLOR, alpha=0.6, lw=0, label=label if k == 0 else None)


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def select_videos(videos: Sequence[VideoResult], max_videos: int) -> list[VideoResult]:
    """Up to ``max_videos`` videos, anomalous first, about half normal when both are available.

    Within each group the picks are spread evenly over the list, so that several classes show.
    """
    if max_videos < 1:
        raise ValueError(f"max_videos must be >= 1, got {max_videos}")
    anomalous = [v for v in videos if v.is_anomalous]
    normal = [v for v in videos if not v.is_anomalous]
    n_normal = min(len(normal), max_videos // 2)
    n_anom = min(len(anomalous), max_videos - n_normal)
    n_normal = min(len(normal), max_videos - n_anom)
    return [anomalous[i] for i in spread(len(anomalous), n_anom)] + [
        normal[i] for i in spread(len(normal), n_normal)
    ]


def plot_score_curves(
    videos: Sequence[VideoResult],
    path: str | Path,
    max_videos: int = 6,
    title: str | None = None,
) -> None:
    """Frame anomaly score curves with the true anomalous frames shaded, one panel per video."""
    chosen = select_videos(videos, max_videos)
    if not chosen:
        raise ValueError("no videos to plot")
    nrows, ncols = _grid(len(chosen))
    with figure(path, nrows, ncols, (6.0, 2.4)) as (fig, axes):
        for ax, video in zip(axes.flat, chosen, strict=False):
            shade(ax, video.frame_labels)
            ax.plot(np.arange(video.n_frames), video.frame_scores, color=SCORE_COLOR, lw=1.2)
            ax.set_ylim(0.0, 1.0)
            ax.set_xlim(0, max(video.n_frames, 1))
            ax.set_title(f"{video.video_id} ({', '.join(video.classes)})", fontsize=9)
            ax.set_xlabel("frame")
            ax.set_ylabel("anomaly score")
        _hide_unused(axes, len(chosen))
        if title:
            fig.suptitle(title)


def plot_roc_pr(videos: Sequence[VideoResult], path: str | Path) -> None:
    """ROC curve (AUC in the legend) and precision/recall curve (AP in the legend)."""
    points = roc_pr_points(videos)
    auc, ap = frame_auc(videos), frame_ap(videos)
    positive_rate = float(np.mean(np.concatenate([v.frame_labels for v in videos])))
    with figure(path, 1, 2, (4.5, 4.2)) as (_, axes):
        roc, pr = axes[0]
        roc.plot(points["fpr"], points["tpr"], color=SCORE_COLOR, label=f"AUC = {auc:.4f}")
        roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
        roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        pr.plot(points["recall"], points["precision"], color=SCORE_COLOR, label=f"AP = {ap:.4f}")
        pr.axhline(positive_rate, color="grey", ls="--", lw=0.8, label="chance")
        pr.set(xlabel="recall", ylabel="precision", title="Precision / recall")
        for ax in (roc, pr):
            ax.set_xlim(0.0, 1.0)
            ax.set_ylim(0.0, 1.02)
            ax.legend(loc="lower right" if ax is roc else "upper right", fontsize=9)
            ax.grid(alpha=0.3)


def _check_len(item: dict, key: str, n: int) -> np.ndarray | None:
    value = item.get(key)
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(
            f"video {item.get('video_id')!r}: {key!r} has shape {arr.shape}, expected ({n},)"
        )
    return arr


def plot_pseudo_labels(items: Sequence[dict], path: str | Path, max_videos: int = 6) -> None:
    """Pseudo-labels (orange step line) against shaded ground truth, one panel per video.

    Each item holds ``video_id``, ``pseudo`` (per frame 0/1), ``truth`` (per frame 0/1 or
    ``None``) and optionally ``score`` (per frame).
    """
    chosen = list(items)[:max_videos]
    if not chosen:
        raise ValueError("no pseudo-labels to plot")
    nrows, ncols = _grid(len(chosen))
    with figure(path, nrows, ncols, (6.0, 2.2)) as (fig, axes):
        for ax, item in zip(axes.flat, chosen, strict=False):
            pseudo = np.asarray(item["pseudo"], dtype=np.float64)
            if pseudo.ndim != 1:
                raise ValueError(f"video {item.get('video_id')!r}: pseudo-labels must be 1-D")
            n = pseudo.size
            truth = _check_len(item, "truth", n)
            score = _check_len(item, "score", n)
            shade(ax, truth)
            if score is not None:
                ax.plot(np.arange(n), score, color="grey", lw=0.8, alpha=0.8, label="score")
            ax.stairs(pseudo, np.arange(n + 1), color=PSEUDO_COLOR, lw=1.8, label="pseudo-label")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlim(0, max(n, 1))
            ax.set_title(str(item.get("video_id", "")), fontsize=9)
            ax.set_xlabel("frame")
        _hide_unused(axes, len(chosen))
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            axes.flat[0].legend(handles, labels, loc="upper right", fontsize=8)


def plot_similarities(items: Sequence[dict], path: str | Path, max_videos: int = 6) -> None:
    """Normalised similarity to the true anomaly text and to the normal text, per snippet.

    Each item holds ``video_id``, ``s_aa``, ``s_an`` (per snippet) and ``truth`` (per snippet
    0/1 or ``None``).
    """
    chosen = list(items)[:max_videos]
    if not chosen:
        raise ValueError("no similarities to plot")
    nrows, ncols = _grid(len(chosen))
    with figure(path, nrows, ncols, (6.0, 2.2)) as (_, axes):
        for ax, item in zip(axes.flat, chosen, strict=False):
            s_aa = np.asarray(item["s_aa"], dtype=np.float64)
            if s_aa.ndim != 1:
                raise ValueError(f"video {item.get('video_id')!r}: s_aa must be 1-D")
            n = s_aa.size
            s_an = _check_len(item, "s_an", n)
            truth = _check_len(item, "truth", n)
            shade(ax, truth)
            x = np.arange(n)
            ax.plot(x, s_aa, color=SCORE_COLOR, lw=1.2, label="anomaly text")
            if s_an is not None:
                ax.plot(x, s_an, color="#2ca02c", lw=1.2, label="normal text")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlim(0, max(n - 1, 1))
            ax.set_title(str(item.get("video_id", "")), fontsize=9)
            ax.set_xlabel("snippet")
            ax.set_ylabel("similarity")
        _hide_unused(axes, len(chosen))
        axes.flat[0].legend(loc="upper right", fontsize=8)


PL_KEYS = ("pl_pos_rate", "pl_precision", "pl_recall", "pl_f1")


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    out = []
    for row in rows:
        value = row.get(key)
        try:
            out.append(float(value) if value is not None else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=np.float64)


def _keys(rows: Sequence[dict], prefix: str) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith(prefix):
                seen.setdefault(key, None)
    return list(seen)


def plot_training_log(log_rows: Sequence[dict], path: str | Path) -> None:
    """Per-epoch curves: loss terms (keys starting ``loss``) and pseudo-label statistics.

    The second panel shows every key starting ``pl_`` (positive rate, and precision / recall /
    F1 against ground truth where the log has them). The x axis is ``epoch`` when logged.
    """
    rows = list(log_rows)
    if not rows:
        raise ValueError("training log is empty")
    x = _column(rows, "epoch") if all("epoch" in r for r in rows) else np.arange(1, len(rows) + 1)
    loss_keys = _keys(rows, "loss")
    pl_found = _keys(rows, "pl_")
    pl_keys = [k for k in PL_KEYS if k in pl_found] + [k for k in pl_found if k not in PL_KEYS]
    with figure(path, 1, 2, (5.0, 3.6)) as (_, axes):
        for ax, keys, title in (
            (axes[0][0], loss_keys, "loss terms"),
            (axes[0][1], pl_keys, "pseudo-labels"),
        ):
            for key in keys:
                ax.plot(x, _column(rows, key), marker="o", ms=3, lw=1.2, label=key)
            if keys:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            ax.set(xlabel="epoch", title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        if pl_keys:
            values = np.concatenate([_column(rows, k) for k in pl_keys])
            values = values[np.isfinite(values)]
            if values.size and values.min() >= 0.0 and values.max() <= 1.0:
                axes[0][1].set_ylim(-0.02, 1.02)
