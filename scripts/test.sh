#!/usr/bin/env bash
# The one test command (README.md, and .ci/run calls it): installs what the tests need, then
# runs formatting, lint and every test. Safe to run again: each install step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Root-only tests (network namespaces, iptables, chroot: tests/{transparent,init,mesh,image,
# security}.rs) are #[ignore]d, so elsewhere they are reported as ignored, never as passed. As
# root they run (--include-ignored); CI runs as root, and a CI run that is not root fails here,
# before anything else, rather than go green without them.
include_ignored=()
if [ "$(id -u)" -eq 0 ]; then
  include_ignored=(--include-ignored)
elif [ "${CI:-}" = true ]; then
  echo "scripts/test.sh: CI=true but running as UID $(id -u), not root: the root-only tests" \
    "(network namespaces, iptables, chroot) cannot run. Run CI as root (or: sudo -E bash scripts/test.sh)." >&2
  exit 1
fi

bash scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== chart tests (Helm SDK lint/render, Kubernetes schema validation, manifests/ up to date)"
set +e
chart_out="$(python3 tests/chart/test_chart.py 2>&1)"
chart_status=$?
set -e
echo "$chart_out"
chart_passed=$(echo "$chart_out" | sed -n 's/^chart: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p' | tail -1)
chart_failed=$(echo "$chart_out" | sed -n 's/^chart: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p' | tail -1)
# A run that could not even report counts is a failure, never zero tests.
[ -n "$chart_passed" ] || { chart_passed=0; chart_failed=1; }

echo "== cargo test"
# Integration tests start real processes; two threads keep a 2-core machine responsive.
# --all-targets: unit, binary and integration tests (the crate has no doctests).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}" \
  ${include_ignored[@]+"${include_ignored[@]}"} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, so a reader of the last line sees the whole run.
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
# Ignored tests did not run: counted apart, never as passed.
ignored=$(grep -Eo '^test result: [a-zA-Z]+\. .* [0-9]+ ignored;' "$log" | grep -Eo '[0-9]+ ignored;' \
  | awk '{s+=$1} END {print s+0}')
passed=$((passed + chart_passed))
failed=$((failed + chart_failed))
echo
if [ "$ignored" -gt 0 ]; then
  echo "tests: $passed passed, $failed failed, $ignored ignored (root-only: not run; run as root to include them)"
else
  echo "tests: $passed passed, $failed failed"
fi
[ "$chart_status" -eq 0 ] || exit "$chart_status"
exit "$status"
