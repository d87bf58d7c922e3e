"""HDF5 feature stores.

A store holds one dataset per video, ``/videos/<video_id>``, of shape [snippets, crops, dim]
(float16 by default), with per-video attributes (frames, fps, crop ids) and file-level
provenance (model, weights identity, stride, sampling, crop mode, preprocessing, version).
Stores are written under a temporary name and renamed when complete, so a file with the final
name is always whole. A merged view of a sharded dataset is a small file of external links.

HDF5 files are written through a Python file object (h5py's file-object driver): a failed write
(disk full, file size limit) is then an ordinary OSError, reported as one StoreError, where
HDF5's own file driver can crash the process when it later closes the file.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import h5py
import numpy as np

from tpwng.features.provenance import COMPATIBILITY_KEYS
from tpwng.files import atomic_path, publish, remove_stale_temps, temp_path, write_error

STORE_FORMAT = "tpwng-features/1"
CHECKSUM_ATTR = "crc32"  # of each video's array bytes, checked on every read


class StoreError(RuntimeError):
    """A feature store is unreadable or does not match what is asked of it."""


# ---------------------------------------------------------------------------- sealed files
#
# HDF5 can hang for ever (or crash) on a damaged file: an overwritten attribute header sends
# it into an endless loop. So every HDF5 file written here starts with a 512-byte user block
# (which HDF5 skips) holding the size and CRC-32 of the rest, and readers check it before HDF5
# sees the file. Files without the seal (written before it existed) are read unchecked.

SEAL_SIZE = 512
SEAL_MAGIC = b"tpwng-sealed-hdf5/1\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _seal(handle) -> None:
    """Write the size and CRC-32 of everything after the user block into the user block."""
    handle.flush()
    handle.seek(SEAL_SIZE)
    crc, size = 0, 0
    while chunk := handle.read(1 << 22):
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
    head = SEAL_MAGIC + json.dumps({"size": size, "crc32": crc}).encode() + b"\n"
    handle.seek(0)
    handle.write(head.ljust(SEAL_SIZE, b"\0"))
    handle.flush()


def verify_sealed(path: str | Path) -> bool:
    """Check a sealed file against its seal before HDF5 reads it; False if it has none.

    Raises StoreError naming the file when the contents differ from the seal (damaged,
    truncated or overwritten) or the seal itself is damaged.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SEAL_SIZE)
            if not head.startswith(SEAL_MAGIC):
                f.seek(SEAL_SIZE)
                if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    raise StoreError(f"{path}: damaged file (its checksum header is "
                                     "overwritten); re-create it")
                return False
            seal = json.loads(head[len(SEAL_MAGIC):].split(b"\n", 1)[0])
            crc, size = 0, 0
            while chunk := f.read(1 << 22):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
            ok = size == int(seal["size"]) and crc == int(seal["crc32"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path}: damaged file ({exc}); re-create it") from exc
    if not ok:
        raise StoreError(f"{path}: damaged or incomplete file (size or checksum differs from "
                         "what was written); re-create it")
    return True


@contextmanager
def h5_create(path: str | Path) -> Iterator[h5py.File]:
    """A new sealed HDF5 file, written through a Python file object (a failed write raises
    OSError instead of crashing HDF5)."""
    handle = open(path, "w+b")  # noqa: SIM115 - closed below, after the HDF5 file
    f = None
    try:
        f = h5py.File(handle, "w", userblock_size=SEAL_SIZE)
        yield f
    except BaseException:
        if f is not None:
            with suppress(Exception):
                f.close()
        raise
    else:
        f.close()
        _seal(handle)
    finally:
        handle.close()


def open_sealed(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading after checking its seal (StoreError if damaged)."""
    verify_sealed(path)
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _checksum(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).reshape(-1))


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
        self.tmp = temp_path(self.path)
        self.dtype = np.dtype(dtype)
        self._handle = None
        self._file = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.path)
            self._handle = open(self.tmp, "w+b")  # noqa: SIM115 - closed in close()/abort()
            self._file = h5py.File(self._handle, "w", userblock_size=SEAL_SIZE)
            self._file.attrs["format"] = STORE_FORMAT
            for key, value in provenance.items():
                self._file.attrs[key] = _attr(value)
            self._file.attrs["dtype"] = self.dtype.name
            self._group = self._file.create_group("videos")
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from exc

    def add(self, video_id: str, features: np.ndarray, **attrs) -> None:
        if video_id in self._group:
            raise StoreError(f"{self.path}: video {video_id!r} written twice")
        features = np.asarray(features)
        if features.ndim != 3:
            raise StoreError(f"{self.path}: features of video {video_id!r} must be "
                             f"[snippets, crops, dim], got shape {features.shape}")
        with np.errstate(over="ignore"):  # checked after the cast: float16 overflows to inf
            data = features.astype(self.dtype)
        finite = np.isfinite(data)
        if not finite.all():
            overflow = np.isfinite(features).all()
            raise StoreError(
                f"{self.path}: features of video {video_id!r} contain NaN or inf "
                f"({int((~finite).sum())} of {data.size} values"
                f"{', out of ' + self.dtype.name + ' range' if overflow else ''}); "
                "nothing was written")
        try:
            ds = self._group.create_dataset(video_id, data=data)
            ds.attrs[CHECKSUM_ATTR] = _checksum(data)  # damaged bytes then fail to read
            for key, value in attrs.items():
                ds.attrs[key] = _attr(value)
        except OSError as exc:
            raise write_error(self.path, exc) from exc

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        try:
            self._file.close()
            _seal(self._handle)
            self._handle.close()
            publish(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from exc

    def abort(self) -> None:
        """Drop the temporary file (the final name is never touched)."""
        for obj in (self._file, self._handle):
            if obj is not None:
                with suppress(Exception):
                    obj.close()
        with suppress(OSError):
            self.tmp.unlink()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FeatureStore:
    """Read access to a store or a merged view; a damaged file is a StoreError naming it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: feature store does not exist")
        verify_sealed(self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 feature store ({exc})") from exc
        try:
            fmt = _from_attr(self._file.attrs.get("format", ""))
            self.provenance = {k: _from_attr(v) for k, v in self._file.attrs.items()}
            has_videos = isinstance(self._file.get("videos"), h5py.Group)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            self._file.close()
            raise StoreError(f"{self.path}: damaged feature store ({exc})") from exc
        if fmt != STORE_FORMAT or not has_videos:
            self._file.close()
            raise StoreError(f"{self.path}: not a tpwng feature store (format attribute or "
                             "videos group missing)")
        try:  # a merged view: check every shard before HDF5 follows a link into it
            for shard in json.loads(self.provenance.get("shards") or "[]"):
                if not (self.path.parent / shard).is_file():
                    raise StoreError(f"{self.path}: its shard {shard} does not exist (was it "
                                     "moved or deleted? `snakemake --cores N "
                                     f"{self.path}` re-extracts it and rebuilds the view)")
                verify_sealed(self.path.parent / shard)
        except StoreError:
            self._file.close()
            raise
        except (ValueError, TypeError) as exc:
            self._file.close()
            raise self._damaged(exc) from exc

    def _damaged(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.path}: damaged feature store ({exc}); re-create it")

    def video_ids(self) -> list[str]:
        try:
            return list(self._file["videos"].keys())
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise self._damaged(exc) from exc

    def __contains__(self, video_id: str) -> bool:
        try:
            return video_id in self._file["videos"]
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise self._damaged(exc) from exc

    def _dataset(self, video_id: str) -> h5py.Dataset:
        videos = self._file["videos"]
        try:
            return videos[video_id]
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            try:
                link = videos.get(video_id, getlink=True)
            except (KeyError, OSError, RuntimeError, ValueError):
                link = None
            if isinstance(link, h5py.ExternalLink):
                raise StoreError(f"{self.path}: features of {video_id!r} are in "
                                 f"{link.filename}, which cannot be read (was a shard moved, "
                                 f"deleted or damaged?) ({exc})") from exc
            if link is None and isinstance(exc, KeyError):
                raise StoreError(f"{self.path}: no features for video {video_id!r}") from exc
            raise self._damaged(exc) from exc

    def get(self, video_id: str) -> np.ndarray:
        """Features [snippets, crops, dim] as float32; NaN or inf is a StoreError."""
        ds = self._dataset(video_id)
        try:
            data = ds[()]
        except (OSError, RuntimeError, ValueError) as exc:
            raise StoreError(f"{self.path}: features of {video_id!r} unreadable ({exc})") from exc
        if data.ndim != 3:
            raise StoreError(f"{self.path}: features of {video_id!r} have shape {data.shape}; "
                             "expected [snippets, crops, dim]")
        try:
            want = ds.attrs.get(CHECKSUM_ATTR)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise self._damaged(exc) from exc
        if want is not None and int(want) != _checksum(data):
            raise StoreError(f"{self.path}: features of {video_id!r} are damaged (checksum "
                             "mismatch); re-create the store")
        data = data.astype(np.float32)
        finite = np.isfinite(data)
        if not finite.all():
            raise StoreError(f"{self.path}: features of video {video_id!r} contain NaN or inf "
                             f"({int((~finite).sum())} of {data.size} values); re-extract them")
        return data

    def video_attrs(self, video_id: str) -> dict:
        ds = self._dataset(video_id)
        try:
            return {k: _from_attr(v) for k, v in ds.attrs.items() if k != CHECKSUM_ATTR}
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise self._damaged(exc) from exc

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
        with h5_create(tmp) as f:
            for key, value in (provenance or {}).items():
                f.attrs[key] = _attr(value)
            f.attrs["format"] = STORE_FORMAT
            f.attrs["shards"] = json.dumps([os.path.relpath(s, out.parent) for s in shards])
            group = f.create_group("videos")
            for vid, shard in links.items():
                group[vid] = h5py.ExternalLink(os.path.relpath(shard, out.parent), f"/videos/{vid}")
    return len(links)


def pick_crop(feats: np.ndarray, crop: int) -> np.ndarray:
    """The configured test crop, or the only crop a store has (released test features)."""
    return feats[:, crop] if feats.shape[1] > crop else feats[:, 0]
