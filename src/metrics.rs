//! The Prometheus registry (prometheus-client): the RED metrics ([`red`]) and the proxy's own
//! health: spans exported and dropped, export errors, the export queue's depth, open and opaque
//! connections, invalid trace-context headers, and the `process_*` family.
//!
//! `/metrics` is negotiated by `Accept`: OpenMetrics 1.0 (with exemplars) when asked, which is
//! what Prometheus asks for, else the classic Prometheus text format 0.0.4 (no exemplars).
//!
//! Health handles are resolved once at start-up (a label set is looked up in a `Family` once,
//! then the `Counter`, an `Arc` around an atomic, is kept), so recording them is an atomic add.
//! RED series depend on each response, so each request takes the family's read lock to find its
//! series (no allocation: labels are `Copy`) and the histogram's write lock to observe (the
//! prometheus-client design, uncontended with one worker); the request counter is an atomic,
//! locked only to store a sampled request's exemplar. Label values are closed sets: no value that
//! comes from a request ever becomes a label.

pub mod process;
pub mod red;

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::context::{Format, ParseError};

/// Which listener a connection or request came through. A bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    direction: Direction,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InvalidHeaderLabels {
    format: &'static str,
    reason: &'static str,
}

/// Per-direction connection metrics, resolved once.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub opaque: Counter,
    pub opaque_bytes_in: Counter,
    pub opaque_bytes_out: Counter,
}

/// Export pipeline metrics, shared by the span queue and the export task.
#[derive(Debug, Clone, Default)]
pub struct ExportMetrics {
    pub exported: Counter,
    pub dropped: Counter,
    pub errors: Counter,
    pub queue_depth: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConfigFileLabels {
    file: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConfigLoadedLabels {
    file: &'static str,
    sha256: String,
}

/// The inbound route a propagation gap is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Deferred sampling's metrics (see `telemetry::retention`): spans kept per reason, in the
/// order of `KeepReason::ALL` (head, error, slow, downstream), and records overwritten in the
/// ring before any decision kept them.
#[derive(Debug, Clone, Default)]
pub struct RetentionMetrics {
    pub kept: [Counter; 4],
    pub overwritten: Counter,
    pub limited: Counter,
}

/// The reloadable configuration's metrics (see `telemetry::policy`).
#[derive(Debug, Clone, Default)]
pub struct ConfigMetrics {
    reload_errors: Family<ConfigFileLabels, Counter>,
    generation: Family<ConfigLoadedLabels, Gauge>,
}

impl ConfigMetrics {
    /// Counts a version of `file` that could not be read or parsed.
    pub fn reload_error(&self, file: &'static str) {
        self.reload_errors
            .get_or_create(&ConfigFileLabels { file })
            .inc();
    }

    /// Records that `file`'s version `generation`, with hash `sha256`, is in use; the series
    /// of the version it replaced (`previous`) goes.
    pub fn loaded(
        &self,
        file: &'static str,
        previous: Option<String>,
        sha256: String,
        generation: i64,
    ) {
        if let Some(old) = previous {
            self.generation
                .remove(&ConfigLoadedLabels { file, sha256: old });
        }
        self.generation
            .get_or_create(&ConfigLoadedLabels { file, sha256 })
            .set(generation);
    }
}

/// The registry and every handle the proxy records into. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `None` when RED metrics are switched off (`--disable-red-metrics`).
    pub red: Option<red::Red>,
    pub inbound: ConnectionMetrics,
    pub outbound: ConnectionMetrics,
    pub export: ExportMetrics,
    pub config: ConfigMetrics,
    pub retention: RetentionMetrics,
    /// Access-log lines dropped because stdout did not keep up.
    pub access_log_dropped: Counter,
    /// Outbound calls without trace context while inbound requests were in flight.
    pub propagation_gaps: Family<RouteLabels, Counter>,
    invalid_headers: Family<InvalidHeaderLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
}

impl Metrics {
    /// A registry with the health metrics, and the RED pair when `red` is true.
    pub fn new(red: bool) -> Self {
        let mut registry = Registry::default();
        // RED is rendered by `red` itself (see `render_openmetrics`), not by the registry.
        let red = red.then(red::Red::new);
        registry.register_collector(Box::new(process::ProcessCollector::new()));

        let open = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "tracemesh_open_connections",
            "Connections currently open, by listener",
            open.clone(),
        );
        let opaque = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tracemesh_opaque_connections",
            "Connections forwarded as opaque TCP (not HTTP, TLS pass-through, upgrades)",
            opaque.clone(),
        );
        let opaque_in = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tracemesh_opaque_received_bytes",
            "Bytes received from clients on opaque connections",
            opaque_in.clone(),
        );
        let opaque_out = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tracemesh_opaque_sent_bytes",
            "Bytes sent to clients on opaque connections",
            opaque_out.clone(),
        );

        let export = ExportMetrics::default();
        registry.register(
            "tracemesh_spans_exported",
            "Spans accepted by the trace exporter's destination",
            export.exported.clone(),
        );
        registry.register(
            "tracemesh_spans_dropped",
            "Spans dropped because the export queue was full or the export failed",
            export.dropped.clone(),
        );
        registry.register(
            "tracemesh_span_export_errors",
            "Export calls that failed or timed out",
            export.errors.clone(),
        );
        registry.register(
            "tracemesh_span_export_queue_depth",
            "Spans waiting in the export queue",
            export.queue_depth.clone(),
        );

        let invalid_headers = Family::<InvalidHeaderLabels, Counter>::default();
        registry.register(
            "tracemesh_invalid_context_headers",
            "Trace context headers ignored because they were invalid, by format and reason",
            invalid_headers.clone(),
        );

        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "tracemesh_refused_connections",
            "Connections closed without being forwarded, by listener and reason: own_port (an \
             inbound connection redirected from one of the proxy's own ports), detect_timeout \
             (nothing decidable within the detect timeout), header_read_timeout",
            refused.clone(),
        );

        let config = ConfigMetrics::default();
        registry.register(
            "tracemesh_config_reload_errors",
            "Versions of a reloadable file (sampling_rules, routes) that could not be read or \
             parsed; the previous version stays in use",
            config.reload_errors.clone(),
        );
        registry.register(
            "tracemesh_config_generation",
            "Versions of a reloadable file loaded since start; the label is the SHA-256 of the \
             one in use",
            config.generation.clone(),
        );

        let kept = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tracemesh_spans_kept",
            "Spans exported, by why they were kept: head (sampled at the head), error, slow, \
             downstream (a later hop kept the trace)",
            kept.clone(),
        );
        let overwritten = Counter::default();
        registry.register(
            "tracemesh_retention_overwritten",
            "Unsampled span records overwritten in the retention ring before a keep decision \
             could take them",
            overwritten.clone(),
        );
        let limited = Counter::default();
        registry.register(
            "tracemesh_retention_limited",
            "Traces not kept for an error, slowness or a downstream keep because \
             --retention-keep-rate was spent",
            limited.clone(),
        );
        let retention = RetentionMetrics {
            kept: ["head", "error", "slow", "downstream"]
                .map(|reason| kept.get_or_create_owned(&ReasonLabels { reason })),
            overwritten,
            limited,
        };

        let access_log_dropped = Counter::default();
        registry.register(
            "tracemesh_access_log_dropped",
            "Access-log lines dropped because stdout did not keep up (the request was served)",
            access_log_dropped.clone(),
        );

        let propagation_gaps = Family::<RouteLabels, Counter>::default();
        registry.register(
            "tracemesh_propagation_gaps",
            "Outbound calls the app made without trace context while inbound requests were in \
             flight, by the inbound route (_several: requests of different routes were in flight)",
            propagation_gaps.clone(),
        );

        let conn = |dir| {
            let l = DirectionLabels { direction: dir };
            ConnectionMetrics {
                open: open.get_or_create_owned(&l),
                opaque: opaque.get_or_create_owned(&l),
                opaque_bytes_in: opaque_in.get_or_create_owned(&l),
                opaque_bytes_out: opaque_out.get_or_create_owned(&l),
            }
        };
        Metrics {
            red,
            inbound: conn(Direction::Inbound),
            outbound: conn(Direction::Outbound),
            export,
            config,
            retention,
            access_log_dropped,
            propagation_gaps,
            invalid_headers,
            refused,
            registry: Arc::new(registry),
        }
    }

    pub fn connections(&self, direction: Direction) -> &ConnectionMetrics {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// Counts one ignored header. Only reached on the (rare) invalid path, so the family lookup's
    /// read lock is acceptable here.
    pub fn invalid_header(&self, format: Format, reason: ParseError) {
        self.invalid_headers
            .get_or_create(&InvalidHeaderLabels {
                format: format.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts one connection closed without being forwarded. `reason` is a static, bounded
    /// label; this is the (rare) refusal path.
    pub fn refused_connection(&self, direction: Direction, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }

    /// The OpenMetrics 1.0 exposition of every registered metric, exemplars included.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        // The RED families go before the registry's closing `# EOF`.
        if let Some(red) = &self.red {
            let eof = out.rfind("# EOF\n").unwrap_or(out.len());
            out.truncate(eof);
            red.render(&mut out);
            out.push_str("# EOF\n");
        }
        out
    }

    /// The exposition `accept` asks for, and its content type.
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        let openmetrics = self.render_openmetrics();
        if accept.is_some_and(accepts_openmetrics) {
            (OPENMETRICS_CONTENT_TYPE, openmetrics)
        } else {
            (PROMETHEUS_CONTENT_TYPE, to_prometheus_text(&openmetrics))
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(true)
    }
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics: a media range
/// `application/openmetrics-text` (any case) whose `q` is not 0.
fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        media.eq_ignore_ascii_case("application/openmetrics-text")
            && !parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
                })
            })
    })
}

/// Converts prometheus-client's OpenMetrics text into the classic Prometheus text format: no
/// exemplars, no `# UNIT` or `# EOF`, and counter metadata named after the `_total` samples (the
/// classic format names a counter by its sample name).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.push(name);
            }
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(prefix);
            out.push_str(name);
            if counters.contains(&name) {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(tail);
        } else {
            // A sample: drop the exemplar, which starts at " # {" after the value.
            out.push_str(line.split_once(" # {").map_or(line, |(sample, _)| sample));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_chosen_by_media_range_case_insensitively_and_not_at_q0() {
        assert!(accepts_openmetrics(
            "application/openmetrics-text; version=1.0.0"
        ));
        assert!(accepts_openmetrics("Application/OpenMetrics-Text"));
        assert!(accepts_openmetrics(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
        ));
        assert!(!accepts_openmetrics(
            "text/plain, application/openmetrics-text;q=0"
        ));
        assert!(!accepts_openmetrics("text/plain; version=0.0.4"));
        assert!(!accepts_openmetrics("*/*"));
    }

    #[test]
    fn classic_text_drops_exemplars_unit_and_eof_and_names_counters_by_sample() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2 # {trace_id=\"ab\"} 1.0 1.5\n# HELP d_seconds D.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\nd_seconds_sum 0.1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n# HELP d_seconds D.\n# TYPE d_seconds histogram\nd_seconds_sum 0.1\n"
        );
    }
}
