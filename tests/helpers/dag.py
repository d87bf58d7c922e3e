"""Running the Snakemake DAG from tests: a subprocess with the venv on PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(*args: str, cwd: Path | None = None, config: Path | None = None,
              timeout: int = 900) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile")]
    if cwd is not None:
        cmd += ["--directory", str(cwd)]
    if config is not None:
        cmd += ["--configfile", str(config)]
    return subprocess.run(cmd + list(args), cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the table a dry run prints."""
    counts = {}
    for line in dry_run_output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


TINY = {
    "train_normal": 6, "train_per_class": 2, "test_normal": 3, "test_per_class": 1,
    "min_frames": 64, "max_frames": 128, "seed": 1,
}


def tiny_config(tmp_path: Path, epochs: int = 2) -> Path:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    syn = cfg["datasets"]["synthetic"]
    syn["synthetic"] = TINY
    syn["extraction"] = {"shards": 2, "batch_size": 16, "decode_workers": 0}
    syn["train"] = {"epochs": epochs, "batch_normal": 4, "batch_anomalous": 4}
    syn["model"] = {"ff_dim": 256}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
