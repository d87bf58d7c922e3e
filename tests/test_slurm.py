"""The synthetic DAG through a real single-node SLURM with the project's profile."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from tests.conftest import REPO
from tests.dag import snakemake, tiny_config
from tests.slurm_cluster import Cluster, unavailable_reason

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("TPWNG_SLURM_TEST") != "1":
        pytest.skip("set TPWNG_SLURM_TEST=1 to run the real-SLURM test (not yet part of CI)")
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    yield c
    c.stop()


def test_synthetic_dag_through_slurm_equals_local_run(cluster, tiny_local_run, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    out = snakemake(
        "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--slurm-status-command", "squeue",  # no accounting on the CI cluster: sacct fails
        "--slurm-init-seconds-before-status-checks", "5",
        "--jobs", "4", "--latency-wait", "5",
        cwd=tmp_path, config=tiny_config(tmp_path), timeout=1500,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    # every job went through sbatch: the controller knows 9 of them (synthesize, manifest,
    # 2 shards, view, train, score, evaluate, diagnostics) and the plugin logged each id
    ids = cluster.sbatch_job_ids()
    assert len(ids) >= 9, ids
    logs = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= set(ids), (ids, logs)
    local = tiny_local_run
    a = json.loads((tmp_path / "results/synthetic_auc.json").read_text())
    b = json.loads((local / "results/synthetic_auc.json").read_text())
    assert a["value"] == b["value"]
    with h5py.File(tmp_path / "results/synthetic/scores.h5") as fa, \
            h5py.File(local / "results/synthetic/scores.h5") as fb:
        assert sorted(fa["frames"]) == sorted(fb["frames"])
        for vid in fa["frames"]:
            np.testing.assert_allclose(fa["frames"][vid][()], fb["frames"][vid][()], atol=1e-6)
