"""The Snakemake DAG itself: lint, dry runs against fake real-dataset roots, real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers.dag import job_counts, snakemake, tiny_config
from tpwng.config import ConfigError, validate

UCF_LISTS = REPO / "tpwng" / "resources" / "ucf_crime"


def test_lint_is_clean():
    out = snakemake("--lint")
    assert "good condition" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.fixture(scope="module")
def fake_ucf_root(tmp_path_factory) -> Path:
    """A UCF-Crime root laid out as released: every listed video present (as tiny files)."""
    root = tmp_path_factory.mktemp("UCF_Crime")
    for list_file in ("Anomaly_Train.txt", "Anomaly_Test.txt"):
        for line in (UCF_LISTS / list_file).read_text().split():
            p = root / line
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
    return root


def test_ucf_dry_run_lists_the_real_dag(fake_ucf_root, tmp_path):
    out = snakemake("-n", "--cores", "8", "results/ucf_auc.json", "--config",
                    f"ucf_root={fake_ucf_root}", cwd=tmp_path, config=REPO / "config.yaml")
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert counts == {"manifest": 1, "extract_shard": 16, "feature_view": 1, "train": 1,
                      "infer": 1, "evaluate": 1}, out.stdout
    out = snakemake("-n", "--cores", "8", "features/ucf/features.h5", "--config",
                    f"ucf_root={fake_ucf_root}", cwd=tmp_path, config=REPO / "config.yaml")
    assert job_counts(out.stdout) == {"manifest": 1, "extract_shard": 16, "feature_view": 1}


def test_xd_dry_run_lists_the_real_dag(tmp_path):
    out = snakemake("-n", "--cores", "8", "results/xd_ap.json", "--config", "xd_root=/data/XD",
                    cwd=tmp_path, config=REPO / "config.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {"manifest": 1, "extract_shard": 32, "feature_view": 1,
                                      "train": 1, "infer": 1, "evaluate": 1}


def test_released_features_route_dry_run(tmp_path):
    out = snakemake("-n", "--cores", "8", "results/ucf_auc.json", "--config",
                    "ucf_root=/data/UCF", cwd=tmp_path, config=_released_config(tmp_path))
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout) == {"manifest": 1, "import_released": 1, "feature_view": 1,
                                      "train": 1, "infer": 1, "evaluate": 1}


def _released_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["ucf"]["extraction"] = {"source": "released", "released_dir": "/data/feats"}
    path = tmp_path / "released.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_missing_root_is_one_clear_error(tmp_path):
    out = snakemake("--cores", "1", "data/ucf/manifest.tsv", cwd=tmp_path,
                    config=REPO / "config.yaml")
    assert out.returncode != 0
    log = (tmp_path / "logs" / "ucf" / "manifest.log").read_text()
    assert "ucf_root" in log and "Traceback" not in log


def test_bad_config_is_the_schema_message(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["extraction"]["crop_mode"] = "fivecrop"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "--cores", "1", cwd=tmp_path, config=path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "'fivecrop' is not one of ['center', 'tencrop']" in text and "Traceback" not in text


@pytest.mark.slow
def test_features_stage_runs_and_reruns_single_stages(tmp_path):
    config = tiny_config(tmp_path)
    out = snakemake("--cores", "2", "features/synthetic/features.h5", cwd=tmp_path, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    from tpwng.data.manifest import read_manifest
    from tpwng.features.store import FeatureStore

    rows = read_manifest(tmp_path / "data/synthetic/manifest.tsv")
    assert len(rows) == 6 + 2 * 4 + 3 + 4
    with FeatureStore(tmp_path / "features/synthetic/features.h5") as s:
        assert sorted(s.video_ids()) == sorted(r.video_id for r in rows)
        assert s.provenance["random_init"] and s.provenance["model"] == "tpwng-tiny-ViT-B-16"
        for r in rows:
            assert s.get(r.video_id).shape == (-(-r.frames // 16), 1, 512)
    # nothing to do the second time; one stage can be forced again on its own
    again = snakemake("-n", "--cores", "2", "features/synthetic/features.h5", cwd=tmp_path,
                      config=config)
    assert "Nothing to be done" in again.stdout + again.stderr
    forced = snakemake("-n", "--cores", "2", "features/synthetic/features.h5", "--forcerun",
                       "feature_view", cwd=tmp_path, config=config)
    assert job_counts(forced.stdout) == {"feature_view": 1}


@pytest.mark.slow
def test_whole_dag_from_videos_to_metrics(tiny_local_run):
    tmp_path = tiny_local_run
    auc = json.loads((tmp_path / "results/synthetic_auc.json").read_text())
    assert auc["metric"] == "frame_auc" and 0.0 <= auc["value"] <= 1.0
    assert auc["random_init_clip"] is True and auc["clip_weights"] == "random-init:seed=0"
    full = json.loads((tmp_path / "results/synthetic_metrics.json").read_text())
    assert full["split_sizes"] == {"train": 14, "test": 7}
    for name in ("score_curves", "roc_pr", "pseudo_labels", "similarities", "training"):
        png = tmp_path / f"results/synthetic/plots/{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _overlay(d: Path, name: str, section: str, **values) -> Path:
    """The run's tiny config with `values` changed in one section: the synthetic dataset's
    own, or the top level's for `evaluate` (a dataset has no evaluate section)."""
    cfg = yaml.safe_load((d / "tiny.yaml").read_text())
    where = cfg if section == "evaluate" else cfg["datasets"]["synthetic"]
    where[section] = {**(where.get(section) or {}), **values}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


DOWNSTREAM_OF_TRAINING = {"train": 1, "infer": 1, "evaluate": 1, "diagnostics": 1,
                          "baselines": 1, "viewer": 1}


@pytest.mark.slow
@pytest.mark.parametrize(("section", "values", "scheduled"), [
    ("model", {"theta": 0.45}, DOWNSTREAM_OF_TRAINING),
    ("train", {"epochs": 3}, DOWNSTREAM_OF_TRAINING),
    ("evaluate", {"threshold": 0.4}, {"evaluate": 1, "baselines": 1, "viewer": 1}),
    ("evaluate", {"plot_videos": 3}, {"evaluate": 1, "diagnostics": 1}),
    ("extraction", {"threads": 1}, {}),  # CPUs of a job are not settings of its outputs
    ("extraction", {"gpus": 2}, {}),  # nor are its GPUs
    ("train", {"threads": 1}, {}),
])
def test_a_setting_reruns_exactly_the_stages_that_read_it(tiny_local_run, section, values,
                                                          scheduled):
    """After a complete run, a changed setting schedules only the stages that read it: a
    model tweak never re-extracts features."""
    d = tiny_local_run
    config = _overlay(d, f"{section}-{'-'.join(values)}", section, **values)
    out = snakemake("-n", "--cores", "2", cwd=d, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    counts.pop("all", None)  # the target rule itself, whenever anything below it runs
    assert counts == scheduled, out.stdout


def test_jobs_get_the_configured_cpus(tmp_path):
    """extract_shard runs with extraction.threads CPUs (capped by --cores) and passes them on:
    decode_workers auto then decodes with all but one."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["synthetic"]["extraction"] |= {"threads": 12}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "-p", "--cores", "16", "features/synthetic/features.h5",
                    cwd=tmp_path, config=config)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert text.count("--threads 12 ") == 2, text  # both shards
    out = snakemake("-n", "-p", "--cores", "4", "features/synthetic/features.h5",
                    cwd=tmp_path, config=config)
    assert (out.stdout + out.stderr).count("--threads 4 ") == 2


@pytest.mark.slow
def test_changing_the_stride_reextracts(tiny_local_run):
    d = tiny_local_run
    out = snakemake("-n", "--cores", "2", cwd=d,
                    config=_overlay(d, "stride", "extraction", stride=8))
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert counts["extract_shard"] == 2 and "synthesize" not in counts, out.stdout


@pytest.mark.slow
def test_a_deleted_shard_is_reextracted_by_the_next_run(tiny_local_run, tmp_path):
    """A shard lost after a complete run (e.g. an interrupted forced run): the next run that
    needs the features re-extracts it first, then trains with the changed setting."""
    import shutil

    d = tmp_path / "run"
    shutil.copytree(tiny_local_run, d, symlinks=True)
    shard = d / "features/synthetic/shards/001-of-002.h5"
    shard.unlink()
    config = _overlay(d, "theta", "model", theta=0.45)
    dry = snakemake("-n", "--cores", "2", cwd=d, config=config)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert job_counts(dry.stdout).get("extract_shard") == 1, dry.stdout
    out = snakemake("--cores", "2", cwd=d, config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    assert shard.is_file()
    from tpwng.train.checkpoint import load_checkpoint

    assert load_checkpoint(d / "models/synthetic/tpwng.pt")["meta"]["model_config"]["theta"] \
        == 0.45
    again = snakemake("-n", "--cores", "2", cwd=d, config=config)
    assert "Nothing to be done" in again.stdout + again.stderr


# --------------------------------------------------------------------------- case 4 of the
# security review: a dataset name from a config file must not reach a shell


@pytest.mark.parametrize("name", ["a`touch PWNED`b", "a b", "../x", "a;b", "$(id)", ""])
def test_dataset_names_are_restricted_by_the_schema(name):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"][name] = cfg["datasets"].pop("synthetic")
    with pytest.raises(ConfigError, match="invalid config at datasets"):
        validate(cfg)


def test_a_hostile_dataset_name_runs_no_command(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["a`touch PWNED`b"] = cfg["datasets"].pop("synthetic")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake("--cores", "1", "results/a`touch PWNED`b_auc.json", cwd=tmp_path,
                    config=path)
    assert out.returncode != 0
    assert "does not match" in out.stdout + out.stderr
    assert not (tmp_path / "PWNED").exists() and not (REPO / "PWNED").exists()


def test_every_shell_command_quotes_its_paths_and_wildcards():
    """Case 4 of the security review: `{input}`, `{output}`, `{log}`, `{wildcards.*}` and
    path params reach `shell:` quoted (`:q`), in every rule file."""
    import re

    unquoted = re.compile(r"\{(input|output|log|wildcards|params\.prefix)(\.\w+)?\}")
    found = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        in_shell = False
        for number, line in enumerate(smk.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("shell:"):
                in_shell = True
                continue
            if in_shell and not stripped.startswith('"'):
                in_shell = False
            if in_shell and unquoted.search(stripped):
                found.append(f"{smk.name}:{number}: {stripped}")
    assert found == []
    # and the check sees an unquoted one
    assert unquoted.search('"tpwng x --out {output} 2> {log}"')
