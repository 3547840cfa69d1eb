//! OTLP protobuf, written straight from [`SpanRecord`]s: an `ExportTraceServiceRequest` with one
//! `ResourceSpans` (the proxy's resource) holding one `ScopeSpans` (`tracemesh`) of every span in
//! the batch. Nothing is allocated per span once the buffers have grown to a batch's size: each
//! span is written into a reused scratch buffer and copied behind its length prefix.
//!
//! The bytes are those prost writes for the same message from opentelemetry-proto's types
//! (fields in tag order, proto3 defaults left out, `status` always present): the unit tests
//! decode them with opentelemetry-proto and compare them byte for byte with prost's encoding of
//! what `opentelemetry-otlp` would have built from the same spans.
//!
//! Wire format: <https://protobuf.dev/programming-guides/encoding/>; message definitions:
//! opentelemetry-proto `opentelemetry/proto/trace/v1/trace.proto`.

use std::time::UNIX_EPOCH;

use bytes::{BufMut, BytesMut};

use super::{
    semconv::{self, AttributeSink},
    SpanRecord,
};
use crate::metrics::Direction;

const LEN: u8 = 2;
const I64: u8 = 1;
const I32: u8 = 5;
const VARINT: u8 = 0;

const fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

/// `SpanFlags`: the flags word says whether the parent is remote.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

// The writers below are inlined into every attribute's call site: called, they spent more on
// their prologues and on a `memcpy` call for each constant key than on the bytes they wrote
// (callgrind: 166 instructions per attribute, BENCHMARKS.md).
#[inline(always)]
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[inline(always)]
fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[inline(always)]
fn put_bytes(buf: &mut impl BufMut, field: u8, v: &[u8]) {
    buf.put_u8(key(field, LEN));
    put_varint(buf, v.len() as u64);
    buf.put_slice(v);
}

/// A proto3 string or bytes field, left out when empty.
fn put_nonempty(buf: &mut impl BufMut, field: u8, v: &[u8]) {
    if !v.is_empty() {
        put_bytes(buf, field, v);
    }
}

/// Length of a `KeyValue` whose `AnyValue` holds `value_len` bytes.
#[inline(always)]
fn key_value_len(name: &str, any_len: usize) -> usize {
    1 + varint_len(name.len() as u64) + name.len() + 1 + varint_len(any_len as u64) + any_len
}

/// Writes `KeyValue` messages as field `field` of the enclosing message.
struct KeyValues<'a> {
    buf: &'a mut Vec<u8>,
    field: u8,
}

impl KeyValues<'_> {
    #[inline(always)]
    fn head(&mut self, name: &str, any_len: usize) {
        self.buf.put_u8(key_value_field(self.field));
        put_varint(self.buf, key_value_len(name, any_len) as u64);
        put_bytes(self.buf, 1, name.as_bytes());
        self.buf.put_u8(key(2, LEN));
        put_varint(self.buf, any_len as u64);
    }
}

fn key_value_field(field: u8) -> u8 {
    key(field, LEN)
}

impl AttributeSink for KeyValues<'_> {
    #[inline(always)]
    fn str(&mut self, key: &'static str, value: &str) {
        // AnyValue { string_value = 1 } is a oneof: written even when empty.
        let any_len = 1 + varint_len(value.len() as u64) + value.len();
        self.head(key, any_len);
        put_bytes(self.buf, 1, value.as_bytes());
    }

    #[inline(always)]
    fn int(&mut self, key: &'static str, value: i64) {
        let any_len = 1 + varint_len(value as u64);
        self.head(key, any_len);
        self.buf.put_u8(self::key(3, VARINT));
        put_varint(self.buf, value as u64);
    }

    #[inline(always)]
    fn bool(&mut self, key: &'static str, value: bool) {
        // AnyValue { bool_value = 2 }: a oneof, so `false` is written too.
        self.head(key, 2);
        self.buf.put_u8(self::key(2, VARINT));
        self.buf.put_u8(u8::from(value));
    }
}

fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Encodes batches of spans into OTLP export requests, reusing its buffers.
pub struct Encoder {
    /// `ResourceSpans.resource` and `ScopeSpans.scope`, encoded once.
    resource: Vec<u8>,
    scope: Vec<u8>,
    spans: Vec<u8>,
    span: Vec<u8>,
    /// A span's link, encoded before its length is written.
    link: Vec<u8>,
    scratch: String,
    name: String,
    out: BytesMut,
}

impl Encoder {
    /// An encoder for spans of a process with `resource` attributes (in this order), reported
    /// under the instrumentation scope `scope_name`/`scope_version`.
    pub fn new(resource: &[(String, String)], scope_name: &str, scope_version: &str) -> Self {
        let mut res = Vec::new();
        let mut kvs = KeyValues {
            buf: &mut res,
            field: 1,
        };
        for (k, v) in resource {
            // Resource keys are not 'static; the sink only borrows them for the call.
            let any_len = 1 + varint_len(v.len() as u64) + v.len();
            kvs.head(k, any_len);
            put_bytes(kvs.buf, 1, v.as_bytes());
        }
        let mut scope = Vec::new();
        put_nonempty(&mut scope, 1, scope_name.as_bytes());
        put_nonempty(&mut scope, 2, scope_version.as_bytes());
        Encoder {
            resource: res,
            scope,
            spans: Vec::new(),
            span: Vec::new(),
            link: Vec::new(),
            scratch: String::new(),
            name: String::new(),
            out: BytesMut::new(),
        }
    }

    /// Adds one span to the request being built.
    pub fn push(&mut self, r: &SpanRecord) {
        self.span.clear();
        let b = &mut self.span;
        put_bytes(b, 1, &r.context.trace_id.0);
        put_bytes(b, 2, &r.context.span_id.0);
        if let Some(ts) = &r.tracestate {
            put_nonempty(b, 3, ts.as_bytes());
        }
        if let Some(parent) = &r.parent {
            put_bytes(b, 4, &parent.0);
        }
        semconv::name(r, &mut self.name);
        put_nonempty(b, 5, self.name.as_bytes());
        b.put_u8(key(6, VARINT));
        put_varint(
            b,
            match r.kind {
                Direction::Inbound => 2,
                Direction::Outbound => 3,
            },
        );
        let start = unix_nanos(r.start);
        let end = unix_nanos(r.start + r.duration);
        if start != 0 {
            b.put_u8(key(7, I64));
            b.put_u64_le(start);
        }
        if end != 0 {
            b.put_u8(key(8, I64));
            b.put_u64_le(end);
        }
        let status = semconv::status(r);
        semconv::attributes(
            r,
            &status,
            &mut self.scratch,
            &mut KeyValues { buf: b, field: 9 },
        );
        // links = 13: Link { trace_id = 1, span_id = 2, attributes = 4, flags = 6 (fixed32) }.
        if let Some(link) = &r.link {
            self.link.clear();
            put_bytes(&mut self.link, 1, &link.trace_id.0);
            put_bytes(&mut self.link, 2, &link.span_id.0);
            KeyValues {
                buf: &mut self.link,
                field: 4,
            }
            .bool(semconv::LINK_INFERRED, true);
            self.link.put_u8(key(6, I32));
            self.link
                .put_u32_le(u32::from(link.flags.0) | CONTEXT_HAS_IS_REMOTE);
            b.put_u8(key(13, LEN));
            put_varint(b, self.link.len() as u64);
            b.extend_from_slice(&self.link);
        }
        // Status { message = 2, code = 3 }: always present, as prost writes `Some(Status)`.
        let message = status.error.as_deref().unwrap_or("").as_bytes();
        let code: u64 = if status.error.is_some() { 2 } else { 0 };
        let mut status_len = 0;
        if !message.is_empty() {
            status_len += 1 + varint_len(message.len() as u64) + message.len();
        }
        if code != 0 {
            status_len += 2;
        }
        b.put_u8(key(15, LEN));
        put_varint(b, status_len as u64);
        put_nonempty(b, 2, message);
        if code != 0 {
            b.put_u8(key(3, VARINT));
            put_varint(b, code);
        }
        // flags = 16 (fixed32): the W3C flags and whether the parent is remote. Field 16 takes
        // a two-byte key.
        let mut flags = u32::from(r.context.flags.0) | CONTEXT_HAS_IS_REMOTE;
        if r.parent.is_some() {
            flags |= CONTEXT_IS_REMOTE;
        }
        put_varint(b, u64::from((16u32 << 3) | u32::from(I32)));
        b.put_u32_le(flags);

        // ScopeSpans.spans = 2
        self.spans.put_u8(key(2, LEN));
        put_varint(&mut self.spans, self.span.len() as u64);
        self.spans.extend_from_slice(&self.span);
    }

    /// Whether no span has been pushed since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The encoded `ExportTraceServiceRequest` of every span pushed, and a fresh start.
    pub fn finish(&mut self) -> bytes::Bytes {
        let scope_msg = 1 + varint_len(self.scope.len() as u64) + self.scope.len();
        let scope_spans = scope_msg + self.spans.len();
        let resource_msg = 1 + varint_len(self.resource.len() as u64) + self.resource.len();
        let resource_spans = resource_msg + 1 + varint_len(scope_spans as u64) + scope_spans;
        let total = 1 + varint_len(resource_spans as u64) + resource_spans;
        let out = &mut self.out;
        out.reserve(total);
        // ExportTraceServiceRequest.resource_spans = 1
        out.put_u8(key(1, LEN));
        put_varint(out, resource_spans as u64);
        // ResourceSpans.resource = 1 (present, possibly empty), scope_spans = 2
        put_bytes(out, 1, &self.resource);
        out.put_u8(key(2, LEN));
        put_varint(out, scope_spans as u64);
        // ScopeSpans.scope = 1, spans = 2
        put_bytes(out, 1, &self.scope);
        out.put_slice(&self.spans);
        self.spans.clear();
        out.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
        resource::v1::Resource,
        trace::v1::{span::SpanKind as ProtoKind, status::StatusCode, ResourceSpans, ScopeSpans},
    };
    use prost::Message as _;

    use super::*;
    use crate::{
        config::routes::Route,
        context::SpanId,
        telemetry::{
            semconv::tests::{record, text},
            Failure, Outcome,
        },
    };

    fn resource() -> Vec<(String, String)> {
        vec![
            ("service.name".to_owned(), "checkout".to_owned()),
            ("k8s.pod.name".to_owned(), "checkout-7d9".to_owned()),
        ]
    }

    /// A spread of records: every optional field set and unset, errors, both kinds.
    fn records() -> Vec<SpanRecord> {
        let mut v = vec![
            record(Direction::Inbound, Some(0), Outcome::Complete),
            record(Direction::Inbound, Some(13), Outcome::Complete),
            record(Direction::Outbound, None, Outcome::Cancelled),
        ];
        let mut r = record(Direction::Outbound, None, Outcome::Complete);
        r.parent = None;
        r.method = http::Method::GET;
        r.version = http::Version::HTTP_11;
        r.text = text("/orders/42?x=1", Some("svc:8080"), Some("curl/8.0"));
        r.route = Some(Route::Matched("/orders/{id}"));
        r.upstream = Some("[2001:db8::1]:8080".parse().unwrap());
        r.tracestate = Some(http::HeaderValue::from_static("vendor=1,ot=th:8"));
        r.status = Some(http::StatusCode::SERVICE_UNAVAILABLE);
        v.push(r);
        let mut r = record(Direction::Inbound, None, Outcome::Complete);
        r.outcome = Outcome::Failed(Failure {
            error_type: "bad_framing",
            message: "ambiguous request framing".into(),
            client_fault: true,
        });
        r.method = http::Method::from_bytes(b"PURGE").unwrap();
        r.text = text("/pkg.Svc/Do?x=1", None, None);
        r.status = Some(http::StatusCode::BAD_REQUEST);
        r.parent = Some(SpanId([1; 8]));
        r.duration = std::time::Duration::from_nanos(1);
        v.push(r);
        let mut r = record(Direction::Inbound, None, Outcome::Complete);
        r.route = Some(Route::Learned("/users/{id}"));
        v.push(r);
        let mut r = record(Direction::Outbound, None, Outcome::Complete);
        r.parent = None;
        r.link = Some(crate::context::SpanContext {
            trace_id: crate::context::TraceId([3; 16]),
            span_id: SpanId([4; 8]),
            flags: crate::context::TraceFlags::SAMPLED,
        });
        v.push(r);
        let mut r = record(Direction::Outbound, None, Outcome::Complete);
        r.outcome = Outcome::Failed(Failure {
            error_type: "connect_error",
            message: "connecting to 10.0.0.1:80: refused".into(),
            client_fault: false,
        });
        r.status = Some(http::StatusCode::BAD_GATEWAY);
        r.text = text("http://app.ns.svc:8080/x", Some("ignored:1"), None);
        v.push(r);
        v
    }

    /// What opentelemetry-otlp sends for the same spans: its own `SpanData` → proto conversion,
    /// with the resource in our order (the SDK's `Resource` keeps no order).
    fn expected(records: &[SpanRecord]) -> ExportTraceServiceRequest {
        let scope = opentelemetry::InstrumentationScope::builder("tracemesh")
            .with_version("1.2.3")
            .build();
        let spans = records
            .iter()
            .map(|r| super::super::export::to_span_data(r.clone(), &scope).into())
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource()
                        .into_iter()
                        .map(|(k, v)| KeyValue {
                            key: k,
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(v)),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    dropped_attributes_count: 0,
                    entity_refs: vec![],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tracemesh".to_owned(),
                        version: "1.2.3".to_owned(),
                        attributes: vec![],
                        dropped_attributes_count: 0,
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn the_request_is_byte_identical_to_prost_encoding_opentelemetry_otlp_s_message() {
        let records = records();
        let mut enc = Encoder::new(&resource(), "tracemesh", "1.2.3");
        for r in &records {
            enc.push(r);
        }
        let ours = enc.finish();
        let want = expected(&records);
        let decoded = ExportTraceServiceRequest::decode(&ours[..]).expect("decodes");
        // Field by field first, for a readable failure; then the bytes.
        let (got_rs, want_rs) = (&decoded.resource_spans[0], &want.resource_spans[0]);
        assert_eq!(got_rs.resource, want_rs.resource);
        assert_eq!(got_rs.scope_spans[0].scope, want_rs.scope_spans[0].scope);
        for (got, want) in got_rs.scope_spans[0]
            .spans
            .iter()
            .zip(&want_rs.scope_spans[0].spans)
        {
            assert_eq!(got, want);
        }
        assert_eq!(decoded, want);
        assert_eq!(
            &ours[..],
            &want.encode_to_vec()[..],
            "bytes differ from prost's"
        );
    }

    #[test]
    fn decoded_spans_carry_ids_kind_times_status_and_attributes() {
        let records = records();
        let mut enc = Encoder::new(&resource(), "tracemesh", "1.2.3");
        for r in &records {
            enc.push(r);
        }
        let decoded = ExportTraceServiceRequest::decode(&enc.finish()[..]).unwrap();
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), records.len());
        let s = &spans[1];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.span_id, vec![8; 8]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.kind, ProtoKind::Server as i32);
        assert_eq!(s.name, "pkg.Svc/Do");
        assert_eq!(s.start_time_unix_nano, 1_700_000_000 * 1_000_000_000);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 5_000_000);
        assert_eq!(s.flags, 0x301);
        let status = s.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "grpc-status 13 asked to fail");
        let client = &spans[3];
        assert_eq!(client.name, "GET /orders/{id}");
        assert_eq!(client.trace_state, "vendor=1,ot=th:8");
        assert!(client.parent_span_id.is_empty());
        assert_eq!(client.flags, 0x101);
        let attr = |k: &str| {
            client
                .attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.as_ref()?.value.clone())
        };
        assert_eq!(
            attr("network.peer.address"),
            Some(any_value::Value::StringValue("2001:db8::1".to_owned()))
        );
        assert_eq!(
            attr("http.response.status_code"),
            Some(any_value::Value::IntValue(503))
        );
    }

    #[test]
    fn buffers_are_reused_and_each_request_holds_only_its_own_spans() {
        let records = records();
        let mut enc = Encoder::new(&resource(), "tracemesh", "1.2.3");
        enc.push(&records[0]);
        let first = enc.finish();
        assert!(enc.is_empty());
        enc.push(&records[0]);
        let second = enc.finish();
        assert_eq!(first, second);
        let decoded = ExportTraceServiceRequest::decode(&second[..]).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1);
    }
}
