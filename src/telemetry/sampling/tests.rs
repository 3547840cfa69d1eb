//! Tests for the sampler: consistent probability decisions, `th` / `rv` handling, rules and
//! force-trace.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method};

use super::*;
use crate::{config::SampleRatio, context, metrics::Direction};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn sampler(parent_based: bool, ratio: f64) -> Sampler {
    Sampler::new(
        SamplerConfig {
            parent_based,
            root_ratio: SampleRatio::new(ratio).unwrap(),
        },
        Arc::from(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]),
    )
}

fn decide_with(
    s: &Sampler,
    headers: &HeaderMap,
    path: &str,
    rules: &Rules,
    client: IpAddr,
) -> Decision {
    let facts = RequestFacts {
        direction: Direction::Inbound,
        method: &Method::GET,
        path,
        route: None,
        headers,
    };
    s.decide(&context::extract(headers), &facts, rules, client)
}

fn decide(s: &Sampler, headers: &HeaderMap) -> Decision {
    decide_with(s, headers, "/", &Rules::default(), OUTSIDE)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn ts(d: &Decision) -> Option<&str> {
    d.tracestate.as_ref().map(|v| v.to_str().unwrap())
}

/// A trace ID whose right-most 7 bytes are `low56`.
fn trace_with_low56(low56: u64) -> String {
    format!("4bf92f3577b34da6a3{:014x}", low56)
}

#[test]
fn parent_based_follows_the_parent_flag_whatever_the_ratio() {
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let d = decide(&sampler(true, 0.0), &headers(&[("traceparent", tp)]));
    assert!(d.sampled());
    assert_eq!(d.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert!(!decide(&sampler(true, 1.0), &headers(&[("traceparent", tp)])).sampled());
}

#[test]
fn the_random_flag_is_carried_unchanged_and_reserved_bits_are_zero() {
    for (incoming, expected) in [
        ("00", 0x00),
        ("01", 0x01),
        ("02", 0x02),
        ("03", 0x03),
        ("ff", 0x03),
        ("fc", 0x00),
        ("fe", 0x02),
    ] {
        let tp = format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{incoming}");
        let d = decide(&sampler(true, 1.0), &headers(&[("traceparent", &tp)]));
        assert_eq!(d.flags.0, expected, "incoming flags {incoming}");
    }
    // Not parent-based: our own decision, the incoming random bit.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02";
    let d = decide(&sampler(false, 1.0), &headers(&[("traceparent", tp)]));
    assert_eq!(d.flags.0, 0x03);
    // A B3 parent carries no random flag.
    let d = decide(
        &sampler(true, 1.0),
        &headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]),
    );
    assert_eq!(d.flags.0, 0x01);
}

#[test]
fn new_roots_are_random_and_say_so() {
    let d = decide(&sampler(true, 1.0), &HeaderMap::new());
    assert!(d.flags.is_random());
    assert!(d.sampled());
    let d = decide(&sampler(true, 0.0), &HeaderMap::new());
    assert_eq!(d.flags.0, 0x02);
    // The right-most 7 bytes are uniform: each of their 56 bits is set about half the time.
    let n = 4000;
    let mut ones = [0u32; 56];
    for _ in 0..n {
        let low = TraceId::random().low56();
        for (bit, count) in ones.iter_mut().enumerate() {
            *count += ((low >> bit) & 1) as u32;
        }
    }
    for (bit, count) in ones.iter().enumerate() {
        assert!(
            (1700..2300).contains(count),
            "bit {bit} set {count} of {n} times"
        );
    }
}

#[test]
fn a_root_is_kept_iff_its_randomness_reaches_the_threshold() {
    // ratio 0.25: T = 0xc0000000000000.
    let s = sampler(false, 0.25);
    for (low56, kept) in [
        (0xc0000000000000, true),
        (0xffffffffffffff, true),
        (0xbfffffffffffff, false),
        (0, false),
    ] {
        let tp = format!("00-{}-b7ad6b7169203331-01", trace_with_low56(low56));
        let d = decide(&s, &headers(&[("traceparent", &tp)]));
        assert_eq!(d.sampled(), kept, "R = {low56:x}");
        assert_eq!(ts(&d), kept.then_some("ot=th:c"), "R = {low56:x}");
    }
}

#[test]
fn an_incoming_rv_decides_instead_of_the_trace_id() {
    let s = sampler(false, 0.25);
    // The trace ID alone would be kept; rv says drop.
    let tp = format!(
        "00-{}-b7ad6b7169203331-01",
        trace_with_low56(0xffffffffffffff)
    );
    let d = decide(
        &s,
        &headers(&[("traceparent", &tp), ("tracestate", "ot=rv:10000000000000")]),
    );
    assert!(!d.sampled());
    assert_eq!(ts(&d), Some("ot=rv:10000000000000"));
    // The trace ID alone would be dropped; rv says keep, and rv is kept as it was.
    let tp = format!("00-{}-b7ad6b7169203331-01", trace_with_low56(0));
    let d = decide(
        &s,
        &headers(&[
            ("traceparent", &tp),
            ("tracestate", "rojo=1,ot=rv:c0000000000000"),
        ]),
    );
    assert!(d.sampled());
    assert_eq!(ts(&d), Some("ot=th:c;rv:c0000000000000,rojo=1"));
}

#[test]
fn specification_threshold_vectors_decide_as_the_tables_say() {
    // tracestate-handling.md: rv 6e6d1a75832a2f is kept from 56.9% (T = the rv itself) to 100%.
    let rv = "ot=rv:6e6d1a75832a2f";
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    for (ratio, kept) in [(1.0, true), (0.57, true), (0.5, false), (0.25, false)] {
        let d = decide(
            &sampler(false, ratio),
            &headers(&[("traceparent", tp), ("tracestate", rv)]),
        );
        assert_eq!(d.sampled(), kept, "ratio {ratio}");
    }
    let d = decide(
        &sampler(false, 0.57),
        &headers(&[("traceparent", tp), ("tracestate", rv)]),
    );
    assert_eq!(ts(&d), Some("ot=th:6e14;rv:6e6d1a75832a2f"));
}

#[test]
fn parent_based_keeps_th_and_rv_untouched_and_erases_a_contradicting_th() {
    let s = sampler(true, 0.01);
    let sampled = format!(
        "00-{}-b7ad6b7169203331-01",
        trace_with_low56(0xd000000000000)
    );
    // th:c with R = 0x0d0… < T: a sampled flag contradicts it, so th goes; rv and others stay.
    let d = decide(
        &s,
        &headers(&[
            ("traceparent", &sampled),
            ("tracestate", "rojo=1,ot=th:c;rv:0d000000000000"),
        ]),
    );
    assert!(d.sampled());
    assert_eq!(ts(&d), Some("ot=rv:0d000000000000,rojo=1"));
    // Consistent: passed on byte for byte.
    let d = decide(
        &s,
        &headers(&[
            ("traceparent", &sampled),
            ("tracestate", "rojo=1,ot=th:0;rv:0d000000000000"),
        ]),
    );
    assert_eq!(ts(&d), Some("rojo=1,ot=th:0;rv:0d000000000000"));
    // An unsampled parent whose th would have kept it: contradiction, th erased.
    let unsampled = format!(
        "00-{}-b7ad6b7169203331-00",
        trace_with_low56(0xf0000000000000)
    );
    let d = decide(
        &s,
        &headers(&[("traceparent", &unsampled), ("tracestate", "ot=th:c")]),
    );
    assert!(!d.sampled());
    assert_eq!(ts(&d), None);
    // An unsampled parent with a th that agrees: untouched.
    let d = decide(
        &s,
        &headers(&[("traceparent", &unsampled), ("tracestate", "ot=th:fc")]),
    );
    assert_eq!(ts(&d), Some("ot=th:fc"));
}

#[test]
fn two_samplers_with_the_same_ratio_decide_identically_and_near_the_ratio() {
    let a = sampler(true, 0.25);
    let b = sampler(false, 0.25);
    let n = 20_000;
    let mut kept = 0;
    for _ in 0..n {
        let d = decide(&a, &HeaderMap::new());
        // The second proxy sees the trace as a continued one, but decides on its own.
        let tp = format!("00-{}-b7ad6b7169203331-00", d.trace_id);
        let again = decide(&b, &headers(&[("traceparent", &tp)]));
        assert_eq!(d.sampled(), again.sampled(), "trace {}", d.trace_id);
        kept += usize::from(d.sampled());
    }
    // Binomial(20000, 0.25): sd = 61; 5 sd either side.
    assert!((4695..=5305).contains(&kept), "kept {kept} of {n}");
}

#[test]
fn b3_hint_and_deny_without_ids_start_a_root_without_th() {
    let d = decide(&sampler(true, 1.0), &headers(&[("b3", "0")]));
    assert!(!d.sampled());
    assert!(d.trace_id.is_valid());
    let d = decide(&sampler(true, 0.0), &headers(&[("b3", "1")]));
    assert!(d.sampled());
    assert_eq!(d.tracestate, None);
}

#[test]
fn probes_are_not_sampled_even_at_ratio_1() {
    let s = sampler(true, 1.0);
    let rules = Rules::defaults();
    for path in [
        "/healthz", "/readyz", "/livez", "/ready", "/live", "/metrics",
    ] {
        let d = decide_with(&s, &HeaderMap::new(), path, &rules, OUTSIDE);
        assert!(!d.sampled(), "{path}");
        assert_eq!(d.reason, Reason::Never);
    }
    let probe = headers(&[("user-agent", "kube-probe/1.35")]);
    assert!(!decide_with(&s, &probe, "/", &rules, OUTSIDE).sampled());
    assert!(decide_with(&s, &HeaderMap::new(), "/", &rules, OUTSIDE).sampled());
}

#[test]
fn force_trace_is_honoured_only_from_a_trusted_address() {
    let s = sampler(true, 0.0);
    let force = headers(&[("x-tracemesh-force-trace", "1")]);
    let rules = Rules::defaults();
    let d = decide_with(&s, &force, "/", &rules, LOCAL);
    assert!(d.sampled());
    assert_eq!(d.reason, Reason::Forced);
    assert_eq!(d.tracestate, None, "a forced decision is not a probability");
    let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert!(decide_with(&s, &force, "/", &rules, mapped).sampled());
    assert!(!decide_with(&s, &force, "/", &rules, OUTSIDE).sampled());
    // Even over an unsampled parent, which then gets a sampled child and no th.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02";
    let parent = headers(&[
        ("x-tracemesh-force-trace", "1"),
        ("traceparent", tp),
        ("tracestate", "ot=th:fc;rv:00000000000001"),
    ]);
    let d = decide_with(&s, &parent, "/", &rules, LOCAL);
    assert_eq!(d.flags.0, 0x03);
    assert_eq!(ts(&d), Some("ot=rv:00000000000001"));
    // No trusted CIDRs: never.
    let none = Sampler::new(SamplerConfig::default(), Arc::from(Vec::new()));
    let d = decide_with(&none, &force, "/healthz", &rules, LOCAL);
    assert!(!d.sampled());
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_bounds_new_sampled_roots_per_second() {
    let s = sampler(true, 1.0);
    let rules = Rules::parse("rules: [ { rate_limit: 3 } ]").unwrap();
    let mut per_second = Vec::new();
    for _ in 0..5 {
        let kept = (0..200)
            .filter(|_| decide_with(&s, &HeaderMap::new(), "/", &rules, OUTSIDE).sampled())
            .count();
        per_second.push(kept);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
    }
    assert_eq!(per_second, [3, 3, 3, 3, 3]);
    // Rate-limited roots carry no th; a sampled parent is followed regardless of the limit.
    let d = decide_with(&s, &HeaderMap::new(), "/", &rules, OUTSIDE);
    assert_eq!(d.tracestate, None);
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert!((0..50).all(|_| decide_with(
        &s,
        &headers(&[("traceparent", tp)]),
        "/",
        &rules,
        OUTSIDE
    )
    .sampled()));
}

#[test]
fn a_new_root_s_th_is_one_static_value_shared_by_every_decision() {
    let s = sampler(true, 1.0);
    let a = decide(&s, &HeaderMap::new());
    let b = decide(&s, &HeaderMap::new());
    assert_eq!(ts(&a), Some("ot=th:0"));
    let ptr = |d: &Decision| d.tracestate.as_ref().unwrap().as_bytes().as_ptr();
    assert_eq!(ptr(&a), ptr(&b), "the same bytes, not a copy per request");
    let s = sampler(true, 0.5);
    let kept = (0..100)
        .map(|_| decide(&s, &HeaderMap::new()))
        .find(Decision::sampled)
        .unwrap();
    assert_eq!(ts(&kept), Some("ot=th:8"));
}

#[test]
fn a_bare_b3_decision_does_not_override_the_probe_rules() {
    let s = sampler(true, 1.0);
    let rules = Rules::defaults();
    let b3 = headers(&[("b3", "1")]);
    assert!(!decide_with(&s, &b3, "/healthz", &rules, OUTSIDE).sampled());
    let d = decide_with(&s, &b3, "/work", &rules, OUTSIDE);
    assert!(d.sampled());
    assert_eq!(d.reason, Reason::Hint);
}

#[test]
fn mapped_trusted_networks_match_ipv4_clients() {
    let s = Sampler::new(
        SamplerConfig::default(),
        Arc::from(vec!["::ffff:10.1.0.0/112".parse().unwrap()]),
    );
    let force = headers(&[("x-tracemesh-force-trace", "1")]);
    let d = decide_with(
        &s,
        &force,
        "/",
        &Rules::default(),
        "10.1.2.3".parse().unwrap(),
    );
    assert_eq!(d.reason, Reason::Forced);
}
