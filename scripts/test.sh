#!/usr/bin/env bash
# The one test command (README.md, and .ci/run calls it): installs what the tests need, then
# runs formatting, lint and every test. Safe to run again: each install step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
# Integration tests start real processes; two threads keep a 2-core machine responsive.
cargo test --locked -- --test-threads="${TEST_THREADS:-2}"
