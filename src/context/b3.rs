//! B3 propagation: the single `b3` header and the `X-B3-*` multi headers
//! (<https://github.com/openzipkin/b3-propagation>).
//!
//! Parsing never allocates and never fails a request: an invalid header is `Err(ParseError)`,
//! and the caller treats it as absent and counts it. This module owns the grammar only; which
//! format wins is decided in [`super::extract`].
//!
//! Rules, from the spec and where it is silent:
//! - IDs are lowercase hex; a 64-bit (16-character) trace ID is left-padded with zeros to 128
//!   bits. All-zero trace, span or parent span IDs are invalid.
//! - Sampling state: `0` deny, `1` accept, `d` debug (debug implies accept), absent = defer.
//!   `X-B3-Sampled` also takes the legacy `true` / `false`; `X-B3-Flags: 1` means debug and any
//!   other value is ignored (the context stays valid, as in OpenTelemetry's B3). A decision may come without IDs (`b3: 0`, `X-B3-Sampled: 1` alone).
//! - When a multi header is repeated, the first value wins, as the spec says. The single
//!   header follows the same rule.
//! - We always write 128-bit trace IDs and an explicit decision (`1` or `0`), never debug or a
//!   parent span ID: the span we inject is ours, and its parent is known to our exporter.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{ascii_value, decode_hex, encode_hex, trim_ows, ParseError, SpanContext};
use super::{SpanId, TraceFlags, TraceId};

/// `b3`.
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `X-B3-TraceId`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `X-B3-SpanId`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `X-B3-ParentSpanId`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `X-B3-Sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `X-B3-Flags`.
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Length of the `b3` value we write: `{trace32}-{span16}-{1|0}`.
pub const B3_LEN: usize = 32 + 1 + 16 + 1 + 1;

/// A B3 sampling state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SamplingState {
    /// No decision: the receiver decides.
    Defer,
    /// Do not record (`0`).
    Deny,
    /// Record (`1`).
    Accept,
    /// Record, and mark the spans as debug (`d`, `X-B3-Flags: 1`).
    Debug,
}

// === impl SamplingState ===

impl SamplingState {
    /// The decision as a boolean; `None` for [`SamplingState::Defer`].
    pub fn sampled(self) -> Option<bool> {
        match self {
            SamplingState::Defer => None,
            SamplingState::Deny => Some(false),
            SamplingState::Accept | SamplingState::Debug => Some(true),
        }
    }

    /// The flags this state maps to: sampled iff accept or debug.
    pub fn flags(self) -> TraceFlags {
        if self.sampled() == Some(true) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::NOT_SAMPLED
        }
    }
}

/// What a B3 encoding carried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Parsed {
    /// IDs, with the sampling state (`Defer` when absent) folded into `ctx.flags`.
    Ids {
        /// Trace ID (left-padded if 64-bit), span ID, flags from `sampling`.
        ctx: SpanContext,
        /// The caller's parent span, if sent. Validated, otherwise unused.
        parent_span_id: Option<SpanId>,
        /// The sampling state as sent.
        sampling: SamplingState,
    },
    /// A sampling decision without IDs; never [`SamplingState::Defer`].
    SamplingOnly(SamplingState),
}

// === single header ===

/// Parses one `b3` value: `{trace}-{span}[-{sampling}[-{parent}]]`, or a sampling state alone.
///
/// # Errors
///
/// [`ParseError::Format`] for a wrong number of fields, [`ParseError::Length`] /
/// [`ParseError::Hex`] / [`ParseError::ZeroId`] for a bad ID, [`ParseError::Sampling`]
/// for a sampling field other than `0`, `1` or `d`.
pub fn parse_single(value: &[u8]) -> Result<Parsed, ParseError> {
    let v = trim_ows(value);
    if v.len() == 1 {
        return sampling_field(v).map(Parsed::SamplingOnly);
    }
    let mut fields = v.split(|&b| b == b'-');
    let trace = fields.next().ok_or(ParseError::Format)?;
    let span = fields.next().ok_or(ParseError::Format)?;
    let sampling = fields.next();
    let parent = fields.next();
    if fields.next().is_some() {
        return Err(ParseError::Format);
    }
    let trace_id = trace_id(trace)?;
    let span_id = SpanId::from_hex(span)?;
    let sampling = sampling.map_or(Ok(SamplingState::Defer), sampling_field)?;
    let parent_span_id = parent.map(SpanId::from_hex).transpose()?;
    Ok(ids(trace_id, span_id, parent_span_id, sampling))
}

/// Writes `ctx` as a `b3` value with a 128-bit trace ID and an explicit decision.
pub fn write_single(ctx: &SpanContext) -> [u8; B3_LEN] {
    let mut out = [b'-'; B3_LEN];
    encode_hex(&ctx.trace_id.0, &mut out[..32]);
    encode_hex(&ctx.span_id.0, &mut out[33..49]);
    out[50] = if ctx.flags.is_sampled() { b'1' } else { b'0' };
    out
}

/// The request's `b3` header (the first, if repeated): `Ok(None)` when absent.
///
/// # Errors
///
/// Whatever [`parse_single`] says.
pub fn extract_single(headers: &HeaderMap) -> Result<Option<Parsed>, ParseError> {
    headers
        .get(&B3)
        .map(|v| parse_single(v.as_bytes()))
        .transpose()
}

fn sampling_field(field: &[u8]) -> Result<SamplingState, ParseError> {
    match field {
        b"0" => Ok(SamplingState::Deny),
        b"1" => Ok(SamplingState::Accept),
        b"d" => Ok(SamplingState::Debug),
        _ => Err(ParseError::Sampling),
    }
}

// === multi headers ===

/// The raw values of the `X-B3-*` headers of one request (the first of each, as the spec
/// says), borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MultiHeaders<'a> {
    /// `X-B3-TraceId`.
    pub trace_id: Option<&'a [u8]>,
    /// `X-B3-SpanId`.
    pub span_id: Option<&'a [u8]>,
    /// `X-B3-ParentSpanId`.
    pub parent_span_id: Option<&'a [u8]>,
    /// `X-B3-Sampled`.
    pub sampled: Option<&'a [u8]>,
    /// `X-B3-Flags`.
    pub flags: Option<&'a [u8]>,
}

// === impl MultiHeaders ===

impl<'a> MultiHeaders<'a> {
    /// Borrows the first value of each `X-B3-*` header.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
        MultiHeaders {
            trace_id: get(&X_B3_TRACEID),
            span_id: get(&X_B3_SPANID),
            parent_span_id: get(&X_B3_PARENTSPANID),
            sampled: get(&X_B3_SAMPLED),
            flags: get(&X_B3_FLAGS),
        }
    }

    /// Parses the headers: `Ok(None)` when none is present.
    ///
    /// # Errors
    ///
    /// [`ParseError::Incomplete`] when an ID header is present without both `X-B3-TraceId` and
    /// `X-B3-SpanId`; [`ParseError::Length`] / [`ParseError::Hex`] / [`ParseError::ZeroId`]
    /// for a bad ID; [`ParseError::Sampling`] for an `X-B3-Sampled` other than
    /// `1|0|true|false`. An `X-B3-Flags` other than `1` is ignored.
    pub fn parse(&self) -> Result<Option<Parsed>, ParseError> {
        let sampling = self.sampling()?;
        let (trace, span) = match (self.trace_id, self.span_id, self.parent_span_id) {
            (None, None, None) => {
                return Ok(
                    (sampling != SamplingState::Defer).then_some(Parsed::SamplingOnly(sampling))
                );
            }
            (Some(trace), Some(span), _) => (trace, span),
            _ => return Err(ParseError::Incomplete),
        };
        let trace_id = trace_id(trim_ows(trace))?;
        let span_id = SpanId::from_hex(trim_ows(span))?;
        let parent_span_id = self
            .parent_span_id
            .map(|p| SpanId::from_hex(trim_ows(p)))
            .transpose()?;
        Ok(Some(ids(trace_id, span_id, parent_span_id, sampling)))
    }

    fn sampling(&self) -> Result<SamplingState, ParseError> {
        let sampled = match self.sampled.map(trim_ows) {
            None => SamplingState::Defer,
            Some(b"1" | b"true") => SamplingState::Accept,
            Some(b"0" | b"false") => SamplingState::Deny,
            Some(_) => return Err(ParseError::Sampling),
        };
        // Only `1` (debug) means anything; any other value is ignored, as OpenTelemetry's B3
        // propagators do, and the context stays valid.
        match self.flags.map(trim_ows) {
            Some(b"1") => Ok(SamplingState::Debug),
            _ => Ok(sampled),
        }
    }
}

/// The request's `X-B3-*` headers: `Ok(None)` when none is present.
///
/// # Errors
///
/// Whatever [`MultiHeaders::parse`] says.
pub fn extract_multi(headers: &HeaderMap) -> Result<Option<Parsed>, ParseError> {
    MultiHeaders::from_headers(headers).parse()
}

// === shared ===

/// A 32- or 16-character trace ID; the 16-character form is left-padded to 128 bits.
fn trace_id(field: &[u8]) -> Result<TraceId, ParseError> {
    if field.len() == 16 {
        let low: [u8; 8] = decode_hex(field)?;
        let mut id = [0; 16];
        id[8..].copy_from_slice(&low);
        let id = TraceId(id);
        return if id.is_valid() {
            Ok(id)
        } else {
            Err(ParseError::ZeroId)
        };
    }
    TraceId::from_hex(field)
}

fn ids(
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    sampling: SamplingState,
) -> Parsed {
    Parsed::Ids {
        ctx: SpanContext {
            trace_id,
            span_id,
            flags: sampling.flags(),
        },
        parent_span_id,
        sampling,
    }
}

// === inject ===

/// Sets `b3` from `ctx`.
pub(super) fn inject_single(headers: &mut HeaderMap, ctx: &SpanContext) {
    headers.insert(B3.clone(), ascii_value(&write_single(ctx)));
}

/// Removes `b3`.
pub(super) fn remove_single(headers: &mut HeaderMap) {
    headers.remove(&B3);
}

/// Sets `X-B3-TraceId`, `X-B3-SpanId` and `X-B3-Sampled` from `ctx`, and removes
/// `X-B3-ParentSpanId` and `X-B3-Flags`, which would describe the previous hop.
pub(super) fn inject_multi(headers: &mut HeaderMap, ctx: &SpanContext) {
    let sampled = if ctx.flags.is_sampled() { "1" } else { "0" };
    headers.insert(X_B3_TRACEID.clone(), ascii_value(&ctx.trace_id.to_hex()));
    headers.insert(X_B3_SPANID.clone(), ascii_value(&ctx.span_id.to_hex()));
    headers.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(sampled));
    headers.remove(&X_B3_PARENTSPANID);
    headers.remove(&X_B3_FLAGS);
}

/// Removes every `X-B3-*` header.
pub(super) fn remove_multi(headers: &mut HeaderMap) {
    for name in [
        &X_B3_TRACEID,
        &X_B3_SPANID,
        &X_B3_PARENTSPANID,
        &X_B3_SAMPLED,
        &X_B3_FLAGS,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests;
