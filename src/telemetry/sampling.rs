//! The sampler: parent-based, with a trace-ID ratio for new roots, as the OpenTelemetry
//! `parentbased_traceidratio` sampler specifies. The decision for a root is a pure function of
//! the trace ID, so every proxy that sees the same new trace decides the same way.

use crate::{
    config::SamplerConfig,
    context::{Extracted, TraceId},
};

/// A configured sampler. `Copy`: it is two numbers.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    parent_based: bool,
    /// Roots whose trace ID's low 63 bits fall below this are sampled.
    threshold: u64,
    always: bool,
}

/// What the sampler decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub trace_id: TraceId,
    pub sampled: bool,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let ratio = config.root_ratio.get();
        Sampler {
            parent_based: config.parent_based,
            // Same arithmetic as the OpenTelemetry SDKs' TraceIdRatioBased sampler.
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            always: ratio >= 1.0,
        }
    }

    /// Decides for a request: follow the remote parent's flag when parent-based, else apply the
    /// ratio to the (continued or new) trace ID. A decision that came without IDs (`b3: 1`,
    /// `b3: 0`, `X-B3-Sampled`) is honoured for the new root it starts.
    pub fn decide(&self, extracted: &Extracted) -> Decision {
        match extracted.parent {
            Some(parent) => {
                let sampled = if self.parent_based && !extracted.deferred {
                    parent.flags.is_sampled()
                } else {
                    self.ratio_says(parent.trace_id)
                };
                Decision {
                    trace_id: parent.trace_id,
                    sampled,
                }
            }
            None => {
                let trace_id = TraceId::random();
                let sampled = match extracted.sampled_hint {
                    Some(hint) if self.parent_based => hint,
                    _ => self.ratio_says(trace_id),
                };
                Decision { trace_id, sampled }
            }
        }
    }

    fn ratio_says(&self, trace_id: TraceId) -> bool {
        if self.always {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id.0[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SampleRatio;
    use crate::context::{self, SpanContext, SpanId, TraceFlags};

    fn sampler(parent_based: bool, ratio: f64) -> Sampler {
        Sampler::new(SamplerConfig {
            parent_based,
            root_ratio: SampleRatio::new(ratio).unwrap(),
        })
    }

    fn with_parent(sampled: bool) -> Extracted {
        let mut h = http::HeaderMap::new();
        let flags = if sampled { "01" } else { "00" };
        h.insert(
            "traceparent",
            format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}")
                .parse()
                .unwrap(),
        );
        context::extract(&h)
    }

    #[test]
    fn parent_based_follows_the_parent_flag_whatever_the_ratio() {
        let s = sampler(true, 0.0);
        let d = s.decide(&with_parent(true));
        assert!(d.sampled);
        assert_eq!(d.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        let s = sampler(true, 1.0);
        assert!(!s.decide(&with_parent(false)).sampled);
    }

    #[test]
    fn non_parent_based_ignores_the_parent_flag() {
        assert!(sampler(false, 1.0).decide(&with_parent(false)).sampled);
        assert!(!sampler(false, 0.0).decide(&with_parent(true)).sampled);
    }

    #[test]
    fn root_ratio_samples_about_that_fraction() {
        let s = sampler(true, 0.25);
        let none = context::extract(&http::HeaderMap::new());
        let n = 20_000;
        let sampled = (0..n).filter(|_| s.decide(&none).sampled).count();
        let frac = sampled as f64 / n as f64;
        assert!((0.22..0.28).contains(&frac), "sampled fraction {frac}");
    }

    #[test]
    fn ratio_decision_is_a_function_of_the_trace_id() {
        let s = sampler(false, 0.5);
        let parent = SpanContext {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([1; 8]),
            flags: TraceFlags::SAMPLED,
        };
        let mut e = context::extract(&http::HeaderMap::new());
        e.parent = Some(parent);
        let first = s.decide(&e).sampled;
        assert!((0..100).all(|_| s.decide(&e).sampled == first));
    }

    #[test]
    fn b3_deny_without_ids_starts_an_unsampled_root() {
        let mut h = http::HeaderMap::new();
        h.insert("b3", "0".parse().unwrap());
        let d = sampler(true, 1.0).decide(&context::extract(&h));
        assert!(!d.sampled);
        assert!(d.trace_id.is_valid());
    }
}
