//! Tests for `context`: IDs and their hex forms, `Propagators` parsing, extraction priority and
//! reporting, injection per format, write-then-extract properties, and the fuzz seed replay.

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::b3::{B3, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID};
use super::w3c::{TRACEPARENT, TRACESTATE};
use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const B3_VALUE: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";

fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append((*name).clone(), HeaderValue::from_str(value).unwrap());
    }
    h
}

fn ours() -> SpanContext {
    SpanContext {
        trace_id: TraceId::from_hex(b"0af7651916cd43dd8448eb211c80319c").unwrap(),
        span_id: SpanId::from_hex(b"b7ad6b7169203331").unwrap(),
        flags: TraceFlags::SAMPLED,
    }
}

fn get<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

// === IDs ===

#[test]
fn trace_id_hex_round_trips_in_lowercase() {
    let hex = b"4bf92f3577b34da6a3ce929d0e0e4736";
    let id = TraceId::from_hex(hex).unwrap();
    assert_eq!(&id.to_hex(), hex);
    assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        format!("{id:?}"),
        "TraceId(4bf92f3577b34da6a3ce929d0e0e4736)"
    );
    assert_eq!(id.0[0], 0x4b);
    assert_eq!(id.0[15], 0x36);
}

#[test]
fn span_id_hex_round_trips_in_lowercase() {
    let id = SpanId::from_hex(b"00f067aa0ba902b7").unwrap();
    assert_eq!(id.0, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
    assert_eq!(&id.to_hex(), b"00f067aa0ba902b7");
    assert_eq!(
        format!("{id} {id:?}"),
        "00f067aa0ba902b7 SpanId(00f067aa0ba902b7)"
    );
}

#[test]
fn id_from_hex_reports_length_hex_and_zero() {
    assert_eq!(TraceId::from_hex(b"4bf9"), Err(ParseError::Length));
    assert_eq!(
        TraceId::from_hex(b"4bf92f3577b34da6a3ce929d0e0e473G"),
        Err(ParseError::Hex)
    );
    assert_eq!(
        TraceId::from_hex(b"4BF92F3577B34DA6A3CE929D0E0E4736"),
        Err(ParseError::Hex)
    );
    assert_eq!(TraceId::from_hex(&[b'0'; 32]), Err(ParseError::ZeroId));
    assert_eq!(
        SpanId::from_hex(b"00f067aa0ba902b"),
        Err(ParseError::Length)
    );
    assert_eq!(SpanId::from_hex(b"00f067aa0ba902b "), Err(ParseError::Hex));
    assert_eq!(SpanId::from_hex(&[b'0'; 16]), Err(ParseError::ZeroId));
}

#[test]
fn every_byte_value_round_trips_through_hex() {
    for b in 0..=u8::MAX {
        let id = SpanId([b, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(SpanId::from_hex(&id.to_hex()), Ok(id));
    }
}

#[test]
fn every_byte_that_is_not_a_lowercase_hex_digit_is_refused_at_every_position() {
    let valid = b"00f067aa0ba902b7";
    for at in 0..valid.len() {
        for b in 0..=u8::MAX {
            let mut hex = *valid;
            hex[at] = b;
            let digit = b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            match SpanId::from_hex(&hex) {
                Ok(id) => {
                    assert!(digit, "{b:#04x} at {at} accepted");
                    assert_eq!(id.to_hex(), hex, "{b:#04x} at {at}");
                }
                Err(e) => assert!(!digit && e == ParseError::Hex, "{b:#04x} at {at}: {e:?}"),
            }
        }
    }
}

#[test]
fn random_ids_are_valid_and_differ() {
    let traces: Vec<TraceId> = (0..100).map(|_| TraceId::random()).collect();
    let spans: Vec<SpanId> = (0..100).map(|_| SpanId::random()).collect();
    assert!(traces.iter().all(TraceId::is_valid));
    assert!(spans.iter().all(SpanId::is_valid));
    assert!(traces.windows(2).all(|w| w[0] != w[1]));
    assert!(spans.windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn invalid_ids_are_all_zero_and_the_default() {
    assert!(!TraceId::INVALID.is_valid());
    assert!(!SpanId::INVALID.is_valid());
    assert_eq!(TraceId::default(), TraceId::INVALID);
    assert_eq!(SpanId::default(), SpanId::INVALID);
}

#[test]
fn sampled_flag_is_masked_not_compared() {
    assert!(TraceFlags::SAMPLED.is_sampled());
    assert!(!TraceFlags::NOT_SAMPLED.is_sampled());
    assert!(TraceFlags(0x09).is_sampled());
    assert!(!TraceFlags(0x02).is_sampled());
}

// === Propagators ===

#[test]
fn propagators_parse_otel_lists() {
    let tc = Propagators::NONE.with(Format::TraceContext);
    let b3 = Propagators::NONE.with(Format::B3);
    let cases = [
        ("tracecontext", tc),
        ("tracecontext,b3", tc.with(Format::B3)),
        (" b3multi , b3 ", b3.with(Format::B3Multi)),
        ("TraceContext,B3", tc.with(Format::B3)),
        ("tracecontext,baggage", tc),
        ("b3,b3,,b3", b3),
        ("none", Propagators::NONE),
        ("baggage", Propagators::NONE),
        ("", Propagators::default()),
        ("  ", Propagators::default()),
        ("tracecontext,b3,b3multi", Propagators::ALL),
    ];
    for (s, expected) in cases {
        assert_eq!(Propagators::parse(s), Ok(expected), "{s:?}");
        assert_eq!(s.parse::<Propagators>(), Ok(expected), "{s:?}");
    }
}

#[test]
fn unknown_propagator_is_named_in_the_error() {
    let err = Propagators::parse("tracecontext, xray ,b3").unwrap_err();
    assert_eq!(err.name, "xray");
    assert!(err.to_string().contains("\"xray\""), "{err}");
    assert!(Propagators::parse("jaeger").is_err());
    assert!(Propagators::parse("b3 multi").is_err());
}

#[test]
fn propagators_default_is_tracecontext_only() {
    let d = Propagators::default();
    assert!(d.contains(Format::TraceContext));
    assert!(!d.contains(Format::B3) && !d.contains(Format::B3Multi));
    assert_eq!(d.to_string(), "tracecontext");
}

#[test]
fn propagators_display_parses_back_for_every_set() {
    for bits in 0..8u8 {
        let set = Format::ALL
            .into_iter()
            .filter(|f| bits & f.bit() != 0)
            .fold(Propagators::NONE, Propagators::with);
        let shown = set.to_string();
        assert_eq!(Propagators::parse(&shown), Ok(set), "{shown}");
        assert_eq!(set.iter().count(), bits.count_ones() as usize);
    }
    assert_eq!(Propagators::NONE.to_string(), "none");
    assert_eq!(Propagators::ALL.to_string(), "tracecontext,b3,b3multi");
}

// === Labels ===

#[test]
fn metric_labels_are_distinct_snake_case() {
    let labels: Vec<&str> = ParseError::ALL.iter().map(|e| e.as_str()).collect();
    for (i, label) in labels.iter().enumerate() {
        assert!(!labels[..i].contains(label), "{label} repeated");
        assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
    let formats: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(formats, ["tracecontext", "b3", "b3multi"]);
}

#[test]
fn error_messages_are_lowercase() {
    for e in ParseError::ALL {
        let msg = e.to_string();
        assert_eq!(msg, msg.to_lowercase());
    }
}

// === extract ===

#[test]
fn no_headers_extract_nothing() {
    assert_eq!(extract(&HeaderMap::new()), Extracted::default());
}

#[test]
fn traceparent_wins_over_b3_over_b3multi() {
    let all = headers(&[
        (&TRACEPARENT, TP),
        (&B3, B3_VALUE),
        (&X_B3_TRACEID, "463ac35c9f6413ad48485a3953bb6124"),
        (&X_B3_SPANID, "a2fb4a1d1a96d312"),
    ]);
    let e = extract(&all);
    assert_eq!(e.format, Some(Format::TraceContext));
    assert_eq!(e.parent, w3c::parse_traceparent(TP.as_bytes()).ok());
    assert!(e.invalid.is_empty());

    let mut no_tp = all.clone();
    no_tp.remove(&TRACEPARENT);
    let e = extract(&no_tp);
    assert_eq!(e.format, Some(Format::B3));
    assert_eq!(e.parent.unwrap().span_id.to_string(), "e457b5a2e4d86bd1");

    no_tp.remove(&B3);
    let e = extract(&no_tp);
    assert_eq!(e.format, Some(Format::B3Multi));
    assert_eq!(e.parent.unwrap().span_id.to_string(), "a2fb4a1d1a96d312");
}

#[test]
fn invalid_traceparent_falls_back_to_b3_and_is_reported() {
    let h = headers(&[(&TRACEPARENT, &TP.replace("-01", "-0x")), (&B3, B3_VALUE)]);
    let e = extract(&h);
    assert_eq!(e.format, Some(Format::B3));
    assert_eq!(
        e.invalid.iter().collect::<Vec<_>>(),
        [(Format::TraceContext, ParseError::Hex)]
    );
}

#[test]
fn every_invalid_format_is_reported_once() {
    let h = headers(&[
        (&TRACEPARENT, "garbage"),
        (&TRACEPARENT, TP),
        (&B3, "x"),
        (&X_B3_TRACEID, "463ac35c9f6413ad48485a3953bb6124"),
    ]);
    let e = extract(&h);
    assert_eq!(e.parent, None);
    assert_eq!(
        e.invalid.iter().collect::<Vec<_>>(),
        [
            (Format::TraceContext, ParseError::Duplicate),
            (Format::B3, ParseError::Sampling),
            (Format::B3Multi, ParseError::Incomplete),
        ]
    );
}

#[test]
fn invalid_b3_next_to_a_valid_traceparent_is_still_counted() {
    let e = extract(&headers(&[(&TRACEPARENT, TP), (&B3, "nope")]));
    assert_eq!(e.format, Some(Format::TraceContext));
    assert_eq!(e.invalid.get(Format::B3), Some(ParseError::Format));
}

#[test]
fn b3_decision_without_ids_is_a_hint_for_a_new_root() {
    for (value, hint) in [("0", false), ("1", true), ("d", true)] {
        let e = extract(&headers(&[(&B3, value)]));
        assert_eq!((e.parent, e.sampled_hint), (None, Some(hint)), "{value}");
        assert!(e.invalid.is_empty());
    }
    let e = extract(&headers(&[(&X_B3_SAMPLED, "0")]));
    assert_eq!(e.sampled_hint, Some(false));
    let e = extract(&headers(&[(&X_B3_FLAGS, "1")]));
    assert_eq!(e.sampled_hint, Some(true));
}

#[test]
fn single_header_decision_takes_precedence_over_multi_decision() {
    let e = extract(&headers(&[(&B3, "0"), (&X_B3_SAMPLED, "1")]));
    assert_eq!(e.sampled_hint, Some(false));
}

#[test]
fn hint_is_dropped_when_a_parent_carries_the_decision() {
    let e = extract(&headers(&[(&TRACEPARENT, TP), (&B3, "0")]));
    assert!(e.parent.unwrap().flags.is_sampled());
    assert_eq!(e.sampled_hint, None);
}

#[test]
fn b3_without_sampling_state_is_deferred() {
    let e = extract(&headers(&[(
        &B3,
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1",
    )]));
    assert!(e.deferred);
    assert!(!e.parent.unwrap().flags.is_sampled());
    let e = extract(&headers(&[(&B3, B3_VALUE)]));
    assert!(!e.deferred);
    assert!(!extract(&headers(&[(&TRACEPARENT, TP)])).deferred);
}

#[test]
fn b3_debug_extracts_as_sampled() {
    let e = extract(&headers(&[(&B3, &B3_VALUE.replace("-1", "-d"))]));
    assert!(e.parent.unwrap().flags.is_sampled());
}

#[test]
fn tracestate_rides_with_a_valid_traceparent() {
    let e = extract(&headers(&[
        (&TRACEPARENT, TP),
        (&TRACESTATE, "congo=t61rcWkgMzE"),
    ]));
    assert_eq!(e.tracestate.unwrap(), "congo=t61rcWkgMzE");
    assert!(e.invalid.is_empty());
}

#[test]
fn tracestate_without_traceparent_is_ignored_and_not_counted() {
    let e = extract(&headers(&[(&TRACESTATE, "foo=1"), (&B3, B3_VALUE)]));
    assert_eq!(e.format, Some(Format::B3));
    assert_eq!(e.tracestate, None);
    assert!(e.invalid.is_empty());
    let e = extract(&headers(&[(&TRACESTATE, "BAD KEY=1")]));
    assert_eq!(e, Extracted::default());
}

#[test]
fn tracestate_is_not_parsed_when_traceparent_is_invalid() {
    let h = headers(&[(&TRACEPARENT, "00-bad"), (&TRACESTATE, "BAD=1")]);
    assert_eq!(
        extract(&h).invalid.iter().collect::<Vec<_>>(),
        [(Format::TraceContext, ParseError::Length)]
    );
}

#[test]
fn invalid_tracestate_is_dropped_but_traceparent_counts() {
    let e = extract(&headers(&[
        (&TRACEPARENT, TP),
        (&TRACESTATE, "foo=1,FOO=2"),
    ]));
    assert_eq!(e.format, Some(Format::TraceContext));
    assert!(e.parent.is_some());
    assert_eq!(e.tracestate, None);
    assert_eq!(
        e.invalid.get(Format::TraceContext),
        Some(ParseError::TraceStateKey)
    );
}

#[test]
fn tracestate_with_33_members_is_dropped() {
    let list: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let e = extract(&headers(&[
        (&TRACEPARENT, TP),
        (&TRACESTATE, &list.join(",")),
    ]));
    assert!(e.parent.is_some());
    assert_eq!(e.tracestate, None);
    assert_eq!(
        e.invalid.get(Format::TraceContext),
        Some(ParseError::TraceStateMembers)
    );
}

#[test]
fn invalid_headers_keep_the_first_reason_per_format() {
    let mut invalid = InvalidHeaders::default();
    invalid.insert(Format::B3, ParseError::Hex);
    invalid.insert(Format::B3, ParseError::Length);
    assert_eq!(invalid.get(Format::B3), Some(ParseError::Hex));
    assert_eq!(invalid.iter().count(), 1);
}

// === inject ===

#[test]
fn default_propagators_write_traceparent_and_remove_b3() {
    let mut h = headers(&[
        (&TRACEPARENT, TP),
        (&TRACESTATE, "stale=1"),
        (&B3, B3_VALUE),
        (&X_B3_TRACEID, "463ac35c9f6413ad48485a3953bb6124"),
        (&X_B3_SPANID, "a2fb4a1d1a96d312"),
        (&X_B3_PARENTSPANID, "0020000000000001"),
        (&X_B3_SAMPLED, "1"),
        (&X_B3_FLAGS, "1"),
        (&http::header::HOST, "example.com"),
    ]);
    inject(&mut h, &ours(), None, Propagators::default());
    assert_eq!(
        get(&h, &TRACEPARENT),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(get(&h, &http::header::HOST), Some("example.com"));
    assert_eq!(h.len(), 2, "{h:?}");
}

#[test]
fn injected_values_are_never_indexed_by_hpack() {
    let mut h = HeaderMap::new();
    inject(&mut h, &ours(), None, Propagators::ALL);
    for name in [&TRACEPARENT, &B3, &X_B3_TRACEID, &X_B3_SPANID] {
        let value = h.get(name).unwrap_or_else(|| panic!("{name} injected"));
        assert!(
            value.is_sensitive(),
            "{name} must be sent as a literal never indexed"
        );
    }
}

#[test]
fn tracestate_is_set_when_given_and_removed_otherwise() {
    let mut h = headers(&[(&TRACESTATE, "old=1"), (&TRACESTATE, "older=2")]);
    let kept = HeaderValue::from_static("congo=t61rcWkgMzE");
    inject(&mut h, &ours(), Some(kept), Propagators::default());
    assert_eq!(
        h.get_all(&TRACESTATE).iter().collect::<Vec<_>>(),
        ["congo=t61rcWkgMzE"]
    );
    inject(&mut h, &ours(), None, Propagators::default());
    assert!(!h.contains_key(&TRACESTATE));
}

#[test]
fn all_propagators_write_every_format() {
    let mut h = headers(&[(&X_B3_PARENTSPANID, "0020000000000001"), (&X_B3_FLAGS, "1")]);
    let unsampled = SpanContext {
        flags: TraceFlags::NOT_SAMPLED,
        ..ours()
    };
    inject(&mut h, &unsampled, None, Propagators::ALL);
    let expected = [
        (
            &TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ),
        (&B3, "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0"),
        (&X_B3_TRACEID, "0af7651916cd43dd8448eb211c80319c"),
        (&X_B3_SPANID, "b7ad6b7169203331"),
        (&X_B3_SAMPLED, "0"),
    ];
    for (name, value) in expected {
        assert_eq!(get(&h, name), Some(value), "{name}");
    }
    assert_eq!(h.len(), expected.len(), "{h:?}");
}

#[test]
fn no_propagators_remove_every_context_header() {
    let mut h = headers(&[
        (&TRACEPARENT, TP),
        (&TRACESTATE, "a=1"),
        (&B3, "1"),
        (&X_B3_TRACEID, "463ac35c9f6413ad48485a3953bb6124"),
        (&X_B3_SPANID, "a2fb4a1d1a96d312"),
        (&X_B3_PARENTSPANID, "0020000000000001"),
        (&X_B3_SAMPLED, "1"),
        (&X_B3_FLAGS, "1"),
    ]);
    let kept = Some(HeaderValue::from_static("a=1"));
    inject(&mut h, &ours(), kept, Propagators::NONE);
    assert!(h.is_empty(), "{h:?}");
}

#[test]
fn inject_replaces_repeated_headers_with_one() {
    let mut h = headers(&[
        (&TRACEPARENT, TP),
        (&TRACEPARENT, TP),
        (&B3, "0"),
        (&B3, "1"),
    ]);
    inject(&mut h, &ours(), None, Propagators::ALL);
    assert_eq!(h.get_all(&TRACEPARENT).iter().count(), 1);
    assert_eq!(h.get_all(&B3).iter().count(), 1);
}

#[test]
fn inject_then_extract_returns_our_context_for_every_format() {
    let mut rng = fastrand::Rng::with_seed(0xc0de);
    for _ in 0..1_000 {
        let ctx = SpanContext {
            trace_id: TraceId(rng.u128(1..).to_be_bytes()),
            span_id: SpanId(rng.u64(1..).to_be_bytes()),
            flags: TraceFlags(rng.u8(..) & 1),
        };
        let format = Format::ALL[rng.usize(..3)];
        let mut h = HeaderMap::new();
        inject(&mut h, &ctx, None, Propagators::NONE.with(format));
        let e = extract(&h);
        assert_eq!((e.parent, e.format), (Some(ctx), Some(format)));
        assert!(!e.deferred && e.invalid.is_empty() && e.sampled_hint.is_none());
    }
}

// === fuzz seeds ===

/// What a fuzz target runs on one input.
type Check = fn(&[u8]);

/// Replays every committed seed (`fuzz/seeds/<target>/*`) through the same check the fuzz
/// target runs, so the corpus stays green without cargo-fuzz.
#[test]
fn fuzz_seeds_pass_their_checks() {
    let targets: [(&str, Check); 4] = [
        ("traceparent", fuzzing::check_traceparent),
        ("tracestate", fuzzing::check_tracestate),
        ("b3", fuzzing::check_b3),
        ("b3multi", fuzzing::check_b3multi),
    ];
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, check) in targets {
        let files = replay(&seeds.join(target), check);
        assert!(files >= 5, "{target}: only {files} seeds");
    }
}

/// Runs `check` on every file in `dir`; returns how many there were.
fn replay(dir: &Path, check: Check) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "seed {} failed", path.display());
        n += 1;
    }
    n
}

#[test]
fn a_detached_value_is_equal_and_keeps_nothing_of_the_buffer_it_was_cut_from() {
    // As hyper parses a head: the value is a slice of the connection's read buffer.
    let buffer = bytes::Bytes::from(b"tracestate: ot=th:0,vendor=1\r\n".repeat(300));
    let mut parsed = HeaderValue::from_maybe_shared(buffer.slice(12..28)).unwrap();
    parsed.set_sensitive(true);
    let copy = detached(&parsed);
    drop(parsed);
    assert_eq!(copy, "ot=th:0,vendor=1");
    assert!(copy.is_sensitive());
    assert!(buffer.is_unique(), "the copy still shares the read buffer");
}
