"""The assembled TPWNG model: training step, gradients, determinism, inference path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.model.tpwng import LOG_KEYS, TPWNG, ModelConfig

NAMES = ["normal", "abuse", "arrest", "road accidents"]
D = 512
SMALL = {"layers": 1, "heads": 2, "ff_dim": 64, "n_ctx": 4}


@pytest.fixture(scope="module")
def clip():
    model, _ = load_clip(ClipSpec("tpwng-tiny-ViT-B-16", "none", 0))
    return model


def make(clip, seed: int = 0, **kw) -> TPWNG:
    torch.manual_seed(seed)
    return TPWNG(clip, NAMES, ModelConfig(**{**SMALL, **kw}), dim=D)


def batch(Bn: int = 2, Ba: int = 2, Tn: int = 10, Ta: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xn = torch.randn(Bn, Tn, D, generator=g)
    xa = torch.randn(Ba, Ta, D, generator=g)
    mask_n = torch.ones(Bn, Tn, dtype=torch.bool)
    mask_n[-1, Tn // 2 :] = False
    mask_a = torch.ones(Ba, Ta, dtype=torch.bool)
    mask_a[-1, Ta - 4 :] = False
    labels = torch.zeros(Ba, len(NAMES))
    labels[:, 1] = 1.0
    labels[-1, 3] = 1.0  # multi-label video
    return xn, mask_n, xa, mask_a, labels


def test_config_round_trip_and_validation():
    cfg = ModelConfig(theta=0.35, span_scale=None, nvp="fa")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(None) == ModelConfig()
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"thetta": 0.5})
    with pytest.raises(ValueError):
        ModelConfig(nvp="avg")
    with pytest.raises(ValueError):
        ModelConfig(temporal="lstm")


def test_normal_must_be_class_zero(clip):
    with pytest.raises(ValueError, match="normal"):
        TPWNG(clip, ["abuse", "normal"], ModelConfig(**SMALL))


def test_training_step_with_masks_and_uneven_batches(clip):
    model = make(clip).train()
    xn, mask_n, xa, mask_a, labels = batch(Bn=2, Ba=3, Tn=9, Ta=12)
    loss, logs, pseudo = model.training_step(xn, mask_n, xa, mask_a, labels)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert set(logs) == set(LOG_KEYS) and all(math.isfinite(v) for v in logs.values())
    assert pseudo.shape == (3, 12)
    assert (pseudo[~mask_a] == 0).all() and set(pseudo.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 < logs["pl_pos_rate"] <= 1.0
    expected = (logs["loss_rank_n"] + logs["loss_rank_a"] + logs["loss_dil"] + logs["loss_cl"]
                + 0.1 * logs["loss_smooth"] + 0.01 * logs["loss_sparse"])
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_loss_switches(clip):
    model = make(clip, use_rank_normal=False, use_dil=False, use_smooth=False).eval()
    _, logs, _ = model.training_step(*batch())
    expected = logs["loss_rank_a"] + logs["loss_cl"] + 0.01 * logs["loss_sparse"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_exactly_the_trainable_parts(clip):
    # A small span scale lets the soft span mask bite on short clips, so z's parameters get
    # gradient too.
    model = make(clip, span_scale=4).train()
    loss, _, _ = model.training_step(*batch())
    loss.backward()
    trainable = model.trainable_parameters()
    ids = {id(p) for p in trainable}
    assert id(model.prompt.ctx) in ids
    assert id(model.text_encoder.text_projection) in ids
    for module in (model.nvp, model.temporal, model.classifier):
        assert {id(p) for p in module.parameters()} <= ids
    for name, p in model.named_parameters():
        if id(p) in ids:
            assert p.requires_grad and p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(not p.requires_grad and p.grad is None for p in clip.parameters())
    assert len(ids) == len(trainable) == sum(p.requires_grad for p in model.parameters())


def test_frozen_projection_is_not_trained(clip):
    model = make(clip, finetune_text_projection=False)
    assert id(model.text_encoder.text_projection) not in {
        id(p) for p in model.trainable_parameters()
    }


def test_same_seed_same_loss_and_scores(clip):
    results = []
    for _ in range(2):
        model = make(clip, seed=3).train()
        torch.manual_seed(7)
        loss, _, pseudo = model.training_step(*batch())
        loss.backward()
        with torch.no_grad():
            scores = model.eval().score(*batch()[2:4])
        results.append((loss.detach(), pseudo, scores))
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)


def test_score_is_the_inference_path(clip):
    model = make(clip).eval()
    _, _, xa, mask_a, _ = batch()
    with torch.no_grad():
        scores = model.score(xa, mask_a)
        direct = model.classifier(model.temporal(xa, mask_a))
        alone = model.score(xa[-1:, :8])  # the last video without its padding
    assert scores.shape == mask_a.shape
    assert (scores[~mask_a] == 0).all() and ((scores > 0) & (scores < 1))[mask_a].all()
    torch.testing.assert_close(scores[mask_a], direct[mask_a])
    torch.testing.assert_close(alone[0], scores[-1, :8], atol=1e-5, rtol=1e-5)


def test_similarities_are_cosines(clip):
    model = make(clip).eval()
    _, _, xa, mask_a, _ = batch()
    with torch.no_grad():
        text = model.text_embeddings()
        s = model.similarities(xa, mask_a)
    assert text.shape == (len(NAMES), D) and s.shape == (2, 12, len(NAMES))
    torch.testing.assert_close(s[0, 3, 2], F.cosine_similarity(xa[0, 3], text[2], dim=0))
    assert (s[~mask_a] == 0).all()


def test_pseudo_and_similarities(clip):
    model = make(clip).eval()
    xn, mask_n, xa, mask_a, labels = batch()
    sims = model.similarities(xa, mask_a)
    for out in (model.pseudo_and_similarities(xa, mask_a, labels),
                model.pseudo_and_similarities(xa, mask_a, labels, xn, mask_n)):
        assert set(out) == {"s_aa", "s_an", "s_aa_raw", "s_an_raw", "phi", "pseudo"}
        assert all(v.shape == (2, 12) for v in out.values())
        # Multi-label video: S_aa is the per-snippet max over its true classes (1 and 3).
        best = torch.maximum(sims[1, :, 1], sims[1, :, 3])
        torch.testing.assert_close(out["s_aa_raw"][1][mask_a[1]], best[mask_a[1]])
        assert (out["pseudo"][~mask_a] == 0).all()
    plain = model.pseudo_and_similarities(xa, mask_a, labels)
    torch.testing.assert_close(plain["s_an_raw"][mask_a], sims[..., 0][mask_a])


def test_video_without_class_uses_its_best_matching_class(clip):
    model = make(clip).eval()
    xn, mask_n, xa, mask_a, labels = batch()
    labels[0] = 0.0
    out = model.pseudo_and_similarities(xa, mask_a, labels)
    best = model.similarities(xa, mask_a)[0, :, 1:].amax(-1)
    torch.testing.assert_close(out["s_aa_raw"][0], best)
    _, logs, _ = model.training_step(xn, mask_n, xa, mask_a, labels)
    assert math.isfinite(logs["loss"])


@pytest.mark.parametrize("kw", [
    {"nvp": "none", "guidance": False},
    {"nvp": "fa", "temporal": "transformer", "class_specific_ctx": True},
    {"span_scale": None},
])
def test_ablation_variants_run(clip, kw):
    model = make(clip, **kw).train()
    loss, _, _ = model.training_step(*batch())
    loss.backward()
    assert math.isfinite(loss.item())


def test_trainable_state_dict_round_trip(clip):
    model = make(clip, seed=1).eval()
    state = model.trainable_state_dict()
    assert not any(k.startswith(("text_encoder.transformer", "text_encoder.ln_final"))
                   for k in state)
    assert "text_encoder.text_projection" in state and "prompt.ctx" in state
    other = make(clip, seed=2).eval()
    other.load_trainable_state_dict(state)
    _, _, xa, mask_a, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(other.score(xa, mask_a), model.score(xa, mask_a))
        torch.testing.assert_close(other.text_embeddings(), model.text_embeddings())
    with pytest.raises(KeyError):
        other.load_trainable_state_dict({"prompt.ctx": state["prompt.ctx"]})


def test_wrong_label_shape_is_an_error(clip):
    model = make(clip)
    xn, mask_n, xa, mask_a, labels = batch()
    with pytest.raises(ValueError, match="labels_a"):
        model.training_step(xn, mask_n, xa, mask_a, labels[:, 1:])
