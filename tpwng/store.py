"""HDF5 feature stores.

A store holds one dataset per video, ``/videos/<video_id>``, of shape [snippets, crops, dim]
(float16 by default), with per-video attributes (frames, fps, crop ids) and file-level
provenance (model, weights identity, stride, sampling, crop mode, preprocessing, version).
Stores are written under a temporary name and renamed when complete, so a file with the final
name is always whole. A merged view of a sharded dataset is a small file of external links.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

STORE_FORMAT = "tpwng-features/1"
# Provenance keys that must agree between a store and the config that reads it.
COMPATIBILITY_KEYS = ("model", "weights", "stride", "sample", "crop_mode", "dim")


class StoreError(RuntimeError):
    """A feature store is unreadable or does not match what is asked of it."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _attr(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if value is None:
        return ""
    return value


def _from_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class StoreWriter:
    """Writes videos into a temporary HDF5 file; `close()` renames it into place."""

    def __init__(self, path: str | Path, provenance: dict, dtype: str = "float16") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.dtype = np.dtype(dtype)
        self._file = h5py.File(self.tmp, "w")
        self._file.attrs["format"] = STORE_FORMAT
        for key, value in provenance.items():
            self._file.attrs[key] = _attr(value)
        self._file.attrs["dtype"] = self.dtype.name
        self._group = self._file.create_group("videos")

    def add(self, video_id: str, features: np.ndarray, **attrs) -> None:
        if video_id in self._group:
            raise StoreError(f"{self.path}: video {video_id!r} written twice")
        if features.ndim != 3:
            raise StoreError(f"{video_id}: features must be [snippets, crops, dim]")
        if not np.isfinite(features).all():
            raise StoreError(f"{video_id}: features contain NaN or inf")
        ds = self._group.create_dataset(video_id, data=features.astype(self.dtype))
        for key, value in attrs.items():
            ds.attrs[key] = _attr(value)

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FeatureStore:
    """Read access to a store or a merged view."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: feature store does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 feature store ({exc})") from exc
        if _from_attr(self._file.attrs.get("format", "")) != STORE_FORMAT:
            raise StoreError(f"{self.path}: not a tpwng feature store (format attribute missing)")
        self.provenance = {k: _from_attr(v) for k, v in self._file.attrs.items()}

    def video_ids(self) -> list[str]:
        return list(self._file["videos"].keys())

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._file["videos"]

    def get(self, video_id: str) -> np.ndarray:
        """Features [snippets, crops, dim] as float32."""
        try:
            ds = self._file["videos"][video_id]
            data = ds[()]
        except KeyError as exc:
            raise StoreError(f"{self.path}: no features for video {video_id!r}") from exc
        except OSError as exc:
            raise StoreError(f"{self.path}: features of {video_id!r} unreadable ({exc})") from exc
        return data.astype(np.float32)

    def video_attrs(self, video_id: str) -> dict:
        ds = self._file["videos"][video_id]
        return {k: _from_attr(v) for k, v in ds.attrs.items()}

    def check_compatible(self, expected: dict) -> None:
        """Raise StoreError naming the first provenance key that differs from `expected`."""
        for key in COMPATIBILITY_KEYS:
            if key not in expected:
                continue
            have = self.provenance.get(key)
            if str(have) != str(expected[key]):
                raise StoreError(
                    f"{self.path}: store was made with {key}={have!r} but the config asks for "
                    f"{key}={expected[key]!r}; re-extract the features or fix the config"
                )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_view(shards: Iterable[str | Path], out: str | Path) -> int:
    """Write `out` as external links to every video of `shards`; return the video count.

    All shards must share their provenance (other than shard numbering); the view carries it.
    """
    out = Path(out)
    shards = [Path(s) for s in shards]
    provenance: dict | None = None
    links: dict[str, Path] = {}
    for shard in shards:
        with FeatureStore(shard) as store:
            prov = {k: v for k, v in store.provenance.items() if not k.startswith("shard")}
            if provenance is None:
                provenance = prov
            elif prov != provenance:
                diff = sorted(k for k in set(prov) | set(provenance)
                              if prov.get(k) != provenance.get(k))
                raise StoreError(f"{shard}: provenance differs from the other shards in {diff}")
            for vid in store.video_ids():
                if vid in links:
                    raise StoreError(f"video {vid!r} is in both {links[vid]} and {shard}")
                links[vid] = shard
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in (provenance or {}).items():
                f.attrs[key] = _attr(value)
            f.attrs["format"] = STORE_FORMAT
            f.attrs["shards"] = json.dumps([os.path.relpath(s, out.parent) for s in shards])
            group = f.create_group("videos")
            for vid, shard in links.items():
                group[vid] = h5py.ExternalLink(os.path.relpath(shard, out.parent), f"/videos/{vid}")
    return len(links)
