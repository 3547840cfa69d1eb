//! Tests for `w3c`: the spec's examples, every case of the W3C test suite (test/test.py),
//! every-prefix and every-substitution tests, and write-then-parse properties.

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::context::ParseError::*;

/// The spec's own example (§3.2.2.5).
const SPEC: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The W3C test suite's usual value (test/test.py).
const SUITE: &str = "00-12345678901234567890123456789012-1234567890123456-01";

fn ctx(trace: &str, span: &str, flags: u8) -> SpanContext {
    SpanContext {
        trace_id: TraceId::from_hex(trace.as_bytes()).unwrap(),
        span_id: SpanId::from_hex(span.as_bytes()).unwrap(),
        flags: TraceFlags(flags),
    }
}

fn parse(s: &str) -> Result<SpanContext, ParseError> {
    parse_traceparent(s.as_bytes())
}

fn tracestate(values: &[&str]) -> Result<usize, ParseError> {
    validate_tracestate(values.iter().map(|v| v.as_bytes())).map(|shape| shape.members)
}

fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append((*name).clone(), HeaderValue::from_str(value).unwrap());
    }
    h
}

// === traceparent ===

#[test]
fn spec_examples_parse() {
    let sampled = parse(SPEC).unwrap();
    assert_eq!(
        sampled,
        ctx("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    );
    assert!(sampled.flags.is_sampled());
    let not_sampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
    assert!(!not_sampled.flags.is_sampled());
    assert_eq!(
        parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Ok(ctx(
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            1
        ))
    );
}

/// Every invalid case of the W3C test suite (test/test.py), with the reason we report.
#[test]
fn test_suite_invalid_traceparents_are_rejected_with_a_reason() {
    let t = "12345678901234567890123456789012";
    let p = "1234567890123456";
    let cases: &[(String, ParseError)] = &[
        (format!("00-{t}-{p}-01."), Length),
        (
            format!("00-{t}-{p}-01-what-the-future-will-be-like"),
            Length,
        ),
        (
            format!("cc-{t}-{p}-01.what-the-future-will-be-like"),
            Format,
        ),
        (format!("ff-{t}-{p}-01"), Version),
        (format!(".0-{t}-{p}-01"), Hex),
        (format!("0.-{t}-{p}-01"), Hex),
        (format!("000-{t}-{p}-01"), Length),
        (format!("0000-{t}-{p}-01"), Length),
        (format!("0-{t}-{p}-01"), Hex),
        (format!("00-{}-{p}-01", "0".repeat(32)), ZeroId),
        (format!("00-.2345678901234567890123456789012-{p}-01"), Hex),
        (format!("00-1234567890123456789012345678901.-{p}-01"), Hex),
        (format!("00-{t}3-{p}-01"), Length),
        (format!("00-{}-{p}-01", &t[1..]), Length),
        (format!("00-{t}-{}-01", "0".repeat(16)), ZeroId),
        (format!("00-{t}-.234567890123456-01"), Hex),
        (format!("00-{t}-123456789012345.-01"), Hex),
        (format!("00-{t}-{p}7-01"), Length),
        (format!("00-{t}-{}-01", &p[1..]), Length),
        (format!("00-{t}-{p}-.0"), Hex),
        (format!("00-{t}-{p}-0."), Hex),
        (format!("00-{t}-{p}-001"), Length),
        (format!("00-{t}-{p}-1"), Length),
    ];
    for (value, reason) in cases {
        assert_eq!(parse(value), Err(*reason), "{value:?}");
    }
}

#[test]
fn traceparent_version_ff_is_invalid() {
    assert_eq!(parse(&SPEC.replacen("00", "ff", 1)), Err(Version));
}

#[test]
fn uppercase_hex_is_invalid() {
    let upper_trace = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let upper_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01";
    let upper_flags = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A";
    let upper_version = "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for value in [upper_trace, upper_span, upper_flags, upper_version] {
        assert_eq!(parse(value), Err(Hex), "{value}");
    }
}

#[test]
fn future_version_with_extra_fields_is_accepted() {
    let expected = ctx("12345678901234567890123456789012", "1234567890123456", 1);
    let exact = SUITE.replacen("00", "cc", 1);
    let longer = format!("{exact}-what-the-future-will-be-like");
    assert_eq!(parse(&exact), Ok(expected));
    assert_eq!(parse(&longer), Ok(expected));
}

#[test]
fn future_version_without_a_dash_after_the_flags_is_invalid() {
    let value = format!("{}.what", SUITE.replacen("00", "cc", 1));
    assert_eq!(parse(&value), Err(Format));
}

#[test]
fn future_version_shorter_than_55_is_invalid() {
    assert_eq!(parse(&SUITE.replacen("00", "01", 1)[..54]), Err(Length));
}

#[test]
fn future_version_flags_keep_only_the_sampled_and_random_bits() {
    let value = SUITE.replacen("00", "01", 1).replace("-01", "-ff");
    assert_eq!(parse(&value).unwrap().flags, TraceFlags(0x03));
    let value = SUITE.replacen("00", "01", 1).replace("-01", "-fe");
    assert_eq!(parse(&value).unwrap().flags, TraceFlags::RANDOM);
    let value = SUITE.replacen("00", "01", 1).replace("-01", "-fc");
    assert_eq!(parse(&value).unwrap().flags, TraceFlags::NOT_SAMPLED);
}

#[test]
fn version_00_keeps_unknown_flag_bits_for_the_caller_to_mask() {
    let value = SUITE.replace("-01", "-09");
    let flags = parse(&value).unwrap().flags;
    assert_eq!(flags, TraceFlags(0x09));
    assert!(flags.is_sampled());
}

#[test]
fn all_zero_ids_are_invalid() {
    let zero_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
    let zero_span = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
    assert_eq!(parse(&zero_trace), Err(ZeroId));
    assert_eq!(parse(&zero_span), Err(ZeroId));
}

#[test]
fn misplaced_dashes_are_a_format_error() {
    assert_eq!(parse(&SPEC.replacen('-', "_", 1)), Err(Format));
    assert_eq!(parse(&SPEC.replace("-01", "_01")), Err(Format));
}

/// RFC 9110 §5.5: OWS around a field value is not part of it; the W3C test suite agrees.
#[test]
fn surrounding_ows_is_ignored() {
    let expected = parse(SUITE).unwrap();
    for value in [
        format!(" {SUITE}"),
        format!("\t{SUITE}"),
        format!("{SUITE} "),
        format!("{SUITE}\t"),
        format!("\t {SUITE} \t"),
    ] {
        assert_eq!(parse(&value), Ok(expected), "{value:?}");
    }
}

#[test]
fn inner_whitespace_is_invalid() {
    assert_eq!(parse(&SUITE.replacen('-', " -", 1)), Err(Length));
    assert_eq!(parse(&SUITE.replacen('1', " ", 1)), Err(Hex));
}

#[test]
fn every_strict_prefix_is_too_short() {
    for value in [SPEC, SUITE] {
        for len in 0..value.len() {
            assert_eq!(
                parse_traceparent(&value.as_bytes()[..len]),
                Err(Length),
                "{len}"
            );
        }
    }
}

/// Any byte but a lowercase hex digit at a version, ID or flags position, and anything but `-`
/// at a dash, makes the value invalid. A hex digit in an ID or the flags changes the context;
/// in the version it makes a future version, read as the same context.
#[test]
fn every_single_byte_substitution_is_rejected_or_understood() {
    let original = parse(SPEC).unwrap();
    for i in 0..SPEC.len() {
        for b in 0..=u8::MAX {
            if b == SPEC.as_bytes()[i] {
                continue;
            }
            let mut value = SPEC.as_bytes().to_vec();
            value[i] = b;
            let Ok(changed) = parse_traceparent(&value) else {
                continue;
            };
            assert!(matches!(b, b'0'..=b'9' | b'a'..=b'f'), "{i} {b:#x}");
            assert!(![2, 35, 52].contains(&i), "{i} {b:#x}");
            if i < 2 {
                assert_eq!(changed, original, "{i} {b:#x}");
            } else {
                assert_ne!(changed, original, "{i} {b:#x}");
            }
        }
    }
}

#[test]
fn write_then_parse_returns_the_same_context() {
    let mut rng = fastrand::Rng::with_seed(0x7ace);
    for _ in 0..2_000 {
        let ctx = SpanContext {
            trace_id: TraceId(rng.u128(1..).to_be_bytes()),
            span_id: SpanId(rng.u64(1..).to_be_bytes()),
            flags: TraceFlags(rng.u8(..)),
        };
        let written = write_traceparent(&ctx);
        assert_eq!(parse_traceparent(&written), Ok(ctx));
        assert!(written
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-')));
    }
}

#[test]
fn written_traceparent_is_the_spec_example() {
    let example = ctx("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1);
    assert_eq!(&write_traceparent(&example)[..], SPEC.as_bytes());
    assert_eq!(traceparent_value(&example), SPEC);
}

#[test]
fn repeated_traceparent_is_a_duplicate() {
    let h = headers(&[(&TRACEPARENT, SUITE), (&TRACEPARENT, SPEC)]);
    assert_eq!(extract_traceparent(&h), Err(Duplicate));
    let same_twice = headers(&[(&TRACEPARENT, SUITE), (&TRACEPARENT, SUITE)]);
    assert_eq!(extract_traceparent(&same_twice), Err(Duplicate));
}

#[test]
fn absent_traceparent_is_none() {
    assert_eq!(extract_traceparent(&HeaderMap::new()), Ok(None));
}

#[test]
fn header_name_case_does_not_matter() {
    let mut h = HeaderMap::new();
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        h.clear();
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        h.insert(name, HeaderValue::from_static(SUITE));
        assert!(extract_traceparent(&h).unwrap().is_some());
    }
}

// === tracestate ===

#[test]
fn tracestate_spec_examples_are_valid() {
    assert_eq!(tracestate(&["congo=t61rcWkgMzE"]), Ok(1));
    assert_eq!(tracestate(&["rojo=00f067aa0ba902b7"]), Ok(1));
    assert_eq!(
        tracestate(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]),
        Ok(2)
    );
    assert_eq!(
        tracestate(&["congo=ucfJifl5GOE,rojo=00f067aa0ba902b7"]),
        Ok(2)
    );
}

#[test]
fn tracestate_ows_around_members_is_ignored() {
    assert_eq!(tracestate(&["foo=1 \t , \t bar=2, \t baz=3"]), Ok(3));
    assert_eq!(tracestate(&["foo=1\t \t,\t \tbar=2,\t \tbaz=3"]), Ok(3));
    for value in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        assert_eq!(tracestate(&[value]), Ok(1), "{value:?}");
    }
}

#[test]
fn tracestate_value_keeps_its_leading_spaces() {
    let members: Vec<_> = tracestate_members(b"foo=  bar ")
        .filter_map(split_member)
        .collect();
    assert_eq!(members, [(&b"foo"[..], &b"  bar"[..])]);
}

#[test]
fn empty_tracestate_members_are_allowed_and_not_counted() {
    assert_eq!(tracestate(&[""]), Ok(0));
    assert_eq!(tracestate(&[" , ,\t,"]), Ok(0));
    assert_eq!(tracestate(&[",,foo=1,, ,bar=2,"]), Ok(2));
    assert_eq!(tracestate(&["", "foo=1", ""]), Ok(1));
}

#[test]
fn tracestate_all_allowed_characters_are_valid() {
    let simple_key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let tenant_key = format!("{simple_key}@a-z0-9_-*/");
    let value: String = (0x20u8..=0x7e)
        .filter(|c| *c != b',' && *c != b'=')
        .map(char::from)
        .collect();
    assert_eq!(tracestate(&[&format!("{simple_key}={value}")]), Ok(1));
    assert_eq!(tracestate(&[&format!("{tenant_key}={value}")]), Ok(1));
}

#[test]
fn tracestate_illegal_keys_are_invalid() {
    for value in [
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "=1",
        "foo",
        "@foo=1,bar=2",
        "_foo=1",
        "foo\u{e9}=1",
    ] {
        assert_eq!(tracestate(&[value]), Err(TraceStateKey), "{value:?}");
    }
}

#[test]
fn tracestate_level_2_keys_take_any_number_of_at_signs_but_not_first() {
    for value in [
        "foo@=1,bar=2",
        "foo@@bar=1,bar=2",
        "foo@bar@baz=1,bar=2",
        "foo@1bar=1",
        "1foo=1",
        "1tenant@system=1",
        "t@vvvvvvvvvvvvvvv=1",
    ] {
        let n = value.matches('=').count();
        assert_eq!(tracestate(&[value]), Ok(n), "{value:?}");
    }
}

#[test]
fn tracestate_key_length_limit_is_256_characters_whatever_they_are() {
    let valid = [
        "z".repeat(256),
        format!("{}@{}", "t".repeat(241), "v".repeat(14)),
        format!("{}@v", "t".repeat(242)),
        format!("t@{}", "v".repeat(254)),
    ];
    let invalid = ["z".repeat(257), format!("t@{}", "v".repeat(255))];
    for key in valid {
        assert_eq!(tracestate(&["foo=1", &format!("{key}=1")]), Ok(2), "{key}");
    }
    for key in invalid {
        let value = format!("{key}=1");
        assert_eq!(tracestate(&["foo=1", &value]), Err(TraceStateKey), "{key}");
    }
}

#[test]
fn tracestate_illegal_values_are_invalid() {
    let too_long = format!("foo={}", "v".repeat(257));
    for value in [
        "foo=bar=baz",
        "foo=,bar=3",
        "foo=",
        "foo=a\tb",
        "foo=caf\u{e9}",
        too_long.as_str(),
    ] {
        assert_eq!(tracestate(&[value]), Err(TraceStateValue), "{value:?}");
    }
    let longest = format!("foo={}", "v".repeat(256));
    assert_eq!(tracestate(&[&longest]), Ok(1));
}

#[test]
fn tracestate_duplicate_keys_keep_the_first_member_and_drop_the_later_ones() {
    for (values, expected) in [
        (&["foo=1,foo=1"][..], "foo=1"),
        (&["foo=1,foo=2"], "foo=1"),
        (&["foo=1", "foo=1"], "foo=1"),
        (&["foo=1", "foo=2"], "foo=1"),
        (&["a@b=1,bar=2,a@b=3"], "a@b=1,bar=2"),
        (&["x=1 , y=2", " x=3,z= 4"], "x=1,y=2,z= 4"),
    ] {
        let pairs: Vec<_> = values.iter().map(|v| (&TRACESTATE, *v)).collect();
        let got = extract_tracestate(&headers(&pairs)).unwrap().unwrap();
        assert_eq!(got, expected, "{values:?}");
    }
}

#[test]
fn tracestate_with_32_members_is_kept() {
    let members: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
    let chunks: Vec<String> = members.chunks(10).map(|c| c.join(",")).collect();
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    assert_eq!(tracestate(&chunks), Ok(32));
}

#[test]
fn tracestate_with_33_members_is_dropped() {
    let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let chunks: Vec<String> = members.chunks(10).map(|c| c.join(",")).collect();
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    assert_eq!(tracestate(&chunks), Err(TraceStateMembers));
    let h = headers(&[(&TRACESTATE, &members.join(","))]);
    assert_eq!(extract_tracestate(&h), Err(TraceStateMembers));
}

#[test]
fn single_tracestate_header_is_passed_on_as_is() {
    let h = headers(&[(&TRACESTATE, " rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE")]);
    let value = extract_tracestate(&h).unwrap().unwrap();
    assert_eq!(value, " rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE");
}

#[test]
fn empty_tracestate_headers_are_not_propagated() {
    assert_eq!(extract_tracestate(&HeaderMap::new()), Ok(None));
    let h = headers(&[(&TRACESTATE, ""), (&TRACESTATE, " , ")]);
    assert_eq!(extract_tracestate(&h), Ok(None));
    let h = headers(&[(&TRACESTATE, ""), (&TRACESTATE, "foo=1"), (&TRACESTATE, "")]);
    assert_eq!(extract_tracestate(&h).unwrap().unwrap(), "foo=1");
}

#[test]
fn multiple_tracestate_headers_are_joined_in_order() {
    let h = headers(&[
        (&TRACESTATE, "foo=1,bar=2"),
        (&TRACESTATE, "rojo=1,congo=2"),
        (&TRACESTATE, ""),
        (&TRACESTATE, "baz=3"),
    ]);
    let value = extract_tracestate(&h).unwrap().unwrap();
    assert_eq!(value, "foo=1,bar=2,rojo=1,congo=2,baz=3");
}

#[test]
fn tracestate_validity_does_not_depend_on_how_it_is_split_into_headers() {
    let whole = "a=1,b=2,c=3,a@x=4";
    for (comma, _) in whole.match_indices(',') {
        let splits = [
            (&whole[..comma], &whole[comma + 1..]),
            (&whole[..=comma], &whole[comma + 1..]),
            (&whole[..comma], &whole[comma..]),
        ];
        for (left, right) in splits {
            assert_eq!(tracestate(&[left, right]), Ok(4), "{left:?} | {right:?}");
        }
    }
}
