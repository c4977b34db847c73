#!/usr/bin/env bash
# Installs what is missing, builds the release and the ASan+UBSan configurations, and runs
# every test of both with ctest. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
for cfg in release sanitize; do
  dir=$(bash scripts/build.sh "$cfg")
  echo "== ctest ($cfg) =="
  if [ "$cfg" = sanitize ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  fi
  ctest --test-dir "$dir" --output-on-failure -j 2 || status=1
done
exit $status
