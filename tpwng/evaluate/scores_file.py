"""The scores file (``results/NAME/scores.h5``): its one writer and its readers.

Attributes: ``dataset``, ``model`` (the checkpoint's path), ``weights`` (its CLIP weights),
``stride``, ``test_crop``, ``order`` (the video ids, one a line), ``classes`` (one a line),
``logit_scale`` and the scoring model's record (`MODEL_RECORD`: settings hash, CLIP model and
initialisation, features source, epochs, seed), which the metric tables copy. Groups, one array
per video: ``/snippets/<id>`` (``[T]``), ``/frames/<id>`` (``[frames]``) and
``/class_probs/<id>`` (``[T, k]``, float32, columns in the order of ``classes``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tpwng.evaluate import ResultsError
from tpwng.features.provenance import store_source
from tpwng.features.store import StoreError, h5_create, open_sealed
from tpwng.files import atomic_path

# the checkpoint's record a scores file carries: attribute -> type
MODEL_RECORD = {"settings_hash": str, "clip_weights": str, "random_init_clip": bool,
                "clip_model": str, "features_source": str, "epochs": int, "seed": int}
RESCORE = "score again: snakemake --forcerun infer"


def model_record(meta: dict) -> dict:
    """The record of `MODEL_RECORD` from a checkpoint's ``meta``: the settings hash of its
    training, its CLIP weights, model and initialisation, its features' source, epochs, seed."""
    return {"settings_hash": meta["settings_hash"], "clip_weights": meta["clip"]["weights"],
            "random_init_clip": bool(meta["clip"]["random_init"]),
            "clip_model": meta["clip"]["model"], "features_source": store_source(meta["store"]),
            "epochs": meta["epochs"], "seed": meta["seed"]}


class ScoresWriter:
    """A scores file being written, one video at a time (`write_scores_file`)."""

    def __init__(self, f) -> None:
        self.snippets = f.create_group("snippets")
        self.frames = f.create_group("frames")
        self.class_probs = f.create_group("class_probs")

    def add(self, video_id: str, snippets: np.ndarray, frames: np.ndarray,
            class_probs: np.ndarray) -> None:
        """One video's snippet scores ``[T]``, frame scores and class probabilities ``[T, k]``."""
        self.snippets[video_id] = snippets.astype(np.float32)
        self.frames[video_id] = frames.astype(np.float32)
        self.class_probs[video_id] = class_probs


@contextmanager
def write_scores_file(path: Path, *, dataset: str, model: Path, meta: dict, stride: int,
                      test_crop: int, order: Sequence[str], logit_scale: float
                      ) -> Iterator[ScoresWriter]:
    """A scores file of the videos ``order`` scored by the checkpoint ``model`` (its ``meta``),
    written whole or not at all: the videos are added to the yielded writer."""
    with atomic_path(path) as tmp, h5_create(tmp) as f:
        f.attrs["dataset"] = dataset
        f.attrs["model"] = str(model)
        f.attrs["weights"] = meta["clip"]["weights"]
        f.attrs["stride"] = stride
        f.attrs["test_crop"] = test_crop
        f.attrs["order"] = "\n".join(order)
        f.attrs["classes"] = "\n".join(meta["classes"])
        f.attrs["logit_scale"] = logit_scale
        for key, value in model_record(meta).items():
            f.attrs[key] = value
        yield ScoresWriter(f)


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
                             f"{RESCORE})")
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


def read_model_record(path: Path) -> dict:
    """The record of the checkpoint that wrote a scores file (`MODEL_RECORD`)."""
    with _scores_file(path) as f:
        missing = [k for k in MODEL_RECORD if k not in f.attrs]
        if missing:
            raise StoreError(f"{path}: no record of the model that scored it ({', '.join(missing)}"
                             f" missing: scored by an older version; {RESCORE})")
        return {k: kind(f.attrs[k].decode() if isinstance(f.attrs[k], bytes) else f.attrs[k])
                for k, kind in MODEL_RECORD.items()}


def check_scored_by(path: Path, model: Path) -> None:
    """Refuse a scores file that the checkpoint ``model`` did not write (another settings hash
    or seed): a `ResultsError` naming both."""
    from tpwng.train.checkpoint import load_checkpoint

    record = read_model_record(path)
    meta = load_checkpoint(model)["meta"]
    for key in ("settings_hash", "seed"):
        if str(record[key]) != str(meta[key]):
            raise ResultsError(f"{path} was scored by a model of {key} {record[key]}, but {model} "
                               f"has {key} {meta[key]}; {RESCORE}")


def read_header(path: Path) -> dict[str, str]:
    """A scores file's ``dataset``, ``model`` and ``weights`` attributes (empty where absent)."""
    with _scores_file(path) as f:
        return {k: str(f.attrs.get(k, "")) for k in ("dataset", "model", "weights")}


def read_class_probabilities(scores: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per-video snippet class probabilities ``[snippets, k]`` with the class names; empty when
    the file has none (scored by an older version). A damaged array is a `StoreError`."""
    with _scores_file(scores) as f:
        if "class_probs" not in f or "classes" not in f.attrs:
            return {}
    classes, probs = read_class_probs(scores)
    return {v: (classes, p) for v, p in probs.items()}
