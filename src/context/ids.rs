//! The values every format carries: [`TraceId`], [`SpanId`], [`TraceFlags`] and the
//! [`SpanContext`] they make up (W3C Trace Context §3.2.2.3–§3.2.2.5, B3 "Identifiers"), with
//! their lowercase hex forms. Header grammars are in [`super::w3c`] and [`super::b3`].

use std::fmt;

use super::ParseError;

/// A 128-bit trace ID. Valid iff not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span ID. Valid iff not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

// === impl TraceId ===

impl TraceId {
    /// The all-zero ID, which every format treats as "no trace".
    pub const INVALID: TraceId = TraceId([0; 16]);

    /// A random, valid (non-zero) trace ID: every bit uniform, so the right-most 7 bytes are
    /// uniform over `[0, 2^56)` as the Level 2 `random` flag promises.
    pub fn random() -> Self {
        // `1..` excludes the one invalid value instead of retrying.
        TraceId(fastrand::u128(1..).to_be_bytes())
    }

    /// The right-most 7 bytes as a number: the randomness the consistent sampler compares.
    pub fn low56(&self) -> u64 {
        let mut low = [0u8; 8];
        low[1..].copy_from_slice(&self.0[9..]);
        u64::from_be_bytes(low)
    }

    /// Whether the ID is not all zero.
    pub fn is_valid(&self) -> bool {
        *self != Self::INVALID
    }

    /// The 32-character lowercase hex form.
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        encode_hex(&self.0, &mut out);
        out
    }

    /// Parses exactly 32 lowercase hex characters.
    ///
    /// # Errors
    ///
    /// [`ParseError::Length`] unless `s` has 32 bytes, [`ParseError::Hex`] for anything but
    /// `0-9a-f`, [`ParseError::ZeroId`] for the all-zero ID.
    pub fn from_hex(s: &[u8]) -> Result<Self, ParseError> {
        let id = TraceId(decode_hex(s)?);
        if id.is_valid() {
            Ok(id)
        } else {
            Err(ParseError::ZeroId)
        }
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.to_hex())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

// === impl SpanId ===

impl SpanId {
    /// The all-zero ID, which every format treats as "no span".
    pub const INVALID: SpanId = SpanId([0; 8]);

    /// A random, valid (non-zero) span ID.
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..).to_be_bytes())
    }

    /// Whether the ID is not all zero.
    pub fn is_valid(&self) -> bool {
        *self != Self::INVALID
    }

    /// The 16-character lowercase hex form.
    pub fn to_hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        encode_hex(&self.0, &mut out);
        out
    }

    /// Parses exactly 16 lowercase hex characters.
    ///
    /// # Errors
    ///
    /// [`ParseError::Length`] unless `s` has 16 bytes, [`ParseError::Hex`] for anything but
    /// `0-9a-f`, [`ParseError::ZeroId`] for the all-zero ID.
    pub fn from_hex(s: &[u8]) -> Result<Self, ParseError> {
        let id = SpanId(decode_hex(s)?);
        if id.is_valid() {
            Ok(id)
        } else {
            Err(ParseError::ZeroId)
        }
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

// === impl TraceFlags ===

/// The W3C `trace-flags` byte. Level 2 defines bit 0 (`sampled`) and bit 1 (`random`: the
/// trace ID's right-most 7 bytes are random); the other bits are reserved and always written as
/// zero. Test bits with [`TraceFlags::is_sampled`] / [`TraceFlags::is_random`], never compare
/// the byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct TraceFlags(pub u8);

impl TraceFlags {
    /// The caller may have recorded this request.
    pub const SAMPLED: TraceFlags = TraceFlags(0x01);
    /// The caller did not record this request.
    pub const NOT_SAMPLED: TraceFlags = TraceFlags(0x00);
    /// The trace ID's right-most 7 bytes are uniformly random (Level 2 §3.2.2.5.2).
    pub const RANDOM: TraceFlags = TraceFlags(0x02);

    /// The flags with `sampled` and `random` as given, every reserved bit zero.
    pub const fn new(sampled: bool, random: bool) -> Self {
        TraceFlags(sampled as u8 | ((random as u8) << 1))
    }

    /// Whether the `sampled` bit is set.
    pub fn is_sampled(self) -> bool {
        self.0 & Self::SAMPLED.0 != 0
    }

    /// Whether the `random` bit is set.
    pub fn is_random(self) -> bool {
        self.0 & Self::RANDOM.0 != 0
    }
}

/// A context received from the previous hop, or the one this proxy propagates.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct SpanContext {
    /// The trace this span belongs to.
    pub trace_id: TraceId,
    /// The span: the caller's span when extracted, ours when injected.
    pub span_id: SpanId,
    /// The sampling decision (and, for W3C, any other flag bits as received).
    pub flags: TraceFlags,
}

// === impl SpanContext ===

impl SpanContext {
    /// Whether both IDs are valid, as every parsed context is.
    pub fn is_valid(&self) -> bool {
        self.trace_id.is_valid() && self.span_id.is_valid()
    }
}

// === hex ===

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `src` as lowercase hex into `dst`, which must be twice as long.
pub(super) fn encode_hex(src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * 2);
    for (byte, pair) in src.iter().zip(dst.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// Decodes exactly `2 * N` lowercase hex characters. Uppercase is rejected: every format here
/// says lowercase, and the W3C spec makes it a reason to ignore the header.
pub(super) fn decode_hex<const N: usize>(s: &[u8]) -> Result<[u8; N], ParseError> {
    if s.len() != 2 * N {
        return Err(ParseError::Length);
    }
    // One table lookup per character and one check at the end: a branch per character cost
    // ~17 instructions each, ~800 per incoming traceparent (callgrind, BENCHMARKS.md).
    let mut out = [0; N];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        invalid |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    match invalid & NOT_HEX {
        0 => Ok(out),
        _ => Err(ParseError::Hex),
    }
}

/// Marks a byte that is not a lowercase hex digit in [`HEX_VALUE`].
const NOT_HEX: u8 = 0xf0;

/// The value of each lowercase hex digit; [`NOT_HEX`] for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn write_hex(f: &mut fmt::Formatter<'_>, hex: &[u8]) -> fmt::Result {
    // Always ASCII; the error arm only keeps this free of panics.
    f.pad(std::str::from_utf8(hex).map_err(|_| fmt::Error)?)
}
