"""Seeds as a dimension of the DAG, the bootstrap over test videos, the reproduction table and
the ablation tables over seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import LOCAL_CORES, REPO
from tests.helpers.dag import job_counts, snakemake
from tpwng.config import (
    ConfigError,
    dataset_settings,
    load,
    seeds,
    stage_settings,
    training_hash,
    validate,
    with_seed,
)
from tpwng.evaluate import ResultsError, ablations
from tpwng.evaluate.bootstrap import bootstrap, compress, frame_metric_values, resample_counts
from tpwng.evaluate.metrics import (
    VideoResult,
    anomalous_only_auc,
    false_alarm_rate,
    frame_ap,
    frame_auc,
)
from tpwng.evaluate.reproduction import (
    METRICS,
    read_seed_metrics,
    reproduction_table,
    table_frame,
    write_reproduction,
)

# --------------------------------------------------------------------------- configuration


def _config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_seeds_default_to_the_one_seed_and_are_not_a_setting_of_any_model():
    cfg = load(REPO / "config.yaml")
    syn = dataset_settings(cfg, "synthetic")
    assert seeds(syn) == [0]
    cfg2 = _config()
    cfg2["train"]["seeds"] = [0, 3, 7]
    syn2 = dataset_settings(validate(cfg2), "synthetic")
    assert seeds(syn2) == [0, 3, 7]
    # the main model's settings (and hash) do not change when seeds are added
    assert stage_settings(syn2, "train") == stage_settings(syn, "train")
    assert training_hash(with_seed(syn2, 0)) == training_hash(syn)
    assert training_hash(with_seed(syn2, 3)) != training_hash(syn)
    assert stage_settings(with_seed(syn2, 3), "train")["train"]["seed"] == 3


@pytest.mark.parametrize("value,message", [
    ([1, 1], "non-unique"),
    ([0, "x"], "'x' is not of type 'integer'"),
    ([0, 1.5], "1.5 is not of type 'integer'"),
    ([], "should be non-empty"),
    ([-1], "-1 is less than the minimum of 0"),
])
def test_bad_seed_lists_are_one_message_naming_the_value(value, message):
    cfg = _config()
    cfg["train"]["seeds"] = value
    with pytest.raises(ConfigError, match="invalid config at train.seeds") as err:
        validate(cfg)
    assert message in str(err.value)


def test_top_level_sections_reach_datasets_that_have_their_own():
    """A dataset's own `train` / `model` section overrides only the keys it sets: the schema's
    defaults no longer mask the top-level values (they did for every key a dataset left out)."""
    cfg = _config()
    cfg["train"]["weight_decay"] = 0.123
    cfg["model"]["alpha"] = 0.3
    cfg["train"]["seeds"] = [0, 1]
    validate(cfg)
    for name in ("synthetic", "ucf", "xd"):
        s = dataset_settings(cfg, name)
        assert s["train"]["weight_decay"] == 0.123 and s["model"]["alpha"] == 0.3
        assert seeds(s) == [0, 1]
    syn = dataset_settings(cfg, "synthetic")
    assert syn["train"]["epochs"] == 50 and syn["train"]["lr"] == 0.001  # its own keys win
    assert "weight_decay" not in cfg["datasets"]["synthetic"]["train"]


# --------------------------------------------------------------------------- bootstrap


def _videos(n: int = 24, seed: int = 0, decimals: int = 2) -> list[VideoResult]:
    """Videos with snippet-constant scores (ties across videos: rounded) and one anomalous
    interval in every second video."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = int(rng.integers(40, 200))
        snippet = np.round(rng.random((frames + 15) // 16), decimals)
        labels = np.zeros(frames, dtype=np.uint8)
        if i % 2:
            a = int(rng.integers(0, frames - 10))
            labels[a:a + int(rng.integers(5, frames - a))] = 1
        out.append(VideoResult(f"v{i}", ["fighting"] if i % 2 else ["normal"],
                               np.repeat(snippet, 16)[:frames], labels))
    return out


def test_each_resample_equals_the_metrics_of_the_videos_it_draws():
    videos = _videos()
    runs = compress(videos)
    assert runs.frames.sum() == sum(v.n_frames for v in videos)
    counts = resample_counts(len(videos), 12, seed=5)
    assert np.all(counts.sum(axis=1) == len(videos))
    values = frame_metric_values(runs, counts, threshold=0.5)
    for b in range(len(counts)):
        drawn = [v for v, c in zip(videos, counts[b], strict=True) for _ in range(int(c))]
        assert values["frame_auc"][b] == pytest.approx(frame_auc(drawn), abs=1e-12)
        assert values["frame_ap"][b] == pytest.approx(frame_ap(drawn), abs=1e-12)
        assert values["anomalous_auc"][b] == pytest.approx(anomalous_only_auc(drawn), abs=1e-12)
        assert values["false_alarm_rate"][b] == pytest.approx(false_alarm_rate(drawn, 0.5),
                                                              abs=1e-12)


def test_all_ones_counts_give_the_metrics_of_the_test_set():
    videos = _videos(seed=3, decimals=6)
    values = frame_metric_values(compress(videos), np.ones((1, len(videos))), 0.4)
    assert values["frame_auc"][0] == pytest.approx(frame_auc(videos), abs=1e-12)
    assert values["frame_ap"][0] == pytest.approx(frame_ap(videos), abs=1e-12)


def test_bootstrap_is_seeded_and_counts_undefined_resamples():
    videos = _videos(n=6, seed=1)
    runs = compress(videos)

    def metric(c):
        return frame_metric_values(runs, c, 0.5)

    a = bootstrap(metric, len(videos), resamples=1000, seed=3)
    b = bootstrap(metric, len(videos), resamples=1000, seed=3)
    c = bootstrap(metric, len(videos), resamples=1000, seed=4)
    assert a == b and a != c
    point = frame_auc(videos)
    assert a["frame_auc"]["low"] <= point <= a["frame_auc"]["high"]
    # 3 anomalous videos of 6: some resamples draw none, and the AUC is undefined there
    assert a["frame_auc"]["undefined"] > 0
    assert a["frame_auc"]["resamples"] + a["frame_auc"]["undefined"] == 1000


def _class_curves(n_videos: int = 14, seed: int = 0):
    """Per video [frames, 4] class probabilities (no ties between videos) and ground truth."""
    rng = np.random.default_rng(seed)
    names = ["normal", "fighting", "robbery", "arson"]
    probs, gt = [], []
    for v in range(n_videos):
        n = int(rng.integers(60, 300))
        p = np.repeat(rng.random((n // 8 + 1, len(names))), 8, axis=0)[:n]
        p = p + 1e-6 * rng.random(p.shape)
        probs.append(p / p.sum(axis=1, keepdims=True))
        if v % 3 == 0:
            gt.append([("normal", 0, n)])
        else:  # some intervals run past the video's end: the protocols differ there
            a = int(rng.integers(0, n - 20))
            gt.append([(names[1 + v % 3], a, a + int(rng.integers(10, n - a + 30)))])
    return names, probs, gt


@pytest.mark.parametrize("protocol", ["ours", "published"])
def test_detection_resamples_equal_the_fine_grained_map_of_the_drawn_videos(protocol):
    from tpwng.evaluate.detection_bootstrap import map_values, video_detections
    from tpwng.evaluate.detection_map import fine_grained_map

    names, probs, gt = _class_curves()
    det = video_detections(probs, gt, names, protocol, "ucf")
    counts = resample_counts(len(probs), 8, seed=1)
    fast = map_values(det, counts)
    for b in range(len(counts)):
        drawn = [v for v in range(len(probs)) for _ in range(int(counts[b, v]))]
        want = fine_grained_map([probs[v] for v in drawn], [gt[v] for v in drawn], names,
                                protocol, "ucf")["mAP_avg"]
        assert fast[b] == pytest.approx(want, abs=1e-12)
    whole = fine_grained_map(probs, gt, names, protocol, "ucf")["mAP_avg"]
    assert map_values(det, np.ones((1, len(probs))))[0] == pytest.approx(whole, abs=1e-12)


# --------------------------------------------------------------------------- the table


def _records(seed_list, auc=(0.8, 0.9, 0.85), **extra):
    return [{"seed": s, "dataset": "ucf", "clip_weights": "openai", "clip_model": "ViT-B-16",
             "random_init_clip": False, "features_source": "released", "epochs": 50,
             "frame_convention": "video", "frames_evaluated": 100, "videos_evaluated": 24,
             "settings_hash": f"h{s}", **extra,
             "metrics": {"frame_auc": a, "frame_ap": a - 0.1, "anomalous_auc": 0.6,
                         "false_alarm_rate": 0.01, "fine_grained_mAP_avg": 0.3}}
            for s, a in zip(seed_list, auc, strict=False)]


def _settings(fmt="ucf"):
    return {"name": fmt, "format": fmt, "evaluate": {"threshold": 0.5, "frames": "video"},
            "reproduction": {"resamples": 1000, "seed": 0, "level": 0.95}}


def test_reproduction_table_rows_summary_interval_and_published_numbers(tmp_path):
    records = _records([0, 1, 2])
    seed_videos = [_videos(seed=0, decimals=6) for _ in range(3)]
    for k, videos in enumerate(seed_videos):  # each seed's scores differ a little
        for v in videos:
            v.frame_scores = np.clip(v.frame_scores + 0.01 * k, 0, 1)
    result = reproduction_table(_settings("ucf"), records, seed_videos)
    assert result["seeds"] == [0, 1, 2] and result["unit"] == "percent"
    assert "last epoch" in result["model_scored"]
    assert result["features"]["source"] == "released"
    s = result["summary"]
    assert s["mean"]["frame_auc"] == pytest.approx(85.0)
    assert s["std"]["frame_auc"] == pytest.approx(5.0)  # sample std of 80, 90, 85
    assert (s["min"]["frame_auc"], s["max"]["frame_auc"]) == (80.0, 90.0)
    mean_videos = [VideoResult(v.video_id, v.classes,
                               np.mean([sv[i].frame_scores for sv in seed_videos], axis=0),
                               v.frame_labels) for i, v in enumerate(seed_videos[0])]
    sm = result["seed_mean"]["frame_auc"]
    assert sm["value"] == pytest.approx(100 * frame_auc(mean_videos))
    assert sm["low"] < sm["value"] < sm["high"] and sm["resamples"] == 1000
    reported = {(r["method"], r["kind"]): r["value"] for r in result["reported"]}
    assert reported[("TPWNG", "reported")] == 87.79
    assert reported[("VadCLIP", "retrained")] == 87.3 and reported[("DeSC", "reported")] == 89.37
    frame = table_frame(result)
    assert list(frame["row"][:4]) == ["seed 0", "seed 1", "seed 2", "mean"]
    assert set(METRICS) <= set(frame.columns)
    assert frame.loc[frame["row"] == "TPWNG (reported)", "frame_auc"].item() == 87.79

    write_reproduction(result, str(tmp_path / "ucf_reproduction"))
    back = pd.read_csv(tmp_path / "ucf_reproduction.tsv", sep="\t")
    assert back.loc[back["row"] == "std", "frame_auc"].item() == pytest.approx(5.0)
    assert (tmp_path / "ucf_reproduction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "ucf_reproduction.json").read_text())["seeds"] == [0, 1, 2]


def test_xd_compares_frame_ap_and_other_formats_have_no_published_numbers():
    videos = [_videos(seed=0)]
    xd = reproduction_table(_settings("xd"), _records([0]), videos)
    assert xd["headline_metric"] == "frame_ap"
    assert {r["value"] for r in xd["reported"]} == {83.68, 84.51, 83.2, 87.18}
    assert np.isnan(xd["summary"]["std"]["frame_auc"])  # one seed: no sample std
    syn = reproduction_table(_settings("synthetic"), _records([0]), videos)
    assert syn["reported"] == []


def test_metrics_of_another_seed_or_store_are_refused(tmp_path):
    paths = []
    for r in _records([0, 1]):
        p = tmp_path / f"seed{r['seed']}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    assert [r["seed"] for r in read_seed_metrics(paths, [0, 1])] == [0, 1]
    with pytest.raises(ResultsError, match=r"seed1.json: the metrics of seed 1, expected seed 2"):
        read_seed_metrics(paths, [0, 2])
    other = _records([1], clip_weights="random-init:seed=0")[0]
    paths[1].write_text(json.dumps(other))
    with pytest.raises(ResultsError, match="differ in clip_weights"):
        read_seed_metrics(paths, [0, 1])


# --------------------------------------------------------------------------- ablations


def test_paired_difference_is_a_paired_t_test():
    from scipy.stats import ttest_rel

    ours, main = [80.0, 82.0, 81.0, 85.0], [84.0, 85.0, 83.5, 88.0]
    d = ablations.paired_difference(ours, main)
    assert float(d["diff_to_main"]) == pytest.approx(-3.125, abs=1e-2)
    assert float(d["diff_p"]) == pytest.approx(ttest_rel(ours, main).pvalue, abs=1e-4)
    assert d["exceeds_seed_spread"] == "yes"
    noisy = ablations.paired_difference([80.0, 90.0, 70.0], [81.0, 79.0, 82.0])
    assert noisy["exceeds_seed_spread"] == "no"
    assert ablations.paired_difference([80.0], [81.0])["exceeds_seed_spread"] == ""
    assert ablations.paired_difference(main, main)["exceeds_seed_spread"] == "no"


def test_ablation_rows_over_seeds(tmp_path):
    cfg = validate(_config())
    syn = dataset_settings(cfg, "synthetic")
    table = "table3_guidance"
    variants = ablations.tables()[table]
    seed_list = [0, 1, 2]
    values = {("no_guidance", 0): 0.70, ("no_guidance", 1): 0.72, ("no_guidance", 2): 0.71,
              ("guidance", 0): 0.80, ("guidance", 1): 0.83, ("guidance", 2): 0.81}
    files, main = [], []
    for v in variants:
        for s in seed_list:
            h = training_hash(ablations.variant_settings(with_seed(syn, s), v.name))
            p = tmp_path / f"{v.name}-{s}.json"
            a = values[(v.name, s)]
            p.write_text(json.dumps({"settings_hash": h, "metrics": {"frame_auc": a,
                                                                     "frame_ap": a}}))
            files.append(p)
    for s in seed_list:
        main.append(tmp_path / f"guidance-{s}.json")  # the main model is the guidance row
    rows = ablations.assemble_table(table, syn, files, seed_list, main)
    no, yes = rows
    assert no["ours"] == "71.00" and no["seeds"] == "0 1 2" and no["ours_std"] == "1.00"
    assert no["exceeds_seed_spread"] == "yes" and float(no["diff_to_main"]) == pytest.approx(-10.33,
                                                                                           abs=0.01)
    assert yes["diff_to_main"] == "0.00" and yes["exceeds_seed_spread"] == "no"
    with pytest.raises(ValueError, match="no_guidance' with seed 1"):
        ablations.assemble_table(table, syn, [files[0], files[0], *files[2:]], seed_list, main)
    ablations.build_table(table, syn, files, tmp_path / "t.tsv", tmp_path / "t.png", seed_list,
                          main)
    assert ablations.read_table(tmp_path / "t.tsv")[0]["ours_std"] == "1.00"


# --------------------------------------------------------------------------- the DAG


def _with_seeds(d: Path, seed_list: list[int], **train) -> Path:
    cfg = yaml.safe_load((d / "tiny.yaml").read_text())
    cfg["train"] = {**cfg.get("train", {}), "seeds": seed_list, **train}
    path = d / f"seeds-{'-'.join(map(str, seed_list))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_seed_jobs_in_the_dag(tmp_path):
    from tests.helpers.dag import tiny_config

    tiny_config(tmp_path)  # writes tiny.yaml
    config = _with_seeds(tmp_path, [0, 4, 9], gpu_share=0.25)
    out = snakemake("-n", "-p", "--cores", "2", "results/synthetic_reproduction.tsv",
                    cwd=tmp_path, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert (counts["train"], counts["train_seed"], counts["evaluate_seed"]) == (1, 2, 2)
    text = out.stdout + out.stderr
    assert "models/synthetic/seed-4/tpwng.pt" in text and "seed-0" not in text
    assert text.count('\\"seed\\": 9') + text.count('"seed": 9') >= 1
    assert text.count("gpu_share=25") == 3  # every training job takes a quarter of a card
    # the ablation tables read every variant over the seeds
    out = snakemake("-n", "--cores", "2", "results/synthetic/ablations/table3_guidance.tsv",
                    cwd=tmp_path, config=config)
    counts = job_counts(out.stdout)
    assert counts["train_variant_seed"] == 2 and counts["train_seed"] == 2, out.stdout


@pytest.mark.slow
def test_two_seeds_of_the_demo_reach_the_reproduction_table(tiny_local_run, tmp_path):
    """The tiny demo run, then a second seed: only the new seed trains (the main model is
    seed 0), and the reproduction table holds both."""
    d = tmp_path / "run"
    shutil.copytree(tiny_local_run, d, symlinks=True)
    config = _with_seeds(d, [0, 1])
    out = snakemake("-n", "--cores", str(LOCAL_CORES), "results/synthetic_reproduction.tsv",
                    cwd=d, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    assert job_counts(out.stdout) == {"train_seed": 1, "infer_seed": 1, "evaluate_seed": 1,
                                      "reproduction": 1}, out.stdout
    out = snakemake("--cores", str(LOCAL_CORES), "results/synthetic_reproduction.tsv", cwd=d,
                    config=config, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(d / "results/synthetic_reproduction.tsv", sep="\t")
    assert list(table["row"][:2]) == ["seed 0", "seed 1"]
    main = json.loads((d / "results/synthetic_metrics.json").read_text())
    second = json.loads((d / "results/synthetic/seed-1_metrics.json").read_text())
    assert second["seed"] == 1 and main["seed"] == 0
    assert table["frame_auc"][0] == pytest.approx(100 * main["metrics"]["frame_auc"], abs=1e-4)
    assert table["frame_auc"][1] == pytest.approx(100 * second["metrics"]["frame_auc"], abs=1e-4)
    result = json.loads((d / "results/synthetic_reproduction.json").read_text())
    sm = result["seed_mean"]["frame_auc"]
    assert sm["low"] <= sm["value"] <= sm["high"]
    assert result["features"]["source"] == "extracted" and result["reported"] == []
    assert (d / "results/synthetic_reproduction.png").stat().st_size > 0
    # with the seeds in place, the main targets have nothing to do
    out = snakemake("-n", "--cores", str(LOCAL_CORES), "results/synthetic_auc.json", cwd=d,
                    config=config)
    assert job_counts(out.stdout) == {}, out.stdout


def test_reproduction_cli_refuses_bad_seeds(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "tpwng", "reproduction", "--settings",
            json.dumps(_settings()), "--manifest", "m.tsv", "--metrics", "a.json",
            "--scores", "a.h5", "--out-prefix", str(tmp_path / "r")]
    out = subprocess.run(base + ["--seeds", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "a seed is a whole number >= 0, got 'x'" in out.stderr
    out = subprocess.run(base + ["--seeds", "1", "2"], capture_output=True, text=True)
    assert out.returncode == 2 and "2 seeds [1, 2] but 1 scores files" in out.stderr
    assert "Traceback" not in out.stderr and not list(tmp_path.iterdir())


