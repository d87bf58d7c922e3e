"""Scoring: stored image features -> temporal module -> classifier, whole test videos."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tpwng.data.manifest import read_manifest
from tpwng.device import resolve_device
from tpwng.features.clip_backbone import ClipSpec, load_clip
from tpwng.features.store import FeatureStore, StoreError, h5_create, open_sealed
from tpwng.files import atomic_path
from tpwng.grid import expand_to_frames
from tpwng.model.class_probs import class_probabilities
from tpwng.model.tpwng import TPWNG, ModelConfig
from tpwng.train.checkpoint import (
    check_against_settings,
    load_checkpoint,
    load_into,
    stored_text_embeddings,
)

log = logging.getLogger(__name__)


def load_model(ckpt_path: Path, settings: dict | None = None,
               device: torch.device | str = "cpu") -> tuple[TPWNG, dict]:
    """Rebuild TPWNG from a checkpoint (the frozen CLIP parts come from its recorded weights)."""
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt["meta"]
    if settings is not None:
        check_against_settings(ckpt, settings, ckpt_path)
    clip_cfg = settings["clip"] if settings is not None else meta["clip"]
    clip_model, _ = load_clip(ClipSpec.from_config(clip_cfg))
    model = TPWNG(clip_model, meta["classes"], ModelConfig.from_dict(meta["model_config"]),
                  dim=int(meta["dim"]))
    load_into(model, ckpt, ckpt_path)
    return model.to(device).eval(), meta


@torch.no_grad()
def score_features(model: TPWNG, feats: np.ndarray, device="cpu") -> np.ndarray:
    """Snippet scores of one video from its features [T, D]."""
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))[None].to(device)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    return model.score(x, mask)[0].float().cpu().numpy()


def snippet_class_probs(feats: np.ndarray, scores: np.ndarray, text: torch.Tensor,
                        logit_scale: float) -> np.ndarray:
    """Class probabilities ``[T, k]`` of one video from its features ``[T, D]`` and its
    already computed anomaly scores ``η`` ``[T]``, with the class text embeddings ``[k, D]``
    (`tpwng.model.class_probs`): neither the text tower nor the temporal module runs again."""
    return class_probabilities(torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
                               text, logit_scale,
                               torch.from_numpy(np.asarray(scores, dtype=np.float32))).numpy()


def checkpoint_text(model: TPWNG, model_path: Path) -> tuple[torch.Tensor, float]:
    """The class text embeddings and logit scale a checkpoint stores; for a checkpoint written
    before they were stored, the model's text tower computes them (with a warning)."""
    ckpt = load_checkpoint(model_path)
    if "text_embeddings" not in ckpt:
        log.warning("%s stores no class text embeddings: computing them with the text tower",
                    model_path)
        with torch.no_grad():
            return model.text_embeddings().detach().float().cpu(), float(model.logit_scale)
    return stored_text_embeddings(ckpt, model_path)


def pick_crop(feats: np.ndarray, crop: int) -> np.ndarray:
    """The configured test crop, or the only crop a store has (released test features)."""
    return feats[:, crop] if feats.shape[1] > crop else feats[:, 0]


def score_test_set(settings: dict, manifest: Path, features: Path, model_path: Path,
                   out: Path) -> int:
    """Score every test video of the manifest into ``out``.

    Per video: ``/snippets/<id>`` (``[T]``), ``/frames/<id>`` (``[frames]``) and
    ``/class_probs/<id>`` (``[T, k]``, float32, columns in the order of the file attribute
    ``classes``), the last from the class text embeddings stored in the checkpoint.
    """
    device = resolve_device(settings["train"].get("device", "auto"))
    torch.set_num_threads(int(settings["train"].get("threads", 2)))
    model, meta = load_model(model_path, settings, device)
    text, logit_scale = checkpoint_text(model, model_path)
    stride = int(settings["extraction"]["stride"])
    crop = int(settings["train"]["test_crop"])
    rows = [r for r in read_manifest(manifest) if r.split == "test"]
    with FeatureStore(features) as store, atomic_path(out) as tmp, h5_create(tmp) as f:
        from tpwng.features.provenance import expected_store_provenance

        store.check_compatible(expected_store_provenance(settings))
        f.attrs["dataset"] = settings["name"]
        f.attrs["model"] = str(model_path)
        f.attrs["weights"] = meta["clip"]["weights"]
        f.attrs["stride"] = stride
        f.attrs["test_crop"] = crop
        f.attrs["order"] = "\n".join(r.video_id for r in rows)
        f.attrs["classes"] = "\n".join(meta["classes"])
        f.attrs["logit_scale"] = logit_scale
        snip, frames = f.create_group("snippets"), f.create_group("frames")
        probs = f.create_group("class_probs")
        for r in tqdm(rows, desc=f"score {settings['name']}", file=sys.stderr, unit="video"):
            feats = pick_crop(store.get(r.video_id), crop)
            s = score_features(model, feats, device)
            snip[r.video_id] = s.astype(np.float32)
            frames[r.video_id] = expand_to_frames(s, r.frames, stride).astype(np.float32)
            probs[r.video_id] = snippet_class_probs(feats, s, text, logit_scale)
    log.info("%s: %d test videos scored", out, len(rows))
    return len(rows)


MAX_SCORE_VALUES = 50_000_000  # per video and array: 460 h at 30 fps, 200 MB as float32


def _array(f, path: Path, group: str, vid: str, ndim: int,
           length: int | None = None) -> np.ndarray:
    """``/group/vid`` of a scores file, checked before it is read: a plain float array of
    `ndim` dimensions, stored in the file itself, of at most MAX_SCORE_VALUES values (a
    compressed array may declare far more than the file holds) and, where known, of `length`
    rows. `StoreError` naming the file otherwise."""
    import h5py

    where = f"{path}: /{group}/{vid}"
    if group not in f or not isinstance(f[group], h5py.Group) or vid not in f[group]:
        raise StoreError(f"{where} is missing (not a scores file of these videos)")
    if not isinstance(f[group].get(vid, getlink=True), h5py.HardLink):
        raise StoreError(f"{where} is a link; a scores file holds its arrays itself")
    ds = f[group][vid]
    if not isinstance(ds, h5py.Dataset) or ds.is_virtual or ds.external:
        raise StoreError(f"{where} is not an array stored in the file")
    if ds.dtype.kind != "f" or ds.ndim != ndim:
        raise StoreError(f"{where} is {ds.dtype} {ds.shape}; expected {ndim}-D floats")
    values = math.prod(ds.shape)
    if values > MAX_SCORE_VALUES:
        raise StoreError(f"{where} declares {values:,} values (more than {MAX_SCORE_VALUES:,});"
                         " a damaged or forged file")
    if length is not None and ds.shape[0] != length:
        raise StoreError(f"{where} has {ds.shape[0]} values where {length} are expected")
    try:
        return ds[()]
    except (OSError, RuntimeError, ValueError) as exc:
        raise StoreError(f"{where} cannot be read ({exc})") from None


def _order(f, path: Path) -> list[str]:
    text = f.attrs.get("order")
    if text is None:
        raise StoreError(f"{path}: no 'order' attribute (not a scores file)")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return text.split("\n") if text else []


@contextmanager
def _scores_file(path: Path):
    """A scores file open for reading; any malformation a `StoreError` naming it."""
    with open_sealed(path) as f:
        try:
            yield f
        except StoreError:
            raise
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise StoreError(f"{path}: not a readable scores file ({exc})") from None


def read_scores(path: Path, frames: Mapping[str, int] | None = None
                ) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Video order, frame scores and snippet scores from a scores file; with `frames` (video
    id -> frame count, e.g. from the manifest) each video's arrays must have those frames and
    their snippets."""
    with _scores_file(path) as f:
        order = _order(f, path)
        stride = int(f.attrs["stride"]) if frames is not None else 1
        if stride < 1:
            raise StoreError(f"{path}: stride {stride} is not a positive number of frames")
        out_frames, out_snippets = {}, {}
        for v in order:
            n = frames.get(v) if frames is not None else None
            out_frames[v] = _array(f, path, "frames", v, 1, n)
            out_snippets[v] = _array(f, path, "snippets", v, 1,
                                     None if n is None else -(-n // stride))
    return order, out_frames, out_snippets


def read_class_probs(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Class names and per-video class probabilities ``[T, k]`` from a scores file."""
    with _scores_file(path) as f:
        if "class_probs" not in f or "classes" not in f.attrs:
            raise StoreError(f"{path}: no class probabilities (scored by an older version; "
                             "score again: snakemake --forcerun infer)")
        order = _order(f, path)
        classes = str(f.attrs["classes"]).split("\n")
        probs = {v: _array(f, path, "class_probs", v, 2) for v in order}
    return classes, probs


def read_stride(path: Path) -> int:
    """Frames per snippet of the scores in a scores file."""
    with _scores_file(path) as f:
        stride = int(f.attrs["stride"])
    if stride < 1:
        raise StoreError(f"{path}: stride {stride} is not a positive number of frames")
    return stride
