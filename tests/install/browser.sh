#!/usr/bin/env bash
# Installs Debian's Chromium and its driver for the browser tests (tests/scoring/test_viewer.py).
# Needs root and apt-get; `make test` calls it only where both are there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
echo "installing chromium chromium-driver for the viewer's browser tests"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
