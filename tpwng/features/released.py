"""Importing released CLIP features (one `<video>__<crop>.npy` of [snippets, 512] per crop).

The widely used release of CLIP ViT-B/16 features for UCF-Crime and XD-Violence ships ten crops
per training video (0 centre, 1-4 corners, 5-9 mirrored) and one crop per test video. Without the
videos, a video's frame count is taken as 16 x its snippets, the convention of that release.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tpwng.features.provenance import released_provenance
from tpwng.features.store import StoreError, StoreWriter
from tpwng.features.video import VideoInfo

_NAME = re.compile(r"^(?P<video>.+)__(?P<crop>[0-9]+)\.npy$")
FEATURE_DTYPES = ("float16", "float32", "float64")  # real floating point; never complex


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a released ``.npy`` file, checked: a readable header,
    a real floating dtype (no strings, objects or complex numbers), ``[snippets, dim]`` with at
    least one snippet, and exactly the bytes the header promises. `StoreError` naming the file
    otherwise; nothing is allocated from the header's numbers."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = read[version](f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise StoreError(f"{path}: not a readable .npy array ({exc})") from None
    if fortran:
        raise StoreError(f"{path}: Fortran-ordered array; expected a C-ordered one")
    if dtype.hasobject or dtype.fields is not None or dtype.name not in FEATURE_DTYPES:
        raise StoreError(f"{path}: dtype {dtype} is not a feature dtype "
                         f"({', '.join(FEATURE_DTYPES)})")
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise StoreError(f"{path}: shape {shape}; expected [snippets, dim] with at least one "
                         "snippet")
    expected = offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        raise StoreError(f"{path}: {size} bytes, but its header promises {expected} "
                         f"({'truncated' if size < expected else 'trailing data'})")
    return tuple(shape), dtype, offset


def load_npy(path: str | Path) -> np.ndarray:
    """A released ``.npy`` feature array, checked by `npy_header` first."""
    npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise StoreError(f"{path}: not a readable .npy array ({exc})") from None


def index_npy(root: str | Path) -> dict[str, dict[int, Path]]:
    """video id -> crop -> file, for every `<video>__<crop>.npy` below `root`."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"released features directory {root} does not exist "
                         "(set extraction.released_dir)")
    out: dict[str, dict[int, Path]] = defaultdict(dict)
    for dirpath, _, files in os.walk(root):
        for name in files:
            m = _NAME.match(name)
            if m:
                out[m["video"]][int(m["crop"])] = Path(dirpath) / name
    return dict(out)


def _released_dir(settings: dict) -> Path:
    d = settings["extraction"]["released_dir"]
    if not d:
        raise StoreError(f"dataset {settings['name']!r}: extraction.source is 'released' but "
                         "extraction.released_dir is not set")
    return Path(d)


def released_probe(settings: dict):
    """A manifest probe that reads snippet counts from the .npy headers instead of videos."""
    index = index_npy(_released_dir(settings))
    stride = int(settings["extraction"]["stride"])

    def probe(path: str) -> VideoInfo:
        vid = Path(path).stem
        crops = index.get(vid)
        if not crops:
            raise StoreError(f"no released features <{vid}>__<crop>.npy for video {path}")
        shapes = {f: npy_header(f)[0] for f in crops.values()}  # every crop checked
        if len(set(shapes.values())) != 1:
            raise StoreError(f"{next(iter(shapes))}: crops of {vid} have shapes "
                             f"{sorted(set(shapes.values()))}; expected one [snippets, dim]")
        snippets = next(iter(shapes.values()))[0]
        return VideoInfo(frames=snippets * stride, fps=float("nan"), width=0, height=0,
                         decoder="none", route="released features")

    return probe


def import_released(rows, settings: dict, out: Path) -> int:
    index = index_npy(_released_dir(settings))
    prov = released_provenance(settings, f"released:{_released_dir(settings)}")
    with StoreWriter(out, prov) as writer:
        for r in tqdm(rows, desc="import", file=sys.stderr, unit="video"):
            crops = index.get(r.video_id)
            if not crops:
                raise StoreError(f"no released features for video {r.video_id} in "
                                 f"{_released_dir(settings)}")
            ids = sorted(crops)
            arrays = [load_npy(crops[c]) for c in ids]
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1 or arrays[0].ndim != 2:
                raise StoreError(f"{crops[ids[0]]}: crops of {r.video_id} have shapes {shapes}; "
                                 "expected one [snippets, dim] shape")
            if arrays[0].shape[1] != prov["dim"]:
                raise StoreError(f"{crops[ids[0]]}: feature dim {arrays[0].shape[1]} is not 512")
            writer.add(r.video_id, np.stack(arrays, axis=1), frames=r.frames, fps=r.fps,
                       crop_ids=ids)
    return len(rows)
