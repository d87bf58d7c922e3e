"""`tpwng bench bootstrap`: the reproduction table's bootstrap at UCF-Crime's real test size.

The 290 UCF-Crime test videos at the snippet counts of the public CLIP-feature release (a
lengths TSV: ``video`` and ``snippets`` columns), 16 frames a snippet, ground truth from the
shipped temporal annotation; scores are random snippet scores, higher on annotated snippets
(the timing does not depend on the values). Times compressing the frames into runs and the
bootstrap of the frame metrics, and checks one resample against the metrics computed the
direct way.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tpwng import RESOURCES
from tpwng.bench.common import bench_parser, host
from tpwng.files import write_json

if TYPE_CHECKING:
    import numpy as np

    from tpwng.evaluate.metrics import VideoResult

log = logging.getLogger(__name__)
STRIDE = 16
TARGET_SECONDS = 30.0


def ucf_test_videos(lengths: Path, seed: int = 0) -> list[VideoResult]:
    """UCF-Crime's test videos at the given snippet counts, with real truth, random scores."""
    import numpy as np
    import pandas as pd

    from tpwng.data.datasets import NORMAL, class_prompt_name, parse_ucf_temporal_annotation
    from tpwng.evaluate.metrics import VideoResult
    from tpwng.grid import frame_labels

    table = pd.read_csv(lengths, sep="\t")
    if list(table.columns[:2]) != ["video", "snippets"]:
        raise ValueError(f"{lengths}: expected columns 'video' and 'snippets', got "
                         f"{list(table.columns)}")
    truth = parse_ucf_temporal_annotation(RESOURCES / "ucf_crime" /
                                          "Temporal_Anomaly_Annotation.txt")
    rng = np.random.default_rng(seed)
    out = []
    for video, snippets in zip(table["video"], table["snippets"], strict=True):
        raw, intervals = truth.get(video, ("Normal", []))
        cls = class_prompt_name(raw)
        n = STRIDE * int(snippets)
        labels = frame_labels([(s, min(e, n)) for s, e in intervals if s < n], n)
        snippet_truth = labels.reshape(-1, STRIDE).max(axis=1)
        scores = np.clip(rng.normal(0.3 + 0.4 * snippet_truth, 0.25), 0, 1)
        out.append(VideoResult(video, [NORMAL] if cls == NORMAL else [cls],
                               np.repeat(scores, STRIDE), labels))
    return out


UCF_CLASSES = ["normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion",
               "fighting", "road accidents", "robbery", "shooting", "shoplifting", "stealing",
               "vandalism"]


def class_curves(videos: list[VideoResult], seed: int = 0) -> list[np.ndarray]:
    """Per video ``[frames, 14]`` class probabilities: random per snippet, the video's class
    raised on its annotated snippets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for v in videos:
        t = v.n_frames // STRIDE
        logits = rng.normal(0.0, 1.0, (t, len(UCF_CLASSES)))
        truth = v.frame_labels.reshape(t, STRIDE).max(axis=1).astype(bool)
        logits[~truth, 0] += 2.0
        if v.is_anomalous:
            logits[truth, UCF_CLASSES.index(v.classes[0])] += 2.0
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append(np.repeat(p / p.sum(axis=1, keepdims=True), STRIDE, axis=0))
    return out


def bench_bootstrap(lengths: Path, out: Path, resamples: int = 1000) -> dict:
    """Time the bootstrap of the frame metrics over UCF-Crime's test videos; write JSON."""
    from tpwng.data.datasets import parse_ucf_temporal_annotation
    from tpwng.evaluate.bootstrap import bootstrap, compress, frame_metric_values, resample_counts
    from tpwng.evaluate.metrics import frame_auc

    videos = ucf_test_videos(lengths)
    frames = sum(v.n_frames for v in videos)
    t0 = time.perf_counter()
    runs = compress(videos)
    t_compress = time.perf_counter() - t0
    t0 = time.perf_counter()
    intervals = bootstrap(lambda c: frame_metric_values(runs, c, 0.5), len(videos), resamples)
    t_boot = time.perf_counter() - t0
    # the fine-grained mAP in both protocols, on the same resamples
    from tpwng.evaluate.detection_bootstrap import map_values, video_detections
    from tpwng.evaluate.finegrained import video_ground_truth

    truth = parse_ucf_temporal_annotation(RESOURCES / "ucf_crime" /
                                          "Temporal_Anomaly_Annotation.txt")
    gt = [video_ground_truth(v.classes, v.n_frames,
                             [(s, e) for s, e in truth.get(v.video_id, ("", []))[1]
                              if s < v.n_frames]) for v in videos]
    probs = class_curves(videos)
    t0 = time.perf_counter()
    detections = [video_detections(probs, gt, UCF_CLASSES, protocol, "ucf")
                  for protocol in ("ours", "published")]
    t_proposals = time.perf_counter() - t0
    t0 = time.perf_counter()
    map_intervals = bootstrap(lambda c: {f"map_{i}": map_values(d, c)
                                         for i, d in enumerate(detections)},
                              len(videos), resamples)
    t_map = time.perf_counter() - t0
    # one resample the direct way: the videos it draws, concatenated, through scikit-learn
    counts = resample_counts(len(videos), 1, seed=123)
    drawn = [v for v, c in zip(videos, counts[0], strict=True) for _ in range(int(c))]
    t0 = time.perf_counter()
    direct = frame_auc(drawn)
    t_direct = time.perf_counter() - t0
    fast = float(frame_metric_values(runs, counts, 0.5)["frame_auc"][0])
    result = {
        "videos": len(videos), "frames": int(frames), "runs": int(runs.n_runs),
        "resamples": resamples, "compress_seconds": round(t_compress, 3),
        "bootstrap_seconds": round(t_boot, 3), "total_seconds": round(t_compress + t_boot, 3),
        "target_seconds": TARGET_SECONDS,
        "meets_target": bool(t_compress + t_boot < TARGET_SECONDS),
        "one_resample_direct_seconds": round(t_direct, 3),
        "direct_extrapolated_seconds": round(t_direct * resamples * 4, 1),
        "check_auc_difference": abs(fast - direct),
        "frame_auc_interval": intervals["frame_auc"],
        "fine_grained_proposals_seconds": round(t_proposals, 3),
        "fine_grained_bootstrap_seconds": round(t_map, 3),
        "fine_grained_intervals": {"ours": map_intervals["map_0"],
                                   "published": map_intervals["map_1"]},
    }
    write_json(out, result)
    print(f"bootstrap over {len(videos)} test videos ({frames:,} frames, {runs.n_runs:,} "
          f"runs), {resamples} resamples of 4 frame metrics: compress {t_compress:.2f} s, "
          f"bootstrap {t_boot:.2f} s (target < {TARGET_SECONDS:.0f} s: "
          f"{'pass' if result['meets_target'] else 'FAIL'}); one resample the direct way "
          f"{t_direct:.2f} s per metric (x {resamples} x 4 = "
          f"{result['direct_extrapolated_seconds']} s); |fast - direct| AUC = "
          f"{abs(fast - direct):.2e}")
    print(f"fine-grained mAP (ours and published, 14 classes): proposals and matches "
          f"{t_proposals:.2f} s, {resamples} resamples {t_map:.2f} s")
    return result



# UCF-Crime's test videos at the public release's snippet counts (in a checkout)
UCF_TEST_LENGTHS = Path(__file__).resolve().parents[2] / "tests" / "data" / "feature_lengths" / \
    "ucf_test_snippets.tsv"
HELP = ("the reproduction table's bootstrap (1,000 resamples of the test videos) on UCF-Crime's "
        "290 test videos")


def add_bootstrap_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`tpwng bench bootstrap` and its options."""
    p = bench_parser(sub, "bootstrap", HELP, __doc__, run_bootstrap,
                     "benchmarks/bootstrap-<host>.json")
    p.add_argument("videos", nargs="*", metavar="LENGTHS",
                   help="a lengths TSV of video and snippets (default: the release's, "
                        "tests/data/feature_lengths/ucf_test_snippets.tsv)")
    return p


def run_bootstrap(a: argparse.Namespace) -> None:
    """`tpwng bench bootstrap`: the figures printed and written as JSON."""
    from tpwng.errors import UserError

    lengths = Path(a.videos[0]) if a.videos else UCF_TEST_LENGTHS
    if not lengths.is_file():
        raise UserError(f"{lengths}: no such lengths file (give a TSV of video and "
                        "snippets, e.g. tests/data/feature_lengths/ucf_test_snippets.tsv)")
    bench_bootstrap(lengths, Path(a.out or f"benchmarks/bootstrap-{host()}.json"))
