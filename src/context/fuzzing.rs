//! Property checks for the context parsers, shared by the cargo-fuzz targets in `fuzz/` and by
//! the unit test that replays `fuzz/seeds/`. Each function takes arbitrary bytes and panics when
//! a property fails; none of them only checks "no panic": every accepted input must survive
//! write-then-parse (through [`inject`] and [`extract`], as the proxy does it) unchanged.
//!
//! Test code: compiled only for tests and the `test-util` feature, so it may allocate and assert.

use http::{HeaderMap, HeaderValue};

use super::b3::{self, MultiHeaders, Parsed, SamplingState};
use super::w3c::{self, TRACEPARENT, TRACESTATE};
use super::{extract, inject, trim_ows, Format, Propagators, SpanContext, TraceFlags};
use super::{SpanId, TraceId};

/// `traceparent`: a value that parses is re-emitted as a version `00` value that parses to the
/// same context (byte-identical when it was version `00`), and B3 written from it carries the
/// same IDs and decision. `extract` agrees with `parse_traceparent` on every input.
pub fn check_traceparent(data: &[u8]) {
    let parsed = w3c::parse_traceparent(data);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT.clone(), value);
        let e = extract(&headers);
        match parsed {
            Ok(ctx) => {
                assert_eq!(e.parent, Some(ctx));
                assert_eq!(e.format, Some(Format::TraceContext));
                assert!(e.invalid.is_empty(), "{:?}", e.invalid);
            }
            Err(reason) => {
                assert_eq!(e.parent, None);
                assert_eq!(e.invalid.get(Format::TraceContext), Some(reason));
            }
        }
    }
    let Ok(ctx) = parsed else { return };
    assert!(ctx.is_valid());

    let written = w3c::write_traceparent(&ctx);
    assert_eq!(w3c::parse_traceparent(&written), Ok(ctx));
    let input = trim_ows(data);
    if input.starts_with(b"00") {
        assert_eq!(
            &written[..],
            input,
            "a version 00 value is re-emitted as it came"
        );
    } else {
        assert_eq!(
            &written[2..53],
            &input[2..53],
            "a future version keeps its ids"
        );
        assert_eq!(
            ctx.flags.0 & !TraceFlags::SAMPLED.0,
            0,
            "and only the sampled flag"
        );
    }

    let mut headers = HeaderMap::new();
    inject(&mut headers, &ctx, None, Propagators::ALL);
    assert_eq!(headers.get_all(&TRACEPARENT).iter().count(), 1);
    assert_eq!(
        headers.get(&TRACEPARENT).map(HeaderValue::as_bytes),
        Some(&written[..])
    );
    let e = extract(&headers);
    assert_eq!(e.parent, Some(ctx));
    assert!(e.invalid.is_empty(), "{:?}", e.invalid);
    for found in [b3::extract_single(&headers), b3::extract_multi(&headers)] {
        let Ok(Some(Parsed::Ids { ctx: b3_ctx, .. })) = found else {
            panic!("b3 written from {ctx:?} did not parse: {found:?}");
        };
        assert_eq!(b3_ctx.trace_id, ctx.trace_id);
        assert_eq!(b3_ctx.span_id, ctx.span_id);
        assert_eq!(b3_ctx.flags.is_sampled(), ctx.flags.is_sampled());
    }
}

/// `tracestate`: `data` split at `\n` is a list of header values. Validity does not depend on
/// how the list is split into headers; a valid one is propagated with the same members in the
/// same order and survives inject-then-extract byte for byte; an invalid one is dropped and
/// reported while the `traceparent` still counts.
pub fn check_tracestate(data: &[u8]) {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let result = w3c::validate_tracestate(values.iter().copied());
    let joined = values.join(&b","[..]);
    assert_eq!(w3c::validate_tracestate([&joined[..]]), result);

    let all_members: Vec<(&[u8], &[u8])> = values
        .iter()
        .flat_map(|v| w3c::tracestate_members(v))
        .filter_map(w3c::split_member)
        .collect();
    // What travels on: each key's first member, in order.
    let mut members: Vec<(&[u8], &[u8])> = Vec::new();
    for m in &all_members {
        if !members.iter().any(|(k, _)| *k == m.0) {
            members.push(*m);
        }
    }
    if let Ok(shape) = result {
        assert!(shape.members <= w3c::MAX_TRACESTATE_MEMBERS);
        assert_eq!(all_members.len(), shape.members);
        assert_eq!(shape.duplicates, members.len() != all_members.len());
    }

    let Ok(header_values) = values
        .iter()
        .map(|v| HeaderValue::from_bytes(v))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let ctx = parent();
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT.clone(), w3c::traceparent_value(&ctx));
    for value in header_values {
        headers.append(TRACESTATE.clone(), value);
    }
    let e = extract(&headers);
    assert_eq!(e.parent, Some(ctx), "tracestate never affects traceparent");
    match result {
        Err(reason) => {
            assert_eq!(e.tracestate, None);
            assert_eq!(e.invalid.get(Format::TraceContext), Some(reason));
        }
        Ok(shape) => {
            assert!(e.invalid.is_empty(), "{:?}", e.invalid);
            let Some(tracestate) = e.tracestate else {
                assert_eq!(shape.members, 0, "a non-empty tracestate was dropped");
                return;
            };
            let propagated: Vec<_> = w3c::tracestate_members(tracestate.as_bytes())
                .filter_map(w3c::split_member)
                .collect();
            assert_eq!(propagated, members);

            let mut next_hop = HeaderMap::new();
            inject(
                &mut next_hop,
                &ctx,
                Some(tracestate.clone()),
                Propagators::default(),
            );
            let again = extract(&next_hop);
            assert_eq!(again.tracestate, Some(tracestate));
            assert!(again.invalid.is_empty(), "{:?}", again.invalid);
        }
    }
}

/// `b3`: `extract` agrees with `parse_single`; 64-bit trace IDs are left-padded; IDs that parse
/// are re-emitted (128-bit, explicit decision) and parse back to the same context.
pub fn check_b3(data: &[u8]) {
    let parsed = b3::parse_single(data);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(b3::B3.clone(), value);
        assert_extracted(&extract(&headers), Format::B3, parsed);
    }
    if let Ok(Parsed::Ids { ctx, sampling, .. }) = parsed {
        let trace_field = trim_ows(data)
            .split(|&b| b == b'-')
            .next()
            .unwrap_or_default();
        if trace_field.len() == 16 {
            assert_eq!(
                ctx.trace_id.0[..8],
                [0; 8],
                "64-bit trace ids are left-padded"
            );
        }
        assert_eq!(ctx.flags, sampling.flags());
        let written = b3::write_single(&ctx);
        assert_eq!(b3::parse_single(&written), Ok(reemitted(ctx)));

        let mut headers = HeaderMap::new();
        inject(&mut headers, &ctx, None, Propagators::NONE.with(Format::B3));
        let e = extract(&headers);
        assert_eq!((e.parent, e.format), (Some(ctx), Some(Format::B3)));
        assert!(!e.deferred && e.invalid.is_empty());
    }
}

/// `X-B3-*`: the first byte says which of the five headers are present (bit 0 `TraceId`, 1
/// `SpanId`, 2 `ParentSpanId`, 3 `Sampled`, 4 `Flags`), the rest split at `\n` gives their
/// values in that order. `extract` agrees with `MultiHeaders::parse`, and IDs that parse are
/// re-emitted and parse back to the same context, without the previous hop's parent or flags.
pub fn check_b3multi(data: &[u8]) {
    let Some((&mask, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.split(|&b| b == b'\n');
    let mut field = |bit: u8| {
        let value = fields.next().unwrap_or_default();
        (mask & bit != 0).then_some(value)
    };
    let raw = MultiHeaders {
        trace_id: field(1),
        span_id: field(2),
        parent_span_id: field(4),
        sampled: field(8),
        flags: field(16),
    };
    let parsed = raw.parse();
    if let Ok(Some(Parsed::SamplingOnly(sampling))) = parsed {
        assert_ne!(sampling, SamplingState::Defer);
    }

    let mut headers = HeaderMap::new();
    let named = [
        (&b3::X_B3_TRACEID, raw.trace_id),
        (&b3::X_B3_SPANID, raw.span_id),
        (&b3::X_B3_PARENTSPANID, raw.parent_span_id),
        (&b3::X_B3_SAMPLED, raw.sampled),
        (&b3::X_B3_FLAGS, raw.flags),
    ];
    for (name, value) in named {
        if let Some(value) = value {
            let Ok(value) = HeaderValue::from_bytes(value) else {
                return;
            };
            headers.insert(name.clone(), value);
        }
    }
    assert_eq!(MultiHeaders::from_headers(&headers), raw);
    match parsed {
        Ok(None) => assert_eq!(extract(&headers), Default::default()),
        Ok(Some(found)) => assert_extracted(&extract(&headers), Format::B3Multi, Ok(found)),
        Err(reason) => assert_extracted(&extract(&headers), Format::B3Multi, Err(reason)),
    }

    if let Ok(Some(Parsed::Ids { ctx, .. })) = parsed {
        let mut headers = headers.clone();
        inject(
            &mut headers,
            &ctx,
            None,
            Propagators::NONE.with(Format::B3Multi),
        );
        assert!(!headers.contains_key(&b3::X_B3_PARENTSPANID));
        assert!(!headers.contains_key(&b3::X_B3_FLAGS));
        assert_eq!(b3::extract_multi(&headers), Ok(Some(reemitted(ctx))));
    }
}

/// What B3 reads back after we wrote `ctx`: same IDs, an explicit decision, no parent.
fn reemitted(ctx: SpanContext) -> Parsed {
    let sampling = if ctx.flags.is_sampled() {
        SamplingState::Accept
    } else {
        SamplingState::Deny
    };
    Parsed::Ids {
        ctx,
        parent_span_id: None,
        sampling,
    }
}

/// `extract` on headers holding only `format` says what parsing that format said.
fn assert_extracted(
    e: &super::Extracted,
    format: Format,
    parsed: Result<Parsed, super::ParseError>,
) {
    match parsed {
        Ok(Parsed::Ids { ctx, sampling, .. }) => {
            assert_eq!((e.parent, e.format), (Some(ctx), Some(format)));
            assert_eq!(e.deferred, sampling == SamplingState::Defer);
            assert_eq!(e.sampled_hint, None);
            assert!(e.invalid.is_empty(), "{:?}", e.invalid);
        }
        Ok(Parsed::SamplingOnly(sampling)) => {
            assert_eq!((e.parent, e.format), (None, None));
            assert_eq!(e.sampled_hint, sampling.sampled());
            assert!(e.invalid.is_empty(), "{:?}", e.invalid);
        }
        Err(reason) => {
            assert_eq!((e.parent, e.sampled_hint), (None, None));
            assert_eq!(e.invalid.iter().collect::<Vec<_>>(), [(format, reason)]);
        }
    }
}

/// A fixed, valid parent for checks that need one.
fn parent() -> SpanContext {
    SpanContext {
        trace_id: TraceId([0x4b; 16]),
        span_id: SpanId([0xf0; 8]),
        flags: TraceFlags::SAMPLED,
    }
}
