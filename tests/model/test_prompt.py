"""Learnable prompts (Eq. 1) and the text tower path (Eq. 2)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.model.prompt import PromptLearner, TextEncoder

NAMES = ["normal", "road accidents", "shoplifting", "car accident"]


@pytest.fixture(scope="module")
def clip():
    model, _ = load_clip(ClipSpec("tpwng-tiny-ViT-B-16", "none", 0))
    return model


def n_name_tokens(name: str) -> int:
    tokens = open_clip.tokenize([name])[0]
    return int(tokens.argmax()) - 1  # between the start and end tokens


@pytest.mark.parametrize("n_ctx", [0, 4, 8])
def test_eot_position_moves_by_n_ctx(clip, n_ctx):
    pl = PromptLearner(clip, NAMES, n_ctx=n_ctx)
    expected = [1 + n_ctx + n_name_tokens(n) + 1 for n in NAMES]
    assert pl.eot_positions.tolist() == expected
    # The EOT token (largest id) sits there in the tokenised prompts.
    eot = pl.tokenized_prompts[torch.arange(len(NAMES)), pl.eot_positions]
    assert (eot == open_clip.tokenize([""])[0].max()).all()


def test_context_vectors_sit_between_start_and_class_tokens(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=3)
    prompts = pl()
    assert prompts.shape == (len(NAMES), 77, 128)
    plain = clip.token_embedding(open_clip.tokenize([f"{n}." for n in NAMES]))
    for i in range(len(NAMES)):
        torch.testing.assert_close(prompts[i, 0], plain[i, 0])  # start token
        torch.testing.assert_close(prompts[i, 1:4], pl.ctx)  # shared context
        # Class name, full stop, end token and padding follow, shifted by n_ctx.
        torch.testing.assert_close(prompts[i, 4:], plain[i, 1:-3])


def test_class_specific_context(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=2, class_specific=True)
    assert pl.ctx.shape == (len(NAMES), 2, 128)
    prompts = pl()
    for i in range(len(NAMES)):
        torch.testing.assert_close(prompts[i, 1:3], pl.ctx[i])


@pytest.mark.parametrize("class_specific", [False, True])
def test_tower_path_equals_encode_text(clip, class_specific):
    """Context set to the words "a photo of a" reproduces CLIP's own text encoding exactly."""
    pl = PromptLearner(clip, NAMES, n_ctx=4, class_specific=class_specific,
                       ctx_init="a photo of a")
    enc = TextEncoder(clip)
    out = enc(pl(), pl.eot_positions)
    ref = clip.encode_text(open_clip.tokenize([f"a photo of a {n}." for n in NAMES]))
    assert out.shape == (len(NAMES), 512)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_ctx_init_needs_n_ctx_tokens(clip):
    with pytest.raises(ValueError, match="n_ctx"):
        PromptLearner(clip, NAMES, n_ctx=3, ctx_init="a photo of a")


def test_too_long_prompt_is_an_error(clip):
    with pytest.raises(ValueError, match="longer than"):
        PromptLearner(clip, [" ".join(["word"] * 80)], n_ctx=8)


def test_projection_copy_trains_and_clip_stays_frozen(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=4)
    enc = TextEncoder(clip)
    assert enc.text_projection is not clip.text_projection
    assert enc.text_projection.requires_grad and not clip.text_projection.requires_grad
    torch.testing.assert_close(enc.text_projection, clip.text_projection)
    enc(pl(), pl.eot_positions).pow(2).sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert enc.text_projection.grad is not None and enc.text_projection.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in clip.parameters())
    with torch.no_grad():
        enc.text_projection.add_(1.0)
    assert not torch.equal(enc.text_projection, clip.text_projection)


def test_frozen_projection_option(clip):
    enc = TextEncoder(clip, finetune_projection=False)
    assert not enc.text_projection.requires_grad
    assert enc.projection_parameters() == [enc.text_projection]


def test_text_tower_stays_in_eval_mode(clip):
    enc = TextEncoder(clip).train()
    assert enc.training and not enc.transformer.training and not enc.ln_final.training
    assert not hasattr(enc, "visual")
