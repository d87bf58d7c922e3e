import time

import pytest
import torch

from tpwng.features.clip_backbone import ClipSpec, ClipWeightsError, load_clip, weights_identity


def test_random_init_is_recorded_and_frozen(tiny_clip):
    model, identity = tiny_clip
    assert identity == "random-init:seed=0"
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    assert model.visual.output_dim == 512


def test_random_init_is_seeded():
    a, _ = load_clip(ClipSpec("tpwng-tiny-ViT-B-16", "none", 3))
    b, _ = load_clip(ClipSpec("tpwng-tiny-ViT-B-16", "none", 3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_local_checkpoint_file_loads_the_same_weights(tmp_path, tiny_clip):
    model, _ = tiny_clip
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    loaded, identity = load_clip(ClipSpec("tpwng-tiny-ViT-B-16", str(path)))
    assert identity.startswith("sha256:") and len(identity) == 7 + 64
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x))


def test_missing_checkpoint_names_the_config_key(tmp_path):
    with pytest.raises(ClipWeightsError, match="clip.pretrained") as e:
        weights_identity(ClipSpec("ViT-B-16", str(tmp_path / "nope.pt")))
    assert "nope.pt" in str(e.value)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, path)
    with pytest.raises(ClipWeightsError, match="clip.pretrained"):
        load_clip(ClipSpec("tpwng-tiny-ViT-B-16", str(path)))


def test_openai_weights_without_network_fail_with_one_clear_message():
    t0 = time.perf_counter()
    with pytest.raises(ClipWeightsError) as e:
        load_clip(ClipSpec("ViT-B-16", "openai"))
    msg = str(e.value)
    assert "openai" in msg and "clip.pretrained" in msg
    assert time.perf_counter() - t0 < 60


def test_unknown_model():
    with pytest.raises(ClipWeightsError, match="clip.model"):
        load_clip(ClipSpec("ViT-Q-99", "none"))
