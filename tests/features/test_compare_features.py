"""`tpwng compare-features`: a store held against released `<video>__<crop>.npy` files.

Videos carry real names and, for test videos, the real snippet counts of the public release
(UCF-Crime test: crop 5 only; XD-Violence test: crop 0 only; training: crops 0-9).
"""

import csv
import json

import numpy as np
import pytest

from tests.conftest import REPO
from tpwng.cli import main
from tpwng.evaluate.feature_parity import compare_features
from tpwng.features.compare import (
    assign_crops,
    best_offset,
    crop_order,
    offset_profile,
)
from tpwng.features.store import FeatureStore, StoreError, StoreWriter

LENGTHS = REPO / "tests" / "data" / "feature_lengths"  # copied from the public release
DIM = 512
PROV = {"model": "ViT-B-16", "weights": "open_clip:openai", "stride": 16, "sample": "center",
        "crop_mode": "tencrop", "dim": DIM}


def _real_lengths(name: str, n: int) -> dict[str, int]:
    with open(LENGTHS / name) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    return {r["video"]: int(r["snippets"]) for r in rows}


# video -> (snippets, crop ids of the release); training videos have all ten crops
VIDEOS = {"Abuse001_x264": (23, list(range(10))), "Arrest002_x264": (31, list(range(10))),
          **{v: (t, [5]) for v, t in _real_lengths("ucf_test_snippets.tsv", 2).items()},
          **{v: (t, [0]) for v, t in _real_lengths("xd_test_snippets.tsv", 1).items()}}


def _features(rng, t: int, crops: int = 10) -> np.ndarray:
    """CLIP-like features: a shared direction, a slowly moving per-snippet part, and a per-crop
    part, so neighbouring snippets and crops of one snippet are alike (cosine ~0.8-0.95)."""
    common = rng.normal(size=DIM)
    walk = np.empty((t, DIM))
    walk[0] = rng.normal(size=DIM)
    for i in range(1, t):
        walk[i] = 0.9 * walk[i - 1] + np.sqrt(1 - 0.81) * rng.normal(size=DIM)
    crop = 0.6 * rng.normal(size=(crops, DIM))
    x = common + walk[:, None, :] + crop[None] + 0.1 * rng.normal(size=(t, crops, DIM))
    return (0.3 * x).astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Our 10-crop store of the videos (written as extraction writes it); read-only."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("store") / "ours.h5"
    with StoreWriter(path, PROV) as w:
        for vid, (t, _) in VIDEOS.items():
            w.add(vid, _features(rng, t), frames=16 * t, fps=30.0, crop_ids=list(range(10)))
    return path


def export(store_path, out, transform=None, rename=None, first=0):
    """Write the store's videos as released files: the release's crops of each video,
    `transform`ed, crop c named `rename[c]`, from snippet `first` on."""
    out.mkdir(parents=True, exist_ok=True)
    with FeatureStore(store_path) as s:
        for vid, (_, crops) in VIDEOS.items():
            x = s.get(vid)[first:]
            for c in crops:
                a = x[:, c] if transform is None else transform(x[:, c])
                name = c if rename is None else rename[c]
                np.save(out / f"{vid}__{name}.npy", a.astype(np.float32))
    return out


def test_real_names_and_lengths_are_used():
    assert "Abuse028_x264" in VIDEOS and VIDEOS["Abuse028_x264"] == (88, [5])
    assert any("_label_" in v for v in VIDEOS)  # an XD-Violence name (with '#' and '.')


def test_exported_store_matches(store, tmp_path):
    r = compare_features(store, export(store, tmp_path / "released"), tmp_path / "out" / "cmp",
                         progress=False)
    assert r["verdict"] == "match" and r["findings"] == []
    assert r["videos_compared"] == len(VIDEOS)
    assert r["cosine"]["matched_crops"] == pytest.approx(1.0, abs=1e-5)
    assert r["cosine"]["crop_mean_at_0"] == pytest.approx(1.0, abs=1e-5)
    assert r["offsets"] == {"0": len(VIDEOS)}
    assert r["identity"] is True and not r["permuted"]
    assert [(p["ours"], p["released"]) for p in r["assignment"]] == [(i, i) for i in range(10)]
    assert r["per_dimension"]["norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert r["per_dimension"]["max_abs_mean_diff_in_released_std"] == pytest.approx(0, abs=1e-6)
    assert r["per_dimension"]["median_std_ratio"] == pytest.approx(1.0, abs=1e-6)
    # different crops of one snippet are alike, yet far from the matched pair
    m = np.array(r["crop_cosine"], dtype=float)
    off = m[~np.eye(10, dtype=bool)]
    assert 0.6 < off.min() and off.max() < 0.99
    rows = list(csv.DictReader(open(tmp_path / "out" / "cmp.tsv"), delimiter="\t"))
    assert [row["video"] for row in rows] == sorted(VIDEOS)
    row = next(row for row in rows if row["video"] == "Abuse028_x264")
    assert (row["snippets_ours"], row["snippets_released"], row["offset"]) == ("88", "88", "0")
    assert row["crops_released"] == "5" and float(row["cosine_matched_crops"]) > 0.99999
    saved = json.loads((tmp_path / "out" / "cmp.json").read_text())
    assert saved["verdict"] == "match" and len(saved["per_dimension_values"]["mean_ours"]) == DIM
    assert (tmp_path / "out" / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_permuted_crop_order_is_found(store, tmp_path):
    perm = [0, 6, 7, 8, 9, 5, 1, 2, 3, 4]  # corners swapped with their mirrored versions
    r = compare_features(store, export(store, tmp_path / "rel", rename=perm),
                         tmp_path / "cmp", progress=False)
    assert [(p["ours"], p["released"]) for p in r["assignment"]] == list(enumerate(perm))
    assert r["permuted"] and r["identity"] is False
    assert r["cosine"]["matched_crops"] == pytest.approx(1.0, abs=1e-5)
    assert r["verdict"].startswith("crop order permuted: ")
    assert "1->6, 2->7, 3->8, 4->9, 6->1" in r["verdict"] and "0->0" not in r["verdict"]
    assert r["offsets"] == {"0": len(VIDEOS)}


def test_one_snippet_shift_is_found(store, tmp_path):
    r = compare_features(store, export(store, tmp_path / "rel", first=1), tmp_path / "cmp",
                         progress=False)
    assert r["offsets"] == {"1": len(VIDEOS)}
    assert r["verdict"].startswith("snippet grid shifted by 1 ")
    assert "extraction.stride / extraction.sample" in r["verdict"]
    assert r["cosine"]["matched_crops"] == pytest.approx(1.0, abs=1e-5)
    assert r["cosine"]["crop_mean_at_0"] < 0.99  # unaligned, the features differ
    rows = list(csv.DictReader(open(tmp_path / "cmp.tsv"), delimiter="\t"))
    assert all(int(x["snippets_ours"]) == int(x["snippets_released"]) + 1 for x in rows)


def test_shift_the_other_way_with_equal_counts(store, tmp_path):
    """Released snippet t is our t - 1: same counts, the last snippet has no partner."""
    def shift(a):
        return np.concatenate([a[:1] * 0.5, a[:-1]])

    r = compare_features(store, export(store, tmp_path / "rel", transform=shift),
                         tmp_path / "cmp", progress=False)
    assert r["offsets"] == {"-1": len(VIDEOS)}
    assert r["videos_with_other_snippet_count"] == 0
    assert r["findings"][0].startswith("snippet grid shifted by -1 ")


def test_counts_at_offset_0_and_another_stride(store, tmp_path):
    def drop_last(a):
        return a[:-1]

    r = compare_features(store, export(store, tmp_path / "a", transform=drop_last),
                         tmp_path / "a_cmp", progress=False)
    assert r["offsets"] == {"0": len(VIDEOS)} and r["cosine"]["matched_crops"] > 0.99999
    assert r["verdict"].startswith(f"snippet counts differ by +1 (ours - released) in "
                                   f"{len(VIDEOS)} of {len(VIDEOS)} videos at offset 0")

    def every_other(a):  # our snippets are half as long (stride 8)
        return a[::2]

    r = compare_features(store, export(store, tmp_path / "b", transform=every_other),
                         tmp_path / "b_cmp", progress=False)
    assert r["findings"][0].startswith("snippet counts differ by a factor of 2.0")
    assert not any("shifted" in f for f in r["findings"])


def test_another_models_features_differ(store, tmp_path):
    w = np.random.default_rng(7).normal(size=(DIM, DIM)) / np.sqrt(DIM)
    r = compare_features(store, export(store, tmp_path / "rel", transform=lambda a: a @ w),
                         tmp_path / "cmp", progress=False)
    cos = r["cosine"]["matched_crops"]
    assert cos < 0.3
    assert r["verdict"] == (f"different features (cosine {cos:.3f}): check preprocessing or "
                            "weights (clip.pretrained, clip.model)")


def test_close_features_and_scale(store, tmp_path):
    rng = np.random.default_rng(3)
    r = compare_features(store, export(store, tmp_path / "a",
                                       transform=lambda a: a + 0.1 * rng.normal(size=a.shape)),
                         tmp_path / "a_cmp", progress=False)
    assert 0.9 <= r["cosine"]["matched_crops"] < 0.99
    assert r["verdict"].startswith("close but not equal features (cosine 0.9")
    r = compare_features(store, export(store, tmp_path / "b", transform=lambda a: a / 2),
                         tmp_path / "b_cmp", progress=False)
    assert r["per_dimension"]["norm_ratio"] == pytest.approx(2.0, rel=1e-4)
    assert r["per_dimension"]["median_std_ratio"] == pytest.approx(2.0, rel=1e-3)
    assert r["verdict"].startswith("feature scale differs (norm ratio 2.000")


def test_crop_ours_selects_crops(store, tmp_path):
    rel = export(store, tmp_path / "rel")
    r = compare_features(store, rel, tmp_path / "cmp", crop_ours=[0], progress=False)
    assert r["crop_ids_ours"] == [0]
    assert [(p["ours"], p["released"]) for p in r["assignment"]] == [(0, 0)]
    assert r["videos_compared"] == len(VIDEOS)
    assert r["verdict"] == "match"
    # the UCF test videos have only released crop 5: no matched pair, their cell is not 1
    m = np.array(r["crop_cosine"], dtype=float)
    assert r["crop_ids_released"] == list(range(10)) and 0.5 < m[0, 5] < 0.99
    rows = {x["video"]: x for x in csv.DictReader(open(tmp_path / "cmp.tsv"), delimiter="\t")}
    assert rows["Abuse028_x264"]["cosine_matched_crops"] == ""
    assert float(rows["Abuse001_x264"]["cosine_matched_crops"]) > 0.99999


def test_cli_prints_the_verdict(store, tmp_path, capsys):
    rel = export(store, tmp_path / "rel", first=1)
    assert main(["compare-features", str(store), str(rel), "--out", str(tmp_path / "o" / "x")]) == 0
    out = capsys.readouterr().out
    assert "verdict: snippet grid shifted by 1 " in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x.json", "x.png", "x.tsv"]
    # the default prefix: beside the store
    assert main(["compare-features", str(store), str(rel)]) == 0
    written = store.parent / "ours_vs_released.json"
    assert json.loads(written.read_text())["verdict"].startswith("snippet grid shifted by 1 ")
    for suffix in ("json", "tsv", "png"):
        (store.parent / f"ours_vs_released.{suffix}").unlink()


def test_offset_sign_and_ties():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 16))
    prof = offset_profile(x[3:], x, max_offset=5)  # our t + k is released t for k = -3
    assert best_offset(prof) == -3 and prof[-3] == pytest.approx(1.0)
    assert best_offset(offset_profile(x, x[2:], 5)) == 2
    assert best_offset({-1: 0.5, 0: 0.5, 1: 0.5}) == 0
    assert best_offset({-1: 0.5005, 0: 0.5, 1: 0.2}) == 0  # gain below the tolerance
    assert best_offset({-1: 0.9, 1: 0.9}) == -1
    assert set(offset_profile(x[:4], x[:4], 8)) == {-2, -1, 0, 1, 2}  # half the shorter


def test_assignment_skips_unseen_pairs():
    m = np.array([[0.9, np.nan], [0.95, np.nan]])
    assert assign_crops(m) == [(1, 0)]
    order = crop_order(m, [0, 1], [0, 5])
    assert order["permuted"] and order["assignment"] == [
        {"ours": 1, "released": 0, "cosine": 0.95}]
    order = crop_order(np.array([[0.9]]), [0], [5])
    assert order["identity"] is None and not order["permuted"]


# ---------------------------------------------------------------------------- bad input

def _fails(argv, capsys, *needles, out=None):
    assert main(["compare-features", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tpwng compare-features: error: ") and "\n" not in err
    for needle in needles:
        assert str(needle) in err
    if out is not None:
        assert not out.exists() or list(out.iterdir()) == []


def test_bad_input_one_error_nothing_written(store, tmp_path, capsys):
    out = tmp_path / "out"
    prefix = ["--out", out / "cmp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "Abuse001_x264.npy").write_bytes(b"x")  # not named <video>__<crop>.npy
    _fails([store, empty, *prefix], capsys, empty, "no released features", out=out)
    _fails([store, tmp_path / "absent", *prefix], capsys, tmp_path / "absent",
           "does not exist", out=out)
    _fails([tmp_path / "none.h5", empty, *prefix], capsys, "none.h5", "does not exist", out=out)
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "Normal_Videos_003_x264__0.npy", np.zeros((5, DIM), np.float32))
    _fails([store, other, *prefix], capsys, "no video of", store, other,
           "Normal_Videos_003_x264", out=out)
    wide = tmp_path / "wide"
    wide.mkdir()
    np.save(wide / "Abuse001_x264__0.npy", np.ones((23, 768), np.float32))
    _fails([store, wide, *prefix], capsys, "Abuse001_x264__0.npy", "768", out=out)
    uneven = export(store, tmp_path / "uneven")
    np.save(uneven / "Abuse001_x264__3.npy", np.ones((22, DIM), np.float32))
    _fails([store, uneven, *prefix], capsys, "Abuse001_x264__3.npy", "22 snippets", out=out)
    _fails([store, uneven, *prefix, "--crop-ours", "0", "12"], capsys, "--crop-ours 12",
           out=out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Abuse001_x264__0.npy").write_bytes(b"not numpy")
    _fails([store, broken, *prefix], capsys, "Abuse001_x264__0.npy", "not a readable",
           out=out)


def test_missing_store_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="absent.h5: feature store does not exist"):
        compare_features(tmp_path / "absent.h5", tmp_path, tmp_path / "x", progress=False)
    assert list(tmp_path.iterdir()) == []
