#!/usr/bin/env bash
# Installs Debian's ffmpeg for the live-scoring tests (tests/scoring/test_live.py): it serves sample
# videos in real time over HTTP on the loopback interface.
# Needs root and apt-get; `make test` calls it only where both are there.
set -euo pipefail
if command -v ffmpeg >/dev/null; then
  exit 0
fi
echo "installing ffmpeg for the live-scoring tests"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
