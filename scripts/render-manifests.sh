#!/usr/bin/env bash
# Renders charts/tracemesh with its default values into manifests/tracemesh.yaml, with the real
# Helm SDK (PyPI helm-python-sdk; no helm binary). scripts/install-test-deps.sh installs it.
#
#   bash scripts/render-manifests.sh          # (re)write manifests/tracemesh.yaml
#   bash scripts/render-manifests.sh --check  # exit 1 if it is out of date (CI)
#
# The chart generates the webhook's CA and serving certificate, so each render has new key
# material. The file is rewritten only when something other than that key material changed, and
# --check ignores it (tests/chart/chartlib.py explains the choice).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -B tests/chart/chartlib.py "$@"
