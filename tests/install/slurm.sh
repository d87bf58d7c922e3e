#!/usr/bin/env bash
# Installs Debian's SLURM and munge for the real-SLURM test (tests/workflow/test_slurm.py).
# Needs root and apt-get; `make test` calls it only where both are there.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then
  exit 0
fi
echo "installing slurmctld slurmd slurm-client munge for the SLURM test"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
