#!/usr/bin/env bash
# Installs what ringsocks needs to build, test and benchmark, from Debian's packages.
# scripts/setup.sh --build: only what building the daemon needs (scripts/run.sh).
# Idempotent: when everything is present it only checks and returns.
set -euo pipefail

PKGS=(build-essential cmake pkg-config liburing-dev libc-ares-dev)
if [ "${1:-}" != --build ]; then
  PKGS+=(libcriterion-dev curl python3 dante-server microsocks wrk clang-format iproute2)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
