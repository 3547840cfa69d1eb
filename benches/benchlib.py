#!/usr/bin/env python3
"""Parsing and reporting for benches/bench.sh (standard library only).

  benchlib.py wrk LEG PROTO OUTPUT                  -> one JSON line (closed loop, HTTP/1.1)
  benchlib.py h2load KIND LEG PROTO OUTPUT LOGFILE  -> one JSON line (KIND: closed | fixed)
  benchlib.py stat LEG PROTO STAT.csv FIXED_OUTPUT  -> one JSON line (perf stat counts per request)
  benchlib.py closedcpu LEG PROTO SAMPLE HZ RESULTS.jsonl
                                                    -> one JSON line (CPU µs per request, closed loop)
  benchlib.py callgrind LEG PROTO H2LOAD_OUTPUT CALLGRIND.out...
                                                    -> one JSON line (instructions per request)
  benchlib.py report RESULTS.jsonl META.json        -> markdown on stdout

Latency percentiles: wrk's own --latency distribution; for h2load (which prints only
min/max/mean/sd) they are computed here from its --log-file, one row per request
(start µs, status, µs until the end of the response).
"""
import json
import math
import re
import sys

LEG_NAMES = {
    "direct": "direct (no proxy)",
    "nginx": "nginx reverse proxy",
    "haproxy": "HAProxy reverse proxy",
    "haproxy-h2": "HAProxy, HTTP/2 to the upstream",
    "envoy": "Envoy + OTel (100%)",
    "envoy-notrace": "Envoy, no tracing (reference)",
    "tracemesh": "tracemesh inbound, tracing on",
    "tracemesh-notrace": "tracemesh inbound, exporter none",
    "tracemesh-nored": "tracemesh inbound, tracing on, RED metrics off",
    "tracemesh-hop": "tracemesh outbound → inbound",
    "floor": "floor: minimal hyper proxy (no tracing)",
    "tracemesh-1pct": "tracemesh, 1% head + deferred sampling, 1% errors",
    "tracemesh-1pct-headonly": "tracemesh, 1% head sampling only, 1% errors",
    "tracemesh-1w": "tracemesh, tracing on, 1 worker, both CPUs",
    "tracemesh-2w": "tracemesh, tracing on, 2 workers, both CPUs",
    "tracemesh-accesslog": "tracemesh, tracing on, --access-log json (to a file)",
    "tracemesh-nodebug": "tracemesh, tracing on, --debug-traces off",
    "tracemesh-base": "tracemesh, tracing on, the base build (TRACEMESH_BASE_BIN)",
}
LEG_ORDER = list(LEG_NAMES)
PROTO_NAMES = {"h1": "HTTP/1.1", "h2c": "h2c"}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return None
    v = float(m.group(1))
    return {"us": v / 1000.0, "ms": v, "s": v * 1000.0, "m": v * 60000.0}[m.group(2)]


def parse_wrk(leg, proto, path):
    text = open(path, encoding="utf-8", errors="replace").read()
    r = {"kind": "closed", "leg": leg, "proto": proto, "tool": "wrk"}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    r["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "90", "99"):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, text, re.M)
        r["p" + pct] = to_ms(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    r["errors"] = errors
    if r["rps"] is None:
        r["failed"] = "no wrk result (see %s)" % path
    return r


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def parse_h2load(kind, leg, proto, path, logfile):
    text = open(path, encoding="utf-8", errors="replace").read()
    r = {"kind": kind, "leg": leg, "proto": proto, "tool": "h2load"}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    r["rps"] = float(m.group(3)) if m else None
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        r["requests"] = done
        r["succeeded"] = ok
        r["errors"] = failed + errored + timeout
    else:
        r["errors"] = None
    lat = []
    try:
        with open(logfile, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    try:
                        lat.append(int(parts[2]) / 1000.0)
                    except ValueError:
                        pass
    except OSError:
        pass
    lat.sort()
    for pct in (50, 90, 99):
        r["p%d" % pct] = percentile(lat, pct)
    r["samples"] = len(lat)
    if r["rps"] is None:
        r["failed"] = "no h2load result (see %s)" % path
    return r


def parse_closed_cpu(leg, proto, sample_path, hz, results_path):
    """The proxy's CPU time per request in the closed loop: its share of a core over the
    measured window (`closed_cpu_sampler` in bench.sh) divided by the run's req/s. This is what
    bounds throughput when the proxy is the bottleneck, kernel time included. It moves with the
    machine's speed between repeats as much as req/s does (BENCHMARKS.md, 2026-12-06): read it
    as a median over repeats."""
    r = {"kind": "closedcpu", "leg": leg, "proto": proto}
    try:
        a, b, ta, tb = open(sample_path, encoding="utf-8").read().split()
        share = (int(b) - int(a)) / float(hz) / (float(tb) - float(ta))
    except (OSError, ValueError, ZeroDivisionError):
        r["failed"] = "no closed-loop CPU sample (see %s)" % sample_path
        return r
    rps = None
    for line in open(results_path, encoding="utf-8"):
        row = json.loads(line) if line.strip() else {}
        if row.get("kind") == "closed" and row.get("leg") == leg and row.get("proto") == proto:
            rps = row.get("rps")
    r["core_share"] = share
    if rps:
        r["cpu_us_per_req"] = share / rps * 1e6
    return r


# ---------------------------------------------------------------------------------------- report

def fmt(v, digits=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return "{:,.0f}".format(v)
        return ("{:.%df}" % digits).format(v)
    return str(v)


def median_row(rs):
    """The last row of `rs`, with every number replaced by its median over `rs`."""
    out = dict(rs[-1])
    for k, v in rs[-1].items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        vals = sorted(r[k] for r in rs if isinstance(r.get(k), (int, float)))
        n = len(vals)
        if n % 2:
            out[k] = vals[n // 2]
        else:
            lo, hi = vals[n // 2 - 1], vals[n // 2]
            both_int = isinstance(lo, int) and isinstance(hi, int) and (lo + hi) % 2 == 0
            out[k] = (lo + hi) // 2 if both_int else (lo + hi) / 2.0
    return out


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return "{:.2f}×".format(a / b)


def report(results_path, meta_path):
    meta = json.load(open(meta_path, encoding="utf-8"))
    rows = [json.loads(l) for l in open(results_path, encoding="utf-8") if l.strip()]
    # A leg run more than once (BENCH_REPEAT) reports the median of each figure.
    groups = {}
    for r in rows:
        groups.setdefault((r["leg"], r["proto"], r["kind"]), []).append(r)
    by = {}
    for (leg, proto, kind), rs in groups.items():
        by.setdefault((leg, proto), {})[kind] = median_row(rs)
    out = []
    w = out.append
    w("# tracemesh benchmark — %s" % meta.get("date", ""))
    w("")
    if meta.get("preliminary"):
        w("> **%s**" % meta["preliminary"])
        w("")
    for line in meta.get("banners", []):
        w("> **%s**" % line)
        w("")
    w("Machine: %s" % meta.get("machine", ""))
    w("")
    w("Settings: %s" % meta.get("settings", ""))
    w("")
    w("Load average before/after: %s / %s" % (meta.get("load_before", "?"), meta.get("load_after", "?")))
    w("")
    w("Tools: %s" % meta.get("tools", ""))
    w("")
    timed = any(set(d) & {"closed", "fixed", "proc"} for d in by.values())
    if timed:  # a BENCH_CALLGRIND run times nothing: it has only the instructions table
        w("## Results")
        w("")
        w("Closed loop: HTTP/1.1 by `wrk -t1 -c%s`, h2c by `h2load -t1 -c%s -m%s`. "
          "Fixed rate: `h2load --rps` at %s req/s in total over %s connections. "
          "Latencies in ms. CPU: user+system time of the proxy process(es) during the fixed-rate run, "
          "as %% of one core per 1,000 req/s (for *direct*: the upstream nginx itself). "
          "CPU µs/req: the proxy process(es)' user+system time per request in the closed loop "
          "(share of a core over its measured window ÷ its req/s). "
          "RSS: VmRSS after the load (sum over the leg's processes); anon / file: its RssAnon "
          "(heap, stacks) and RssFile (pages of the binary and libraries) parts."
          % (meta.get("wrk_conns"), meta.get("h2_conns"), meta.get("h2_streams"),
             meta.get("rate"), meta.get("rate_conns")))
        w("")
        w("| leg | proto | closed req/s | p50 | p90 | p99 | CPU µs/req | fixed req/s | p50 | p90 | p99 | CPU %/1k req/s | RSS MiB | anon / file MiB | errors |")
        w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for proto in ("h1", "h2c"):
            for leg in LEG_ORDER:
                d = by.get((leg, proto))
                if not d or not (set(d) & {"closed", "fixed", "proc", "skipped"}):
                    continue
                c = d.get("closed", {})
                f = d.get("fixed", {})
                s = d.get("proc", {})
                if d.get("skipped"):
                    w("| %s | %s | %s |  |  |  |  |  |  |  |  |  |  |  |  |" % (
                        LEG_NAMES[leg], PROTO_NAMES[proto], "skipped: " + d["skipped"]["reason"]))
                    continue
                errs = [x for x in (c.get("errors"), f.get("errors")) if x is not None]
                split = "—"
                if s.get("rss_anon_mib") is not None and s.get("rss_file_mib") is not None:
                    split = "%s / %s" % (fmt(s["rss_anon_mib"], 1), fmt(s["rss_file_mib"], 1))
                w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    LEG_NAMES[leg], PROTO_NAMES[proto],
                    fmt(c.get("rps")), fmt(c.get("p50")), fmt(c.get("p90")), fmt(c.get("p99")),
                    fmt(d.get("closedcpu", {}).get("cpu_us_per_req")),
                    fmt(f.get("rps")), fmt(f.get("p50")), fmt(f.get("p90")), fmt(f.get("p99")),
                    fmt(s.get("cpu_pct_per_krps")), fmt(s.get("rss_mib"), 1), split,
                    sum(errs) if errs else "—"))
        w("")
        w("## Ratios")
        w("")
        w("Throughput ratios above 1 are better for tracemesh; latency, CPU and RSS ratios below 1 are.")
        w("")
        any_tm = False
        for proto in ("h1", "h2c"):
            refs = {k: by.get((k, proto), {}) for k in ("direct", "nginx", "haproxy", "haproxy-h2", "envoy", "floor")}
            for leg in ("tracemesh", "tracemesh-nored", "tracemesh-notrace", "tracemesh-hop",
                        "tracemesh-1w", "tracemesh-2w", "tracemesh-1pct", "tracemesh-1pct-headonly",
                        "tracemesh-accesslog", "tracemesh-nodebug", "tracemesh-base"):
                d = by.get((leg, proto))
                if not d or d.get("skipped") or "closed" not in d:
                    continue
                if not any_tm:
                    w("| tracemesh leg | proto | metric | ÷ nginx | ÷ HAProxy | ÷ HAProxy h2 | ÷ Envoy+OTel | ÷ floor | ÷ direct |")
                    w("|---|---|---|--:|--:|--:|--:|--:|--:|")
                    any_tm = True
                metrics = [
                    ("closed-loop req/s", "closed", "rps", True),
                    ("closed-loop p99", "closed", "p99", True),
                    ("fixed-rate p50", "fixed", "p50", True),
                    ("fixed-rate p99", "fixed", "p99", True),
                    ("CPU µs per request, closed loop", "closedcpu", "cpu_us_per_req", False),
                    ("CPU per 1k req/s", "proc", "cpu_pct_per_krps", False),
                    ("RSS", "proc", "rss_mib", False),
                    ("KiB per idle keep-alive connection", "proc", "idle_kib_per_conn", False),
                ]
                for label, kind, key, vs_direct in metrics:
                    mine = d.get(kind, {}).get(key)
                    cells = [ratio(mine, refs[r].get(kind, {}).get(key)) for r in ("nginx", "haproxy", "haproxy-h2", "envoy", "floor")]
                    cells.append(ratio(mine, refs["direct"].get(kind, {}).get(key)) if vs_direct else "—")
                    w("| %s | %s | %s | %s |" % (LEG_NAMES[leg], PROTO_NAMES[proto], label, " | ".join(cells)))
        if not any_tm:
            w("No tracemesh leg ran, so there are no ratios (see the banner above).")
        w("")
        cost = [(proto, by[("tracemesh", proto)], by[("tracemesh-notrace", proto)]) for proto in ("h1", "h2c")
                if "closed" in by.get(("tracemesh", proto), {}) and "closed" in by.get(("tracemesh-notrace", proto), {})]
        if cost:
            w("## Tracing's cost in the same binary (tracing on ÷ exporter `none`)")
            w("")
            w("Throughput kept by tracing, three ways: closed-loop req/s, the inverse of the "
              "closed loop's CPU per request (what caps throughput when the proxy is the "
              "bottleneck, kernel time included), and the inverse of CPU per 1k req/s at the "
              "fixed rate. All three move with the machine's speed between repeats; these are "
              "medians over repeats, each running the two legs one after the other. "
              "BENCH_CALLGRIND's instruction counts are the steady comparison.")
            w("")
            w("| proto | closed req/s kept | by closed-loop CPU per request | by fixed-rate CPU | CPU µs/req on / none |")
            w("|---|--:|--:|--:|--:|")
            for proto, on, off in cost:
                def kept(kind, key, inverse):
                    a, b = on.get(kind, {}).get(key), off.get(kind, {}).get(key)
                    if not a or not b:
                        return "—"
                    return "%.3f" % ((b / a) if inverse else (a / b))
                us = (on.get("closedcpu", {}).get("cpu_us_per_req"), off.get("closedcpu", {}).get("cpu_us_per_req"))
                w("| %s | %s | %s | %s | %s |" % (
                    PROTO_NAMES[proto], kept("closed", "rps", False), kept("closedcpu", "cpu_us_per_req", True),
                    kept("proc", "cpu_pct_per_krps", True),
                    "%s / %s" % (fmt(us[0]), fmt(us[1])) if all(us) else "—"))
            w("")
    stats = [(leg, proto, by[(leg, proto)]["stat"]) for proto in ("h1", "h2c") for leg in LEG_ORDER
             if "stat" in by.get((leg, proto), {}) and "syscalls_per_req" in by[(leg, proto)]["stat"]]
    if stats:
        w("## Syscalls per request (BENCH_STAT)")
        w("")
        w("`perf stat` tracepoint counts over the fixed-rate run, divided by the requests it "
          "completed: all syscalls, context switches, page faults, and the named syscalls above "
          "0.05 per request (`madvise` is the allocator returning pages, a page fault taking one back).")
        w("")
        w("| leg | proto | syscalls | context switches | page faults | by syscall |")
        w("|---|---|--:|--:|--:|---|")
        for leg, proto, st in stats:
            named = sorted(((k[3:], v) for k, v in st.items() if k.startswith("sc_") and v >= 0.05),
                           key=lambda kv: -kv[1])
            w("| %s | %s | %s | %s | %s | %s |" % (
                LEG_NAMES[leg], PROTO_NAMES[proto], fmt(st["syscalls_per_req"]),
                fmt(st.get("cs_per_req")), fmt(st.get("pf_per_req")),
                ", ".join("%s %.2f" % kv for kv in named)))
        w("")
    instr = [(leg, proto, by[(leg, proto)]["instr"]) for proto in ("h1", "h2c") for leg in LEG_ORDER
             if "instr_per_req" in by.get((leg, proto), {}).get("instr", {})]
    if instr:
        w("## Instructions per request (BENCH_CALLGRIND)")
        w("")
        w("User-space instructions (callgrind's Ir, all threads of the proxy's processes) per "
          "completed request, over a fixed number of requests after a warm-up. The kernel's "
          "share (syscalls, TCP) is not in it.")
        w("")
        w("| leg | proto | requests | instructions per request | ÷ nginx | ÷ floor |")
        w("|---|---|--:|--:|--:|--:|")
        for leg, proto, ins in instr:
            ref = {k: by.get((k, proto), {}).get("instr", {}).get("instr_per_req") for k in ("nginx", "floor")}
            w("| %s | %s | %s | %s | %s | %s |" % (
                LEG_NAMES[leg], PROTO_NAMES[proto], fmt(ins.get("requests")), fmt(ins["instr_per_req"]),
                ratio(ins["instr_per_req"], ref["nginx"]), ratio(ins["instr_per_req"], ref["floor"])))
        w("")
    notes = meta.get("notes", [])
    for r in rows:
        if r.get("kind") == "proc" and r.get("note"):
            notes.append("%s %s: %s" % (LEG_NAMES[r["leg"]], PROTO_NAMES[r["proto"]], r["note"]))
        if r.get("failed"):
            notes.append("%s %s %s: %s" % (LEG_NAMES[r["leg"]], PROTO_NAMES[r["proto"]], r["kind"], r["failed"]))
    if notes:
        w("## Notes")
        w("")
        for n in notes:
            w("- " + n)
        w("")
    sys.stdout.write("\n".join(out))


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open("/proc/%d/status" % pid):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def idle_kib(port, n, proto, pids):
    """Opens n keep-alive connections to 127.0.0.1:port, sends one request on each (HTTP/1.1,
    or h2c with prior knowledge: preface, SETTINGS and one HEADERS frame) and reads its answer,
    then holds them all open: the RSS growth of `pids`, in KiB per connection."""
    import socket
    import time
    before = rss_kib(pids)
    socks = []
    h2_req = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
              + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, empty
              # HEADERS, END_STREAM|END_HEADERS, stream 1: :method GET, :scheme http, :path /,
              # :authority a (HPACK: indexed 2, 6, 4; literal without indexing of name 1 "a")
              + b"\x00\x00\x06\x01\x05\x00\x00\x00\x01" + b"\x82\x86\x84\x01\x01a")
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(h2_req if proto == "h2c" else b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        try:
            s.recv(65536)
        except OSError:
            pass
    time.sleep(1.0)
    after = rss_kib(pids)
    for s in socks:
        s.close()
    return (after - before) / float(n)


def parse_stat(leg, proto, csv_path, fixed_path):
    """`perf stat -x,` counts over the fixed-rate run, per request that run completed."""
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done",
                  open(fixed_path, errors="replace").read())
    done = int(m.group(1)) if m else 0
    r = {"kind": "stat", "leg": leg, "proto": proto}
    if not done:
        return r
    for line in open(csv_path, errors="replace"):
        f = line.strip().split(",")
        if len(f) < 3 or line.startswith("#") or not f[0].replace(".", "").isdigit():
            continue
        value, event = float(f[0]), f[2]
        if event == "raw_syscalls:sys_enter":
            r["syscalls_per_req"] = value / done
        elif event == "context-switches":
            r["cs_per_req"] = value / done
        elif event == "page-faults":
            r["pf_per_req"] = value / done
        elif event.startswith("syscalls:sys_enter_"):
            r["sc_" + event[len("syscalls:sys_enter_"):]] = value / done
    return r


def parse_callgrind(leg, proto, h2load_path, dumps):
    """The summed `totals:` (or `summary:`) Ir of callgrind dumps, per request h2load completed."""
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done",
                  open(h2load_path, errors="replace").read())
    done = int(m.group(1)) if m else 0
    r = {"kind": "instr", "leg": leg, "proto": proto, "requests": done}
    total, found = 0, 0
    for path in dumps:
        totals = summary = None
        for line in open(path, errors="replace"):
            if line.startswith("totals:"):
                totals = int(line.split()[1])
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
        v = totals if totals is not None else summary
        if v is not None:
            total += v
            found += 1
    if done and found:
        r["instr_per_req"] = total / float(done)
    else:
        r["failed"] = "no requests done or no callgrind dump (%d of %d read)" % (found, len(dumps))
    return r


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "wrk" and len(argv) == 5:
        print(json.dumps(parse_wrk(argv[2], argv[3], argv[4])))
    elif cmd == "h2load" and len(argv) == 7:
        print(json.dumps(parse_h2load(argv[2], argv[3], argv[4], argv[5], argv[6])))
    elif cmd == "stat" and len(argv) == 6:
        print(json.dumps(parse_stat(argv[2], argv[3], argv[4], argv[5])))
    elif cmd == "callgrind" and len(argv) >= 5:
        print(json.dumps(parse_callgrind(argv[2], argv[3], argv[4], argv[5:])))
    elif cmd == "closedcpu" and len(argv) == 7:
        print(json.dumps(parse_closed_cpu(argv[2], argv[3], argv[4], int(argv[5]), argv[6])))
    elif cmd == "report" and len(argv) == 4:
        report(argv[2], argv[3])
    elif cmd == "idle" and len(argv) == 6:
        print("%.2f" % idle_kib(int(argv[2]), int(argv[3]), argv[4], [int(p) for p in argv[5].split()]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
