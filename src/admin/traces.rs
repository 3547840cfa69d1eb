//! `/debug/traces` on the admin listener: the traces this proxy exported most recently, read
//! from the in-memory store ([`crate::telemetry::store`]), so it works with no collector.
//!
//! - `GET /debug/traces`: an HTML page, every recent trace as a waterfall: one bar per span on
//!   the trace's time axis, indented by parent, SERVER and CLIENT spans in two colours, errors
//!   in red, the critical path outlined, self time beside each span, the trace ID with a copy
//!   button; and the inbound routes whose outbound calls lost their trace context.
//! - `GET /debug/traces/<trace-id>`: one trace.
//! - `GET /debug/traces.json`: the same data as JSON.
//!
//! The page is the proxy's own: no external script, style or font. A strict
//! `Content-Security-Policy` says so to the browser, and allows only the page's one inline
//! script, by its SHA-256. Every text from a request (paths, names) is escaped.
//!
//! It is a debugging surface: it shows request paths (never query strings) and trace IDs. By
//! default (`--debug-traces local`) it answers only clients on loopback, which is how
//! `kubectl port-forward` arrives; `on` opens it to every client of the admin port (which is
//! reachable from the cluster, for probes and scrapers), `off` removes it.

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::{
    context::TraceId,
    metrics::Direction,
    telemetry::{
        gaps::Gaps,
        semconv,
        store::{StoredTrace, TraceStore},
        waterfall::{self, Waterfall},
        SpanRecord,
    },
};

/// Traces on the page at most.
pub const PAGE_TRACES: usize = 50;

/// What the pages read.
#[derive(Debug, Clone)]
pub struct DebugTraces {
    pub store: Arc<TraceStore>,
    pub gaps: Arc<Gaps>,
    pub service: Arc<str>,
    /// Answer clients that are not on loopback too (`--debug-traces on`).
    pub remote: bool,
}

/// Whether `peer` may read the pages.
fn allowed(remote: bool, peer: IpAddr) -> bool {
    remote || peer.to_canonical().is_loopback()
}

/// The answer for a `/debug/traces…` path from `peer`, or `None` for any other path.
pub fn respond(
    path: &str,
    debug: Option<&DebugTraces>,
    peer: IpAddr,
) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/debug/traces")?;
    let Some(debug) = debug else {
        return Some(text(
            StatusCode::NOT_FOUND,
            "debug traces are off (--debug-traces off, or OTEL_TRACES_EXPORTER=none)\n",
        ));
    };
    if !allowed(debug.remote, peer) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "debug traces answer loopback clients only (kubectl port-forward); \
             --debug-traces on opens them to every client of the admin port\n",
        ));
    }
    Some(match rest {
        "" | "/" => html(&page(debug, &debug.store.recent(PAGE_TRACES), None)),
        ".json" => json_response(&to_json(debug, &debug.store.recent(PAGE_TRACES))),
        id => {
            let id = id.strip_prefix('/').unwrap_or(id);
            let Some(trace) = parse_trace_id(id) else {
                return Some(text(
                    StatusCode::BAD_REQUEST,
                    "a trace ID is 32 lowercase hex digits\n",
                ));
            };
            match debug.store.trace(trace) {
                Some(t) => html(&page(debug, &[t], Some(trace))),
                None => {
                    let mut r = html(&page(debug, &[], Some(trace)));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
            }
        }
    })
}

fn parse_trace_id(s: &str) -> Option<TraceId> {
    if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(TraceId(id))
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn html(body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The policy: nothing from anywhere, but the inline style and the one inline script, by hash.
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        let digest = ring::digest::digest(&ring::digest::SHA256, SCRIPT.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ))
        .expect("base64 is a valid header value")
    })
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One span as the pages show it.
struct Shown {
    name: String,
    kind: &'static str,
    error: bool,
    status: Option<u16>,
    reason: Option<&'static str>,
}

fn shown(r: &SpanRecord) -> Shown {
    let mut name = String::new();
    semconv::name(r, &mut name);
    Shown {
        name,
        kind: match r.kind {
            Direction::Inbound => "server",
            Direction::Outbound => "client",
        },
        error: semconv::status(r).error.is_some(),
        status: r.status.map(|s| s.as_u16()),
        reason: r.reason.map(|k| k.as_str()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn to_json(debug: &DebugTraces, traces: &[StoredTrace]) -> Value {
    let traces: Vec<Value> = traces
        .iter()
        .map(|t| {
            let w = waterfall::layout(&t.spans);
            let spans: Vec<Value> = w
                .rows
                .iter()
                .map(|row| {
                    let r = &t.spans[row.span];
                    let s = shown(r);
                    json!({
                        "span_id": r.context.span_id.to_string(),
                        "parent_span_id": r.parent.map(|p| p.to_string()),
                        "kind": s.kind,
                        "name": s.name,
                        "depth": row.depth,
                        "start_offset_ms": ms(row.offset),
                        "duration_ms": ms(row.duration),
                        "self_ms": ms(row.self_time),
                        "critical": row.critical,
                        "error": s.error,
                        "status_code": s.status,
                        "sampling_reason": s.reason,
                        "route": r.route.and_then(|x| x.template()),
                        "path": r.text.path(),
                    })
                })
                .collect();
            json!({
                "trace_id": t.trace_id.to_string(),
                "duration_ms": ms(w.total),
                "spans": spans,
            })
        })
        .collect();
    let gaps: Vec<Value> = debug
        .gaps
        .by_route()
        .into_iter()
        .map(|(route, count)| json!({ "route": route, "count": count }))
        .collect();
    json!({
        "service": &*debug.service,
        "capacity_spans": debug.store.capacity(),
        "traces": traces,
        "propagation_gaps": gaps,
    })
}

/// `s`, escaped for HTML text and attribute values.
fn esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

const STYLE: &str = r#"
:root { --server: #2f6fdf; --client: #14a37f; --error: #d62828; --ink: #1d2330; --muted: #667085; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 24px; background: #fafbfc; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.meta { color: var(--muted); margin: 0 0 16px; }
section.trace { background: #fff; border: 1px solid #e3e6eb; border-radius: 8px; padding: 12px 16px; margin: 0 0 16px; }
section.trace header { display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
section.trace h2 { font-size: 16px; margin: 0; }
section.trace h2 a { color: inherit; text-decoration: none; }
.total { font-variant-numeric: tabular-nums; color: var(--muted); }
.tid code { font: 12px ui-monospace, monospace; background: #f1f3f6; padding: 2px 6px; border-radius: 4px; user-select: all; }
button.copy { font-size: 12px; margin-left: 6px; cursor: pointer; }
ol.waterfall { list-style: none; margin: 10px 0 0; padding: 0; }
li.span { display: grid; grid-template-columns: 360px 1fr 200px; align-items: center; gap: 8px; padding: 2px 0; }
li.span .label { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
li.span .kind { font: 11px ui-monospace, monospace; text-transform: uppercase; padding: 0 4px; border-radius: 3px; color: #fff; }
li.server .kind { background: var(--server); }
li.client .kind { background: var(--client); }
.track { position: relative; height: 16px; background: repeating-linear-gradient(90deg, #f3f4f6 0, #f3f4f6 1px, transparent 1px, transparent 10%); }
.bar { position: absolute; top: 2px; height: 12px; min-width: 1px; border-radius: 2px; }
li.server .bar { background: var(--server); }
li.client .bar { background: var(--client); }
li.error .bar { background: var(--error); }
li.error .label { color: var(--error); }
li.critical .bar { outline: 2px solid #f5b700; outline-offset: 1px; }
.times { font-variant-numeric: tabular-nums; font-size: 12px; color: var(--muted); white-space: nowrap; }
.reason { font-size: 11px; color: var(--muted); border: 1px solid #d0d5dd; border-radius: 3px; padding: 0 3px; }
.legend span { margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin-right: 4px; border-radius: 2px; }
table.gaps { border-collapse: collapse; margin: 0 0 16px; }
table.gaps td, table.gaps th { border: 1px solid #e3e6eb; padding: 2px 10px; text-align: left; }
"#;

const SCRIPT: &str = r#"
document.querySelectorAll("button.copy").forEach(function (b) {
  b.addEventListener("click", function () {
    var id = b.getAttribute("data-copy");
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(id).then(function () { b.textContent = "copied"; }, function () {});
    }
  });
});
"#;

fn page(debug: &DebugTraces, traces: &[StoredTrace], one: Option<TraceId>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width\">");
    out.push_str("<link rel=\"icon\" href=\"data:,\"><title>");
    match one {
        Some(id) => {
            let _ = write!(out, "trace {id}");
        }
        None => out.push_str("recent traces"),
    }
    out.push_str(" · tracemesh ");
    esc(&mut out, &debug.service);
    let _ = write!(out, "</title><style>{STYLE}</style></head><body>");
    out.push_str("<h1>");
    match one {
        Some(id) => {
            let _ = write!(out, "Trace {id}");
        }
        None => out.push_str("Recent traces"),
    }
    out.push_str(" <small>· ");
    esc(&mut out, &debug.service);
    out.push_str("</small></h1>");
    let _ = write!(
        out,
        "<p class=\"meta\">The spans this proxy exported most recently (it holds {} in \
         memory). <a href=\"/debug/traces\">All recent</a> · \
         <a href=\"/debug/traces.json\">JSON</a></p>",
        debug.store.capacity()
    );
    out.push_str(
        "<p class=\"legend\"><span><i style=\"background:var(--server)\"></i>SERVER \
         (inbound)</span><span><i style=\"background:var(--client)\"></i>CLIENT \
         (outbound)</span><span><i style=\"background:var(--error)\"></i>error</span>\
         <span><i style=\"outline:2px solid #f5b700\"></i>critical path</span></p>",
    );
    if one.is_none() {
        let gaps = debug.gaps.by_route();
        if !gaps.is_empty() {
            out.push_str(
                "<h2>Routes whose outbound calls lose trace context</h2>\
                 <table class=\"gaps\"><tr><th>inbound route</th><th>calls without \
                 context</th></tr>",
            );
            for (route, n) in gaps {
                out.push_str("<tr><td>");
                esc(&mut out, route);
                let _ = write!(out, "</td><td>{n}</td></tr>");
            }
            out.push_str("</table>");
        }
    }
    if traces.is_empty() {
        out.push_str(match one {
            Some(_) => "<p>This trace is not (or no longer) in memory.</p>",
            None => "<p>No traces yet.</p>",
        });
    }
    for t in traces {
        trace_section(&mut out, t, &waterfall::layout(&t.spans));
    }
    let _ = writeln!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

fn trace_section(out: &mut String, t: &StoredTrace, w: &Waterfall) {
    let id = t.trace_id;
    let title = w
        .rows
        .first()
        .map(|r| shown(&t.spans[r.span]).name)
        .unwrap_or_default();
    let _ = write!(
        out,
        "<section class=\"trace\" data-trace-id=\"{id}\" data-duration-us=\"{}\"><header><h2><a \
         href=\"/debug/traces/{id}\">",
        w.total.as_micros()
    );
    esc(out, &title);
    let _ = write!(
        out,
        "</a></h2><span class=\"total\">{:.3} ms · {} spans</span><span class=\"tid\">trace \
         <code>{id}</code><button type=\"button\" class=\"copy\" data-copy=\"{id}\">copy \
         ID</button></span></header><ol class=\"waterfall\">",
        ms(w.total),
        w.rows.len()
    );
    let total = w.total.as_secs_f64().max(1e-9);
    for row in &w.rows {
        let r = &t.spans[row.span];
        let s = shown(r);
        let left = row.offset.as_secs_f64() / total * 100.0;
        let width = row.duration.as_secs_f64() / total * 100.0;
        let _ = write!(
            out,
            "<li class=\"span {}{}{}\" data-span-id=\"{}\" data-duration-us=\"{}\">\
             <div class=\"label\" style=\"padding-left:{}px\"><span class=\"kind\">{}</span> ",
            s.kind,
            if s.error { " error" } else { "" },
            if row.critical { " critical" } else { "" },
            r.context.span_id,
            row.duration.as_micros(),
            row.depth * 18,
            s.kind,
        );
        esc(out, &s.name);
        if let Some(status) = s.status {
            let _ = write!(out, " <b>{status}</b>");
        }
        if let Some(reason) = s.reason {
            let _ = write!(out, " <span class=\"reason\">{reason}</span>");
        }
        out.push_str("</div><div class=\"track\"><div class=\"bar\" style=\"left:");
        let _ = write!(
            out,
            "{left:.4}%;width:{width:.4}%\" title=\"{:.3} ms\"></div></div>\
             <div class=\"times\">{:.3} ms · self {:.3} ms</div></li>",
            ms(row.duration),
            ms(row.duration),
            ms(row.self_time),
        );
    }
    out.push_str("</ol></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_32_lowercase_hex_digits() {
        let id = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(parse_trace_id(id).unwrap().to_string(), id);
        for bad in ["", "0AF7651916CD43DD8448EB211C80319C", &id[1..], "zz"] {
            assert!(parse_trace_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_clients_unless_opened() {
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "127.9.9.9"] {
            assert!(allowed(false, peer.parse().unwrap()), "{peer}");
        }
        for peer in ["10.1.2.3", "::ffff:10.1.2.3", "fd00::1", "0.0.0.0"] {
            assert!(!allowed(false, peer.parse().unwrap()), "{peer}");
            assert!(allowed(true, peer.parse().unwrap()), "{peer}");
        }
    }

    #[test]
    fn the_policy_allows_the_script_by_its_hash() {
        let csp = csp().to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
    }

    #[test]
    fn text_is_escaped() {
        let mut out = String::new();
        esc(&mut out, "<script>\"a\"&'b'</script>");
        assert_eq!(
            out,
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
    }
}
