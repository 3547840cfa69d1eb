//! The OpenTelemetry member of `tracestate` (`ot=th:…;rv:…`, `tracestate-handling.md`): read its
//! `th` and `rv` sub-keys, and write a `tracestate` whose `ot` member has `th` set or erased.
//!
//! Editing keeps every other sub-key of `ot` and every other vendor's member, in order. A
//! modified `ot` member moves to the front of the list, as W3C Trace Context says of modified
//! keys; when that makes 33 members, the right-most one is dropped. An `ot` member left with no
//! sub-keys is removed. `rv` is never written or changed here.

use http::HeaderValue;

use super::threshold::{parse_rv, Threshold};
use crate::context::w3c::{split_member, tracestate_members};

/// The `ot` member's key.
const OT: &[u8] = b"ot";
/// Longest `ot` member value (`tracestate-handling.md`: the OpenTelemetry entry's list of
/// key-values may not exceed 256 characters).
const MAX_OT_VALUE: usize = 256;

/// What the sampler reads from an incoming `tracestate`. Invalid values count as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtState {
    pub th: Option<Threshold>,
    pub rv: Option<u64>,
}

/// The `ot` member's value in a validated `tracestate`, if there is one.
fn ot_value(tracestate: &[u8]) -> Option<&[u8]> {
    tracestate_members(tracestate)
        .filter_map(split_member)
        .find(|(k, _)| *k == OT)
        .map(|(_, v)| v)
}

/// The `key:value` sub-keys of an `ot` value.
fn sub_keys(ot: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    ot.split(|&b| b == b';').filter_map(|kv| {
        let colon = kv.iter().position(|&b| b == b':')?;
        Some((&kv[..colon], &kv[colon + 1..]))
    })
}

/// Reads `th` and `rv` from `tracestate`.
pub fn read(tracestate: Option<&HeaderValue>) -> OtState {
    let Some(ot) = tracestate.and_then(|ts| ot_value(ts.as_bytes())) else {
        return OtState::default();
    };
    let mut state = OtState::default();
    for (key, value) in sub_keys(ot) {
        match key {
            b"th" if state.th.is_none() => state.th = Threshold::from_th(value),
            b"rv" if state.rv.is_none() => state.rv = parse_rv(value),
            _ => {}
        }
    }
    state
}

/// `tracestate` with the `ot` member's `th` set to `th` (or erased when `None`). Returns the
/// incoming value itself (a cheap clone) when nothing changes, and `None` when the result is
/// empty.
pub fn with_th(tracestate: Option<&HeaderValue>, th: Option<Threshold>) -> Option<HeaderValue> {
    let incoming = tracestate.map(HeaderValue::as_bytes).unwrap_or_default();
    let old_ot = ot_value(incoming);
    let old_th = old_ot.and_then(|ot| sub_keys(ot).find(|(k, _)| *k == b"th").map(|(_, v)| v));
    let new_th = th.and_then(Threshold::th);
    let unchanged = match (old_th, &new_th) {
        (None, None) => true,
        (Some(old), Some(new)) => old == new.as_bytes() && first_is_ot(incoming),
        _ => false,
    };
    if unchanged {
        return tracestate.cloned();
    }

    // The new `ot` value: `th` first (when set), then the other sub-keys in order.
    let mut ot = Vec::with_capacity(MAX_OT_VALUE.min(64));
    if let Some(new) = &new_th {
        ot.extend_from_slice(b"th:");
        ot.extend_from_slice(new.as_bytes());
    }
    for (key, value) in old_ot.into_iter().flat_map(sub_keys) {
        if key == b"th" {
            continue;
        }
        if !ot.is_empty() {
            ot.push(b';');
        }
        ot.extend_from_slice(key);
        ot.push(b':');
        ot.extend_from_slice(value);
    }
    if ot.len() > MAX_OT_VALUE {
        // The other sub-keys do not fit with our `th`: setting it is abandoned
        // (tracestate-handling.md), and erasing any old one always fits (it only shortens),
        // so no stale threshold travels on.
        return if th.is_some() {
            with_th(tracestate, None)
        } else {
            tracestate.cloned()
        };
    }

    let mut out = Vec::with_capacity(incoming.len() + 16);
    let mut members = 0;
    if !ot.is_empty() {
        out.extend_from_slice(b"ot=");
        out.extend_from_slice(&ot);
        members = 1;
    }
    for member in tracestate_members(incoming) {
        if split_member(member).is_some_and(|(k, _)| k == OT) {
            continue;
        }
        if members == crate::context::w3c::MAX_TRACESTATE_MEMBERS {
            break; // the right-most members go first
        }
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(member);
        members += 1;
    }
    if out.is_empty() {
        return None;
    }
    Some(HeaderValue::from_bytes(&out).expect("members of a valid tracestate are valid bytes"))
}

/// Whether the list's first member is `ot` (an unchanged `ot` member stays where it is only if
/// it already leads).
fn first_is_ot(tracestate: &[u8]) -> bool {
    tracestate_members(tracestate)
        .next()
        .and_then(split_member)
        .is_some_and(|(k, _)| k == OT)
}

/// `ot=th:<T>` alone: what a sampled new root propagates. A static value per threshold (the
/// text is leaked once, like a route template), so a clone moves no reference count: the
/// common case of a new root costs no allocation and no shared atomic.
pub fn only_th(th: Threshold) -> Option<HeaderValue> {
    use std::{
        collections::HashMap,
        sync::{Mutex, OnceLock},
    };
    thread_local! {
        static LOCAL: std::cell::RefCell<Vec<(Threshold, HeaderValue)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    static TEXTS: OnceLock<Mutex<HashMap<Threshold, &'static str>>> = OnceLock::new();
    let value = th.th()?;
    if let Some(v) = LOCAL.with_borrow(|l| l.iter().find(|(t, _)| *t == th).map(|(_, v)| v.clone()))
    {
        return Some(v);
    }
    let text: &'static str = TEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(th)
        .or_insert_with(|| Box::leak(format!("ot=th:{}", value.as_str()).into_boxed_str()));
    let v = HeaderValue::from_static(text);
    LOCAL.with_borrow_mut(|l| {
        if l.len() < 16 {
            l.push((th, v.clone()));
        }
    });
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn set(incoming: Option<&str>, p: Option<f64>) -> Option<String> {
        let incoming = incoming.map(ts);
        with_th(incoming.as_ref(), p.map(Threshold::from_probability))
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn reads_th_and_rv_and_ignores_invalid_values() {
        let s = read(Some(&ts("vendor=1,ot=th:c;rv:6e6d1a75832a2f;x:y")));
        assert_eq!(s.th, Threshold::from_th(b"c"));
        assert_eq!(s.rv, Some(0x6e6d1a75832a2f));
        let s = read(Some(&ts("ot=th:C;rv:123")));
        assert_eq!(s, OtState::default());
        assert_eq!(read(None), OtState::default());
        assert_eq!(read(Some(&ts("other=th:c"))), OtState::default());
    }

    #[test]
    fn a_root_writes_ot_th_alone() {
        assert_eq!(set(None, Some(0.25)).as_deref(), Some("ot=th:c"));
        assert_eq!(set(None, Some(1.0)).as_deref(), Some("ot=th:0"));
        assert_eq!(set(None, None), None);
        assert_eq!(
            only_th(Threshold::from_probability(0.1)).unwrap(),
            "ot=th:e666"
        );
    }

    #[test]
    fn th_is_written_keeping_other_sub_keys_and_vendors_and_moves_to_the_front() {
        assert_eq!(
            set(
                Some("rojo=1,ot=rv:6e6d1a75832a2f;k1:13,congo=2"),
                Some(0.25)
            )
            .as_deref(),
            Some("ot=th:c;rv:6e6d1a75832a2f;k1:13,rojo=1,congo=2")
        );
        assert_eq!(
            set(Some("ot=th:8;rv:6e6d1a75832a2f,rojo=1"), Some(0.25)).as_deref(),
            Some("ot=th:c;rv:6e6d1a75832a2f,rojo=1")
        );
        assert_eq!(
            set(Some("rojo=1"), Some(0.5)).as_deref(),
            Some("ot=th:8,rojo=1")
        );
    }

    #[test]
    fn erasing_th_keeps_rv_and_drops_an_empty_ot_member() {
        assert_eq!(
            set(Some("rojo=1,ot=th:c;rv:6e6d1a75832a2f"), None).as_deref(),
            Some("ot=rv:6e6d1a75832a2f,rojo=1")
        );
        assert_eq!(set(Some("rojo=1,ot=th:c"), None).as_deref(), Some("rojo=1"));
        assert_eq!(set(Some("ot=th:c"), None), None);
    }

    #[test]
    fn nothing_to_change_returns_the_incoming_value_untouched() {
        for (incoming, p) in [
            ("rojo=1 , congo=2", None),
            ("ot=th:c;rv:6e6d1a75832a2f,rojo=1", Some(0.25)),
            ("ot=rv:6e6d1a75832a2f", None),
        ] {
            assert_eq!(
                set(Some(incoming), p).as_deref(),
                Some(incoming),
                "{incoming}"
            );
        }
    }

    #[test]
    fn a_th_that_no_longer_fits_is_erased_rather_than_left_stale() {
        let long = format!("x:{}", "a".repeat(250));
        let incoming = format!("ot=th:8;{long},rojo=1");
        assert_eq!(
            set(Some(&incoming), Some(0.1)).as_deref(),
            Some(format!("ot={long},rojo=1").as_str())
        );
    }

    #[test]
    fn only_th_is_one_static_value_per_threshold() {
        let t = Threshold::from_probability(0.3);
        let a = only_th(t).unwrap();
        let b = only_th(t).unwrap();
        assert_eq!(a, "ot=th:b333");
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
    }

    #[test]
    fn a_full_list_drops_its_right_most_member_for_a_new_ot() {
        let members: Vec<String> = (1..=32).map(|i| format!("k{i}=v")).collect();
        let got = set(Some(&members.join(",")), Some(0.5)).unwrap();
        let got: Vec<&str> = got.split(',').collect();
        assert_eq!(got.len(), 32);
        assert_eq!(got[0], "ot=th:8");
        assert_eq!(got[1], "k1=v");
        assert_eq!(got[31], "k31=v");
    }
}
