#!/usr/bin/env bash
# Renders charts/tracemesh into manifests/tracemesh.yaml with the real Helm SDK (PyPI
# helm-python-sdk; no helm binary). scripts/install-test-deps.sh installs it.
#
#   bash scripts/render-manifests.sh          # (re)write manifests/tracemesh.yaml
#   bash scripts/render-manifests.sh --check  # exit 1 if it is out of date (CI)
#
# The file is the chart's defaults plus webhook.issueOwnCertificate=true: the webhook issues its
# own certificate in the cluster, so the file holds no key material, every render is the same,
# and --check compares it exactly (tests/chart/chartlib.py explains the choice).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -B tests/chart/chartlib.py "$@"
