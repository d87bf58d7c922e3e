"""Nearest-normal distance and top-k MIL ranking baselines on designed synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tpwng.evaluate.baselines import (
    MilSettings,
    baselines_table,
    nearest_distances,
    nearest_normal_distance,
    topk_mean,
    topk_mil_ranking,
)

D = 32
STRIDE = 16


def _video(rng, n, anomalous_at, direction, crops=2, shift=6.0):
    """Features [n, crops, D]: a shared offset plus unit noise; anomalous snippets shifted."""
    base = 2.0 + rng.normal(size=(n, 1, D))
    x = base + 0.1 * rng.normal(size=(n, crops, D))
    x[anomalous_at] += shift * direction
    return x.astype(np.float32)


def _dataset(seed=0, n_train=40, n_test=16):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=D)
    direction /= np.linalg.norm(direction)
    def make(n_videos):
        feats, labels, truth = [], [], []
        for v in range(n_videos):
            n = int(rng.integers(20, 60))
            y = np.zeros(n, dtype=bool)
            if v % 2:
                a = int(rng.integers(0, n - 8))
                y[a : a + int(rng.integers(3, 8))] = True
            feats.append(_video(rng, n, y, direction))
            labels.append(v % 2)
            truth.append(np.repeat(y, STRIDE).astype(np.uint8))  # per-frame ground truth
        return feats, labels, truth
    return make(n_train), make(n_test)


def frame_auc(frame_scores, frame_labels):
    return {"frame_auc": roc_auc_score(np.concatenate(frame_labels),
                                       np.concatenate(frame_scores))}


@pytest.fixture(scope="module")
def data():
    return _dataset()


@pytest.fixture(scope="module")
def scores(data):
    (train, labels, _), (test, _, _) = data
    return {
        "nearest_normal": nearest_normal_distance(train, labels, test),
        "topk_mil": topk_mil_ranking(train, labels, test),
    }


def test_both_baselines_find_the_shifted_snippets(data, scores):
    _, (test, _, truth) = data
    for method, per_video in scores.items():
        assert [s.shape for s in per_video] == [(f.shape[0],) for f in test], method
        assert all(s.dtype == np.float32 for s in per_video)
    table = baselines_table(scores, truth, frame_auc, stride=STRIDE)
    assert list(table.index) == ["nearest_normal", "topk_mil"] and table.index.name == "method"
    assert list(table.columns) == ["frame_auc"]
    assert (table["frame_auc"] > 0.9).all(), table


def test_table_with_a_plain_number_metric(data, scores):
    _, (_, _, truth) = data
    table = baselines_table(
        scores, truth, lambda s, y: roc_auc_score(np.concatenate(y), np.concatenate(s)),
        metric_name="auc")
    assert list(table.columns) == ["auc"]
    with pytest.raises(ValueError, match="topk_mil: scores for 1 videos"):
        baselines_table({"topk_mil": scores["topk_mil"][:1]}, truth, frame_auc)


def test_mil_is_deterministic_and_leaves_the_global_rng_alone(data, scores):
    (train, labels, _), (test, _, _) = data
    torch.manual_seed(123)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    again = topk_mil_ranking(train, labels, test)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert all(np.array_equal(a, b) for a, b in zip(again, scores["topk_mil"], strict=True))
    short = [topk_mil_ranking(train, labels, test, MilSettings(steps=5, seed=seed))
             for seed in (0, 1)]
    assert not all(np.array_equal(a, b) for a, b in zip(*short, strict=True))
    twice = nearest_normal_distance(train, labels, test)
    assert all(np.array_equal(a, b)
               for a, b in zip(twice, scores["nearest_normal"], strict=True))


def test_chunked_distance_equals_the_full_matrix(monkeypatch):
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 16, generator=g), torch.randn(2000, 16, generator=g)
    full = torch.cdist(queries, bank).min(1).values
    exact = np.sqrt(((queries.double().numpy()[:, None] - bank.double().numpy()[None]) ** 2)
                    .sum(-1)).min(1)
    blocks = []
    cdist = torch.cdist

    def recording(a, b, *args, **kw):
        blocks.append(a.shape[0] * b.shape[0])
        return cdist(a, b, *args, **kw)

    monkeypatch.setattr(torch, "cdist", recording)
    chunked = nearest_distances(queries, bank, max_elements=5000)
    monkeypatch.undo()
    assert max(blocks) <= 5000 and len(blocks) > 1
    assert torch.allclose(chunked, full, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(chunked.numpy(), exact, rtol=1e-5, atol=1e-4)
    # a query block and a bank block of one row each still work
    assert torch.allclose(nearest_distances(queries[:5], bank, max_elements=1), full[:5],
                          rtol=1e-6, atol=1e-5)


def test_nearest_normal_uses_standardised_normal_snippets_only():
    rng = np.random.default_rng(1)
    normal = rng.normal(size=(50, 1, 4)) * np.array([1.0, 10.0, 100.0, 1000.0])
    anomalous = rng.normal(size=(30, 1, 4)) + 1e6  # far away, but not in the bank
    test = normal[:3, 0]  # [T, D] arrays are accepted too
    out = nearest_normal_distance([normal, anomalous], [0, 1], [test])
    np.testing.assert_allclose(out[0], 0.0, atol=1e-3)  # each test snippet is in the bank
    mean, std = normal[:, 0].mean(0), normal[:, 0].std(0)
    probe = (normal[0, 0] + 2.0 * std)[None]
    z = (normal[:, 0] - mean) / std
    want = np.linalg.norm(z - (probe - mean) / std, axis=1).min()
    got = nearest_normal_distance([normal, anomalous], [0, 1], [probe])[0]
    assert got[0] == pytest.approx(want, rel=1e-4)
    # every crop in the bank and a test score averaged over crops
    crops = nearest_normal_distance([np.repeat(normal, 3, axis=1)], [0], [normal[:2]], crop=None)
    assert crops[0].shape == (2,)


def test_topk_mean():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.3, 0.2, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    assert torch.allclose(topk_mean(s, mask, k_divisor=2), torch.tensor([0.7, 0.3]))
    assert torch.allclose(topk_mean(s, mask, k_divisor=16), torch.tensor([0.9, 0.3]))


def test_input_checks(data):
    (train, labels, _), (test, _, _) = data
    with pytest.raises(ValueError, match="one label"):
        nearest_normal_distance(train, labels[:-1], test)
    with pytest.raises(ValueError, match="at least one normal"):
        nearest_normal_distance(train[1::2], labels[1::2], test)
    with pytest.raises(ValueError, match="normal and anomalous"):
        topk_mil_ranking(train[::2], labels[::2], test)
    bad = test[0].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="test video 0: features contain NaN"):
        nearest_normal_distance(train, labels, [bad])
