#!/usr/bin/env bash
# Installs what is missing, builds, and runs ringsocks in the foreground (default 127.0.0.1:1080).
# Flags pass through: scripts/run.sh -v --user alice:secret
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --build  # what building needs; the test peers and tools come with test.sh
dir=$(bash scripts/build.sh daemon)
exec "$dir/ringsocks" "$@"
