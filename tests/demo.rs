//! `tracemesh demo` (README's first command) prints one waterfall per trace: checkout's SERVER
//! span, its two CLIENT spans, and the SERVER spans of inventory and payment beneath them, with
//! bars on a shared axis, the critical path and the slowest span marked; the deferred-sampling
//! scene's kept traces; and a service that drops the trace context, with the gap it leaves.
//! With `--keep-running` it serves `/debug/traces` until interrupted.

mod support;

use std::{process::Stdio, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_three_five_span_waterfalls_the_kept_traces_and_a_propagation_gap() {
    let child = tokio::process::Command::from(support::process::command())
        .args(["demo", "--requests", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning tracemesh demo");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("demo finishes within 30 s")
        .expect("demo output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (always_on, deferred) = stdout
        .split_once("deferred sampling:")
        .unwrap_or_else(|| panic!("no deferred-sampling part:\n{stdout}"));
    let traces: Vec<&str> = always_on.split("\ntrace ").skip(1).collect();
    // Two plain requests and one from a B3 client; every trace has 5 spans.
    let headers: Vec<&str> = traces.iter().filter_map(|t| t.lines().next()).collect();
    assert_eq!(headers.len(), 3, "{stdout}");
    assert!(headers.iter().all(|h| h.contains("(5 spans")), "{stdout}");
    let b3 = traces
        .iter()
        .find(|t| t.starts_with("0000000000000000463ac35c9f6413ad"))
        .unwrap_or_else(|| panic!("no left-padded B3 trace:\n{stdout}"));

    // The shape of the tree, line by line: label, kind, service.
    let rows: Vec<Vec<&str>> = b3
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !["├─", "└─", "│"].contains(w))
                .collect()
        })
        .collect();
    let expect = [
        ["GET", "/checkout", "server", "checkout"],
        ["GET", "/inventory", "client", "checkout"],
        ["GET", "/inventory", "server", "inventory"],
        ["GET", "/payment", "client", "checkout"],
        ["GET", "/payment", "server", "payment"],
    ];
    assert_eq!(rows.len(), expect.len(), "{b3}");
    for (row, want) in rows.iter().zip(expect) {
        assert_eq!(&row[..4], &want[..], "{b3}");
        assert!(row.contains(&"200"), "{b3}");
    }
    // A waterfall: every row has a bar on the shared axis; the root's fills it, solid (on the
    // critical path); one span per trace is marked slowest.
    let bars: Vec<&str> = b3
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let from = l.find('|').expect("a bar");
            let to = l.rfind('|').unwrap();
            &l[from + 1..to]
        })
        .collect();
    assert!(bars.iter().all(|b| b.chars().count() == 32), "{b3}");
    // The axis runs from the first start to the last end, and a CLIENT span can end a little
    // after the SERVER span that made the call (its response's end is seen after the app has
    // answered): the root's bar starts the axis, is solid, and is as wide as its share of the
    // trace's length, to the cell.
    let ms = |w: &str| w.strip_suffix("ms").and_then(|n| n.parse::<f64>().ok());
    let trace_ms = b3
        .lines()
        .next()
        .and_then(|h| h.split(", ").nth(1))
        .and_then(|t| t.strip_suffix(" ms)"))
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no trace length in the header:\n{b3}"));
    let root_ms = rows[0]
        .iter()
        .find_map(|w| ms(w))
        .unwrap_or_else(|| panic!("no duration on the root's row:\n{b3}"));
    let root_cells = bars[0].chars().take_while(|&c| c == '█').count();
    let want_cells = root_ms / trace_ms * 32.0;
    assert!(bars[0].starts_with('█'), "{b3}");
    assert!(bars[0].chars().skip(root_cells).all(|c| c == ' '), "{b3}");
    assert!(
        (root_cells as f64 - want_cells).abs() <= 1.0,
        "root bar {root_cells} cells, {want_cells:.1} for {root_ms} of {trace_ms} ms:\n{b3}"
    );
    assert!(
        bars.iter().all(|b| b.contains('█') || b.contains('░')),
        "{b3}"
    );
    assert_eq!(b3.matches("◀ slowest").count(), 1, "{b3}");
    // Indentation: client spans under the root, server spans under their client span.
    let lines: Vec<&str> = b3
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(lines[0].starts_with("GET /checkout"), "{b3}");
    assert!(lines[1].starts_with("├─ GET /inventory"), "{b3}");
    assert!(lines[2].starts_with("│  └─ GET /inventory"), "{b3}");
    assert!(lines[3].starts_with("└─ GET /payment"), "{b3}");
    assert!(lines[4].starts_with("   └─ GET /payment"), "{b3}");

    // Deferred sampling at 1%: 20 checkouts, payment failing on calls 10 and 20 and slow on
    // call 5, plus one the caller sampled. Both failed traces are kept with payment's own span
    // (as `error`, or `head` if the 1% head sample took one), the slow one too, and the head one.
    assert!(
        deferred.contains("sent 21 requests, 2 answered 502"),
        "{deferred}"
    );
    let (deferred, gap) = deferred
        .split_once("propagation gaps:")
        .unwrap_or_else(|| panic!("no propagation-gap part:\n{stdout}"));
    let kept: Vec<&str> = deferred.split("\ntrace ").skip(1).collect();
    let failed: Vec<&&str> = kept
        .iter()
        .filter(|t| {
            t.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("GET /checkout") && l.contains("502"))
        })
        .collect();
    assert_eq!(failed.len(), 2, "{deferred}");
    for t in failed {
        assert!(t.contains("[error]") || t.contains("[head]"), "{t}");
        assert!(
            t.contains("server  payment"),
            "payment's own span is kept: {t}"
        );
    }
    let took_300ms = |l: &str| {
        l.split_whitespace()
            .filter_map(|w| w.strip_suffix("ms")?.parse::<f64>().ok())
            .any(|ms| ms >= 290.0)
    };
    let slow: Vec<&&str> = kept
        .iter()
        .filter(|t| {
            t.lines()
                .any(|l| l.contains("server  payment") && took_300ms(l))
        })
        .collect();
    assert_eq!(slow.len(), 1, "the 300 ms payment call's trace: {deferred}");
    assert!(
        slow[0].contains("[slow]") || slow[0].contains("[head]"),
        "{}",
        slow[0]
    );
    assert!(kept.iter().any(|t| t.contains("[head]")), "{deferred}");

    // The service that drops the context: counted under its route, and its call starts a trace
    // of its own, linked (inferred) to the request it served.
    assert!(
        gap.contains("tracemesh_propagation_gaps_total{route=\"/recommend\"} 1"),
        "{gap}"
    );
    let traces: Vec<&str> = gap.split("\ntrace ").skip(1).collect();
    assert_eq!(traces.len(), 2, "{gap}");
    let served = &traces[0][..32];
    assert!(traces[0].contains("server  recommend"), "{gap}");
    assert!(
        traces[1].contains(&format!("↳ inferred link to trace {served} span ")),
        "{gap}"
    );
    assert!(traces[1].contains("client  recommend"), "{gap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_running_serves_debug_traces_until_interrupted() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::from(support::process::command())
        .args(["demo", "--requests", "1", "--keep-running"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning tracemesh demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(u) = line.trim().strip_prefix("checkout") {
                url = Some(u.trim().to_owned());
            }
            if line.starts_with("press Ctrl-C") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
    let url = url.unwrap_or_else(|| panic!("no checkout URL:\n{seen}"));
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_once('/').unwrap();
    let (status, _, body) =
        support::client::http1_get(addr.parse().unwrap(), &format!("/{path}"), &[]).await;
    assert_eq!(status, 200, "{url}");
    let page = String::from_utf8_lossy(&body);
    assert!(page.contains("<section class=\"trace\""), "{page}");
    assert!(page.contains("/recommend"), "{page}");
    // Ctrl-C: it stops cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
