"""The report of `tpwng compare-features`: a feature store we extracted held against released
`<video>__<crop>.npy` features (the comparison is `tpwng.features.compare`), written as a
per-video TSV, a JSON summary and a PNG. Bad input is one :class:`StoreError` naming the file or
value, raised before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tpwng.features.compare import (
    EPS,
    MAX_OFFSET,
    Totals,
    VideoComparison,
    compare_video,
    load_released,
    store_crop_ids,
    summarise,
)
from tpwng.features.released import index_npy
from tpwng.features.store import FeatureStore, StoreError


def _round(x: object, digits: int = 6) -> object:
    """`x` ready for JSON: floats rounded (NaN and inf as None), arrays as lists."""
    if isinstance(x, float | np.floating):
        return None if not np.isfinite(x) else round(float(x), digits)
    if isinstance(x, np.ndarray):
        return [_round(v, digits) for v in x.tolist()]
    if isinstance(x, list):
        return [_round(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    return x


def default_prefix(ours: str | Path) -> Path:
    """`features/ucf.h5` -> `features/ucf_vs_released`."""
    ours = Path(ours)
    return ours.with_name(ours.stem + "_vs_released")


def compare_features(ours_path: str | Path, released_dir: str | Path,
                     out_prefix: str | Path | None = None, crop_ours: list[int] | None = None,
                     max_offset: int = MAX_OFFSET, progress: bool = True) -> dict:
    """Compare a store with released .npy files; write PREFIX.{tsv,json,png}; return the
    summary (also in the JSON). Bad input raises StoreError before anything is written."""
    import pandas as pd
    from tqdm import tqdm

    from tpwng.files import write_json, write_table

    ours_path, released_dir = Path(ours_path), Path(released_dir)
    prefix = Path(out_prefix) if out_prefix else default_prefix(ours_path)
    if max_offset < 0:
        raise StoreError(f"--max-offset must be >= 0, got {max_offset}")
    with FeatureStore(ours_path) as store:
        if not released_dir.is_dir():
            raise StoreError(f"{released_dir}: released features directory does not exist")
        index = index_npy(released_dir)
        if not index:
            raise StoreError(f"{released_dir}: no released features (<video>__<crop>.npy) in it")
        ours_videos = store.video_ids()
        common = sorted(set(ours_videos) & set(index))
        if not common:
            raise StoreError(f"no video of {ours_path} ({len(ours_videos)} videos, e.g. "
                             f"{', '.join(sorted(ours_videos)[:2]) or 'none'}) has released "
                             f"features in {released_dir} ({len(index)} videos, e.g. "
                             f"{', '.join(sorted(index)[:2])})")
        crops = {v: store_crop_ids(store, v) for v in common}
        if crop_ours:
            have = sorted({i for ids in crops.values() for i in ids})
            missing = [k for k in crop_ours if k not in have]
            if missing:
                raise StoreError(f"--crop-ours {' '.join(map(str, missing))}: no video of "
                                 f"{ours_path} in common with {released_dir} has that crop id "
                                 f"(crop ids: {have})")
            common = [v for v in common if set(crops[v]) & set(crop_ours)]
        dim = store.get(common[0]).shape[2]
        totals = Totals(sorted({i for v in common for i in crops[v]
                                if not crop_ours or i in crop_ours}),
                        sorted({j for v in common for j in index[v]}), dim)
        videos = []
        for vid in tqdm(common, desc="compare", file=sys.stderr, unit="video",
                        disable=None if progress else True):
            ours, ids = store.get(vid), crops[vid]
            if ours.shape[1:] != (len(ids), dim):
                raise StoreError(f"{ours_path}: video {vid!r} has shape {ours.shape}, expected "
                                 f"[snippets, {len(ids)}, {dim}]")
            if crop_ours:
                keep = [p for p, i in enumerate(ids) if i in crop_ours]
                ours, ids = ours[:, keep], [ids[p] for p in keep]
            released, rel_ids = load_released(vid, index[vid], dim)
            comp, a, b = compare_video(vid, ours, ids, released, rel_ids, max_offset)
            totals.add(a, ids, b, rel_ids, comp.cell_sums)
            videos.append(comp)
        provenance = {k: store.provenance.get(k) for k in
                      ("model", "weights", "stride", "sample", "crop_mode", "preprocessing")}
    summary, table = summarise(videos, totals)
    summary = {"ours": str(ours_path), "released_dir": str(released_dir),
               "ours_provenance": provenance, "max_offset": max_offset,
               "crop_ours": crop_ours or None,
               "only_in_ours": {"count": len(set(ours_videos) - set(index)),
                                "examples": sorted(set(ours_videos) - set(index))[:10]},
               "only_in_released": {"count": len(set(index) - set(ours_videos)),
                                    "examples": sorted(set(index) - set(ours_videos))[:10]},
               **summary}
    outputs = {k: f"{prefix}.{k}" for k in ("tsv", "json", "png")}
    summary["outputs"] = outputs
    write_table(outputs["tsv"], pd.DataFrame(table))
    plot_comparison(outputs["png"], summary, videos, table)
    write_json(outputs["json"], _round(summary))
    return summary


def plot_comparison(path: str | Path, summary: dict, videos: list[VideoComparison],
                    table: list[dict]) -> None:
    """Per-video cosines, the crop x crop cosine map, the offsets and per-dimension mean
    differences, in one PNG."""
    from matplotlib.ticker import MaxNLocator

    from tpwng.evaluate.plots import figure

    with figure(path, 2, 2, (5.0, 3.8)) as (fig, axes):
        ax = axes[0, 0]
        at0 = [r["cosine_at_0"] for r in table if np.isfinite(r["cosine_at_0"])]
        matched = [r["cosine_matched_crops"] for r in table
                   if np.isfinite(r["cosine_matched_crops"])]
        lo = np.floor(min([0.9, *at0, *matched]) * 20) / 20
        bins = np.linspace(lo, 1.0, 41)
        ax.hist(at0, bins=bins, alpha=0.6, label="crop mean, offset 0")
        ax.hist(matched, bins=bins, alpha=0.6, label="matched crops, best offset")
        ax.set(xlabel="cosine per video", ylabel="videos", title="ours vs released")
        ax.legend(fontsize=8)
        ax = axes[0, 1]
        m = np.asarray(summary["crop_cosine"], dtype=float)
        im = ax.imshow(m, vmin=min(np.nanmin(m), 0.99), vmax=1.0, cmap="viridis",
                       aspect="auto")
        for p in summary["assignment"]:
            ax.add_patch(_box(summary["crop_ids_released"].index(p["released"]),
                              summary["crop_ids_ours"].index(p["ours"])))
        ax.set_xticks(range(m.shape[1]), summary["crop_ids_released"])
        ax.set_yticks(range(m.shape[0]), summary["crop_ids_ours"])
        ax.set(xlabel="released crop", ylabel="our crop", title="crop cosine (boxed: assigned)")
        fig.colorbar(im, ax=ax)
        ax = axes[1, 0]
        k = summary["max_offset"]
        offsets = summary["offsets"]
        ax.bar([int(o) for o in offsets], list(offsets.values()), color="#4c72b0")
        ax.set_xlim(-k - 0.5, k + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="best offset k (our t+k = released t)", ylabel="videos",
               title=f"snippet alignment (searched ±{k})")
        ax = axes[1, 1]
        vals = summary["per_dimension_values"]
        std_r = np.asarray(vals["std_released"])
        z = (np.asarray(vals["mean_ours"]) - np.asarray(vals["mean_released"])) / np.maximum(
            std_r, EPS)
        ax.plot(z, lw=0.8, color="#d62728")
        ax.set(xlabel="dimension", ylabel="Δ mean / released std",
               title=f"scale: norm ratio {summary['per_dimension']['norm_ratio']:.3f} "
                     "(ours / released)")
        fig.suptitle(_wrap(summary["verdict"]), fontsize=9)


def _box(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5)


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
