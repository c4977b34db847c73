#!/usr/bin/env bash
# Builds one configuration: scripts/build.sh [release|sanitize|daemon]; prints the build
# directory. daemon: the release build without the tests (no Criterion needed), for run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${1:-release}
case "$cfg" in
  release)  dir=build;      flags=(-DCMAKE_BUILD_TYPE=Release) ;;
  sanitize) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGSOCKS_SANITIZE=ON) ;;
  daemon)   dir=build-daemon; flags=(-DCMAKE_BUILD_TYPE=Release -DRINGSOCKS_TESTS=OFF) ;;
  *) echo "usage: scripts/build.sh [release|sanitize|daemon]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$(nproc)" >&2
echo "$dir"
