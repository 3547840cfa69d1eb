#!/usr/bin/env bash
# Writes benches/hot-symbols.txt: every function of the tracemesh binary that runs while it
# starts and serves the bench's loads (HTTP/1.1 and h2c, traced and not, the hop's two proxies,
# 1% head sampling with deferred sampling), hottest first, by its linker symbol. build.rs hands
# the file to the linker of release builds (`--symbol-ordering-file`), which places those
# functions together at the start of `.text`.
#
# Why: the kernel maps a binary's code in 64 KiB blocks around each page it faults in
# (fault-around), so the resident size of the code follows how widely the code that runs is
# spread over the 11 MB of `.text`, not how much of it runs (BENCHMARKS.md, "RSS: the binary's
# pages" and "Hot code together").
#
# Usage: bash benches/hot-symbols.sh   (builds the release binary first; about 10 minutes)
# Regenerate after large changes to the request path; a symbol that no longer exists is ignored
# by the linker, and a new one is simply placed with the cold code.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin tracemesh
out=benches/hot-symbols.txt
BENCH_CALLGRIND=1 BENCH_CG_OPTS="--demangle=no" BENCH_CG_WARMUP=500 BENCH_CG_REQUESTS=3000 \
  BENCH_LEGS="tracemesh tracemesh-notrace tracemesh-hop tracemesh-1pct" BENCH_PROTOCOLS="h1 h2c" \
  bash benches/bench.sh

python3 - bench-results/run/cg "$out" <<'PY'
import collections, os, re, sys

cg_dir, out = sys.argv[1:]
cost = collections.Counter()
for name in sorted(os.listdir(cg_dir)):
    path = os.path.join(cg_dir, name)
    with open(path, errors="replace") as f:
        head = f.read(4096)
        # The proxy's own dumps: its binary is the command (nginx's config path may name the
        # repository, so the whole line is not enough).
        if not re.search(r"^cmd:\s+\S*tracemesh\s", head, re.M):
            continue  # nginx, the upstream
        f.seek(0)
        names, fn, after_call = {}, None, False
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m and m.group(2) is not None:
                    names[m.group(1)] = m.group(2)
                if line.startswith("fn=") and m:
                    fn = names.get(m.group(1))
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if after_call:  # a call's inclusive cost, not the caller's own
                    after_call = False
                    continue
                parts = line.split()
                if fn and len(parts) > 1 and parts[1].isdigit():
                    cost[fn] += int(parts[1])
# Linker symbols only: callgrind's own names for code without one ("0x…") are skipped.
syms = [s for s, c in cost.most_common() if c > 0 and re.fullmatch(r"[A-Za-z_.$][\w.$]*", s)]
with open(out, "w") as f:
    for s in syms:
        f.write(s + "\n")
print("hot-symbols: %d functions -> %s" % (len(syms), out))
PY
