#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently. Nothing is
# installed by hand anywhere: CI and developers run this same script (via scripts/test.sh).
set -euo pipefail

need_apt=()
command -v rustfmt >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

if [ "${#need_apt[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
