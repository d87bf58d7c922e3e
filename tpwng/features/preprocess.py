"""CLIP preprocessing as batched tensor operations (on the encoder's device).

`center`: resize the shorter side to 224 (bicubic, antialiased), centre-crop 224x224, scale to
[0, 1] and normalise with CLIP's mean/std: the same steps as CLIP's own PIL pipeline.
`tencrop`: the layout of the widely used released CLIP features: resize to 340x256 (W x H),
take 224x224 crops 0 = centre, 1 = top-left, 2 = top-right, 3 = bottom-left, 4 = bottom-right,
and 5-9 = the same five regions mirrored horizontally.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_MODES = {"center": 1, "tencrop": 10}
TENCROP_SIZE = (256, 340)  # (H, W)


def n_crops(mode: str) -> int:
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {sorted(CROP_MODES)}, got {mode!r}")
    return CROP_MODES[mode]


_SCALES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_inv_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and 1 / std on the 0..255 scale, [3, 1, 1] on `device`, made once per device:
    a copy to a GPU on every call would make the host wait for the GPU's stream each time."""
    if device not in _SCALES:
        with torch.inference_mode(False):  # ordinary tensors, usable in and out of it
            mean = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255.0
            inv_std = 1.0 / (torch.tensor(CLIP_STD).view(3, 1, 1) * 255.0)
            _SCALES[device] = (mean.to(device), inv_std.to(device))
    return _SCALES[device]


def _normalize_(x: torch.Tensor) -> torch.Tensor:
    """Float [..., 3, H, W] holding 0..255 -> CLIP-normalised, in place (no temporaries)."""
    mean, inv_std = _mean_inv_std(x.device)
    return x.sub_(mean).mul_(inv_std)


def tencrop_boxes(height: int, width: int, size: int = 224) -> list[tuple[int, int]]:
    """(top, left) of the five crop regions: centre, TL, TR, BL, BR."""
    top_c = int(round((height - size) / 2.0))
    left_c = int(round((width - size) / 2.0))
    return [(top_c, left_c), (0, 0), (0, width - size), (height - size, 0),
            (height - size, width - size)]


def preprocess(frames: torch.Tensor, mode: str = "center", size: int = 224,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> float32 [N, crops, 3, size, size], CLIP-normalised.

    Resizing and cropping stay in uint8; the one conversion to float writes into `out` when
    given (a slice of a reused batch buffer), so no large temporaries are allocated per batch.
    """
    x = frames.permute(0, 3, 1, 2)  # N, 3, H, W
    if mode == "center":
        x = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        crops = TF.center_crop(x, [size, size]).unsqueeze(1)
    elif mode == "tencrop":
        x = TF.resize(x, list(TENCROP_SIZE), interpolation=InterpolationMode.BICUBIC,
                      antialias=True)
        boxes = tencrop_boxes(*TENCROP_SIZE, size)
        five = [x[:, :, top : top + size, left : left + size] for top, left in boxes]
        crops = torch.stack(five + [c.flip(-1) for c in five], dim=1)
    else:
        raise ValueError(f"crop mode must be one of {sorted(CROP_MODES)}, got {mode!r}")
    if out is None:
        out = torch.empty(crops.shape, dtype=torch.float32, device=crops.device)
    elif out.shape != crops.shape:
        raise ValueError(f"preprocess: out has shape {tuple(out.shape)}, need {tuple(crops.shape)}")
    out.copy_(crops)
    return _normalize_(out)
