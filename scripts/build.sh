#!/usr/bin/env bash
# Builds one configuration: scripts/build.sh [release|sanitize]; prints the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${1:-release}
case "$cfg" in
  release)  dir=build;      flags=(-DCMAKE_BUILD_TYPE=Release) ;;
  sanitize) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGSOCKS_SANITIZE=ON) ;;
  *) echo "usage: scripts/build.sh [release|sanitize]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$(nproc)" >&2
echo "$dir"
