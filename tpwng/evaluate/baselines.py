"""Two reference detectors on the same stored CLIP features as TPWNG, and their table.

Inputs are plain numpy arrays, one per video: ``[snippets, crops, D]`` (as stored) or
``[snippets, D]``; training videos carry a video-level label (0 normal, 1 anomalous). Both
detectors return one score per snippet of every test video (higher = more anomalous).

- `nearest_normal_distance`: no training; the Euclidean distance of a test snippet to its
  nearest normal training snippet after per-dimension standardisation with the normal training
  snippets' mean and standard deviation.
- `topk_mil_ranking`: a snippet MLP trained with the top-k multiple-instance ranking hinge
  between anomalous and normal videos (in the spirit of Sultani et al., CVPR 2018).

`baselines_table` turns such scores (and TPWNG's, if given) into one metrics table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from tpwng.data.sequences import cap_length, pad_batch
from tpwng.grid import expand_to_frames

Metric = Callable[[list[np.ndarray], list[np.ndarray]], float | Mapping[str, float]]


def _snippets(features: np.ndarray, crop: int | None, what: str) -> np.ndarray:
    """``[T, D]`` features of one crop (the only one if a video has one), or ``[T, C, D]`` of
    all crops for ``crop=None``."""
    f = np.asarray(features)
    if f.ndim == 2:
        f = f[:, None, :]
    if f.ndim != 3 or f.shape[0] == 0:
        raise ValueError(f"{what}: features must be [snippets >= 1, (crops,) D], got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{what}: features contain NaN or inf")
    if crop is None:
        return f
    return f[:, crop if f.shape[1] > crop else 0]


def _check_labels(train_features: Sequence[np.ndarray], train_labels: Sequence[int]) -> np.ndarray:
    labels = np.asarray(train_labels, dtype=np.int64)
    if labels.shape != (len(train_features),) or not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"need one label (0 normal, 1 anomalous) per training video, got "
                         f"{labels.shape[0] if labels.ndim else labels} for "
                         f"{len(train_features)} videos")
    return labels


def _stats(x: np.ndarray, rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of ``[N, D]``: two passes
    in float64 over blocks of ``rows`` rows, so no float64 copy of ``x`` is made."""
    total = np.zeros(x.shape[1])
    for i in range(0, x.shape[0], rows):
        total += x[i : i + rows].sum(0, dtype=np.float64)
    mean = total / x.shape[0]
    squares = np.zeros(x.shape[1])
    for i in range(0, x.shape[0], rows):
        squares += ((x[i : i + rows] - mean) ** 2).sum(0)
    return mean, np.maximum(np.sqrt(squares / x.shape[0]), 1e-6)


@contextmanager
def _deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    """Seeded torch RNG, deterministic algorithms and (optionally) a fixed number of intra-op
    threads inside; the global state is restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    n_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous, warn_only=warn_only)
            torch.set_num_threads(n_threads)


# --------------------------------------------------------------------------- nearest normal


def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, max_elements: int = 1 << 24
) -> torch.Tensor:
    """``min_j ||q_i - b_j||`` for every row of ``queries`` ``[M, D]`` against ``bank``
    ``[N, D]``, in blocks of at most ``max_elements`` distances (float32 via `torch.cdist`),
    so that the ``M × N`` matrix is never built at once."""
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"need [M, D] queries and [N, D] bank, got {list(queries.shape)}, "
                         f"{list(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError("the bank of normal snippets is empty")
    q_rows = max(1, min(queries.shape[0], 1024, max_elements))
    b_rows = max(1, max_elements // q_rows)
    out = torch.empty(queries.shape[0], dtype=torch.float32)
    for i in range(0, queries.shape[0], q_rows):
        q = queries[i : i + q_rows].float()
        best = torch.full((q.shape[0],), float("inf"))
        for j in range(0, bank.shape[0], b_rows):
            d = torch.cdist(q, bank[j : j + b_rows].float())
            best = torch.minimum(best, d.min(dim=1).values)
        out[i : i + q.shape[0]] = best
    return out


def nearest_normal_distance(
    train_features: Sequence[np.ndarray],
    train_labels: Sequence[int],
    test_features: Sequence[np.ndarray],
    crop: int | None = 0,
    max_elements: int = 1 << 24,
) -> list[np.ndarray]:
    """Distance of each test snippet to its nearest normal training snippet.

    With ``μ, σ`` the per-dimension mean and standard deviation over the normal training
    snippets (``σ`` floored at 1e-6), a snippet ``x`` scores
    ``min_{n ∈ normal snippets} ||(x - μ)/σ - (n - μ)/σ||₂``. ``crop`` picks one crop of train
    and test features (crop 0 where a video has only one); ``None`` puts every crop of the
    normal videos in the bank and averages a test snippet's score over its crops. Distances are
    taken in blocks (`nearest_distances`), so memory stays bounded by ``max_elements``.

    Returns float32 ``[T]`` scores per test video, in input order.
    """
    labels = _check_labels(train_features, train_labels)
    normal = [_snippets(f, crop, f"training video {i}") for i, f in enumerate(train_features)
              if labels[i] == 0]
    if not normal:
        raise ValueError("nearest-normal distance needs at least one normal training video")
    bank_np = np.concatenate([n.reshape(-1, n.shape[-1]) for n in normal], dtype=np.float32)
    mean, std = _stats(bank_np)
    bank_np -= mean.astype(np.float32)
    bank_np /= std.astype(np.float32)
    bank = torch.from_numpy(bank_np)
    tests = [_snippets(f, crop, f"test video {i}") for i, f in enumerate(test_features)]
    if not tests:
        return []
    queries = np.concatenate([t.reshape(-1, t.shape[-1]) for t in tests], dtype=np.float32)
    queries = ((queries - mean) / std).astype(np.float32)  # all test snippets in one pass
    d = nearest_distances(torch.from_numpy(queries), bank, max_elements).numpy()
    out, at = [], 0
    for t in tests:
        n = int(np.prod(t.shape[:-1]))
        v = d[at : at + n].reshape(t.shape[:-1])
        out.append((v if v.ndim == 1 else v.mean(1)).astype(np.float32))
        at += n
    return out


# --------------------------------------------------------------------------- top-k MIL ranking


@dataclass
class MilSettings:
    """Settings of `topk_mil_ranking` (defaults take seconds on ~100 videos on a CPU)."""

    hidden: int = 256
    dropout: float = 0.3
    steps: int = 200
    batch: int = 16  # videos of each kind per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    k_divisor: int = 16  # k = max(1, T // k_divisor) snippets per video
    lambda_smooth: float = 1e-2
    lambda_sparse: float = 1e-2
    max_len: int = 256  # training videos are shortened to this many snippets (bin averages)
    seed: int = 0
    # torch intra-op threads while training and scoring (restored after); one thread is the
    # fastest for this small MLP and makes the result independent of the machine's core count
    threads: int | None = 1


def _mlp(dim: int, s: MilSettings) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, s.hidden), nn.ReLU(), nn.Dropout(s.dropout),
                         nn.Linear(s.hidden, 1), nn.Sigmoid())


def topk_mean(scores: torch.Tensor, mask: torch.Tensor, k_divisor: int = 16) -> torch.Tensor:
    """Per video ``[B]``: mean of the top ``k = max(1, T_valid // k_divisor)`` valid scores."""
    n = mask.sum(1)
    k = torch.clamp(n // k_divisor, min=1)
    ranked = scores.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
    take = torch.arange(scores.shape[1], device=scores.device)[None] < k[:, None]
    return ranked.masked_fill(~take, 0.0).sum(1) / k


def topk_mil_ranking(
    train_features: Sequence[np.ndarray],
    train_labels: Sequence[int],
    test_features: Sequence[np.ndarray],
    settings: MilSettings | None = None,
    crop: int | None = 0,
) -> list[np.ndarray]:
    """Snippet scores from an MLP trained with the top-k MIL ranking hinge.

    Model: ``f(x) = σ(W₂ dropout(ReLU(W₁ x̂ + b₁)) + b₂)`` on standardised snippets ``x̂``
    (mean/std over all training snippets), D → 256 → 1. Each step draws ``batch`` anomalous and
    ``batch`` normal videos (one random crop each when ``crop=None``) and minimises, over all
    anomalous/normal pairs ``(a, n)``::

        mean_{a,n} max(0, 1 - m(a) + m(n)) + λ_sm · mean_a mean_t (f_t - f_{t+1})²
                                          + λ_sp · mean_a mean_t f_t

    where ``m(v)`` is the mean of the top ``k = max(1, ⌊T_v / 16⌋)`` snippet scores of video
    ``v`` (``T_v`` after shortening to ``max_len`` snippets): the same fraction of a video as the
    detection protocol's video-level score, and at least one snippet. Adam, full batch per step.
    Seeded (torch and numpy), deterministic algorithms, one intra-op thread by default: two runs
    are equal bit for bit; the global torch RNG and settings are left as they were.

    Returns float32 ``[T]`` scores per test video (whole videos, crop ``crop``, or the mean
    over crops for ``None``).
    """
    s = settings or MilSettings()
    labels = _check_labels(train_features, train_labels)
    train = [cap_length(_snippets(f, crop, f"training video {i}"), s.max_len).astype(np.float32)
             for i, f in enumerate(train_features)]
    if not (labels == 0).any() or not (labels == 1).any():
        raise ValueError("top-k MIL ranking needs normal and anomalous training videos")
    mean_np, std_np = _stats(np.concatenate([t.reshape(-1, t.shape[-1]) for t in train]))
    mean, std = torch.from_numpy(mean_np).float(), torch.from_numpy(std_np).float()
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    rng = np.random.default_rng(s.seed)

    def batch(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [train[i] if train[i].ndim == 2 else train[i][:, rng.integers(train[i].shape[1])]
                for i in idx]
        x, mask = pad_batch(seqs)
        return (x - mean) / std, mask

    def draw(pool: np.ndarray) -> np.ndarray:
        return rng.choice(pool, size=s.batch, replace=len(pool) < s.batch)

    with _deterministic(s.seed, s.threads):
        model = _mlp(train[0].shape[-1], s)
        opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        model.train()
        for _ in range(s.steps):
            xa, ma = batch(draw(anomalous))
            xn, mn = batch(draw(normal))
            fa, fn = model(xa).squeeze(-1), model(xn).squeeze(-1)
            top_a, top_n = topk_mean(fa, ma, s.k_divisor), topk_mean(fn, mn, s.k_divisor)
            loss = torch.relu(1.0 - top_a[:, None] + top_n[None, :]).mean()
            fa = fa.masked_fill(~ma, 0.0)
            pairs = (ma[:, 1:] & ma[:, :-1]).float()
            smooth = ((fa[:, 1:] - fa[:, :-1]) ** 2 * pairs).sum(1) / pairs.sum(1).clamp_min(1)
            sparse = fa.sum(1) / ma.sum(1)
            loss = loss + s.lambda_smooth * smooth.mean() + s.lambda_sparse * sparse.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        out = []
        with torch.no_grad():
            for i, f in enumerate(test_features):
                x = torch.from_numpy(_snippets(f, crop, f"test video {i}").astype(np.float32))
                y = model((x - mean) / std).squeeze(-1)
                out.append((y if y.ndim == 1 else y.mean(1)).numpy().astype(np.float32))
    return out


# --------------------------------------------------------------------------- table


def baselines_table(
    scores: Mapping[str, Sequence[np.ndarray]],
    frame_labels: Sequence[np.ndarray],
    metric: Metric,
    stride: int = 16,
    metric_name: str = "value",
) -> pd.DataFrame:
    """One row per method, one column per metric.

    ``scores`` maps a method name (``"nearest_normal"``, ``"topk_mil"``, ``"tpwng"``, ...) to
    per-snippet scores of every test video, in the order of ``frame_labels`` (per-frame 0/1
    ground truth). Snippet scores become frame scores by repeating each ``stride`` times, cut to
    the video's frame count (`tpwng.grid.expand_to_frames`). ``metric(frame_scores,
    frame_labels)`` gets the per-video frame lists and returns one number (column
    ``metric_name``) or a mapping of named numbers (e.g. ``{"frame_auc": ..., "frame_ap":
    ...}``). The index is named ``method``.
    """
    labels = [np.asarray(y) for y in frame_labels]
    rows = {}
    for method, per_video in scores.items():
        if len(per_video) != len(labels):
            raise ValueError(f"{method}: scores for {len(per_video)} videos, ground truth for "
                             f"{len(labels)}")
        frames = [expand_to_frames(np.asarray(s, dtype=np.float64), y.size, stride)
                  for s, y in zip(per_video, labels, strict=True)]
        value = metric(frames, labels)
        rows[method] = dict(value) if isinstance(value, Mapping) else {metric_name: value}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table
