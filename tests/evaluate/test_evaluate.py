"""The frame convention of evaluation: each video's own frames, or 16 x its snippets."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tpwng.data.manifest import ManifestRow, write_manifest
from tpwng.evaluate.tables import video_results
from tpwng.features.store import h5_create
from tpwng.files import atomic_path
from tpwng.grid import expand_to_frames

SNIPPETS = {"a": np.array([0.1, 0.9, 0.8], np.float32),     # 40 frames: 3 snippets, last of 8
            "n": np.array([0.2, 0.3, 0.05], np.float32)}    # 33 frames: 3 snippets, last of 1
FRAMES = {"a": 40, "n": 33}


@pytest.fixture
def scored(tmp_path):
    rows = [ManifestRow("a", "a.mp4", "test", ["fighting"], [(16, 40)], 40, 25.0, 8, 8),
            ManifestRow("n", "n.mp4", "test", ["normal"], [], 33, 25.0, 8, 8)]
    write_manifest(rows, tmp_path / "manifest.tsv")
    out = tmp_path / "scores.h5"
    with atomic_path(out) as tmp, h5_create(tmp) as f:
        f.attrs["stride"] = 16
        f.attrs["order"] = "a\nn"
        snip, frames = f.create_group("snippets"), f.create_group("frames")
        for v, s in SNIPPETS.items():
            snip[v] = s
            frames[v] = expand_to_frames(s, FRAMES[v], 16).astype(np.float32)
    return tmp_path / "manifest.tsv", out


def test_video_convention_scores_each_video_own_frames(scored):
    a, n = video_results(*scored, frames="video")
    assert (a.frame_scores.size, n.frame_scores.size) == (40, 33)
    assert a.frame_labels.tolist() == [0] * 16 + [1] * 24
    assert n.frame_scores[-1] == pytest.approx(0.05)


def test_snippets_convention_pads_the_last_snippet_with_its_score(scored):
    a, n = video_results(*scored, frames="snippets")
    assert (a.frame_scores.size, n.frame_scores.size) == (48, 48)
    # the partial last snippets are padded with their own score; no annotation reaches there
    np.testing.assert_allclose(a.frame_scores[32:], 0.8, rtol=1e-6)
    np.testing.assert_allclose(n.frame_scores[32:], 0.05, rtol=1e-6)
    assert a.frame_labels.tolist() == [0] * 16 + [1] * 24 + [0] * 8
    assert n.frame_labels.sum() == 0
    # the two conventions give different frame AUCs from the same scores
    video = video_results(*scored, frames="video")
    auc = {name: roc_auc_score(np.concatenate([v.frame_labels for v in vs]),
                               np.concatenate([v.frame_scores for v in vs]))
           for name, vs in (("video", video), ("snippets", [a, n]))}
    # by hand, video: positives 16 x 0.9 + 8 x 0.8; negatives 16 x 0.1 (a) and 16 x 0.2,
    # 16 x 0.3, 1 x 0.05 (n): every positive outranks every negative -> 1.0. snippets: 72
    # negatives, among them a's 8 padded frames at 0.8, which tie with the 8 positives at 0.8:
    # AUC = 1 - 8 * 8 * 0.5 / (24 * 72)
    assert auc["video"] == pytest.approx(1.0)
    assert auc["snippets"] == pytest.approx(1 - 32 / (24 * 72))


def test_unknown_convention_is_refused(scored):
    with pytest.raises(ValueError, match="evaluate.frames"):
        video_results(*scored, frames="seconds")
