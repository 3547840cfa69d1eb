//! W3C Trace Context: `traceparent` and `tracestate`, Level 2
//! (<https://www.w3.org/TR/trace-context-2/>, with the version handling of §3.2.4).
//!
//! Parsing never allocates and never fails a request: an invalid header is `Err(ParseError)`,
//! and the caller treats it as absent and counts it. This module owns the grammar only; which
//! header wins among formats is decided in [`super::extract`].
//!
//! Choices the spec leaves open, written down:
//! - Leading and trailing SP/HTAB around a field value are ignored (RFC 9110 §5.5; the W3C test
//!   suite's `test_traceparent_ows_handling`).
//! - For a version above `00`, only the `sampled` and `random` bits of the flags are kept: the
//!   other bits may mean something else in that version, and we re-emit version `00`. What we
//!   write is built from our own decision (`sampled`) and the incoming `random` bit, so reserved
//!   bits are always zero on output.
//! - `tracestate` keys follow the Level 2 grammar, `(lcalpha / DIGIT) 0*255(keychar)` with `@`
//!   a keychar (any number of them, never first); empty list members are skipped and do not
//!   count towards the 32-member limit.
//! - A key repeated in `tracestate` keeps its first member; later duplicates are dropped (the
//!   spec allows discarding duplicates) and the rest of the list travels on in order.

use http::{header::GetAll, HeaderMap, HeaderName, HeaderValue};

use super::{ascii_value, decode_hex, encode_hex, trim_ows, ParseError, SpanContext};
use super::{SpanId, TraceFlags, TraceId};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version `00` `traceparent`: `2 + 1 + 32 + 1 + 16 + 1 + 2`.
pub const TRACEPARENT_LEN: usize = 55;

/// Most list members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

const VERSION_00: [u8; 2] = *b"00";
const VERSION_INVALID: [u8; 2] = *b"ff";

// === traceparent ===

/// Parses one `traceparent` value.
///
/// Version `00` must be exactly 55 characters. A higher version must be at least 55, and if
/// longer, character 55 must be `-`; its first four fields are read as version `00` and only
/// its `sampled` and `random` flags are kept.
///
/// # Errors
///
/// [`ParseError::Version`] for version `ff`; [`ParseError::Hex`] for any field with a
/// character outside `0-9a-f`; [`ParseError::Length`] for a wrong total length;
/// [`ParseError::Format`] for misplaced dashes; [`ParseError::ZeroId`] for an all-zero trace
/// or parent ID.
pub fn parse_traceparent(value: &[u8]) -> Result<SpanContext, ParseError> {
    let v = trim_ows(value);
    let version = v.get(..2).ok_or(ParseError::Length)?;
    decode_hex::<1>(version)?;
    if version == VERSION_INVALID {
        return Err(ParseError::Version);
    }
    let is_00 = version == VERSION_00;
    if v.len() < TRACEPARENT_LEN || (is_00 && v.len() != TRACEPARENT_LEN) {
        return Err(ParseError::Length);
    }
    let dash = |i: usize| v[i] == b'-';
    if !(dash(2) && dash(35) && dash(52)) || (v.len() > TRACEPARENT_LEN && !dash(55)) {
        return Err(ParseError::Format);
    }
    let trace_id = TraceId(decode_hex(&v[3..35])?);
    let span_id = SpanId(decode_hex(&v[36..52])?);
    let [flags] = decode_hex::<1>(&v[53..55])?;
    if !trace_id.is_valid() || !span_id.is_valid() {
        return Err(ParseError::ZeroId);
    }
    let flags = if is_00 {
        TraceFlags(flags)
    } else {
        TraceFlags(flags & (TraceFlags::SAMPLED.0 | TraceFlags::RANDOM.0))
    };
    Ok(SpanContext {
        trace_id,
        span_id,
        flags,
    })
}

/// Writes `ctx` as a version `00` `traceparent`, all lowercase.
pub fn write_traceparent(ctx: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    let mut out = [b'-'; TRACEPARENT_LEN];
    out[..2].copy_from_slice(&VERSION_00);
    encode_hex(&ctx.trace_id.0, &mut out[3..35]);
    encode_hex(&ctx.span_id.0, &mut out[36..52]);
    encode_hex(&[ctx.flags.0], &mut out[53..55]);
    out
}

/// `ctx` as a `traceparent` header value: one 55-byte allocation.
pub fn traceparent_value(ctx: &SpanContext) -> HeaderValue {
    ascii_value(&write_traceparent(ctx))
}

/// The request's `traceparent`: `Ok(None)` when absent.
///
/// # Errors
///
/// [`ParseError::Duplicate`] when the header is repeated (the spec's test suite expects a new
/// trace then), else whatever [`parse_traceparent`] says.
pub fn extract_traceparent(headers: &HeaderMap) -> Result<Option<SpanContext>, ParseError> {
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ParseError::Duplicate);
    }
    parse_traceparent(value.as_bytes()).map(Some)
}

// === tracestate ===

/// The non-empty list members of one `tracestate` value, trimmed of OWS, not yet validated.
pub fn tracestate_members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|m| !m.is_empty())
}

/// Splits a list member at its first `=` into key and value, not yet validated.
pub fn split_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = member.iter().position(|&b| b == b'=')?;
    Some((&member[..eq], &member[eq + 1..]))
}

/// What [`validate_tracestate`] found in a valid list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceStateShape {
    /// Non-empty list members, duplicates included (at most 32).
    pub members: usize,
    /// Whether some key appears more than once.
    pub duplicates: bool,
}

/// Validates a `tracestate` made of one or more header values (combined as one list, RFC 9110
/// §5.3). Allocation-free: duplicate keys are found by comparing against the (at most 32) keys
/// seen so far.
///
/// # Errors
///
/// [`ParseError::TraceStateMembers`] past 32 members, [`ParseError::TraceStateKey`] /
/// [`ParseError::TraceStateValue`] for a member that breaks the grammar. The first problem in
/// list order is reported. A repeated key is not an error (see [`TraceStateShape`]).
pub fn validate_tracestate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<TraceStateShape, ParseError> {
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut shape = TraceStateShape {
        members: 0,
        duplicates: false,
    };
    for member in values.into_iter().flat_map(tracestate_members) {
        let n = shape.members;
        if n == MAX_TRACESTATE_MEMBERS {
            return Err(ParseError::TraceStateMembers);
        }
        let (key, value) = split_member(member).ok_or(ParseError::TraceStateKey)?;
        if !is_key(key) {
            return Err(ParseError::TraceStateKey);
        }
        if !is_value(value) {
            return Err(ParseError::TraceStateValue);
        }
        shape.duplicates |= keys[..n].contains(&key);
        keys[n] = key;
        shape.members += 1;
    }
    Ok(shape)
}

/// The request's `tracestate`, ready to propagate: `Ok(None)` when absent or empty. One
/// non-empty header without repeated keys is returned as is (a cheap clone); several headers
/// are joined with `,`, and a list with a repeated key is rewritten without the later
/// duplicates: the two cases that allocate.
///
/// # Errors
///
/// Whatever [`validate_tracestate`] says about the combined list.
pub fn extract_tracestate(headers: &HeaderMap) -> Result<Option<HeaderValue>, ParseError> {
    let all = headers.get_all(&TRACESTATE);
    let shape = validate_tracestate(all.iter().map(HeaderValue::as_bytes))?;
    if shape.duplicates {
        return Ok(Some(without_duplicates(all)));
    }
    Ok(combine(all))
}

/// The list's members, each key's first one only, joined with `,`.
fn without_duplicates(all: GetAll<'_, HeaderValue>) -> HeaderValue {
    let mut keys: Vec<&[u8]> = Vec::with_capacity(MAX_TRACESTATE_MEMBERS);
    let mut out = Vec::new();
    for member in all.iter().flat_map(|v| tracestate_members(v.as_bytes())) {
        let Some((key, _)) = split_member(member) else {
            continue;
        };
        if keys.contains(&key) {
            continue;
        }
        keys.push(key);
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(member);
    }
    HeaderValue::from_bytes(&out).expect("members of valid header values are valid bytes")
}

/// The header values that hold members: the one as is, or several joined with `,`.
fn combine(all: GetAll<'_, HeaderValue>) -> Option<HeaderValue> {
    let has_members = |v: &&HeaderValue| tracestate_members(v.as_bytes()).next().is_some();
    let mut non_empty = all.iter().filter(has_members);
    let first = non_empty.next()?;
    if non_empty.next().is_none() {
        return Some(first.clone());
    }
    let mut joined = Vec::new();
    for (i, v) in all.iter().filter(has_members).enumerate() {
        if i > 0 {
            joined.push(b',');
        }
        joined.extend_from_slice(v.as_bytes());
    }
    let joined = HeaderValue::from_bytes(&joined)
        .expect("valid header values joined with ',' are a valid header value");
    Some(joined)
}

/// `key = (lcalpha / DIGIT) 0*255(keychar)`, per Level 2 §3.3.1.3.1: up to 256 characters,
/// `@` allowed anywhere but first.
fn is_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && key.len() <= 256
        && key[1..].iter().all(|&c| is_keychar(c))
}

fn is_keychar(c: u8) -> bool {
    matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
/// `chr = %x20 / nblk-chr`.
fn is_value(value: &[u8]) -> bool {
    let chr = |c: u8| matches!(c, 0x20..=0x7e) && c != b',' && c != b'=';
    match value.last() {
        Some(&last) => value.len() <= 256 && last != b' ' && value.iter().all(|&c| chr(c)),
        None => false,
    }
}

// === inject ===

/// Sets `traceparent` from `ctx`, and `tracestate` to `tracestate` or removes it (when
/// `may_have_tracestate`: the caller knows when it cannot be there).
pub(super) fn inject(
    headers: &mut HeaderMap,
    ctx: &SpanContext,
    tracestate: Option<HeaderValue>,
    may_have_tracestate: bool,
) {
    headers.insert(TRACEPARENT.clone(), traceparent_value(ctx));
    match tracestate {
        Some(value) => {
            headers.insert(TRACESTATE.clone(), value);
        }
        None if may_have_tracestate => {
            headers.remove(&TRACESTATE);
        }
        None => {}
    }
}

/// Removes `traceparent` and `tracestate`.
pub(super) fn remove(headers: &mut HeaderMap) {
    headers.remove(&TRACEPARENT);
    headers.remove(&TRACESTATE);
}

#[cfg(test)]
mod tests;
