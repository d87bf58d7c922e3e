"""Interruptions: jobs killed with SIGKILL at seeded random moments, then run again.

Each run starts the real `tpwng` command line (extract, train or infer) in a fresh process,
kills its whole process group (decode workers and decoding children included) after a random
delay, checks that the output either does not exist or is complete and identical to an
uninterrupted run's, then reruns the same command and compares checksums of the feature arrays,
checkpoint tensors and scores. The last test does the same through Snakemake, killing the
scheduler and its jobs together and rerunning the target. Every run uses the settings that
Snakemake passes for the same config, so all outputs can be compared with one reference.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers import faults
from tests.helpers.dag import BIN, REPO
from tests.workflow.test_faults import ANNOTATIONS, TEST, TRAIN
from tpwng.config import dataset_settings, validate
from tpwng.data.manifest import make_manifest

OUTPUT = {"extract": "features.h5", "train": "model.pt", "infer": "scores.h5"}
# 12 seeded runs: extraction and training five times each, scoring twice
RUNS = [(seed, stage) for seed, stage in enumerate(["extract", "train"] * 5 + ["infer"] * 2)]


def _argv(stage: str, settings: dict, d: Path, out: Path, features: Path, model: Path
          ) -> list[str]:
    s = ["--settings", json.dumps(settings), "--manifest", str(d / "manifest.tsv")]
    return {
        "extract": ["extract", *s, "--out", str(out)],
        "train": ["train", *s, "--features", str(features), "--out", str(out), "--log",
                  str(out.with_name("train_log.tsv"))],
        "infer": ["infer", *s, "--features", str(features), "--model", str(model), "--out",
                  str(out)],
    }[stage]


def _checksums(stage: str, path: Path) -> dict[str, str]:
    return {"extract": faults.store_checksums, "train": faults.checkpoint_checksums,
            "infer": faults.scores_checksums}[stage](path)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # not yet its own group leader: kill the process itself
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> SimpleNamespace:
    """A small dataset, its manifest, and one uninterrupted run of each stage (reference)."""
    ctx = faults.cli_context()
    d = tmp_path_factory.mktemp("interrupts")
    root = faults.folder_dataset(d / "ds", TRAIN, TEST, ANNOTATIONS, frames=96)
    small = faults.folder_settings(root, decode_workers=2)
    small["train"]["epochs"] = 12
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["faulty"] = {
        "format": "folder", "root": str(root), "classes": small["classes"],
        **{k: small[k] for k in ("clip", "extraction", "model", "train")}}
    validate(cfg)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    settings = dataset_settings(cfg, "faulty")  # exactly what the rules pass
    make_manifest(settings, d / "manifest.tsv", progress=False)
    ref = d / "ref"
    features, model = ref / OUTPUT["extract"], ref / OUTPUT["train"]
    counter = iter(range(10**6))

    def run(stage: str, out: Path, kill_after: float | None = None,
            model_path: Path = model) -> tuple[bool, float]:
        """(killed, seconds) of one run of `stage` writing `out`."""
        log = d / f"run{next(counter)}.log"
        argv = _argv(stage, settings, d, out, features, model_path)
        p = ctx.Process(target=faults.run_cli, args=(argv, str(log), str(d), None))
        t0 = time.monotonic()
        p.start()
        p.join(kill_after)
        killed = p.exitcode is None
        if killed:
            _kill_group(p.pid)
            p.join(60)
            assert p.exitcode == -signal.SIGKILL, p.exitcode
        else:
            assert p.exitcode == 0, log.read_text()[-3000:]
        return killed, time.monotonic() - t0

    seconds, sums = {}, {}
    for stage in ("extract", "train", "infer"):
        run(stage, ref / "warmup" / OUTPUT[stage])  # the first run also warms file caches
        _, seconds[stage] = run(stage, ref / OUTPUT[stage])
        sums[stage] = _checksums(stage, ref / OUTPUT[stage])
    assert len(sums["extract"]) == 7 and len(sums["infer"]) == 2
    return SimpleNamespace(run=run, seconds=seconds, sums=sums, ref=ref, config=d / "config.yaml")


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name not in
                  (out.name, "train_log.tsv"))


@pytest.mark.parametrize(("seed", "stage"), RUNS)
def test_killed_job_reruns_to_identical_outputs(job, tmp_path, seed, stage):
    rng = random.Random(seed)
    delay = rng.uniform(0.02, 0.7) * job.seconds[stage]
    out = tmp_path / "out" / OUTPUT[stage]
    killed, _ = job.run(stage, out, kill_after=delay)
    assert killed, f"the job finished within {delay:.2f} s"
    # never a half-written file under the final name: absent, or whole and identical
    if out.exists():
        assert _checksums(stage, out) == job.sums[stage]
    if out.parent.exists():
        assert all(n.startswith(f".{out.name}.tmp-") for n in _leftovers(out)), \
            _leftovers(out)
    killed, _ = job.run(stage, out)
    assert not killed
    assert _checksums(stage, out) == job.sums[stage]
    assert _leftovers(out) == []  # the killed run's temporary file was cleared
    if stage == "train":  # the rerun's model scores the test videos exactly as the reference
        scores = tmp_path / "scores.h5"
        job.run("infer", scores, model_path=out)
        assert _checksums("infer", scores) == job.sums["infer"]


# --------------------------------------------------------------------------- through Snakemake


def _snakemake(cwd: Path, config: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(cwd),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_snakemake_killed_mid_run_reruns_to_identical_outputs(job, tmp_path):
    """Kill the scheduler and every job it started (SIGKILL to the group) at a seeded moment
    of a run from the videos to the trained model; unlock (a killed Snakemake leaves its lock)
    and run the same target again with --rerun-incomplete: features and weights equal the
    reference run's."""
    target = "models/faulty/tpwng.pt"
    proc = _snakemake(tmp_path, job.config, target)
    time.sleep(random.Random(2024).uniform(2.0, 14.0))
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from tpwng.features.store import FeatureStore

    for p in (tmp_path / "features").rglob("*.h5"):  # any store under its final name is whole
        with FeatureStore(p) as s:
            assert len(s.video_ids()) == 7
    unlock = _snakemake(tmp_path, job.config, "--unlock")
    assert unlock.wait(120) == 0, unlock.stdout.read()
    # a job killed mid-run is marked incomplete by Snakemake: its outputs are redone
    again = _snakemake(tmp_path, job.config, target, "--rerun-incomplete")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert (faults.store_checksums(tmp_path / "features/faulty/features.h5")
            == job.sums["extract"])
    assert faults.checkpoint_checksums(tmp_path / target) == job.sums["train"]
    assert not list(tmp_path.rglob(".*.tmp-*"))
