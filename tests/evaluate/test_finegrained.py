"""Class probabilities, the published fine-grained detection protocol and video classification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tpwng.data.datasets import XD_CODES, DatasetError, parse_xd_annotation, xd_classes_from_name
from tpwng.errors import CheckpointError
from tpwng.evaluate.detection_map import (
    fine_grained_map,
    published_class_agnostic_map,
    published_fine_grained_map,
)
from tpwng.evaluate.finegrained import (
    curve_proposals,
    frame_class_probabilities,
    parse_xd_multiclass_annotation,
    protocol_options,
    video_class_score,
    video_classification_accuracy,
    video_ground_truth,
)
from tpwng.model.class_probs import class_probabilities
from tpwng.model.tpwng import TPWNG, ModelConfig
from tpwng.train.checkpoint import load_checkpoint, save_checkpoint, stored_text_embeddings

# the copies shipped in the package (identical to the public files)
XD_MULTI = REPO / "tpwng" / "resources" / "xd_violence" / "annotations_multiclasses.txt"
XD_PLAIN = REPO / "tpwng" / "resources" / "xd_violence" / "annotations.txt"
NAMES = ["normal", "fighting", "riot"]
IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)


# --------------------------------------------------------------------------- class probabilities


def test_class_probability_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g) * 3.0
    text = torch.randn(4, 8, generator=g)
    eta = torch.rand(2, 5, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    p = class_probabilities(x, text, 100.0, eta, mask)
    assert p.shape == (2, 5, 4)
    assert torch.allclose(p[0].sum(-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(p[..., 0][mask], 1 - eta[mask])
    assert torch.all(p[1, 3:] == 0)
    # anomaly classes: η times a softmax of 100 · cosine (scale-free in x)
    cos = torch.nn.functional.cosine_similarity(x[0, 2][None], text[1:], dim=-1)
    want = eta[0, 2] * torch.softmax(100.0 * cos, dim=0)
    assert torch.allclose(p[0, 2, 1:], want, atol=1e-6)
    assert torch.allclose(class_probabilities(5 * x, text, 100.0, eta),
                          class_probabilities(x, text, 100.0, eta), atol=1e-6)
    with pytest.raises(ValueError, match="dimensions"):
        class_probabilities(x, text[:, :4], 100.0, eta)


@pytest.fixture(scope="module")
def tiny_model(tiny_clip):
    torch.manual_seed(0)
    cfg = ModelConfig(layers=1, heads=2, ff_dim=64, n_ctx=4)
    return TPWNG(tiny_clip[0], NAMES, cfg, dim=512).eval()


def test_model_class_probabilities_use_the_similarity_features_and_score(tiny_model, tiny_clip):
    m = tiny_model
    assert m.logit_scale == pytest.approx(math.exp(float(tiny_clip[0].logit_scale)))
    x = torch.randn(2, 6, 512)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    with torch.no_grad():
        p = m.class_probabilities(x, mask)
        eta = m.score(x, mask)
        sims = m.similarities(x, mask)
    assert p.shape == (2, 6, 3)
    assert torch.allclose(p[..., 0][mask], 1 - eta[mask])
    assert torch.all(p[0, 4:] == 0)
    # the split among the anomaly classes is the softmax of τ · the model's own similarities
    want = torch.softmax(m.logit_scale * sims[..., 1:], -1) * eta[..., None]
    assert torch.allclose(p[..., 1:][mask], want[mask], atol=1e-5)


def test_checkpoint_carries_text_embeddings(tiny_model, tmp_path):
    m = tiny_model
    meta = {"classes": NAMES, "dim": 512}
    save_checkpoint(m, meta, tmp_path / "m.pt")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    text, scale = stored_text_embeddings(ckpt, tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(text, m.text_embeddings().float())
        x = torch.randn(1, 7, 512)
        assert torch.equal(m.class_probabilities(x, text=text, logit_scale=scale),
                           m.class_probabilities(x))
    assert scale == m.logit_scale
    assert not any("text_embeddings" in k for k in ckpt["state"])  # weights unchanged
    with pytest.raises(CheckpointError, match="old.pt: checkpoint stores no class text"):
        stored_text_embeddings({"meta": meta, "state": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"\[3, 512\]"):
        stored_text_embeddings({**ckpt, "text_embeddings": text[:2]}, tmp_path / "m.pt")


def test_frame_class_probabilities():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    f = frame_class_probabilities(p, 20, stride=8)
    assert f.shape == (20, 2)
    assert np.all(f[:8] == p[0]) and np.all(f[8:] == p[1])  # tail past the snippets: last row
    assert frame_class_probabilities(p, 5).shape == (5, 2)


# --------------------------------------------------------------------------- XD multi-class file


def test_parser_reads_every_line_of_the_real_file():
    ann = parse_xd_multiclass_annotation(XD_MULTI)
    lines = [ln for ln in XD_MULTI.read_text().splitlines() if ln.strip()]
    assert len(ann) == len(lines) == 500
    counts: dict[str, int] = {}
    for segs in ann.values():
        for c, s, e in segs:
            counts[c] = counts.get(c, 0) + 1
            assert 0 <= s < e
    assert counts == {"fighting": 245, "shooting": 214, "riot": 154, "abuse": 15,
                      "car accident": 494, "explosion": 150}
    # every line, field by field: the name, then (code, start, end) triples
    for line in lines:
        fields = line.split()
        vid = fields[0][:-4] if fields[0].endswith(".mp4") else fields[0]
        assert ann[vid] == [(XD_CODES[c], int(s), int(e))
                            for c, s, e in zip(fields[1::3], fields[2::3], fields[3::3],
                                               strict=True)]
    # the same videos as the class-agnostic annotation, and the same anomalous frames except in
    # five videos of the public files (one extra interval, four one-frame gaps)
    plain = parse_xd_annotation(XD_PLAIN)
    assert set(plain) == set(ann)
    differ = {}
    for vid, segs in ann.items():
        n = max(max(e for _, _, e in segs), max(e for _, e in plain[vid]))
        a, b = np.zeros(n, bool), np.zeros(n, bool)
        for _, s, e in segs:
            a[s:e] = True
        for s, e in plain[vid]:
            b[s:e] = True
        if not np.array_equal(a, b):
            differ[vid] = (int((a & ~b).sum()), int((b & ~a).sum()))
    assert differ == {
        "v=38GQ9L2meyE__#1_label_B6-0-0": (139, 0),  # B6 4511-4650 only in the multi-class file
        "Love.Death.and.Robots.S01E10__#0-01-00_0-02-13_label_B2-G-0": (0, 1),
        "Rush.Hour.1998.BluRay__#00-08-08_00-09-15_label_B2-B6-G": (0, 1),
        "The.Bourne.Ultimatum.2007__#01-26-27_01-28-03_label_B2-B6-0": (0, 1),
        "v=Rc9EOFjtj0c__#1_label_B6-0-0": (0, 1),
    }
    # classes agree with the codes in the names, except one video of the public file
    odd = [v for v, segs in ann.items() if {c for c, _, _ in segs} != set(xd_classes_from_name(v))]
    assert odd == ["Ip.Man.2008__#01-40-37_01-42-07_label_B4-0-0"]
    assert ann[odd[0]] == [("fighting", 105, 1482)]


@pytest.mark.parametrize("text, match", [
    ("v1 B1 0 10 B2 5\n", "triples"),
    ("v1\n", "triples"),
    ("v1 B9 0 10\n", "unknown anomaly class code 'B9'"),
    ("v1 A 0 10\n", "unknown anomaly class code 'A'"),
    ("v1 B1 0 x\n", "integers"),
    ("v1 B1 10 10\n", "bad interval"),
    ("v1 B1 0 10\nv1.mp4 B2 0 4\n", ":2: video v1 is listed twice"),
])
def test_parser_errors_name_the_line(tmp_path, text, match):
    path = tmp_path / "ann.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=match):
        parse_xd_multiclass_annotation(path)


def test_video_ground_truth():
    assert video_ground_truth(["normal"], 50) == [("normal", 0, 50)]
    assert video_ground_truth(["riot"], 50, [(3, 9), (20, 30)]) == [("riot", 3, 9),
                                                                     ("riot", 20, 30)]
    multi = [("fighting", 0, 5), ("riot", 4, 9)]
    assert video_ground_truth(["fighting", "riot"], 50, [(0, 9)], multi) == multi
    with pytest.raises(ValueError, match="per-class"):
        video_ground_truth(["fighting", "riot"], 50, [(0, 9)])


# --------------------------------------------------------------------------- protocol by hand


def test_proposals_of_one_curve():
    # max .9, min .1: threshold .9 - .6·.8 = .42; runs > .42 of >= 2 frames: [1, 3) and [5, 8);
    # the single frame 10 (.5) is too short. 12 frames: top max(1, 12 // 16) = 1 → video score
    # .9; scores = run max + .7 · .9 = .63 + {.8, .9}
    c = np.array([0.1, 0.5, 0.8, 0.2, 0.1, 0.6, 0.9, 0.7, 0.3, 0.1, 0.5, 0.1])
    got = curve_proposals(c)
    assert [(s, e) for s, e, _ in got] == [(5, 8), (1, 3)]  # descending score
    assert [sc for _, _, sc in got] == pytest.approx([0.9 + 0.63, 0.8 + 0.63])
    assert curve_proposals(np.full(40, 0.3)) == []  # a constant curve has no proposals
    assert video_class_score(np.r_[np.full(30, 0.2), [1.0, 0.6]]) == pytest.approx(0.8)


def _designed():
    """Three 32-frame videos in blocks of 8 frames; classes normal, fighting, riot.

    riot is 0.05 everywhere (a constant curve: no riot proposal at all), normal = 0.95 - fighting.
    """
    fighting = {
        0: [0.05, 0.80, 0.70, 0.10],  # video 0: fighting, GT fighting [8, 24)
        1: [0.60, 0.50, 0.15, 0.02],  # video 1: riot, GT riot [0, 16) — taken for fighting
        2: [0.05, 0.05, 0.40, 0.00],  # video 2: normal, GT normal [0, 32)
    }
    probs = []
    for v in range(3):
        f = np.array(fighting[v])
        blocks = np.stack([0.95 - f, f, np.full(4, 0.05)], axis=1)
        probs.append(frame_class_probabilities(blocks, 32, stride=8))
    gt = [[("fighting", 8, 24)], [("riot", 0, 16)], video_ground_truth(["normal"], 32)]
    return probs, gt


def test_published_fine_grained_map_by_hand():
    probs, gt = _designed()
    # Video-level score = mean of the top ⌊32/16⌋ = 2 frames = the curve's block maximum.
    # normal class (curve = 0.95 - fighting):
    #   v0 [.90 .15 .25 .85]: thr .90-.6·.75 = .45 → [0,8) .90+.7·.90 = 1.530, [24,32) 1.480
    #   v1 [.35 .45 .80 .93]: thr .93-.6·.58 = .582 → [16,32) .93+.7·.93 = 1.581
    #   v2 [.90 .90 .55 .95]: thr .95-.6·.40 = .71 → [24,32) .95+.665 = 1.615, [0,16) 1.565
    #   ranked: v2[24,32) v1[16,32) v2[0,16) v0[0,8) v0[24,32); GT: v2 [0,32) only.
    #   IoU(v2[24,32), GT) = 8/32 = .25; IoU(v2[0,16), GT) = 16/32 = .5.
    #   t = .1, .2: rank 1 is the TP (precision 1)            → AP = 1/1 = 1
    #   t = .3, .4, .5: rank 1 FP, rank 2 FP, rank 3 TP (1/3)  → AP = (1/3)/1 = 1/3
    # fighting class:
    #   v0 [.05 .80 .70 .10]: thr .80-.45 = .35 → [8,24) .80+.56 = 1.36 (IoU 1 with GT: TP)
    #   v1 [.60 .50 .15 .02]: thr .60-.348 = .252 → [0,16) .60+.42 = 1.02 (no fighting GT: FP)
    #   v2 [.05 .05 .40 .00]: thr .40-.24 = .16 → [16,24) .40+.28 = 0.68 (FP)
    #   → AP = 1 at every t
    # riot class: no proposal at all → AP 0 ("zero_class")
    # mAP@.1 = mAP@.2 = (1 + 1 + 0)/3 = 2/3; mAP@.3..@.5 = (1/3 + 1 + 0)/3 = 4/9
    # mAP_avg = (2·2/3 + 3·4/9)/5 = 8/15
    out = published_fine_grained_map(probs, gt, NAMES, IOUS)
    want = {"mAP@0.1": 2 / 3, "mAP@0.2": 2 / 3, "mAP@0.3": 4 / 9, "mAP@0.4": 4 / 9,
            "mAP@0.5": 4 / 9, "mAP_avg": 8 / 15}
    for key, value in want.items():
        assert out[key] == pytest.approx(value), key
    pc = out["per_class"]
    assert [pc["normal"][f"AP@{t:g}"] for t in IOUS] == pytest.approx([1, 1, 1 / 3, 1 / 3, 1 / 3])
    assert pc["fighting"]["AP_avg"] == pytest.approx(1.0) and pc["riot"]["AP_avg"] == 0.0
    assert [pc[c]["n_proposals"] for c in NAMES] == [5, 3, 0]
    assert [pc[c]["n_gt"] for c in NAMES] == [1, 1, 1]
    assert out["empty_classes"] == ["riot"]
    # the published scripts return 0 at every threshold once one class has no proposal
    scripts = published_fine_grained_map(probs, gt, NAMES, IOUS, empty_class="zero_all")
    assert all(scripts[f"mAP@{t:g}"] == 0.0 for t in IOUS) and scripts["mAP_avg"] == 0.0
    assert scripts["per_class"] == out["per_class"]


def test_class_agnostic_map_differs_by_hand():
    probs, gt = _designed()
    # η = 1 - p(normal) = fighting + .05:
    #   v0 [.10 .85 .75 .15]: thr .85-.45 = .40 → [8,24) .85+.595 = 1.445  TP (GT [8,24))
    #   v1 [.65 .55 .20 .07]: thr .65-.348 = .302 → [0,16) .65+.455 = 1.105 TP (GT [0,16))
    #   v2 [.10 .10 .45 .05]: thr .45-.24 = .21 → [16,24) .45+.315 = 0.765 FP
    #   2 GT segments: AP = (1/1 + 2/2)/2 = 1 at every t — the riot video counts as found,
    #   though its class is missed (fine-grained: 2/3 and 4/9).
    eta = [1.0 - p[:, 0] for p in probs]
    agnostic = published_class_agnostic_map(eta, [[(8, 24)], [(0, 16)], []], IOUS)
    assert all(agnostic[f"mAP@{t:g}"] == pytest.approx(1.0) for t in IOUS)
    assert published_fine_grained_map(probs, gt, NAMES, IOUS)["mAP_avg"] < agnostic["mAP_avg"]


def test_ground_truth_past_the_end_is_cut():
    # as the published scripts do: fighting GT [8, 40) of a 32-frame video becomes [8, 32);
    # proposal [8, 24) then has IoU 16/24 = .667 ≥ .6 (TP; uncut it would be 16/32 = .5, FP)
    probs, gt = _designed()
    gt[0] = [("fighting", 8, 40)]
    out = published_fine_grained_map(probs, gt, NAMES, ious=(0.6, 0.7))
    assert out["per_class"]["fighting"]["AP@0.6"] == pytest.approx(1.0)
    assert out["per_class"]["fighting"]["AP@0.7"] == 0.0


# --------------------------------------------------------------------------- properties


def _random_set(seed: int, k: int = 4, n_videos: int = 8):
    """Random videos (half normal), single-class anomalous videos with 1-2 disjoint intervals."""
    rng = np.random.default_rng(seed)
    names = ["normal"] + [f"c{i}" for i in range(1, k)]
    videos = []
    for v in range(n_videos):
        n = int(rng.integers(64, 200))
        if v % 2 == 0:
            videos.append((n, ["normal"], []))
        else:
            c = names[1 + (v // 2) % (k - 1)]
            a = int(rng.integers(0, n // 2 - 10))
            b = a + int(rng.integers(4, 20))
            ivs = [(a, b)]
            if rng.random() < 0.5:
                c2 = int(rng.integers(b + 3, n - 4))
                ivs.append((c2, min(n, c2 + int(rng.integers(3, 20)))))
            videos.append((n, [c], ivs))
    gt = [video_ground_truth(cls, n, ivs) for n, cls, ivs in videos]
    return names, videos, gt, rng


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_predictions_score_one(seed):
    names, videos, gt, _ = _random_set(seed)
    probs = []
    for (n, cls, ivs), _segs in zip(videos, gt, strict=True):
        p = np.zeros((n, len(names)))
        if cls == ["normal"]:
            p[:, 0] = 1.0
            p[-1, 0] = 0.99  # a constant curve would have no proposal at all
        else:
            p[:, 0] = 0.5  # normal frames of anomalous videos: normal, but less sure
            for s, e in ivs:
                p[s:e, 0] = 0.0
                p[s:e, names.index(cls[0])] = 1.0
        probs.append(p)
    for empty_class in ("zero_class", "zero_all"):
        out = published_fine_grained_map(probs, gt, names, IOUS, empty_class=empty_class)
        assert all(out[f"mAP@{t:g}"] == pytest.approx(1.0) for t in IOUS), out
    acc = video_classification_accuracy(probs, [c for _, c, _ in videos], names)
    assert acc["accuracy"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_protocol_properties_on_random_probabilities(seed):
    names, videos, gt, rng = _random_set(seed)
    probs = [rng.dirichlet(np.ones(len(names)), size=n) for n, _, _ in videos]
    out = published_fine_grained_map(probs, gt, names, IOUS)
    assert all(0.0 <= out[f"mAP@{t:g}"] <= 1.0 for t in IOUS)
    assert out["empty_classes"] == []
    assert published_fine_grained_map(probs, gt, names, IOUS, "zero_all") == {
        **out, "empty_class": "zero_all"}
    # the order of the videos does not matter (no ties among continuous scores)
    perm = rng.permutation(len(probs))
    shuffled = published_fine_grained_map([probs[i] for i in perm], [gt[i] for i in perm],
                                          names, IOUS)
    for t in IOUS:
        assert shuffled[f"mAP@{t:g}"] == pytest.approx(out[f"mAP@{t:g}"])
    # with two classes, the anomaly class's AP is the class-agnostic protocol on η
    eta = [p[:, 1:].sum(1) for p in probs]
    two = [np.stack([1 - e, e], axis=1) for e in eta]
    gt2 = [[("anomaly", s, e) for c, s, e in segs if c != "normal"] for segs in gt]
    fine = published_fine_grained_map(two, gt2, ["normal", "anomaly"], IOUS)
    agnostic = published_class_agnostic_map(eta, [[(s, e) for _, s, e in g] for g in gt2], IOUS)
    for t in IOUS:
        assert fine["per_class"]["anomaly"][f"AP@{t:g}"] == pytest.approx(agnostic[f"mAP@{t:g}"])


def test_protocol_input_checks():
    probs, gt = _designed()
    with pytest.raises(ValueError, match="empty_class"):
        published_fine_grained_map(probs, gt, NAMES, empty_class="skip")
    with pytest.raises(ValueError, match="'shooting' is not in"):
        published_fine_grained_map(probs, [[("shooting", 0, 4)], [], []], NAMES)
    with pytest.raises(ValueError, match=r"\[frames, 4\]"):
        published_fine_grained_map(probs, gt, [*NAMES, "abuse"])
    with pytest.raises(ValueError, match="IoU"):
        published_fine_grained_map(probs, gt, NAMES, ious=(0.0,))


# --------------------------------------------------------------------------- classification


def test_video_classification_accuracy_by_hand():
    names = ["normal", "fighting", "riot", "abuse"]
    p = [
        # fighting video; mean p: fighting .3, riot .2 → fighting (correct)
        np.array([[0.5, 0.3, 0.2, 0.0], [0.5, 0.3, 0.2, 0.0]]),
        # riot video; riot .4 at one snippet, fighting .35 at two: mean fighting .35 > riot .2
        # → fighting (wrong); top-k (k = 1) would pick riot .4 (correct)
        np.array([[0.25, 0.35, 0.4, 0.0], [0.65, 0.35, 0.0, 0.0]]),
        # multi-label riot+abuse video; abuse .6 → abuse (correct: one of its classes)
        np.array([[0.4, 0.0, 0.0, 0.6]]),
        # a normal video is skipped
        np.array([[0.1, 0.9, 0.0, 0.0]]),
    ]
    classes = [["fighting"], ["riot"], ["riot", "abuse"], ["normal"]]
    out = video_classification_accuracy(p, classes, names)
    assert out["predictions"] == ["fighting", "fighting", "abuse", None]
    assert out["accuracy"] == pytest.approx(2 / 3) and out["n_videos"] == 3
    pc = out["per_class"]
    # riot: 2 videos (one wrong, the multi-label one right); abuse: 1 right; fighting: 1 right
    assert pc["riot"] == {"accuracy": 0.5, "n_videos": 2}
    assert pc["abuse"] == {"accuracy": 1.0, "n_videos": 1}
    assert pc["fighting"] == {"accuracy": 1.0, "n_videos": 1}
    assert out["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    top = video_classification_accuracy(p, classes, names, video_score="topk")
    assert top["predictions"][1] == "riot" and top["accuracy"] == 1.0
    with pytest.raises(ValueError, match="at least one anomalous"):
        video_classification_accuracy(p[3:], classes[3:], names)
    with pytest.raises(ValueError, match="not anomaly classes"):
        video_classification_accuracy(p[:1], [["shooting"]], names)


# --------------------------------------------------------------------------- ours vs published


def _designed_with_riot():
    """`_designed`, with a riot curve in the riot video: blocks [.30 .20 .02 .02] (elsewhere
    still the constant .05, no proposal). Riot's only proposal: video 1 [0, 16) (threshold
    .30 - .6·.28 = .132), score .30 + .7·.30 = .51, IoU 1 with its GT: riot AP 1 at every t.
    No class is empty and every GT segment lies within its video."""
    probs, gt = _designed()
    probs[1][:, 2] = np.repeat([0.30, 0.20, 0.02, 0.02], 8)
    return probs, gt


def test_protocol_difference_1_the_ucf_normal_class_has_no_ground_truth():
    probs, gt = _designed_with_riot()
    # ours: normal [1 1 1/3 1/3 1/3], fighting 1, riot 1 → @.1,.2: 1; @.3-.5: 7/9; avg 13/15
    ours = fine_grained_map(probs, gt, NAMES, "ours")
    assert [ours[f"mAP@{t:g}"] for t in IOUS] == pytest.approx([1, 1, 7 / 9, 7 / 9, 7 / 9])
    assert ours["mAP_avg"] == pytest.approx(13 / 15) and ours["protocol"] == "ours"
    # published on UCF-Crime's layout: normal has no GT (AP 0) but stays in the mean → 2/3
    for fmt in ("ucf", "folder", "synthetic"):
        pub = fine_grained_map(probs, gt, NAMES, "published", fmt)
        assert [pub[f"mAP@{t:g}"] for t in IOUS] == pytest.approx([2 / 3] * 5), fmt
        assert pub["per_class"]["normal"]["n_gt"] == 0
        assert pub["per_class"]["normal"]["AP_avg"] == 0.0
        assert pub["per_class"]["normal"]["n_proposals"] == 5  # its proposals are all FPs
        assert pub["per_class"]["fighting"] == ours["per_class"]["fighting"]
        assert pub["gt_past_end"] == 0 and pub["empty_classes"] == []
    # XD-Violence's script scores normal: here nothing else differs, so it equals ours
    xd = fine_grained_map(probs, gt, NAMES, "published", "xd")
    assert {k: xd[k] for k in ("per_class", "mAP_avg", *(f"mAP@{t:g}" for t in IOUS))} == {
        k: ours[k] for k in ("per_class", "mAP_avg", *(f"mAP@{t:g}" for t in IOUS))}
    # the knob alone
    low = published_fine_grained_map(probs, gt, NAMES, IOUS, normal_ground_truth=False)
    assert low["mAP_avg"] == pytest.approx(2 / 3) and low["normal_ground_truth"] is False


def test_protocol_difference_2_annotation_ends_are_kept_as_written():
    # fighting GT written [8, 40) of a 32-frame video; its proposal is [8, 24):
    #   ours cuts it to [8, 32): IoU 16/24 = .667 → TP at .5 and .6 (fighting AP 1, 1)
    #   published keeps [8, 40): IoU 16/32 = .5 → TP at .5, FP at .6 (fighting AP 1, 0)
    # normal: @.5 1/3 (its TP is IoU .5 at rank 3), @.6 0; riot 1, 1.
    probs, gt = _designed_with_riot()
    gt[0] = [("fighting", 8, 40)]
    ious = (0.5, 0.6)
    ours = fine_grained_map(probs, gt, NAMES, "ours", ious=ious)
    pub = fine_grained_map(probs, gt, NAMES, "published", "xd", ious=ious)
    assert [ours["mAP@0.5"], ours["mAP@0.6"]] == pytest.approx([7 / 9, 2 / 3])
    assert [pub["mAP@0.5"], pub["mAP@0.6"]] == pytest.approx([7 / 9, 1 / 3])
    assert pub["per_class"]["fighting"]["AP@0.6"] == 0.0 and pub["gt_past_end"] == 1
    assert ours["gt_past_end"] == 0
    low = published_fine_grained_map(probs, gt, NAMES, ious, cut_to_video=False)
    assert low["mAP@0.6"] == pytest.approx(1 / 3) and low["cut_to_video"] is False
    # a GT segment entirely past the end: ours drops it, published keeps it as a miss
    gt[1] = [("riot", 0, 16), ("riot", 40, 48)]
    assert fine_grained_map(probs, gt, NAMES, "ours", ious=ious)["per_class"]["riot"][
        "AP@0.5"] == 1.0
    kept = fine_grained_map(probs, gt, NAMES, "published", "xd", ious=ious)["per_class"]["riot"]
    assert kept["n_gt"] == 2 and kept["AP@0.5"] == pytest.approx(0.5)


def test_protocol_difference_3_an_empty_class_zeroes_every_threshold():
    # `_designed`: riot has no proposal; GT within the videos; XD format scores normal.
    probs, gt = _designed()
    ours = fine_grained_map(probs, gt, NAMES, "ours")
    pub = fine_grained_map(probs, gt, NAMES, "published", "xd")
    assert ours["mAP_avg"] == pytest.approx(8 / 15)
    assert all(pub[f"mAP@{t:g}"] == 0.0 for t in IOUS) and pub["mAP_avg"] == 0.0
    assert pub["per_class"] == ours["per_class"] and pub["empty_classes"] == ["riot"]


@pytest.mark.parametrize("seed", [0, 1])
def test_published_ucf_map_is_13_14_of_the_anomaly_classes_mean(seed):
    # 14 classes as on UCF-Crime, random probabilities: no class is empty, no GT past the end,
    # so the published mode differs from ours only by the normal class
    names, videos, gt, rng = _random_set(seed, k=14, n_videos=28)
    probs = [rng.dirichlet(np.ones(len(names)), size=n) for n, _, _ in videos]
    for p, (_, cls, _) in zip(probs, videos, strict=True):
        if cls == ["normal"]:  # a normal video found as one long normal run: normal would score
            p[:-1, 0], p[-1, 0] = 0.9, 0.1
    ours = fine_grained_map(probs, gt, names, "ours")
    assert ours["empty_classes"] == [] and ours["per_class"]["normal"]["AP_avg"] > 0
    for fmt in ("ucf", "folder", "synthetic"):
        pub = fine_grained_map(probs, gt, names, "published", fmt)
        for t in IOUS:
            anomaly = [ours["per_class"][c][f"AP@{t:g}"] for c in names[1:]]
            assert pub[f"mAP@{t:g}"] == pytest.approx(13 / 14 * np.mean(anomaly))
        assert pub["mAP_avg"] < ours["mAP_avg"]
    xd = fine_grained_map(probs, gt, names, "published", "xd")
    assert all(xd[f"mAP@{t:g}"] == ours[f"mAP@{t:g}"] for t in IOUS)


def test_protocol_names_and_formats_are_checked():
    assert protocol_options("ours") == protocol_options("ours", "xd") == {
        "empty_class": "zero_class", "cut_to_video": True, "normal_ground_truth": True}
    assert protocol_options("published", "xd") == {
        "empty_class": "zero_all", "cut_to_video": False, "normal_ground_truth": True}
    assert protocol_options("published", "ucf")["normal_ground_truth"] is False
    with pytest.raises(ValueError, match="'vadclip'"):
        protocol_options("vadclip", "ucf")
    with pytest.raises(ValueError, match="dataset format.*None"):
        protocol_options("published")
    probs, gt = _designed()
    with pytest.raises(ValueError, match="'kinetics'"):
        fine_grained_map(probs, gt, NAMES, "published", "kinetics")
