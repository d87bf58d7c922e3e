"""Holding a feature store we extracted against released `<video>__<crop>.npy` features.

For every video in both, the snippet sequences are aligned by the integer offset k (within
``±max_offset``) that maximises the mean cosine of the crop-averaged features, where offset k
means *our snippet t + k is released snippet t*. At that offset every crop of ours is held
against every released crop (cosine averaged over the aligned snippets), and the sums over all
videos give one crop x crop matrix; its best one-to-one assignment shows a permuted crop order.
Per-dimension means and standard deviations of the matched crop pairs show scale differences.
The findings become one verdict line (`summarise`).

The pure functions work on arrays; `store_crop_ids` and `load_released` read the inputs, raising
one :class:`StoreError` naming the file or value. The report (a per-video TSV, a JSON summary and
a PNG) is `tpwng.evaluate.feature_parity.compare_features`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from tpwng.features.store import FeatureStore, StoreError

MAX_OFFSET = 8  # snippets searched either way
MATCH_COSINE = 0.99  # at or above: the same features (float16 storage alone gives > 0.9999)
DIFFERENT_COSINE = 0.9  # below: other features (weights, model or preprocessing)
NOISE_COSINE = 0.5  # below: alignment and crop assignment are noise, not findings
OFFSET_GAIN = 1e-3  # a nonzero offset must beat offset 0 by this mean cosine
PERMUTATION_GAIN = 0.01  # the assignment must beat the identity by this mean cosine
NORM_TOLERANCE = 0.05  # |norm ratio - 1| above: a scale finding
STD_TOLERANCE = 0.1  # |median std ratio - 1| above: a scale finding
STRIDE_TOLERANCE = 0.1  # |median snippet-count ratio - 1| above: a stride finding
EPS = 1e-12  # floor of norms and standard deviations


# ---------------------------------------------------------------------------- pure functions

def unit(x: np.ndarray) -> np.ndarray:
    """Vectors along the last axis scaled to length 1 (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def overlap(n_ours: int, n_released: int, k: int) -> tuple[int, int]:
    """Released snippets [start, stop) that have our snippet t + k."""
    return max(0, -k), min(n_released, n_ours - k)


def offset_profile(ours: np.ndarray, released: np.ndarray,
                   max_offset: int = MAX_OFFSET) -> dict[int, float]:
    """Mean cosine of ``ours[t + k]`` and ``released[t]`` ([snippets, dim] each) over their
    overlap, for each offset k in ±max_offset whose overlap is at least half the shorter one."""
    a, b = unit(ours), unit(released)
    need = max(1, min(len(a), len(b)) // 2)
    out = {}
    for k in range(-max_offset, max_offset + 1):
        start, stop = overlap(len(a), len(b), k)
        if stop - start >= need:
            out[k] = float(np.mean(np.sum(a[start + k:stop + k] * b[start:stop], axis=1)))
    return out


def best_offset(profile: dict[int, float], gain: float = OFFSET_GAIN) -> int:
    """The offset of highest cosine (the smaller |k| on ties); 0 unless it gains `gain`."""
    k = max(sorted(profile, key=lambda k: (abs(k), k)), key=lambda k: profile[k])
    if 0 in profile and profile[k] - profile[0] <= gain:
        return 0
    return k


def crop_cosine_sums(ours: np.ndarray, released: np.ndarray) -> np.ndarray:
    """Sum over aligned snippets of the cosine of each our crop with each released crop:
    [T, Co, D] and [T, Cr, D] -> [Co, Cr]."""
    a, b = unit(ours), unit(released)
    flat_a = a.transpose(1, 0, 2).reshape(a.shape[1], -1)
    flat_b = b.transpose(1, 0, 2).reshape(b.shape[1], -1)
    return (flat_a @ flat_b.T).astype(np.float64)


def assign_crops(matrix: np.ndarray) -> list[tuple[int, int]]:
    """Row/column pairs of the one-to-one assignment of highest total cosine; NaN cells
    (crop pairs never seen together) are never assigned."""
    filled = np.where(np.isfinite(matrix), matrix, -3.0)
    rows, cols = linear_sum_assignment(-filled)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if np.isfinite(matrix[r, c])]


def crop_order(matrix: np.ndarray, ours_ids: list[int], released_ids: list[int]) -> dict:
    """The best crop assignment by crop id, its mean cosine, the identity's (crops with the
    same id), and whether the order is permuted (the assignment is not the identity and beats
    it by PERMUTATION_GAIN); ``identity`` is None when no crop id is on both sides."""
    pairs = assign_crops(matrix)
    assigned = [(ours_ids[r], released_ids[c], float(matrix[r, c])) for r, c in pairs]
    same = [(r, released_ids.index(i)) for r, i in enumerate(ours_ids) if i in released_ids]
    same = [(r, c) for r, c in same if np.isfinite(matrix[r, c])]
    out = {"assignment": [{"ours": i, "released": j, "cosine": c} for i, j, c in assigned],
           "assigned_cosine": float(np.mean([c for *_, c in assigned])) if assigned else None,
           "identity_cosine": None, "identity": None, "permuted": False}
    if same:
        ident = float(np.mean([matrix[r, c] for r, c in same]))
        is_identity = all(i == j for i, j, _ in assigned)
        out |= {"identity_cosine": ident, "identity": is_identity,
                "permuted": not is_identity and out["assigned_cosine"] - ident > PERMUTATION_GAIN}
    return out


@dataclass
class VideoComparison:
    """One video held against its released crops at its best offset."""

    video: str
    n_ours: int
    n_released: int
    offset: int
    overlap: int
    cosine_at_0: float  # crop-averaged features (see compare_video)
    cosine_at_offset: float
    ours_ids: list[int]
    released_ids: list[int]
    cell_sums: np.ndarray = field(repr=False)  # [Co, Cr] cosine sums over `overlap` snippets


@dataclass
class Totals:
    """Sums over videos per (our crop id, released crop id) cell, for the matrix and the
    per-dimension statistics of matched pairs."""

    ours_ids: list[int]
    released_ids: list[int]
    dim: int

    def __post_init__(self) -> None:
        shape = (len(self.ours_ids), len(self.released_ids))
        self.cos = np.zeros(shape)
        self.n = np.zeros(shape)
        self.log_norm_ratio = np.zeros(shape)
        self.sum_o, self.sq_o, self.sum_r, self.sq_r = (np.zeros((*shape, self.dim))
                                                        for _ in range(4))

    def add(self, ours: np.ndarray, ours_ids: list[int], released: np.ndarray,
            released_ids: list[int], cell_sums: np.ndarray) -> None:
        """Add one video's aligned features ([T, Co, D], [T, Cr, D])."""
        gi = np.array([self.ours_ids.index(i) for i in ours_ids])[:, None]
        gj = np.array([self.released_ids.index(j) for j in released_ids])[None, :]
        t = len(ours)
        self.cos[gi, gj] += cell_sums
        self.n[gi, gj] += t
        log_o = np.log(np.maximum(np.linalg.norm(ours, axis=-1), EPS)).sum(0)
        log_r = np.log(np.maximum(np.linalg.norm(released, axis=-1), EPS)).sum(0)
        self.log_norm_ratio[gi, gj] += log_o[:, None] - log_r[None, :]
        self.sum_o[gi, gj] += ours.sum(0, dtype=np.float64)[:, None, :]
        self.sq_o[gi, gj] += np.square(ours, dtype=np.float64).sum(0)[:, None, :]
        self.sum_r[gi, gj] += released.sum(0, dtype=np.float64)[None, :, :]
        self.sq_r[gi, gj] += np.square(released, dtype=np.float64).sum(0)[None, :, :]

    def matrix(self) -> np.ndarray:
        """Mean cosine per cell over all aligned snippets of all videos (NaN: never seen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, self.cos / np.maximum(self.n, 1), np.nan)

    def dimension_stats(self, pairs: list[tuple[int, int]]) -> dict:
        """Per-dimension mean and std of ours and released over the matched pairs (row,
        column indices), with the summaries the verdict uses."""
        rows, cols = (np.array(x) for x in zip(*pairs, strict=True))
        n = self.n[rows, cols].sum()
        mean_o = self.sum_o[rows, cols].sum(0) / n
        mean_r = self.sum_r[rows, cols].sum(0) / n
        std_o = np.sqrt(np.maximum(self.sq_o[rows, cols].sum(0) / n - mean_o**2, 0.0))
        std_r = np.sqrt(np.maximum(self.sq_r[rows, cols].sum(0) / n - mean_r**2, 0.0))
        live = std_r > EPS
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(mean_o - mean_r)[live] / std_r[live]
            ratio = std_o[live] / std_r[live]
        return {
            "max_abs_mean_diff_in_released_std": float(z.max()) if z.size else None,
            "median_std_ratio": float(np.median(ratio)) if ratio.size else None,
            "norm_ratio": float(np.exp(self.log_norm_ratio[rows, cols].sum() / n)),
            "mean_ours": mean_o, "mean_released": mean_r, "std_ours": std_o, "std_released": std_r,
        }


def compare_video(video: str, ours: np.ndarray, ours_ids: list[int], released: np.ndarray,
                  released_ids: list[int], max_offset: int = MAX_OFFSET
                  ) -> tuple[VideoComparison, np.ndarray, np.ndarray]:
    """Align one video ([T, Co, D] ours, [T', Cr, D] released) by the crop-averaged features
    (over the crop ids both have, where their sets differ); return its comparison and the
    aligned slices of both."""
    if not len(ours) or not len(released):
        raise StoreError(f"video {video!r} has {len(ours)} snippets in our store and "
                         f"{len(released)} released; nothing to compare")
    shared = [i for i in ours_ids if i in released_ids]
    if shared and set(shared) != set(ours_ids) | set(released_ids):
        pool_o = ours[:, [ours_ids.index(i) for i in shared]].mean(1)
        pool_r = released[:, [released_ids.index(i) for i in shared]].mean(1)
    else:  # the same crop ids (any order) or none in common: every crop
        pool_o, pool_r = ours.mean(1), released.mean(1)
    profile = offset_profile(pool_o, pool_r, max_offset)
    k = best_offset(profile)
    start, stop = overlap(len(ours), len(released), k)
    a, b = ours[start + k:stop + k], released[start:stop]
    comp = VideoComparison(video, len(ours), len(released), k, stop - start,
                           profile.get(0, float("nan")), profile[k], list(ours_ids),
                           list(released_ids), crop_cosine_sums(a, b))
    return comp, a, b


def matched_cosine(comp: VideoComparison, pairs: list[tuple[int, int]]) -> float:
    """A video's mean cosine over the assigned crop pairs (by id) that it has."""
    cells = [comp.cell_sums[comp.ours_ids.index(i), comp.released_ids.index(j)]
             for i, j in pairs if i in comp.ours_ids and j in comp.released_ids]
    return float(np.mean(cells) / comp.overlap) if cells else float("nan")


def _ids(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


def findings(videos: list[VideoComparison], cosines: list[float], crops: dict,
             cosine: float, dims: dict) -> list[str]:
    """The findings, most basic first (empty: the features match)."""
    out: list[str] = []
    n = len(videos)
    ratio = float(np.median([v.n_ours / v.n_released for v in videos]))
    grid = abs(ratio - 1) <= STRIDE_TOLERANCE  # else no integer offset aligns the grids
    if not grid:
        out.append(f"snippet counts differ by a factor of {ratio:.2f} (ours / released): "
                   "check extraction.stride (the release has 16 frames per snippet)")
    aligned = cosine >= NOISE_COSINE
    shifted = [v for v in videos if v.offset != 0]
    if grid and aligned and shifted:
        k, count = Counter(v.offset for v in shifted).most_common(1)[0]
        where = "" if count == n else f" in {count} of {n} videos"
        out.append(f"snippet grid shifted by {k}{where} (our snippet t{k:+d} is released "
                   "snippet t; check extraction.stride / extraction.sample)")
    unequal = [v for v in videos if v.offset == 0 and v.n_ours != v.n_released]
    if grid and unequal:
        d, count = Counter(v.n_ours - v.n_released for v in unequal).most_common(1)[0]
        example = next(v.video for v in unequal if v.n_ours - v.n_released == d)
        out.append(f"snippet counts differ by {d:+d} (ours - released) in {count} of {n} videos "
                   f"at offset 0 (e.g. {example}): check the frame count and the last "
                   "partial snippet (extraction.stride)")
    if aligned and crops["permuted"]:
        moved = ", ".join(f"{p['ours']}->{p['released']}" for p in crops["assignment"]
                          if p["ours"] != p["released"])
        out.append(f"crop order permuted: our crop -> released crop {moved} (cosine "
                   f"{crops['assigned_cosine']:.3f} assigned, {crops['identity_cosine']:.3f} "
                   "same id): check the crop order and layout (extraction.crop_mode)")
    if cosine < DIFFERENT_COSINE:
        out.append(f"different features (cosine {cosine:.3f}): check preprocessing or weights "
                   "(clip.pretrained, clip.model)")
    elif cosine < MATCH_COSINE:
        out.append(f"close but not equal features (cosine {cosine:.3f}): check the sampled "
                   "frame (extraction.sample), the crop layout (extraction.crop_mode) and "
                   "preprocessing")
    else:
        low = [v.video for v, c in zip(videos, cosines, strict=True) if c < DIFFERENT_COSINE]
        if low:
            out.append(f"different features in {len(low)} of {n} videos (cosine < "
                       f"{DIFFERENT_COSINE}, e.g. {', '.join(low[:3])}): check those videos' "
                       "decoding")
    norm, std = dims["norm_ratio"], dims["median_std_ratio"]
    if abs(norm - 1) > NORM_TOLERANCE or (std is not None and abs(std - 1) > STD_TOLERANCE):
        std_text = "n/a" if std is None else f"{std:.3f}"
        out.append(f"feature scale differs (norm ratio {norm:.3f}, median std ratio "
                   f"{std_text}, ours / released): check feature normalisation")
    return out


def summarise(videos: list[VideoComparison], totals: Totals) -> tuple[dict, list[dict]]:
    """The summary (findings and verdict included) and the per-video table rows."""
    matrix = totals.matrix()
    crops = crop_order(matrix, totals.ours_ids, totals.released_ids)
    pairs = [(p["ours"], p["released"]) for p in crops["assignment"]]
    idx = [(totals.ours_ids.index(i), totals.released_ids.index(j)) for i, j in pairs]
    cosine = float(sum(totals.cos[r, c] for r, c in idx) / sum(totals.n[r, c] for r, c in idx))
    per_video = [matched_cosine(v, pairs) for v in videos]
    dims = totals.dimension_stats(idx)
    found = findings(videos, per_video, crops, cosine, dims)
    weights = np.array([v.overlap for v in videos], dtype=float)
    at0 = np.array([v.cosine_at_0 for v in videos])
    table = [{"video": v.video, "snippets_ours": v.n_ours, "snippets_released": v.n_released,
              "offset": v.offset, "aligned_snippets": v.overlap,
              "cosine_at_0": round(v.cosine_at_0, 6), "cosine_at_offset": round(
                  v.cosine_at_offset, 6), "cosine_matched_crops": round(c, 6),
              "crops_ours": _ids(v.ours_ids), "crops_released": _ids(v.released_ids)}
             for v, c in zip(videos, per_video, strict=True)]
    ok0 = np.isfinite(at0)
    seen = [c for c in per_video if np.isfinite(c)]
    summary = {
        "videos_compared": len(videos),
        "snippets_aligned": int(weights.sum()),
        "snippet_count_ratio_median": float(np.median([v.n_ours / v.n_released
                                                       for v in videos])),
        "videos_with_other_snippet_count": sum(v.n_ours != v.n_released for v in videos),
        "offsets": {str(k): n for k, n in sorted(Counter(v.offset for v in videos).items())},
        "cosine": {
            "matched_crops": cosine,
            "crop_mean_at_0": float(np.average(at0[ok0], weights=weights[ok0]))
            if ok0.any() else None,
            "crop_mean_at_offset": float(np.average([v.cosine_at_offset for v in videos],
                                                    weights=weights)),
            "per_video_matched_min": float(np.min(seen)) if seen else None,
            "per_video_matched_median": float(np.median(seen)) if seen else None,
        },
        "crop_ids_ours": totals.ours_ids, "crop_ids_released": totals.released_ids,
        "crop_cosine": matrix, **crops,
        "per_dimension": {k: dims[k] for k in ("max_abs_mean_diff_in_released_std",
                                               "median_std_ratio", "norm_ratio")},
        "thresholds": {"match_cosine": MATCH_COSINE, "different_cosine": DIFFERENT_COSINE,
                       "noise_cosine": NOISE_COSINE, "offset_gain": OFFSET_GAIN,
                       "permutation_gain": PERMUTATION_GAIN, "norm_tolerance": NORM_TOLERANCE,
                       "std_tolerance": STD_TOLERANCE, "stride_tolerance": STRIDE_TOLERANCE},
        "findings": found,
        "verdict": "; ".join(found) if found else "match",
        "per_dimension_values": {k: dims[k] for k in ("mean_ours", "mean_released",
                                                      "std_ours", "std_released")},
    }
    return summary, table


# ---------------------------------------------------------------------------- files

def store_crop_ids(store: FeatureStore, video: str) -> list[int]:
    """A video's crop ids (its `crop_ids` attribute; 0, 1, ... where it has none)."""
    raw = store.video_attrs(video).get("crop_ids")
    if raw in (None, ""):
        return list(range(store.get(video).shape[1]))
    try:
        ids = [int(i) for i in (json.loads(raw) if isinstance(raw, str) else raw)]
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{store.path}: video {video!r} has unreadable crop_ids {raw!r}") from exc
    if len(set(ids)) != len(ids):
        raise StoreError(f"{store.path}: video {video!r} has repeated crop_ids {ids}")
    return ids


def load_released(video: str, files: dict[int, Path], dim: int) -> tuple[np.ndarray, list[int]]:
    """A video's released crops as [snippets, crops, dim] float32, and their crop ids."""
    ids = sorted(files)
    arrays = []
    for c in ids:
        try:
            a = np.load(files[c], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{files[c]}: not a readable .npy file ({exc})") from exc
        if a.ndim != 2 or a.shape[0] < 1:
            raise StoreError(f"{files[c]}: shape {a.shape}; expected [snippets, dim]")
        if a.shape[1] != dim:
            raise StoreError(f"{files[c]}: feature dim {a.shape[1]}, but our store's is {dim}: "
                             "features of another model")
        if arrays and a.shape[0] != arrays[0].shape[0]:
            raise StoreError(f"{files[c]}: {a.shape[0]} snippets, but crop {ids[0]} of "
                             f"{video} has {arrays[0].shape[0]}")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise StoreError(f"{files[c]}: contains NaN or inf")
        arrays.append(a)
    return np.stack(arrays, axis=1), ids
