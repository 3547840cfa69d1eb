//! Trace context: the IDs that place a request in a trace, and the header formats that carry
//! them between hops.
//!
//! This module owns the types ([`TraceId`], [`SpanId`], [`TraceFlags`], [`SpanContext`], from
//! `ids.rs`), the set of injected formats ([`Format`], [`Propagators`], configured like
//! `OTEL_PROPAGATORS`, from `propagators.rs`), [`ParseError`], and the two entry points the span
//! layer calls on every request: [`extract`] and [`inject`]. The header grammars live in [`w3c`]
//! (W3C Trace Context Level 2, <https://www.w3.org/TR/trace-context-2/>) and [`b3`]
//! (<https://github.com/openzipkin/b3-propagation>). It does not own sampling (see
//! `telemetry::sampling`) nor the counting of invalid headers (see `metrics`).
//!
//! Parsing never allocates on the happy path and never fails a request: an invalid header is
//! reported in [`Extracted::invalid`] as a `(Format, ParseError)` pair, and otherwise treated as
//! absent. Field values are read with their leading and trailing whitespace (SP, HTAB) ignored,
//! as RFC 9110 §5.5 says a field value does not include it (the W3C test suite's
//! `test_traceparent_ows_handling` expects the same).

pub mod b3;
#[cfg(any(test, feature = "test-util"))]
pub mod fuzzing;
mod ids;
mod propagators;
pub mod w3c;

use http::{HeaderMap, HeaderValue};

use self::ids::{decode_hex, encode_hex};
pub use self::ids::{SpanContext, SpanId, TraceFlags, TraceId};
pub use self::propagators::{Format, Propagators, UnknownPropagator};

// === Errors ===

/// Why a context header was ignored. `Copy` and allocation-free: this happens on the data path,
/// and it doubles as the bounded `reason` metric label via [`ParseError::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// A field, or the whole value, has the wrong number of characters.
    #[error("wrong length")]
    Length,
    /// An ID, version or flags field has a character outside `0-9a-f`.
    #[error("not lowercase hex")]
    Hex,
    /// A trace or span ID is all zeros.
    #[error("all-zero id")]
    ZeroId,
    /// The `traceparent` version is `ff`, which the spec forbids.
    #[error("unsupported version")]
    Version,
    /// Delimiters are missing or misplaced, or there are too many fields.
    #[error("malformed value")]
    Format,
    /// A B3 sampling state, `X-B3-Sampled` or `X-B3-Flags` value is not one the spec defines.
    #[error("invalid sampling state")]
    Sampling,
    /// `traceparent` was sent more than once.
    #[error("header repeated")]
    Duplicate,
    /// B3 multi headers carry a trace ID without a span ID, or the other way round.
    #[error("trace id and span id not both present")]
    Incomplete,
    /// `tracestate` has more than 32 list members.
    #[error("tracestate has more than 32 members")]
    TraceStateMembers,
    /// A `tracestate` key breaks the key grammar (or a member has no `=`).
    #[error("invalid tracestate key")]
    TraceStateKey,
    /// A `tracestate` value is empty, too long, or has a forbidden character.
    #[error("invalid tracestate value")]
    TraceStateValue,
}

// === impl ParseError ===

impl ParseError {
    /// Every variant: the complete set of `reason` label values.
    pub const ALL: [ParseError; 11] = [
        ParseError::Length,
        ParseError::Hex,
        ParseError::ZeroId,
        ParseError::Version,
        ParseError::Format,
        ParseError::Sampling,
        ParseError::Duplicate,
        ParseError::Incomplete,
        ParseError::TraceStateMembers,
        ParseError::TraceStateKey,
        ParseError::TraceStateValue,
    ];

    /// The metric label: a fixed snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParseError::Length => "length",
            ParseError::Hex => "hex",
            ParseError::ZeroId => "zero_id",
            ParseError::Version => "version",
            ParseError::Format => "format",
            ParseError::Sampling => "sampling",
            ParseError::Duplicate => "duplicate",
            ParseError::Incomplete => "incomplete",
            ParseError::TraceStateMembers => "tracestate_members",
            ParseError::TraceStateKey => "tracestate_key",
            ParseError::TraceStateValue => "tracestate_value",
        }
    }
}

// === Extraction ===

/// The invalid context headers of one request: at most one [`ParseError`] per [`Format`].
/// `Copy`, no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct InvalidHeaders([Option<ParseError>; 3]);

// === impl InvalidHeaders ===

impl InvalidHeaders {
    /// Records why `format` was ignored; the first reason per format is kept.
    pub fn insert(&mut self, format: Format, reason: ParseError) {
        self.0[format.index()].get_or_insert(reason);
    }

    /// Why `format` was ignored, if it was present and invalid.
    pub fn get(&self, format: Format) -> Option<ParseError> {
        self.0[format.index()]
    }

    /// Whether every present header was valid.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Each invalid format with its reason, in [`Format::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Format, ParseError)> + '_ {
        Format::ALL
            .into_iter()
            .filter_map(|f| self.get(f).map(|reason| (f, reason)))
    }
}

/// What [`extract`] found: everything the span layer and the sampler need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The remote parent, if any format yielded a valid one (priority: `traceparent`, `b3`,
    /// `X-B3-*`).
    pub parent: Option<SpanContext>,
    /// Which format `parent` came from; `None` exactly when `parent` is.
    pub format: Option<Format>,
    /// The parent came from B3 without a sampling state (B3 "defer"): its flags say
    /// not-sampled, but the sampler should decide as it would for a new root.
    pub deferred: bool,
    /// A sampling decision that came without IDs (`b3: 0|1|d`, or `X-B3-Sampled` /
    /// `X-B3-Flags: 1` alone). Only set when `parent` is `None`; otherwise the parent's flags
    /// carry the decision (B3 debug counts as sampled).
    pub sampled_hint: Option<bool>,
    /// The incoming `tracestate`: `Some` only when `parent` came from `traceparent` and
    /// `tracestate` was valid and not empty. A single header is a cheap clone of the incoming
    /// value; several headers are joined with `,`, and later duplicates of a key are dropped
    /// (both allocate, rare). The sampler may edit its `ot` member before it travels on.
    pub tracestate: Option<HeaderValue>,
    /// Headers that were present but invalid, for counting. An invalid `tracestate` next to a
    /// valid `traceparent` is reported under [`Format::TraceContext`]; `tracestate` is not
    /// looked at when `traceparent` is absent or invalid, as the spec requires.
    pub invalid: InvalidHeaders,
}

// === impl Extracted ===

impl Extracted {
    fn offer_b3(&mut self, format: Format, found: Result<Option<b3::Parsed>, ParseError>) {
        match found {
            Ok(None) => {}
            Err(reason) => self.invalid.insert(format, reason),
            Ok(Some(b3::Parsed::Ids { ctx, sampling, .. })) => {
                if self.parent.is_none() {
                    self.parent = Some(ctx);
                    self.format = Some(format);
                    self.deferred = sampling == b3::SamplingState::Defer;
                }
            }
            Ok(Some(b3::Parsed::SamplingOnly(sampling))) => {
                if self.sampled_hint.is_none() {
                    self.sampled_hint = sampling.sampled();
                }
            }
        }
    }
}

/// Reads the trace context of an incoming request. Every format is looked at, so that each
/// invalid one is reported; the parent comes from the first valid one in priority order.
/// Allocates nothing unless `tracestate` arrived as several headers.
pub fn extract(headers: &HeaderMap) -> Extracted {
    let mut out = Extracted::default();
    let present = Present::scan(headers);
    if present.w3c {
        match w3c::extract_traceparent(headers) {
            Ok(None) => {}
            Err(reason) => out.invalid.insert(Format::TraceContext, reason),
            Ok(Some(ctx)) => {
                out.parent = Some(ctx);
                out.format = Some(Format::TraceContext);
                match w3c::extract_tracestate(headers) {
                    Ok(tracestate) => out.tracestate = tracestate,
                    Err(reason) => out.invalid.insert(Format::TraceContext, reason),
                }
            }
        }
    }
    if present.b3 {
        out.offer_b3(Format::B3, b3::extract_single(headers));
    }
    if present.b3_multi {
        out.offer_b3(Format::B3Multi, b3::extract_multi(headers));
    }
    if out.parent.is_some() {
        out.sampled_hint = None;
    }
    out
}

/// Rewrites the propagation headers towards the next hop. `ctx` is this proxy's span (the
/// trace ID, our span ID, our decision in `flags`).
///
/// - `tracecontext` in the set: `traceparent: 00-{trace}-{span}-{flags}` (one 55-byte value),
///   and `tracestate` set to `tracestate` if `Some`, else removed. Not in the set: both removed,
///   so no stale parent reaches the next hop.
/// - `b3` in the set: `b3: {trace}-{span}-{1|0}`; else `b3` removed.
/// - `b3multi` in the set: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled: 1|0`, with
///   `X-B3-ParentSpanId` and `X-B3-Flags` removed; else every `X-B3-*` header removed.
///
/// Every header written replaces all earlier values of that name.
pub fn inject(
    headers: &mut HeaderMap,
    ctx: &SpanContext,
    tracestate: Option<HeaderValue>,
    propagators: Propagators,
) {
    let present = Present::scan(headers);
    if propagators.contains(Format::TraceContext) {
        w3c::inject(headers, ctx, tracestate, present.w3c);
    } else if present.w3c {
        w3c::remove(headers);
    }
    if propagators.contains(Format::B3) {
        b3::inject_single(headers, ctx);
    } else if present.b3 {
        b3::remove_single(headers);
    }
    if propagators.contains(Format::B3Multi) {
        b3::inject_multi(headers, ctx);
    } else if present.b3_multi {
        b3::remove_multi(headers);
    }
}

/// Which propagation formats a header map carries any header of, from one pass over its
/// names. A lookup or a remove of an absent name still hashes it: extracting and injecting
/// made 15 of them per request, nearly all for names the request did not carry.
#[derive(Clone, Copy, Default)]
struct Present {
    /// `traceparent` or `tracestate`.
    w3c: bool,
    /// `b3`.
    b3: bool,
    /// Any `x-b3-*`.
    b3_multi: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Self {
        let mut present = Present::default();
        for name in headers.keys() {
            let name = name.as_str().as_bytes();
            if name == b"traceparent" || name == b"tracestate" {
                present.w3c = true;
            } else if name == b"b3" {
                present.b3 = true;
            } else if name.starts_with(b"x-b3-") {
                present.b3_multi = true;
            }
        }
        present
    }
}

// === Shared helpers for the format modules ===

/// `value` without leading and trailing SP / HTAB (RFC 9110 OWS).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Chunk size of the per-thread arena header values are cut from.
const ARENA_CHUNK: usize = 4096;

thread_local! {
    /// Where this thread's injected header values live: each value is a slice of a shared
    /// chunk, so a `traceparent` costs no allocation of its own (one chunk serves ~70).
    static ARENA: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// A header value of visible ASCII the caller builds (hex digits, `-`, `;`, `=`), cut from the
/// per-thread arena. Also used for the response context (`telemetry::retention`).
///
/// Every such value is unique to its request or response (it carries a span ID), so it is
/// marked sensitive: HTTP/2 sends it as a literal never indexed (RFC 7541 §6.2.3) instead of
/// adding it to the connection's HPACK table. Indexed, each ~100-byte entry evicted the stable
/// headers (`server`, `content-type`, ...), which were then sent and indexed anew on every
/// message: 9k instructions of HPACK work per proxied h2c request (callgrind, BENCHMARKS.md).
pub(crate) fn ascii_value(bytes: &[u8]) -> HeaderValue {
    ascii_header(arena_bytes(bytes))
}

/// A copy of `bytes` cut from the per-thread arena, for callers that make several header
/// values out of one copy (slices of it).
pub(crate) fn arena_bytes(bytes: &[u8]) -> bytes::Bytes {
    ARENA.with_borrow_mut(|arena| {
        if arena.capacity() < bytes.len() {
            *arena = bytes::BytesMut::with_capacity(ARENA_CHUNK.max(bytes.len()));
        }
        arena.extend_from_slice(bytes);
        arena.split().freeze()
    })
}

/// A copy of `value` cut from the per-thread arena, sharing nothing with the buffer it was
/// parsed from. A value hyper parsed is a slice of the connection's whole read buffer (8 KiB or
/// more), so whatever keeps it past the request (a span record, until export) keeps that
/// buffer alive, and hyper takes a new one for the next request.
pub(crate) fn detached(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_maybe_shared(arena_bytes(value.as_bytes()))
        .expect("the bytes of a header value are a header value");
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// `shared`, visible ASCII, as a header value marked sensitive (see [`ascii_value`]).
pub(crate) fn ascii_header(shared: bytes::Bytes) -> HeaderValue {
    let mut value =
        HeaderValue::from_maybe_shared(shared).expect("visible ASCII is a valid header value");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests;
