"""The reproduction table: a model trained with several seeds, beside the paper and its peers.

One row per seed (its metrics file), the mean, sample standard deviation, minimum and maximum
over seeds, the metrics of the seed-mean scores (each test video's scores averaged over the
seeds' models) with a bootstrap interval over test videos (`tpwng.evaluate.bootstrap`), and the
published numbers of ``resources/reported_results.yaml``. Every model is its training's last
epoch: nothing is chosen on test data. Values are in percent.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tpwng import RESOURCES
from tpwng.evaluate import ResultsError
from tpwng.evaluate.ablations import headline_metric
from tpwng.evaluate.bootstrap import FRAME_METRICS, bootstrap, compress, frame_metric_values
from tpwng.evaluate.detection_bootstrap import Detections, map_values, video_detections
from tpwng.evaluate.metrics import (
    VideoResult,
    anomalous_only_auc,
    false_alarm_rate,
    frame_ap,
    frame_auc,
)
from tpwng.files import write_json, write_table

log = logging.getLogger(__name__)

METRICS = (*FRAME_METRICS, "fine_grained_mAP_avg", "fine_grained_published_mAP_avg")
LABELS = {
    "frame_auc": "frame AUC", "frame_ap": "frame AP", "anomalous_auc": "AUC (anomalous videos)",
    "false_alarm_rate": "false-alarm rate", "fine_grained_mAP_avg": "fine-grained mAP (ours)",
    "fine_grained_published_mAP_avg": "fine-grained mAP (published scripts)",
}
# what must be equal across the seeds' metrics files: one dataset, test set and feature store
SAME_ACROSS_SEEDS = ("dataset", "clip_weights", "clip_model", "random_init_clip",
                     "features_source", "frame_convention", "frames_evaluated",
                     "videos_evaluated", "epochs")
MODEL_SCORED = "each seed's last epoch (no checkpoint is chosen on test data)"


def reported_results(fmt: str) -> dict | None:
    """The published numbers for a dataset format (``ucf``, ``xd``), or None for others."""
    table = yaml.safe_load((RESOURCES / "reported_results.yaml").read_text())
    return table.get(fmt)


def _percent(value: float | None) -> float:
    return math.nan if value is None else 100.0 * float(value)


def read_seed_metrics(paths: Sequence[Path], seeds: Sequence[int]) -> list[dict]:
    """Each seed's metrics file, checked to be that seed's and of one dataset and store."""
    if len(set(seeds)) != len(seeds):
        raise ResultsError(f"the seeds {list(seeds)} repeat a seed")
    if len(paths) != len(seeds):
        raise ResultsError(f"{len(seeds)} seeds {list(seeds)} but {len(paths)} metrics files")
    records = []
    for path, seed in zip(paths, seeds, strict=True):
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{path}: not a readable metrics file ({exc})") from None
        if record.get("seed") != seed:
            raise ResultsError(f"{path}: the metrics of seed {record.get('seed')}, "
                               f"expected seed {seed}")
        records.append(record)
    for key in SAME_ACROSS_SEEDS:
        values = {json_key(r.get(key)) for r in records}
        if len(values) > 1:
            raise ResultsError(
                f"the seeds' metrics differ in {key}: "
                + ", ".join(f"{p}: {r.get(key)!r}" for p, r in zip(paths, records, strict=True)))
    return records


def json_key(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def seed_rows(records: Sequence[dict]) -> pd.DataFrame:
    """One row per seed: `METRICS` in percent (NaN where a metrics file lacks one)."""
    rows = []
    for r in records:
        m = r["metrics"]
        rows.append({"seed": int(r["seed"]), **{k: _percent(m.get(k)) for k in METRICS}})
    return pd.DataFrame(rows)


def summary_rows(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation (NaN for one seed), minimum and maximum over seeds."""
    values = per_seed[list(METRICS)]
    return pd.DataFrame({"mean": values.mean(), "std": values.std(ddof=1),
                         "min": values.min(), "max": values.max()}).T


def seed_mean_videos(per_seed: Sequence[Sequence[VideoResult]]) -> list[VideoResult]:
    """Each test video's frame scores averaged over the seeds (one truth, one order)."""
    first = per_seed[0]
    for videos in per_seed[1:]:
        if [v.video_id for v in videos] != [v.video_id for v in first]:
            raise ResultsError("the seeds' scores files list other test videos or another "
                                    "order")
    out = []
    for i, v in enumerate(first):
        scores = [videos[i].frame_scores for videos in per_seed]
        if any(s.shape != v.frame_scores.shape for s in scores):
            raise ResultsError(f"test video {v.video_id}: the seeds scored different "
                                    "frame counts")
        out.append(VideoResult(v.video_id, v.classes, np.mean(scores, axis=0), v.frame_labels))
    return out


def frame_point_estimates(videos: Sequence[VideoResult], threshold: float) -> dict[str, float]:
    """`FRAME_METRICS` of a list of videos (fractions; NaN where undefined)."""
    def nan(x: float | None) -> float:
        return math.nan if x is None else float(x)

    return {"frame_auc": frame_auc(videos), "frame_ap": frame_ap(videos),
            "anomalous_auc": nan(anomalous_only_auc(videos)),
            "false_alarm_rate": nan(false_alarm_rate(videos, threshold))}


def reproduction_table(
    settings: dict,
    records: Sequence[dict],
    seed_videos: Sequence[Sequence[VideoResult]],
    detections: dict[str, Detections] | None = None,
) -> dict:
    """Everything the reproduction table shows, as one JSON-ready dict (values in percent).

    ``seed_videos`` are each seed's scored test videos (`tpwng.evaluate.tables.video_results`);
    ``detections`` the fine-grained detections of the seed-mean class probabilities by metric
    name (`seed_mean_detections`), bootstrapped on the same resamples as the frame metrics.
    """
    opts = settings["reproduction"]
    resamples, level = int(opts["resamples"]), float(opts["level"])
    boot_seed = int(opts["seed"])
    threshold = float(settings["evaluate"]["threshold"])
    per_seed = seed_rows(records)
    summary = summary_rows(per_seed)
    videos = seed_mean_videos(seed_videos)
    detections = detections or {}
    point = frame_point_estimates(videos, threshold)
    point |= {k: float(map_values(d, np.ones((1, len(videos))))[0])
              for k, d in detections.items()}
    runs = compress(videos)

    def metric_values(counts: np.ndarray) -> dict[str, np.ndarray]:
        return frame_metric_values(runs, counts, threshold) | {
            k: map_values(d, counts) for k, d in detections.items()}

    intervals = bootstrap(metric_values, len(videos), resamples, boot_seed, level)
    seed_mean = {k: {"value": _percent(point.get(k)), "low": _percent(intervals[k]["low"]),
                     "high": _percent(intervals[k]["high"]),
                     "resamples": intervals[k]["resamples"],
                     "undefined_resamples": intervals[k]["undefined"]}
                 for k in METRICS if k in intervals}
    first = records[0]
    reported = reported_results(settings["format"])
    return {
        "dataset": settings["name"],
        "unit": "percent",
        "seeds": [int(r["seed"]) for r in records],
        "model_scored": MODEL_SCORED,
        "epochs": first.get("epochs"),
        "settings_hashes": {int(r["seed"]): r.get("settings_hash") for r in records},
        "features": {"source": first.get("features_source", "unknown"),
                     "clip_model": first.get("clip_model"),
                     "clip_weights": first.get("clip_weights"),
                     "random_init_clip": first.get("random_init_clip")},
        "frame_convention": first.get("frame_convention"),
        "videos_evaluated": first.get("videos_evaluated"),
        "frames_evaluated": first.get("frames_evaluated"),
        "threshold": threshold,
        "per_seed": per_seed.to_dict("records"),
        "summary": {k: summary.loc[k].to_dict() for k in summary.index},
        "seed_mean": seed_mean,
        "bootstrap": {"resamples": resamples, "seed": boot_seed, "level": level,
                      "unit": "test videos, drawn with replacement",
                      "interval": "percentile", "of": "the seed-mean scores"},
        "headline_metric": headline_metric(settings),
        "reported": [] if reported is None else [
            {**row, "metric": reported["metric"]} for row in reported["rows"]],
    }


def table_frame(result: dict) -> pd.DataFrame:
    """The TSV: seeds, summary, seed-mean value and interval, then the published rows."""
    rows = [{"row": f"seed {r['seed']}", "kind": "seed", **{k: r[k] for k in METRICS},
             "source": MODEL_SCORED} for r in result["per_seed"]]
    for name, values in result["summary"].items():
        rows.append({"row": name, "kind": "over seeds" + (" (sample)" if name == "std" else ""),
                     **values, "source": f"{len(result['seeds'])} seeds"})
    level = f"{100 * result['bootstrap']['level']:g} %"
    boot = result["bootstrap"]
    sm = result["seed_mean"]
    rows.append({"row": "seed-mean scores", "kind": "pooled",
                 **{k: sm[k]["value"] for k in sm}, "source": "scores averaged over the seeds"})
    for bound in ("low", "high"):
        rows.append({"row": f"{level} interval {bound}", "kind": "bootstrap",
                     **{k: sm[k][bound] for k in sm},
                     "source": f"{boot['resamples']} resamples of the test videos "
                               f"(seed {boot['seed']})"})
    for r in result["reported"]:
        rows.append({"row": f"{r['method']} ({r['kind']})", "kind": r["kind"],
                     r["metric"]: r["value"], "source": r["source"]})
    columns = ["row", "kind", *METRICS, "source"]
    frame = pd.DataFrame(rows, columns=columns)
    frame[list(METRICS)] = frame[list(METRICS)].astype(float).round(4)
    return frame


def plot_reproduction(result: dict, path: Path) -> None:
    """The headline metric: each seed, mean ± std, the seed-mean interval, the paper's line."""
    from tpwng.evaluate.plots import figure

    metric = result["headline_metric"]
    seeds = [r[metric] for r in result["per_seed"]]
    mean, std = result["summary"]["mean"][metric], result["summary"]["std"][metric]
    sm = result["seed_mean"][metric]
    with figure(path, 1, 1, (6.5, 3.8)) as (_, axes):
        ax = axes[0, 0]
        ax.scatter(np.zeros(len(seeds)), seeds, color="#d62728", zorder=3,
                   label=f"seeds ({len(seeds)})")
        if not math.isnan(std):
            ax.errorbar([1], [mean], yerr=[std], fmt="s", color="#7f7f7f", capsize=5,
                        label="mean ± std over seeds")
        else:
            ax.plot([1], [mean], "s", color="#7f7f7f", label="mean (one seed)")
        ax.errorbar([2], [sm["value"]], yerr=[[sm["value"] - sm["low"]],
                                                [sm["high"] - sm["value"]]],
                    fmt="D", color="#1f77b4", capsize=5,
                    label=f"seed-mean scores, {100 * result['bootstrap']['level']:g} % interval")
        colours = {"reported": "#2ca02c", "retrained": "#9467bd"}
        for i, r in enumerate(result["reported"]):
            style = "-" if r["method"] == "TPWNG" else ":"
            ax.axhline(r["value"], color=colours.get(r["kind"], "k"), linestyle=style,
                       linewidth=1.5 if r["method"] == "TPWNG" else 0.8,
                       label=f"{r['method']} {r['kind']} {r['value']:.2f}", zorder=1 - i * 0.01)
        if not result["reported"]:
            ax.text(0.02, 0.02, "no published numbers for this dataset", fontsize=7,
                    transform=ax.transAxes, color="#555555")
        ax.set_xticks([0, 1, 2], ["seeds", "mean ± std", "seed-mean scores"])
        ax.set_xlim(-0.6, 2.6)
        ax.set_ylabel(f"{LABELS[metric]} (%)")
        ax.set_title(f"{result['dataset']}: reproduction over seeds {result['seeds']}",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def write_reproduction(result: dict, prefix: str) -> None:
    """``PREFIX.tsv``, ``PREFIX.json`` and ``PREFIX.png`` (the plot first: a failure there
    leaves no table behind)."""
    plot_reproduction(result, Path(f"{prefix}.png"))
    write_table(Path(f"{prefix}.tsv"), table_frame(result))
    write_json(Path(f"{prefix}.json"), result)
    metric = result["headline_metric"]
    s = result["summary"]
    log.info("%s over seeds %s: %s %.2f ± %.2f (seed-mean %.2f, interval %.2f-%.2f)",
             result["dataset"], result["seeds"], metric, s["mean"][metric], s["std"][metric],
             result["seed_mean"][metric]["value"], result["seed_mean"][metric]["low"],
             result["seed_mean"][metric]["high"])


def seed_mean_detections(settings: dict, manifest: Path, scores: Sequence[Path],
                         videos: Sequence[VideoResult], cuts: Path | None) -> dict:
    """The fine-grained detections (`tpwng.evaluate.detection_bootstrap.video_detections`) of
    the class probabilities averaged over the seeds, in our protocol and the published
    scripts' (whose annotation ends as written come from ``cuts``), by metric name."""
    from tpwng.data.manifest import read_manifest
    from tpwng.evaluate.finegrained import frame_class_probabilities
    from tpwng.evaluate.scores_file import read_class_probs, read_stride
    from tpwng.evaluate.tables import class_ground_truth, written_intervals

    per_seed = [read_class_probs(Path(s)) for s in scores]
    classes = per_seed[0][0]
    if any(c != classes for c, _ in per_seed):
        raise ResultsError("the seeds' scores files hold other classes: "
                           + ", ".join(f"{s}: {c}" for s, (c, _) in zip(scores, per_seed,
                                                                      strict=True)))
    stride = read_stride(Path(scores[0]))
    frame_probs = [frame_class_probabilities(
        np.mean([probs[v.video_id] for _, probs in per_seed], axis=0), v.n_frames, stride)
        for v in videos]
    rows = {r.video_id: r for r in read_manifest(manifest) if r.split == "test"}
    fmt = settings["format"]
    written = None if cuts is None else written_intervals(rows, cuts)
    return {
        "fine_grained_mAP_avg": video_detections(
            frame_probs, class_ground_truth(videos, rows, fmt), classes, "ours", fmt),
        "fine_grained_published_mAP_avg": video_detections(
            frame_probs, class_ground_truth(videos, rows, fmt, written), classes, "published",
            fmt),
    }


def build_reproduction(settings: dict, manifest: Path, seeds: Sequence[int],
                       metrics: Sequence[Path], scores: Sequence[Path], prefix: str,
                       cuts: Path | None = None) -> dict:
    """Read each seed's metrics and scores, and write the reproduction table, JSON and plot;
    ``cuts`` is the manifest's ``annotation_cuts.tsv`` (the published fine-grained mAP)."""
    from tpwng.evaluate.tables import video_results

    if len(scores) != len(seeds):
        raise ResultsError(f"{len(seeds)} seeds {list(seeds)} but {len(scores)} scores "
                           "files")
    records = read_seed_metrics(metrics, seeds)
    convention = settings["evaluate"]["frames"]
    seed_videos = [video_results(manifest, Path(s), convention) for s in scores]
    videos = seed_mean_videos(seed_videos)
    detections = seed_mean_detections(settings, manifest, scores, videos, cuts)
    result = reproduction_table(settings, records, seed_videos, detections)
    write_reproduction(result, prefix)
    return result
