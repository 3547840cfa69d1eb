//! What a [`SpanRecord`] says in OpenTelemetry's terms: its attributes per the HTTP and RPC
//! semantic conventions, its name, and its status. Written once, read by both the OTLP encoder
//! ([`super::encode`]) and the `SpanData` conversion of the console and in-memory exporters, so
//! every exporter says the same thing.
//!
//! Values are handed to an [`AttributeSink`] as borrowed strings and integers; the few that
//! must be formatted (an IP address, `url.full`) go through one caller-owned scratch `String`,
//! so the OTLP encoder allocates nothing per span.

use std::fmt::Write as _;

use super::{text::host_port, Outcome, SpanRecord};
use crate::config::routes::Route;
use crate::metrics::Direction;

/// Receives a span's attributes in order.
/// The attribute of an inferred link ([`super::gaps`]).
pub const LINK_INFERRED: &str = "tracemesh.link.inferred";

pub trait AttributeSink {
    fn str(&mut self, key: &'static str, value: &str);
    fn int(&mut self, key: &'static str, value: i64);
    fn bool(&mut self, key: &'static str, value: bool);
}

/// The span's status, per the conventions: a server span is an error on 5xx, a client span on
/// 4xx and 5xx; for gRPC, the server errs on the codes that mean a server fault, the client on
/// any non-OK code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanStatus {
    /// `Some(message)` for an error.
    pub error: Option<String>,
    /// `error.type`, when the span says why it failed (an error, or a client's own fault).
    pub error_type: Option<String>,
}

impl SpanStatus {
    fn unset() -> Self {
        SpanStatus {
            error: None,
            error_type: None,
        }
    }
}

/// gRPC status codes that the RPC conventions count as a server's fault.
fn grpc_server_fault(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Whether the span failed, as deferred sampling keeps errors: a server's fault on either side
/// of the call. A SERVER span that answered 5xx or a gRPC server fault, or that the proxy
/// answered itself for a reason not the client's; a CLIENT span whose call failed, got 5xx or a
/// gRPC server fault (NOT_FOUND or INVALID_ARGUMENT are answers, not failures, as a 4xx is),
/// or was given up before any response came. Allocation-free.
pub fn failed(r: &SpanRecord) -> bool {
    match &r.outcome {
        Outcome::Failed(e) => !(e.client_fault && r.kind == Direction::Inbound),
        Outcome::BodyError => true,
        // Cut off before the response head: the app gave up waiting (a timeout of its own).
        // After it (a cancelled stream, a hedged call): not a failure.
        Outcome::Cancelled => r.kind == Direction::Outbound && r.status.is_none(),
        Outcome::Complete => {
            if let (true, Some(code)) = (r.grpc, r.grpc_status) {
                return grpc_server_fault(code);
            }
            r.status.is_some_and(|s| s.is_server_error())
        }
    }
}

/// The record's status. Allocates only for spans with an error type (the error path).
pub fn status(r: &SpanRecord) -> SpanStatus {
    let with = |error: Option<String>, error_type: &str| SpanStatus {
        error,
        error_type: Some(error_type.to_owned()),
    };
    match &r.outcome {
        // The client's own fault (ambiguous framing, a broken body) is a 4xx: not a server
        // error, as for any 4xx a server answers.
        Outcome::Failed(e) if e.client_fault && r.kind == Direction::Inbound => {
            return with(None, e.error_type)
        }
        Outcome::Failed(e) => return with(Some(e.message.to_string()), e.error_type),
        Outcome::BodyError => {
            return with(
                Some("response body failed before its end".to_owned()),
                "body_error",
            )
        }
        // A client that goes away is not the server's fault (as gRPC CANCELLED is not a server
        // fault in the RPC conventions): the server span says why but stays Unset. For a
        // client span, a call that did not complete is an error.
        Outcome::Cancelled => {
            let error = (r.kind == Direction::Outbound)
                .then(|| "cancelled: the response was dropped before its end".to_owned());
            return with(error, "cancelled");
        }
        Outcome::Complete => {}
    }
    if r.grpc {
        if let Some(code) = r.grpc_status {
            let is_error = match r.kind {
                Direction::Inbound => grpc_server_fault(code),
                Direction::Outbound => code != 0,
            };
            if !is_error {
                return SpanStatus::unset();
            }
            // grpc-message is percent-encoded on the wire (gRPC over HTTP/2 spec).
            let msg = r
                .grpc_message
                .as_ref()
                .and_then(|m| m.to_str().ok())
                .map(|m| crate::config::percent_decode(m).unwrap_or_else(|| m.to_owned()))
                .unwrap_or_default();
            let message = format!("grpc-status {code} {msg}").trim_end().to_owned();
            return with(Some(message), &code.to_string());
        }
    }
    match r.status {
        Some(s)
            if s.is_server_error() || (r.kind == Direction::Outbound && s.is_client_error()) =>
        {
            with(
                Some(format!("HTTP {}", s.as_u16())),
                &s.as_u16().to_string(),
            )
        }
        _ => SpanStatus::unset(),
    }
}

/// The span name into `out` (cleared first): `service/method` for gRPC, `METHOD route` with a
/// matched route, else the method.
pub fn name(r: &SpanRecord, out: &mut String) {
    out.clear();
    if r.grpc {
        if let Some((service, method)) = r.text.path().trim_start_matches('/').split_once('/') {
            let _ = write!(out, "{service}/{method}");
            return;
        }
    }
    out.push_str(r.method.as_str());
    if let Some(route) = r.route.and_then(Route::template) {
        out.push(' ');
        out.push_str(route);
    }
}

/// The record's attributes, in a fixed order, then `error.type` from `status`.
pub fn attributes(
    r: &SpanRecord,
    status: &SpanStatus,
    scratch: &mut String,
    out: &mut impl AttributeSink,
) {
    let path = r.text.path();
    let method = crate::metrics::red::method_label(&r.method);
    out.str("http.request.method", method);
    if method == "_OTHER" {
        out.str("http.request.method_original", r.method.as_str());
    }
    out.str("url.scheme", "http");
    out.str("url.path", path);
    let authority = r.text.authority().or(r.text.host());
    if let Some((a, (host, port))) = authority.and_then(|a| Some((a, host_port(a)?))) {
        out.str("server.address", host);
        out.int("server.port", i64::from(port));
        if r.kind == Direction::Outbound {
            scratch.clear();
            let _ = write!(scratch, "http://{a}{path}");
            out.str("url.full", scratch);
        }
    }
    if let Some(status) = r.status {
        out.int("http.response.status_code", i64::from(status.as_u16()));
    }
    out.str(
        "network.protocol.version",
        match r.version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            _ => "1.1",
        },
    );
    let peer = match r.kind {
        Direction::Inbound => Some(("client.address", "client.port", r.client)),
        Direction::Outbound => r
            .upstream
            .map(|up| ("network.peer.address", "network.peer.port", up)),
    };
    if let Some((address, port, addr)) = peer {
        scratch.clear();
        push_ip(scratch, addr.ip());
        out.str(address, scratch);
        out.int(port, i64::from(addr.port()));
    }
    if let Some(ua) = r.text.user_agent() {
        out.str("user_agent.original", ua);
    }
    if let Some(route) = r.route {
        if let Some(template) = route.template() {
            out.str("http.route", template);
        }
        if let Route::Learned(_) = route {
            out.bool("tracemesh.route.inferred", true);
        }
    }
    if r.grpc {
        out.str("rpc.system", "grpc");
        if let Some((service, method)) = path.trim_start_matches('/').split_once('/') {
            out.str("rpc.service", service);
            out.str("rpc.method", method);
        }
        if let Some(code) = r.grpc_status {
            out.int("rpc.grpc.status_code", i64::from(code));
        }
    }
    if let Some(t) = &status.error_type {
        out.str("error.type", t);
    }
    if let Some(reason) = r.reason {
        out.str("tracemesh.sampling.reason", reason.as_str());
    }
}

/// `ip` as text, IPv4 by hand: `Display` goes through the formatter's padding machinery, which
/// was ~950 instructions per span (callgrind, BENCHMARKS.md).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        context::{SpanContext, SpanId, TraceFlags, TraceId},
        telemetry::text::RequestText,
    };

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut out = String::new();
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.100.199",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            out.clear();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
        for n in 0..=255u8 {
            out.clear();
            push_ip(&mut out, std::net::Ipv4Addr::new(n, 0, n, 255).into());
            assert_eq!(out, format!("{n}.0.{n}.255"));
        }
    }

    pub(crate) fn text(uri: &str, host: Option<&str>, ua: Option<&str>) -> RequestText {
        RequestText::new(
            &uri.parse().unwrap(),
            host.map(str::as_bytes),
            ua.map(str::as_bytes),
        )
    }

    pub(crate) fn record(
        kind: Direction,
        grpc_status: Option<i32>,
        outcome: Outcome,
    ) -> SpanRecord {
        SpanRecord {
            kind,
            context: SpanContext {
                trace_id: TraceId([7; 16]),
                span_id: SpanId([8; 8]),
                flags: TraceFlags::SAMPLED,
            },
            parent: Some(SpanId([9; 8])),
            tracestate: None,
            start: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(5),
            method: http::Method::POST,
            text: text("/pkg.Svc/Do?x=1", Some("svc:8080"), None),
            version: http::Version::HTTP_2,
            client: "127.0.0.1:5000".parse().unwrap(),
            upstream: None,
            grpc: grpc_status.is_some(),
            route: None,
            status: Some(http::StatusCode::OK),
            grpc_status,
            grpc_message: Some(http::HeaderValue::from_static("asked%20to%20fail")),
            outcome,
            reason: None,
            link: None,
        }
    }

    #[test]
    fn grpc_message_is_percent_decoded_into_the_status() {
        let s = status(&record(Direction::Inbound, Some(13), Outcome::Complete));
        assert_eq!(s.error.as_deref(), Some("grpc-status 13 asked to fail"));
        assert_eq!(s.error_type.as_deref(), Some("13"));
    }

    #[test]
    fn client_cancel_is_not_a_server_error_but_is_a_client_error() {
        let s = status(&record(Direction::Inbound, None, Outcome::Cancelled));
        assert_eq!(s.error, None);
        assert_eq!(s.error_type.as_deref(), Some("cancelled"));
        let s = status(&record(Direction::Outbound, None, Outcome::Cancelled));
        assert!(s.error.is_some());
    }
}
