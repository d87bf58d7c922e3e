"""CLIP preprocessing as tensors against CLIP's own PIL pipeline and an independent crop."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tpwng.features.preprocess import CLIP_MEAN, CLIP_STD, TENCROP_SIZE, preprocess, tencrop_boxes


def _frames(seed=0, h=144, w=176, n=3):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h // 8, w // 8, 3), dtype=np.uint8)
    # smooth-ish content, like real frames
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)


@pytest.mark.parametrize("h,w", [(144, 176), (272, 640), (240, 320)])
def test_center_matches_clip_pil_pipeline(h, w):
    pil_preprocess = open_clip.image_transform(224, is_train=False)  # CLIP eval pipeline
    frames = _frames(h=h, w=w)
    ours = preprocess(torch.from_numpy(frames), "center")
    assert ours.shape == (3, 1, 3, 224, 224)
    ref = torch.stack([pil_preprocess(Image.fromarray(f)) for f in frames])
    # PIL and torchvision bicubic antialias differ by at most a few uint8 levels on some pixels
    diff = (ours[:, 0] - ref).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    assert diff.mean() < 0.5
    assert diff.max() <= 8


def test_tencrop_geometry_against_independent_crop():
    frames = _frames(h=240, w=320, n=2)
    ours = preprocess(torch.from_numpy(frames), "tencrop")
    assert ours.shape == (2, 10, 3, 224, 224)
    hh, ww = TENCROP_SIZE
    assert (hh, ww) == (256, 340)
    # independent: PIL resize to 340x256, crop boxes by hand
    boxes = [(58, 16), (0, 0), (116, 0), (0, 32), (116, 32)]  # (left, top)
    assert [(left, top) for top, left in tencrop_boxes(hh, ww)] == boxes
    mean = np.array(CLIP_MEAN).reshape(3, 1, 1)
    std = np.array(CLIP_STD).reshape(3, 1, 1)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame).resize((340, 256), Image.BICUBIC)
        for c, (left, top) in enumerate(boxes):
            crop = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float64)
            ref = (crop.transpose(2, 0, 1) / 255 - mean) / std
            got = ours[i, c].numpy()
            assert np.abs(got - ref).mean() * 255 * 0.27 < 0.6
            # crop 5 + c is the same region mirrored
            np.testing.assert_allclose(ours[i, 5 + c].numpy(), got[:, :, ::-1], atol=1e-6)


def test_unknown_crop_mode():
    with pytest.raises(ValueError, match="crop mode"):
        preprocess(torch.zeros(1, 10, 10, 3, dtype=torch.uint8), "fivecrop")
