//! Tests for `b3`: the B3 README's examples, invalid values with their reasons, every-prefix
//! tests, and write-then-parse properties.

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::context::ParseError::*;

/// From the B3 README. Note that the README's multi-header example names `05e3ac9a4f6e3b90`
/// the parent and then encodes it second in `b3`, which is the span ID's position; the field
/// order (trace, span, sampling, parent) is what we follow.
const README_SINGLE: &str = "80f198ee56343ba864fe8b2a57d3eff7-05e3ac9a4f6e3b90-1-e457b5a2e4d86bd1";
const TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const SPAN: &str = "05e3ac9a4f6e3b90";

fn trace(s: &str) -> TraceId {
    TraceId::from_hex(s.as_bytes()).unwrap()
}

fn span(s: &str) -> SpanId {
    SpanId::from_hex(s.as_bytes()).unwrap()
}

fn single(s: &str) -> Result<Parsed, ParseError> {
    parse_single(s.as_bytes())
}

fn ids_of(parsed: Result<Parsed, ParseError>) -> (SpanContext, Option<SpanId>, SamplingState) {
    match parsed {
        Ok(Parsed::Ids {
            ctx,
            parent_span_id,
            sampling,
        }) => (ctx, parent_span_id, sampling),
        other => panic!("expected ids, got {other:?}"),
    }
}

fn multi(pairs: &[(&HeaderName, &str)]) -> Result<Option<Parsed>, ParseError> {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append((*name).clone(), HeaderValue::from_str(value).unwrap());
    }
    extract_multi(&h)
}

// === single ===

#[test]
fn readme_single_header_examples_parse() {
    let (ctx, parent, sampling) = ids_of(single(README_SINGLE));
    assert_eq!(ctx.trace_id, trace(TRACE));
    assert_eq!(ctx.span_id, span(SPAN));
    assert_eq!(parent, Some(span("e457b5a2e4d86bd1")));
    assert_eq!(sampling, SamplingState::Accept);
    assert_eq!(ctx.flags, TraceFlags::SAMPLED);

    let (ctx, parent, sampling) = ids_of(single(&format!("{TRACE}-{SPAN}-1")));
    assert_eq!((ctx.trace_id, ctx.span_id), (trace(TRACE), span(SPAN)));
    assert_eq!((parent, sampling), (None, SamplingState::Accept));
}

#[test]
fn b3_debug_means_sampled() {
    let (ctx, _, sampling) = ids_of(single(&format!("{TRACE}-{SPAN}-d")));
    assert_eq!(sampling, SamplingState::Debug);
    assert!(ctx.flags.is_sampled());
}

#[test]
fn b3_deny_is_not_sampled() {
    let (ctx, _, sampling) = ids_of(single(&format!("{TRACE}-{SPAN}-0")));
    assert_eq!(sampling, SamplingState::Deny);
    assert!(!ctx.flags.is_sampled());
}

#[test]
fn b3_without_sampling_state_defers() {
    let (ctx, parent, sampling) = ids_of(single(&format!("{TRACE}-{SPAN}")));
    assert_eq!((parent, sampling), (None, SamplingState::Defer));
    assert_eq!(ctx.flags, TraceFlags::NOT_SAMPLED);
    assert_eq!(SamplingState::Defer.sampled(), None);
}

#[test]
fn b3_sampling_state_alone_is_a_decision_without_ids() {
    assert_eq!(single("0"), Ok(Parsed::SamplingOnly(SamplingState::Deny)));
    assert_eq!(single("1"), Ok(Parsed::SamplingOnly(SamplingState::Accept)));
    assert_eq!(single("d"), Ok(Parsed::SamplingOnly(SamplingState::Debug)));
    assert_eq!(
        single(" 0\t"),
        Ok(Parsed::SamplingOnly(SamplingState::Deny))
    );
}

#[test]
fn b3_64bit_trace_id_is_left_padded() {
    let (ctx, _, _) = ids_of(single(&format!("48485a3953bb6124-{SPAN}-1")));
    assert_eq!(ctx.trace_id, trace("000000000000000048485a3953bb6124"));
    let (ctx, _, _) = ids_of(
        multi(&[(&X_B3_TRACEID, "48485a3953bb6124"), (&X_B3_SPANID, SPAN)]).map(Option::unwrap),
    );
    assert_eq!(ctx.trace_id, trace("000000000000000048485a3953bb6124"));
}

#[test]
fn b3_invalid_single_values_are_rejected_with_a_reason() {
    let cases: &[(String, ParseError)] = &[
        (String::new(), Format),
        ("true".into(), Format),
        ("2".into(), Sampling),
        ("D".into(), Sampling),
        (TRACE.into(), Format),
        (format!("{TRACE}-{SPAN}-"), Sampling),
        (format!("{TRACE}-{SPAN}-2"), Sampling),
        (format!("{TRACE}-{SPAN}-true"), Sampling),
        (format!("{TRACE}-{SPAN}-1-"), Length),
        (format!("{TRACE}-{SPAN}-1-{SPAN}-x"), Format),
        (format!("{TRACE}-{SPAN}--{SPAN}"), Sampling),
        (format!("{}-{SPAN}", &TRACE[..20]), Length),
        (format!("{TRACE}0-{SPAN}"), Length),
        (format!("{TRACE}-{}", &SPAN[1..]), Length),
        (format!("{}-{SPAN}", TRACE.to_uppercase()), Hex),
        (format!("{TRACE}-{}", SPAN.to_uppercase()), Hex),
        (format!("{TRACE}-{SPAN}-1-{}", SPAN.to_uppercase()), Hex),
        (format!("{}-{SPAN}", "0".repeat(32)), ZeroId),
        (format!("{}-{SPAN}", "0".repeat(16)), ZeroId),
        (format!("{TRACE}-{}", "0".repeat(16)), ZeroId),
        (format!("{TRACE}-{SPAN}-1-{}", "0".repeat(16)), ZeroId),
        (format!("{TRACE} -{SPAN}"), Length),
    ];
    for (value, reason) in cases {
        assert_eq!(single(value), Err(*reason), "{value:?}");
    }
}

#[test]
fn uppercase_hex_is_invalid() {
    assert_eq!(
        single(&format!("{}-{SPAN}-1", TRACE.to_uppercase())),
        Err(Hex)
    );
    assert_eq!(
        multi(&[(&X_B3_TRACEID, &TRACE.to_uppercase()), (&X_B3_SPANID, SPAN)]),
        Err(Hex)
    );
}

/// Every prefix of a valid value either fails or is itself a shorter valid form: a sampling
/// state alone (one character), or IDs up to a field boundary.
#[test]
fn every_prefix_is_rejected_unless_it_is_a_complete_shorter_form() {
    for value in [
        README_SINGLE,
        "463ac35c9f6413ad-a2fb4a1d1a96d312-d-0020000000000001",
    ] {
        let trace_len = value.find('-').unwrap();
        let ids_end = trace_len + 1 + 16;
        for len in 0..value.len() {
            let prefix = &value.as_bytes()[..len];
            match parse_single(prefix) {
                Err(_) => {}
                Ok(Parsed::SamplingOnly(_)) => assert_eq!(len, 1),
                Ok(Parsed::Ids { .. }) => assert!([ids_end, ids_end + 2].contains(&len), "{len}"),
            }
        }
    }
}

#[test]
fn write_then_parse_returns_the_same_context() {
    let mut rng = fastrand::Rng::with_seed(0xb3);
    for _ in 0..2_000 {
        let ctx = SpanContext {
            trace_id: TraceId(rng.u128(1..).to_be_bytes()),
            span_id: SpanId(rng.u64(1..).to_be_bytes()),
            flags: if rng.bool() {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::NOT_SAMPLED
            },
        };
        let (parsed, parent, sampling) = ids_of(parse_single(&write_single(&ctx)));
        assert_eq!(parsed, ctx);
        assert_eq!(parent, None);
        assert_eq!(sampling.sampled(), Some(ctx.flags.is_sampled()));
    }
}

#[test]
fn written_single_header_has_a_128bit_trace_id_and_an_explicit_decision() {
    let ctx = SpanContext {
        trace_id: trace(TRACE),
        span_id: span(SPAN),
        flags: TraceFlags(0x03),
    };
    assert_eq!(
        &write_single(&ctx)[..],
        format!("{TRACE}-{SPAN}-1").as_bytes()
    );
}

#[test]
fn repeated_single_header_first_value_wins() {
    let mut h = HeaderMap::new();
    h.append(B3.clone(), HeaderValue::from_static("0"));
    h.append(B3.clone(), HeaderValue::from_static("garbage"));
    assert_eq!(
        extract_single(&h),
        Ok(Some(Parsed::SamplingOnly(SamplingState::Deny)))
    );
}

// === multi ===

#[test]
fn readme_multi_header_example_parses() {
    let (ctx, parent, sampling) = ids_of(
        multi(&[
            (&X_B3_TRACEID, "463ac35c9f6413ad48485a3953bb6124"),
            (&X_B3_SPANID, "a2fb4a1d1a96d312"),
            (&X_B3_PARENTSPANID, "0020000000000001"),
            (&X_B3_SAMPLED, "1"),
        ])
        .map(Option::unwrap),
    );
    assert_eq!(ctx.trace_id, trace("463ac35c9f6413ad48485a3953bb6124"));
    assert_eq!(ctx.span_id, span("a2fb4a1d1a96d312"));
    assert_eq!(parent, Some(span("0020000000000001")));
    assert_eq!(sampling, SamplingState::Accept);
}

#[test]
fn x_b3_sampled_accepts_legacy_true_and_false() {
    for (value, expected) in [
        ("1", SamplingState::Accept),
        ("true", SamplingState::Accept),
        ("0", SamplingState::Deny),
        ("false", SamplingState::Deny),
    ] {
        let parsed = multi(&[
            (&X_B3_TRACEID, TRACE),
            (&X_B3_SPANID, SPAN),
            (&X_B3_SAMPLED, value),
        ]);
        assert_eq!(ids_of(parsed.map(Option::unwrap)).2, expected, "{value}");
    }
}

#[test]
fn x_b3_flags_1_is_debug_and_means_sampled_even_with_sampled_0() {
    let (ctx, _, sampling) = ids_of(
        multi(&[
            (&X_B3_TRACEID, TRACE),
            (&X_B3_SPANID, SPAN),
            (&X_B3_SAMPLED, "0"),
            (&X_B3_FLAGS, "1"),
        ])
        .map(Option::unwrap),
    );
    assert_eq!(sampling, SamplingState::Debug);
    assert!(ctx.flags.is_sampled());
}

#[test]
fn multi_without_sampled_defers() {
    let (ctx, _, sampling) =
        ids_of(multi(&[(&X_B3_TRACEID, TRACE), (&X_B3_SPANID, SPAN)]).map(Option::unwrap));
    assert_eq!(sampling, SamplingState::Defer);
    assert!(!ctx.flags.is_sampled());
    let with_flags_0 = multi(&[
        (&X_B3_TRACEID, TRACE),
        (&X_B3_SPANID, SPAN),
        (&X_B3_FLAGS, "0"),
    ]);
    assert_eq!(
        ids_of(with_flags_0.map(Option::unwrap)).2,
        SamplingState::Defer
    );
}

#[test]
fn multi_sampling_headers_alone_are_a_decision_without_ids() {
    let only = |name: &HeaderName, value: &str| multi(&[(name, value)]);
    assert_eq!(
        only(&X_B3_SAMPLED, "0"),
        Ok(Some(Parsed::SamplingOnly(SamplingState::Deny)))
    );
    assert_eq!(
        only(&X_B3_SAMPLED, "1"),
        Ok(Some(Parsed::SamplingOnly(SamplingState::Accept)))
    );
    assert_eq!(
        only(&X_B3_FLAGS, "1"),
        Ok(Some(Parsed::SamplingOnly(SamplingState::Debug)))
    );
    assert_eq!(only(&X_B3_FLAGS, "0"), Ok(None));
    assert_eq!(multi(&[]), Ok(None));
}

#[test]
fn multi_ids_must_come_together() {
    assert_eq!(multi(&[(&X_B3_TRACEID, TRACE)]), Err(Incomplete));
    assert_eq!(multi(&[(&X_B3_SPANID, SPAN)]), Err(Incomplete));
    assert_eq!(multi(&[(&X_B3_PARENTSPANID, SPAN)]), Err(Incomplete));
    assert_eq!(
        multi(&[(&X_B3_TRACEID, TRACE), (&X_B3_SAMPLED, "1")]),
        Err(Incomplete)
    );
}

#[test]
fn multi_invalid_values_are_rejected_with_a_reason() {
    let ids = [(&X_B3_TRACEID, TRACE), (&X_B3_SPANID, SPAN)];
    let with = |extra: (&HeaderName, &str)| {
        let mut pairs = ids.to_vec();
        pairs.push(extra);
        multi(&pairs)
    };
    assert_eq!(with((&X_B3_SAMPLED, "yes")), Err(Sampling));
    assert_eq!(with((&X_B3_SAMPLED, "d")), Err(Sampling));
    assert_eq!(with((&X_B3_PARENTSPANID, "0000000000000000")), Err(ZeroId));
    assert_eq!(with((&X_B3_PARENTSPANID, "xyz")), Err(Length));
    assert_eq!(
        multi(&[(&X_B3_TRACEID, &TRACE[..31]), (&X_B3_SPANID, SPAN)]),
        Err(Length)
    );
    assert_eq!(
        multi(&[(&X_B3_TRACEID, TRACE), (&X_B3_SPANID, "0000000000000000")]),
        Err(ZeroId)
    );
}

#[test]
fn repeated_multi_headers_first_value_wins() {
    let parsed = multi(&[
        (&X_B3_TRACEID, TRACE),
        (&X_B3_TRACEID, "not-an-id"),
        (&X_B3_SPANID, SPAN),
        (&X_B3_SAMPLED, "1"),
        (&X_B3_SAMPLED, "0"),
    ]);
    let (ctx, _, sampling) = ids_of(parsed.map(Option::unwrap));
    assert_eq!(ctx.trace_id, trace(TRACE));
    assert_eq!(sampling, SamplingState::Accept);
}

#[test]
fn multi_values_tolerate_surrounding_ows() {
    let parsed = multi(&[
        (&X_B3_TRACEID, &format!(" {TRACE}")),
        (&X_B3_SPANID, &format!("{SPAN}\t")),
        (&X_B3_SAMPLED, " 1 "),
    ]);
    assert_eq!(ids_of(parsed.map(Option::unwrap)).0.trace_id, trace(TRACE));
}

#[test]
fn x_b3_flags_other_than_1_is_ignored_and_the_context_stays_valid() {
    for flags in ["2", "0", "3", "debug", ""] {
        let (ctx, _, sampling) = ids_of(
            multi(&[
                (&X_B3_TRACEID, TRACE),
                (&X_B3_SPANID, SPAN),
                (&X_B3_SAMPLED, "1"),
                (&X_B3_FLAGS, flags),
            ])
            .map(Option::unwrap),
        );
        assert_eq!(sampling, SamplingState::Accept, "X-B3-Flags: {flags:?}");
        assert!(ctx.flags.is_sampled());
    }
}
