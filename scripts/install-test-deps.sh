#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently. Nothing is
# installed by hand anywhere: CI and developers run this same script (via scripts/test.sh).
#
# - rustfmt, clippy: `cargo fmt --check` and `cargo clippy` in scripts/test.sh.
# - python3 + prometheus-client (pinned): tests/metrics.rs feeds /metrics to its strict
#   OpenMetrics parser (tests/peers/parse_exposition.py).
# - iptables, iproute2, curl, util-linux (unshare, setpriv): tests/transparent.rs redirects a
#   client's TCP with real NAT rules in a network namespace it creates.
# - util-linux's prlimit: tests/admin.rs runs the proxy under a low file descriptor limit.
# - prometheus (Debian's package): tests/prometheus.rs runs a real Prometheus against a proxy.
#   The test starts its own instance on 127.0.0.1; the package's service is never started.
# - chromium (Debian's package): tests/debug_traces.rs loads /debug/traces in headless
#   Chromium over the DevTools protocol.
set -euo pipefail

# The prometheus-client release tests/peers/parse_exposition.py is written against.
PROMETHEUS_CLIENT_VERSION=0.22.1

need_apt=()
command -v rustfmt >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# tests/transparent.rs: iptables NAT rules in a network namespace the test creates.
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)

if [ "${#need_apt[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not start Prometheus (or anything else) as a service: the test runs its
  # own. invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and 101 means "not allowed". A
  # policy the machine already has is left alone.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

installed_client() {
  python3 -c 'import importlib.metadata as m; print(m.version("prometheus-client"))' 2>/dev/null
}
if [ "$(installed_client || true)" != "$PROMETHEUS_CLIENT_VERSION" ]; then
  pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
  # Debian's own python3 is "externally managed" (PEP 668) and refuses a plain pip install; this
  # one pure-Python test dependency may go into it anyway.
  if python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    pip_flags+=(--break-system-packages)
  fi
  python3 -m pip install "${pip_flags[@]}" "prometheus-client==${PROMETHEUS_CLIENT_VERSION}"
fi

python3 -c 'import prometheus_client.openmetrics.parser, prometheus_client.parser'
prometheus --version 2>&1 | sed -n 1p

# ---------------------------------------------------------------------------------------------
# Helm chart tests (tests/chart/, scripts/render-manifests.sh).
# - helm-python-sdk (pinned): Helm's official Go SDK (v4) as a Python package, its native
#   library inside the wheel: lints and renders charts/tracemesh with no helm binary.
# - kubernetes-validate (pinned): the Kubernetes JSON schemas the rendered documents are
#   validated against (tests/chart/chartlib.py names the Kubernetes release).
# - openssl: tests/chart checks the chart's generated CA, certificate and key belong together.
HELM_PYTHON_SDK_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0

command -v openssl >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl
}
installed_version() {
  python3 -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null
}
chart_pkgs=()
[ "$(installed_version helm-python-sdk || true)" = "$HELM_PYTHON_SDK_VERSION" ] ||
  chart_pkgs+=("helm-python-sdk==${HELM_PYTHON_SDK_VERSION}")
[ "$(installed_version kubernetes-validate || true)" = "$KUBERNETES_VALIDATE_VERSION" ] ||
  chart_pkgs+=("kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}")
if [ "${#chart_pkgs[@]}" -gt 0 ]; then
  chart_pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
  if python3 -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    chart_pip_flags+=(--break-system-packages)
  fi
  python3 -m pip install "${chart_pip_flags[@]}" "${chart_pkgs[@]}"
fi
python3 -c 'import helm_python, kubernetes_validate, yaml; print("helm SDK", helm_python.helm_sdk_version())'
