//! The numbers of OpenTelemetry's consistent probability sampling
//! (`specification/trace/tracestate-probability-sampling.md`): a 56-bit rejection threshold `T`
//! per sampling probability, compared with a 56-bit randomness value `R` (the trace ID's
//! right-most 7 bytes, or the `rv` sub-key): keep iff `R >= T`. Every participant that uses the
//! same `T` decides the same way for a trace, and `T` travels as `th` so that span-to-metrics
//! pipelines can count what was not kept.
//!
//! Encoding follows the specification's reference algorithm: `T` is rounded to 4 significant
//! hex digits (more for probabilities near zero), the decision uses the rounded `T` so the
//! propagated `th` is exactly the threshold applied, and trailing zeros are stripped.

/// `2^56`: the number of distinct randomness values.
pub const MAX_ADJUSTED_COUNT: u64 = 1 << 56;

/// Significant hex digits kept in `th` (the specification's default precision).
const PRECISION: i32 = 4;

/// A rejection threshold in `[0, 2^56]`. `2^56` rejects everything (probability 0, which is
/// not a probability sampler: it is never written as `th`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

impl Threshold {
    /// Keeps every trace: probability 1, `th:0`.
    pub const ALWAYS: Threshold = Threshold(0);
    /// Keeps nothing.
    pub const NEVER: Threshold = Threshold(MAX_ADJUSTED_COUNT);

    /// The threshold for `probability` in `[0, 1]`, rounded as the specification's
    /// `probability_to_threshold_with_precision` does (precision 4).
    pub fn from_probability(probability: f64) -> Threshold {
        if probability.is_nan() || probability <= 0.0 {
            return Threshold::NEVER;
        }
        if probability >= 1.0 {
            return Threshold::ALWAYS;
        }
        if probability < 1.0 / MAX_ADJUSTED_COUNT as f64 {
            return Threshold::NEVER;
        }
        // frexp: probability = m * 2^exp with m in [0.5, 1).
        let exp = frexp_exponent(probability);
        // Raise precision by the number of leading `f` digits: Python's `exp // -4`.
        let precision = (PRECISION + (-exp).div_euclid(4)).clamp(1, 12);
        // 1 + rejection probability, in [1, 2), plus half of the last kept digit to round.
        let rejection = 2.0 - probability + 0.5 * (2f64).powi(-4 * precision);
        let kept_bits = 4 * precision as u32;
        if rejection >= 2.0 {
            // As close to never as `precision` digits go: all `f`s.
            return Threshold(((1u64 << kept_bits) - 1) << (56 - kept_bits));
        }
        let fraction = rejection.to_bits() & ((1u64 << 52) - 1);
        let digits = fraction >> (52 - kept_bits);
        Threshold(digits << (56 - kept_bits))
    }

    /// Decodes a `th` value: 1 to 14 lowercase hex digits, extended with trailing zeros to 14.
    /// `None` for anything else (the specification says to treat it as absent).
    pub fn from_th(value: &[u8]) -> Option<Threshold> {
        if value.is_empty() || value.len() > 14 {
            return None;
        }
        let digits = hex56(value)?;
        Some(Threshold(digits << (4 * (14 - value.len()))))
    }

    /// The 56-bit value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Whether a trace with randomness `r` is kept.
    pub fn keeps(self, r: u64) -> bool {
        r >= self.0
    }

    /// The sampling probability this threshold stands for.
    pub fn probability(self) -> f64 {
        (MAX_ADJUSTED_COUNT - self.0) as f64 / MAX_ADJUSTED_COUNT as f64
    }

    /// Whether this is a probability the `th` sub-key can carry (`NEVER` is not).
    pub fn is_probability(self) -> bool {
        self.0 < MAX_ADJUSTED_COUNT
    }

    /// The `th` value: 14 hex digits without trailing zeros (`0` for [`Threshold::ALWAYS`]).
    /// `None` for [`Threshold::NEVER`].
    pub fn th(self) -> Option<ThValue> {
        if !self.is_probability() {
            return None;
        }
        let mut out = ThValue {
            digits: [b'0'; 14],
            len: 1,
        };
        if self.0 == 0 {
            return Some(out);
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, d) in out.digits.iter_mut().enumerate() {
            *d = HEX[((self.0 >> (4 * (13 - i))) & 0xf) as usize];
        }
        out.len = 14 - out.digits.iter().rev().take_while(|&&d| d == b'0').count();
        Some(out)
    }
}

/// An encoded `th` value, on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThValue {
    digits: [u8; 14],
    len: usize,
}

impl ThValue {
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[..self.len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("hex digits are ASCII")
    }
}

/// Decodes an `rv` value: exactly 14 lowercase hex digits. `None` for anything else.
pub fn parse_rv(value: &[u8]) -> Option<u64> {
    if value.len() != 14 {
        return None;
    }
    hex56(value)
}

/// Up to 14 lowercase hex digits as a number.
fn hex56(value: &[u8]) -> Option<u64> {
    value.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u64::from(d))
    })
}

/// The exponent `frexp` would return for a positive, finite `x`.
fn frexp_exponent(x: f64) -> i32 {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: normalise through a multiplication by 2^64.
        return frexp_exponent(x * (2f64).powi(64)) - 64;
    }
    biased - 1022
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th(p: f64) -> String {
        Threshold::from_probability(p)
            .th()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default()
    }

    /// The examples of `tracestate-handling.md` and `tracestate-probability-sampling.md`, and
    /// values of the reference Python algorithm (`probability_to_threshold_with_precision`, 4).
    #[test]
    fn thresholds_match_the_specification_examples() {
        for (p, expected) in [
            (1.0, "0"),
            (0.5, "8"),
            (0.25, "c"),
            (0.125, "e"),
            (0.1, "e666"),
            (1.0 / 3.0, "aaab"),
            (0.75, "4"),
            (0.01, "fd70a"),
            (0.001, "ffbe77"),
            (2f64.powi(-20), "fffff"),
        ] {
            assert_eq!(th(p), expected, "probability {p}");
        }
        assert_eq!(Threshold::from_probability(0.0).th(), None);
    }

    #[test]
    fn th_decodes_with_trailing_zeros_restored() {
        assert_eq!(Threshold::from_th(b"c").unwrap().get(), 0xc0000000000000);
        assert_eq!(Threshold::from_th(b"0").unwrap(), Threshold::ALWAYS);
        assert_eq!(
            Threshold::from_th(b"fd70a4").unwrap().get(),
            0xfd70a400000000
        );
        assert_eq!(
            Threshold::from_th(b"ffffffffffffff").unwrap().get(),
            (1 << 56) - 1
        );
        for bad in [&b""[..], b"C", b"0x1", b"fffffffffffffff", b"g"] {
            assert_eq!(Threshold::from_th(bad), None, "{bad:?}");
        }
        for p in [0.5, 0.25, 0.1, 1.0 / 3.0, 0.01, 1.0] {
            let t = Threshold::from_probability(p);
            assert_eq!(Threshold::from_th(t.th().unwrap().as_bytes()), Some(t));
        }
    }

    #[test]
    fn rv_is_exactly_14_hex_digits() {
        assert_eq!(parse_rv(b"6e6d1a75832a2f"), Some(0x6e6d1a75832a2f));
        assert_eq!(parse_rv(b"6e6d1a75832a2"), None);
        assert_eq!(parse_rv(b"6e6d1a75832a2ff"), None);
        assert_eq!(parse_rv(b"6E6D1A75832A2F"), None);
    }

    /// The decision examples of the specification: `rv` 6e6d1a75832a2f is kept at every
    /// threshold up to itself, that is probabilities from 56.9% to 100%.
    #[test]
    fn keep_iff_randomness_is_at_least_the_threshold() {
        let r = 0x6e6d1a75832a2f;
        assert!(Threshold::from_th(b"6e6d1a75832a2f").unwrap().keeps(r));
        assert!(!Threshold::from_th(b"6e6d1a75832a3").unwrap().keeps(r));
        assert!(Threshold::ALWAYS.keeps(0));
        assert!(!Threshold::NEVER.keeps((1 << 56) - 1));
        let quarter = Threshold::from_probability(0.25);
        assert!(quarter.keeps(0xc0000000000000));
        assert!(!quarter.keeps(0xbfffffffffffff));
    }

    #[test]
    fn probability_of_the_rounded_threshold_is_close_to_the_asked_one() {
        for p in [0.9, 0.5, 0.3, 0.1, 0.05, 0.01, 0.001, 1e-6] {
            let got = Threshold::from_probability(p).probability();
            assert!((got - p).abs() / p < 1e-3, "{p} -> {got}");
        }
    }
}
