"""Ablation tables: variant settings, branches, table assembly, the DAG targets, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers.dag import job_counts, snakemake, tiny_config
from tpwng.config import ConfigError, dataset_settings, load, training_hash
from tpwng.evaluate import ablations

# Variant branches of each table besides the main model (rows that equal the defaults share it).
OWN_BRANCHES = {"table2_nvp": 2, "table3_guidance": 1, "table4_temporal": 1, "table5_losses": 4,
                "table6_prompt": 1, "table7_context": 3, "fig5_alpha": 5, "fig6_theta": 5}
TABLE3 = "results/synthetic/ablations/table3_guidance.tsv"


@pytest.fixture(scope="module")
def config() -> dict:
    return load(REPO / "config.yaml")


@pytest.fixture(scope="module")
def synthetic(config) -> dict:
    return json.loads(json.dumps(dataset_settings(config, "synthetic")))


def test_paper_numbers_are_the_papers():
    paper = ablations.paper_tables()
    assert paper["table2_nvp"]["rows"]["nvp_as"] == {"label": "w NVP-AS", "ucf_auc": 87.79,
                                                     "xd_ap": 83.68}
    assert paper["table2_nvp"]["rows"]["no_nvp"]["ucf_auc"] == 85.25
    assert paper["table3_guidance"]["rows"]["no_ng"]["xd_ap"] == 81.32
    assert paper["table5_losses"]["rows"]["bs"]["ucf_auc"] == 77.12
    assert paper["table7_context"]["rows"]["l32"]["xd_ap"] == 81.78
    assert paper["fig6_theta"]["tabulated"] is False
    assert set(ablations.tables()) == set(OWN_BRANCHES)
    assert set(ablations.tables()) <= set(paper)


def test_overrides_merge_into_the_model_section_only(synthetic):
    before = json.dumps(synthetic, sort_keys=True)
    out = ablations.apply_overrides(synthetic, {"nvp": "fa", "n_ctx": 16})
    assert json.dumps(synthetic, sort_keys=True) == before  # input untouched
    assert out["model"] == {**synthetic["model"], "nvp": "fa", "n_ctx": 16}
    assert {k: v for k, v in out.items() if k != "model"} == {
        k: v for k, v in synthetic.items() if k != "model"}
    assert ablations.variant_settings(synthetic, "losses_bs")["model"]["use_dil"] is False
    with pytest.raises(ConfigError, match="nvp_mode"):
        ablations.apply_overrides(synthetic, {"nvp_mode": "fa"})
    with pytest.raises(ConfigError, match="'bogus' is not one of"):
        ablations.apply_overrides(synthetic, {"temporal": "bogus"})


def test_branches_share_equal_settings_only(config, synthetic):
    branch = ablations.branches(synthetic)
    main = {"nvp_as", "guidance", "tcsal", "losses_all", "finetune_text_projection", "ctx8",
            "alpha_0.2", "theta_0.55"}
    assert {v for v, b in branch.items() if b is None} == main
    own = [v for v, b in branch.items() if b is not None]
    assert all(branch[v] == v for v in own)
    hashes = {training_hash(ablations.variant_settings(synthetic, v)) for v in own}
    assert len(hashes) == len(own) and training_hash(synthetic) not in hashes
    assert {t: sum(b is not None for b in ablations.row_branches(synthetic, t))
            for t in ablations.tables()} == OWN_BRANCHES
    # XD's default θ is 0.35: there θ = 0.35 is the main model and θ = 0.55 a branch
    xd = dataset_settings(config, "xd")
    assert ablations.branches(xd)["theta_0.35"] is None
    assert ablations.branches(xd)["theta_0.55"] == "theta_0.55"


def _metrics(path: Path, settings: dict, auc: float, ap: float) -> Path:
    """A metrics file as `tpwng evaluate` writes it: it carries its model's training hash."""
    path.write_text(json.dumps({"settings_hash": training_hash(settings),
                                "metrics": {"frame_auc": auc, "frame_ap": ap}}))
    return path


def test_table_rows_carry_ours_and_the_papers(synthetic, tmp_path):
    files = [_metrics(tmp_path / f"{v.name}.json", ablations.variant_settings(synthetic, v.name),
                      0.5 + 0.1 * k, 0.25)
             for k, v in enumerate(ablations.tables()["table2_nvp"])]
    rows = ablations.build_table("table2_nvp", synthetic, files, tmp_path / "t.tsv",
                                 tmp_path / "t.png")
    assert ablations.read_table(tmp_path / "t.tsv") == rows
    assert [r["variant"] for r in rows] == ["nvp_none", "nvp_fa", "nvp_as"]
    assert [r["branch"] for r in rows] == ["nvp_none", "nvp_fa", "main"]
    last = rows[-1]
    assert last["paper_row"] == "w NVP-AS" and last["paper_ucf_auc"] == "87.79"
    assert last["paper_xd_ap"] == "83.68" and json.loads(last["overrides"]) == {"nvp": "as"}
    assert (last["metric"], last["ours"], last["frame_auc"], last["frame_ap"]) == (
        "frame_auc", "70.00", "70.00", "25.00")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    # XD reports AP; a sweep row without a paper number leaves the cells empty
    xd = {**synthetic, "format": "xd"}
    files = [_metrics(tmp_path / f"x{k}.json", ablations.variant_settings(xd, v.name), 0.9, 0.8)
             for k, v in enumerate(ablations.tables()["fig6_theta"])]
    rows = ablations.assemble_table("fig6_theta", xd, files)
    assert rows[0]["metric"] == "frame_ap" and rows[0]["ours"] == "80.00"
    assert rows[0]["paper_ucf_auc"] == rows[0]["paper_xd_ap"] == ""
    assert rows[1]["paper_xd_ap"] == "83.68" and rows[1]["paper_ucf_auc"] == ""


def test_table_refuses_metrics_of_another_branch(synthetic, tmp_path):
    files = [_metrics(tmp_path / f"{k}.json", synthetic, 0.5, 0.5) for k in range(2)]
    with pytest.raises(ValueError, match="no_guidance"):
        ablations.assemble_table("table3_guidance", synthetic, files)
    with pytest.raises(ValueError, match="2 rows"):
        ablations.assemble_table("table3_guidance", synthetic, files[:1])


def _planned_tables(dry_run_output: str) -> dict[str, list[str]]:
    """Table → the metric files its ablation_table job reads, from a dry run's job list."""
    planned, inputs, rule = {}, [], None
    for line in dry_run_output.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif rule == "ablation_table" and line.strip().startswith("input:"):
            inputs = line.split(":", 1)[1].strip().split(", ")
        elif rule == "ablation_table" and line.strip().startswith("output:"):
            planned[Path(line.split(":", 1)[1].split(",")[0].strip()).stem] = inputs
    return planned


def test_every_table_target_plans_one_branch_per_variant(synthetic, tmp_path):
    out = snakemake("-n", "--cores", "2", "results/synthetic/ablations/summary.tsv",
                    cwd=tmp_path, config=tiny_config(tmp_path))
    assert out.returncode == 0, out.stderr
    n = sum(OWN_BRANCHES.values())  # no variant shares another's settings on this dataset
    assert job_counts(out.stdout) == {
        "synthesize": 1, "manifest": 1, "extract_shard": 2, "feature_view": 1, "train": 1,
        "infer": 1, "evaluate": 1, "train_variant": n, "infer_variant": n,
        "evaluate_variant": n, "ablation_table": 8, "baselines": 1,
        "ablation_summary": 1}, out.stdout
    planned = _planned_tables(out.stdout)
    assert set(planned) == set(OWN_BRANCHES)
    for table, files in planned.items():
        expected = [f"results/synthetic/ablations/{b}_metrics.json" if b else
                    "results/synthetic_metrics.json"
                    for b in ablations.row_branches(synthetic, table)]
        # the rows (one seed: train.seed), then the main model's metrics over the same seeds
        assert files == expected + ["results/synthetic_metrics.json"], table
        assert sum("/ablations/" in f for f in files) == OWN_BRANCHES[table]


@pytest.fixture(scope="module")
def tiny_ablation_run(tiny_local_run) -> Path:
    """Table 3 added to the tiny demo run: its main model + the no-guidance branch."""
    d = tiny_local_run
    out = snakemake("--cores", "2", TABLE3, cwd=d, config=d / "tiny.yaml")
    assert out.returncode == 0, out.stderr[-3000:]
    return d


@pytest.mark.slow
def test_tiny_table3_run(tiny_ablation_run):
    d = tiny_ablation_run
    rows = ablations.read_table(d / "results/synthetic/ablations/table3_guidance.tsv")
    assert [(r["variant"], r["branch"]) for r in rows] == [("no_guidance", "no_guidance"),
                                                          ("guidance", "main")]
    main = json.loads((d / "results/synthetic_metrics.json").read_text())
    branch = json.loads((d / "results/synthetic/ablations/no_guidance_metrics.json").read_text())
    assert rows[1]["ours"] == f"{100 * main['metrics']['frame_auc']:.2f}"
    assert rows[0]["ours"] == f"{100 * branch['metrics']['frame_auc']:.2f}"
    assert branch["settings_hash"] != main["settings_hash"]
    from tpwng.train.checkpoint import load_checkpoint

    meta = load_checkpoint(d / "models/synthetic/ablations/no_guidance/tpwng.pt")["meta"]
    assert meta["model_config"]["guidance"] is False
    assert [(r["paper_ucf_auc"], r["paper_xd_ap"]) for r in rows] == [("85.83", "81.32"),
                                                                      ("87.79", "83.68")]
    assert (d / "results/synthetic/ablations/table3_guidance.png").stat().st_size > 0


@pytest.mark.slow
def test_report_renders_self_contained_html(tiny_ablation_run):
    d = tiny_ablation_run
    out = snakemake("--report", "report.html", "all", TABLE3, cwd=d, config=d / "tiny.yaml")
    assert out.returncode == 0, out.stderr[-3000:]
    html = (d / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    for text in ("TPWNG: weakly supervised video anomaly detection", "Ablations", "Metrics",
                 "Scores", "Training", "table3_guidance.tsv", "table3_guidance.png",
                 "score_curves.png", "pseudo_labels.png", "train_log.tsv",
                 "synthetic_metrics.tsv"):
        assert text in html, text
    # self-contained: results are embedded as data URIs
    assert html.count("data:image/png;") >= 6 and "data:text/tab-separated-values;" in html
