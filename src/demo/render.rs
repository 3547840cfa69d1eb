//! The demo's traces drawn in the terminal: one waterfall per trace, its spans as a tree (each
//! under its parent, siblings in start order) with a bar on the trace's shared time axis, the
//! duration beside it, the critical path drawn solid (`█`, the rest `░`), the slowest span (the
//! most self time) marked, why each span was kept, and any inferred link (a propagation gap).
//! The layout is [`crate::telemetry::waterfall`], the one `/debug/traces` draws in a browser.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::SystemTime};

use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::SpanData;

use crate::telemetry::{
    export::ServiceSpan,
    semconv::LINK_INFERRED,
    waterfall::{self, Timed},
};

/// Columns of the time axis.
const AXIS: usize = 32;

struct Span<'a>(&'a (Arc<str>, SpanData));

impl Timed for Span<'_> {
    fn id(&self) -> [u8; 8] {
        self.0 .1.span_context.span_id().to_bytes()
    }
    fn parent(&self) -> Option<[u8; 8]> {
        let p = self.0 .1.parent_span_id;
        (p != opentelemetry::trace::SpanId::INVALID).then(|| p.to_bytes())
    }
    fn start(&self) -> SystemTime {
        self.0 .1.start_time
    }
    fn duration(&self) -> std::time::Duration {
        self.0
             .1
            .end_time
            .duration_since(self.0 .1.start_time)
            .unwrap_or_default()
    }
}

/// Every trace in `spans`, in the order they started, each as a waterfall.
pub fn render_traces(spans: &[ServiceSpan]) -> String {
    let mut traces: BTreeMap<String, Vec<&ServiceSpan>> = BTreeMap::new();
    for s in spans {
        traces
            .entry(s.1.span_context.trace_id().to_string())
            .or_default()
            .push(s);
    }
    let mut ordered: Vec<_> = traces.into_iter().collect();
    ordered.sort_by_key(|(_, v)| v.iter().map(|s| s.1.start_time).min());
    let mut out = String::new();
    for (trace_id, members) in ordered {
        render_trace(&mut out, &trace_id, &members);
        out.push('\n');
    }
    out
}

fn render_trace(out: &mut String, trace_id: &str, members: &[&ServiceSpan]) {
    let spans: Vec<Span<'_>> = members.iter().map(|s| Span(s)).collect();
    let w = waterfall::layout(&spans);
    let total = w.total.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "trace {trace_id} ({} spans, {:.1} ms)",
        spans.len(),
        total * 1000.0
    );
    let slowest = w.rows.iter().max_by_key(|r| r.self_time).map(|r| r.span);
    // Whether each row is the last of its siblings: no later row at its depth before one above.
    let last: Vec<bool> = (0..w.rows.len())
        .map(|i| {
            let d = w.rows[i].depth;
            w.rows[i + 1..]
                .iter()
                .take_while(|r| r.depth >= d)
                .all(|r| r.depth != d)
        })
        .collect();
    let mut open: Vec<bool> = Vec::new(); // per depth: more siblings below
    for (i, row) in w.rows.iter().enumerate() {
        open.truncate(row.depth);
        let mut prefix = String::new();
        for (level, more) in open.iter().enumerate() {
            if level > 0 {
                prefix.push_str(if *more { "│  " } else { "   " });
            }
        }
        if row.depth > 0 {
            prefix.push_str(if last[i] { "└─ " } else { "├─ " });
        }
        open.push(!last[i]);
        let (service, span) = members[row.span];
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        let label = format!(
            "{prefix}{} {}",
            attr("http.request.method").unwrap_or_default(),
            attr("url.path").unwrap_or_default()
        );
        let kind = match span.span_kind {
            opentelemetry::trace::SpanKind::Server => "server",
            opentelemetry::trace::SpanKind::Client => "client",
            _ => "other",
        };
        let from = (row.offset.as_secs_f64() / total * AXIS as f64).round() as usize;
        let to =
            (((row.offset + row.duration).as_secs_f64() / total) * AXIS as f64).round() as usize;
        let (from, to) = (from.min(AXIS - 1), to.clamp(from.min(AXIS - 1) + 1, AXIS));
        let fill = if row.critical { '█' } else { '░' };
        let bar: String = (0..AXIS)
            .map(|c| if (from..to).contains(&c) { fill } else { ' ' })
            .collect();
        let status = attr("http.response.status_code").unwrap_or_default();
        let reason = attr("tracemesh.sampling.reason").map_or(String::new(), |r| format!("[{r}]"));
        let error = match &span.status {
            Status::Error { description } => format!("  ERROR {description}"),
            _ => String::new(),
        };
        let ms = row.duration.as_secs_f64() * 1000.0;
        let mark = if Some(row.span) == slowest {
            format!(
                "  ◀ slowest ({:.1} ms self)",
                row.self_time.as_secs_f64() * 1000.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{label:<34} {kind:<7} {service:<10} |{bar}| {ms:>7.1}ms  {reason:<12} \
             {status}{error}{mark}"
        );
        for link in &span.links.links {
            let inferred = link
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == LINK_INFERRED);
            let _ = writeln!(
                out,
                "{:<34} ↳ {}link to trace {} span {}{}",
                "",
                if inferred { "inferred " } else { "" },
                link.span_context.trace_id(),
                link.span_context.span_id(),
                if inferred {
                    " (the app dropped the trace context)"
                } else {
                    ""
                }
            );
        }
    }
}
