#!/usr/bin/env bash
# The admission webhook's cost per review, side by side with the same listener's `GET /ready`
# (TLS and HTTP/2 without the mutation), in one run on loopback:
#
#   ready   h2load GET  https://127.0.0.1:P/ready
#   mutate  h2load POST https://127.0.0.1:P/mutate  (tests/golden/webhook/pod-create-review.json)
#
# Each: one connection, one stream at a time (latency per request), then 4 connections x 4
# streams (throughput); the webhook's CPU time per request from /proc/PID/stat, and its VmRSS
# after the load. Namespace lookups are off (--namespace-lookup=false): no API server here, and
# in a cluster that GET is the API server's cost, not ours.
#
# Usage: cargo build --release && bash benches/webhook.sh
# Knobs: TRACEMESH_BIN (default target/release/tracemesh), BENCH_REQUESTS (default 20000).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TRACEMESH_BIN:-$ROOT/target/release/tracemesh}"
N="${BENCH_REQUESTS:-20000}"
for tool in h2load openssl; do
  command -v "$tool" >/dev/null || { echo "webhook bench: $tool missing (bash benches/install-deps.sh)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "webhook bench: $BIN missing (cargo build --release)" >&2; exit 1; }

DIR="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$DIR/tls.key" -out "$DIR/tls.crt" 2>/dev/null
# info: the listening line (and one `reviewed` line per review, as in production).
RUST_LOG=info "$BIN" webhook --listen 127.0.0.1:0 --tls-cert "$DIR/tls.crt" --tls-key "$DIR/tls.key" \
  --namespace-lookup=false --drain-delay=0s 2>"$DIR/log" &
PID=$!
for _ in $(seq 100); do
  ADDR="$(sed -n 's/.*webhook listening listen=\([0-9.:]*\).*/\1/p' "$DIR/log" | head -1)"
  [ -n "$ADDR" ] && break
  sleep 0.05
done
[ -n "$ADDR" ] || { cat "$DIR/log" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ="$(getconf CLK_TCK)"
REVIEW="$ROOT/tests/golden/webhook/pod-create-review.json"

run() { # name path extra-args... ; prints: name rps mean_ms cpu_us_per_req
  local name=$1 path=$2; shift 2
  h2load -n 2000 -c 1 -m 1 "$@" "https://$ADDR$path" >/dev/null 2>&1 # warm-up
  local seq; seq="$(h2load -n "$N" -c 1 -m 1 "$@" "https://$ADDR$path" 2>&1)"
  local before after par
  before="$(cpu_ticks)"
  par="$(h2load -n "$N" -c 4 -m 4 "$@" "https://$ADDR$path" 2>&1)"
  after="$(cpu_ticks)"
  local ok; ok="$(echo "$par" | sed -n 's/.* \([0-9]*\) succeeded.*/\1/p')"
  [ "$ok" = "$N" ] || { echo "$name: $par" >&2; exit 1; }
  local mean rps
  mean="$(echo "$seq" | awk '/time for request:/ {print $6}')"
  rps="$(echo "$par" | sed -n 's/finished in .*, \([0-9.]*\) req\/s.*/\1/p')"
  local cpu_us; cpu_us="$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$N" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
  echo "$name $rps $mean $cpu_us"
}

R="$(run ready /ready)"
M="$(run mutate /mutate -d "$REVIEW" -H 'content-type: application/json')"
RSS="$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status")"
echo
echo "| | GET /ready | POST /mutate (inject) | mutate / ready |"
echo "|---|---|---|---|"
read -r _ r_rps r_mean r_cpu <<<"$R"
read -r _ m_rps m_mean m_cpu <<<"$M"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
echo "| throughput, 4 conns x 4 streams | $r_rps req/s | $m_rps req/s | $(ratio "$m_rps" "$r_rps") |"
echo "| latency, 1 stream, mean | $r_mean | $m_mean | |"
echo "| webhook CPU per request | ${r_cpu} µs | ${m_cpu} µs | $(ratio "$m_cpu" "$r_cpu") |"
echo "| webhook RSS after the load | | ${RSS} MiB | |"
