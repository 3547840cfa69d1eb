//! The sampler: parent-based or not, as `OTEL_TRACES_SAMPLER` says, with OpenTelemetry's
//! consistent probability sampling for new roots (`tracestate-probability-sampling.md`), the
//! sampling rules of a hot-reloaded file, and a force-trace header for trusted sources.
//!
//! For every request it decides the trace ID, the flags and the `tracestate` to propagate:
//! - **Continuing a trace, parent-based**: the parent's `sampled` flag, its `random` flag, and
//!   its `tracestate` untouched, except that an `ot` `th` contradicting the flag (`R >= T` must
//!   hold exactly when sampled) is erased.
//! - **A new root** (or a B3 parent without a decision, or any parent when not parent-based):
//!   the first matching rule, else the default ratio. A ratio keeps the trace iff `R >= T`, with
//!   `T = (1 - ratio) * 2^56` and `R` the `ot` `rv` sub-key if present, else the trace ID's
//!   right-most 7 bytes; a kept trace carries `ot=th:<T>`. Decisions that are not a probability
//!   (never, a rate limit, a force-trace header, B3's bare `b3: 1`) erase `th`: its adjusted
//!   count would be a lie. `rv` is never written or changed.
//! - **Force-trace** (`x-tracemesh-force-trace: 1`): sampled, but only when the request's source
//!   address is in `--trusted-cidrs`; from anywhere else the header is ignored.
//!
//! New roots get a fully random trace ID and the `random` flag.

pub mod limiter;
pub mod otstate;
pub mod rules;
pub mod threshold;

use std::{net::IpAddr, sync::Arc};

use http::{HeaderName, HeaderValue};

use self::{
    rules::{Action, RequestFacts, Rules},
    threshold::Threshold,
};
use crate::{
    config::SamplerConfig,
    context::{Extracted, TraceFlags, TraceId},
};

/// The header that asks for a request to be sampled (honoured from `--trusted-cidrs` only).
pub static FORCE_TRACE: HeaderName = HeaderName::from_static("x-tracemesh-force-trace");

/// A configured sampler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sampler {
    parent_based: bool,
    /// What a new root gets when no rule matches.
    default: Action,
    trusted: Arc<[ipnet::IpNet]>,
}

/// What the sampler decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub trace_id: TraceId,
    /// `sampled` as decided, `random` as received (or set, for a new trace ID).
    pub flags: TraceFlags,
    /// The `tracestate` to propagate and to export with the span.
    pub tracestate: Option<HeaderValue>,
    /// Why, for logs and tests.
    pub reason: Reason,
}

impl Decision {
    pub fn sampled(&self) -> bool {
        self.flags.is_sampled()
    }
}

/// What made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The parent's flag.
    Parent,
    /// A decision that came without IDs (`b3: 1`, `X-B3-Sampled: 0`).
    Hint,
    /// The force-trace header from a trusted source.
    Forced,
    /// A rule's or the default's ratio (with its rate limit, if any).
    Ratio,
    /// A rule said never.
    Never,
    /// The ratio kept the trace but the rate limit had no token.
    RateLimited,
}

impl Sampler {
    pub fn new(config: SamplerConfig, trusted: Arc<[ipnet::IpNet]>) -> Self {
        let threshold = Threshold::from_probability(config.root_ratio.get());
        // Warm the static `ot=th:<T>` of the default ratio, off the request path.
        let _ = otstate::only_th(threshold);
        let trusted = trusted.iter().map(|net| canonical_net(*net)).collect();
        Sampler {
            parent_based: config.parent_based,
            default: Action::Sample {
                threshold,
                limit: None,
            },
            trusted,
        }
    }

    /// Decides for a request from `client`; `rules` are the current sampling rules.
    pub fn decide(
        &self,
        extracted: &Extracted,
        req: &RequestFacts<'_>,
        rules: &Rules,
        client: IpAddr,
    ) -> Decision {
        let forced = self.forced(req, client);
        match extracted.parent {
            Some(parent) if self.parent_based && !extracted.deferred => {
                let incoming = extracted.tracestate.as_ref();
                let random = parent.flags.is_random();
                if forced && !parent.flags.is_sampled() {
                    return Decision {
                        trace_id: parent.trace_id,
                        flags: TraceFlags::new(true, random),
                        tracestate: otstate::with_th(incoming, None),
                        reason: Reason::Forced,
                    };
                }
                let sampled = parent.flags.is_sampled();
                let ot = otstate::read(incoming);
                let r = ot.rv.unwrap_or_else(|| parent.trace_id.low56());
                let contradicts = ot.th.is_some_and(|th| th.keeps(r) != sampled);
                Decision {
                    trace_id: parent.trace_id,
                    flags: TraceFlags::new(sampled, random),
                    tracestate: if contradicts {
                        otstate::with_th(incoming, None)
                    } else {
                        extracted.tracestate.clone()
                    },
                    reason: Reason::Parent,
                }
            }
            Some(parent) => self.root(
                parent.trace_id,
                parent.flags.is_random(),
                extracted.tracestate.as_ref(),
                forced,
                req,
                rules,
            ),
            None => {
                let trace_id = TraceId::random();
                match extracted.sampled_hint {
                    // A bare B3 decision stands only where no rule speaks: a probe with
                    // `b3: 1` is still a probe.
                    Some(hint) if self.parent_based && !forced && rules.decide(req).is_none() => {
                        Decision {
                            trace_id,
                            flags: TraceFlags::new(hint, true),
                            tracestate: None,
                            reason: Reason::Hint,
                        }
                    }
                    _ => self.root(trace_id, true, None, forced, req, rules),
                }
            }
        }
    }

    /// A decision of our own for `trace_id`.
    fn root(
        &self,
        trace_id: TraceId,
        random: bool,
        incoming: Option<&HeaderValue>,
        forced: bool,
        req: &RequestFacts<'_>,
        rules: &Rules,
    ) -> Decision {
        let decision = |sampled: bool, th: Option<Threshold>, reason| Decision {
            trace_id,
            flags: TraceFlags::new(sampled, random),
            tracestate: match (incoming, th) {
                // A sampled new root: a static value, built once per threshold.
                (None, Some(t)) => otstate::only_th(t),
                _ => otstate::with_th(incoming, th),
            },
            reason,
        };
        if forced {
            return decision(true, None, Reason::Forced);
        }
        let action = rules.decide(req).map_or(&self.default, |(a, _)| a);
        match action {
            Action::Never => decision(false, None, Reason::Never),
            Action::Sample { threshold, limit } => {
                let r = otstate::read(incoming)
                    .rv
                    .unwrap_or_else(|| trace_id.low56());
                if !threshold.keeps(r) {
                    return decision(false, None, Reason::Ratio);
                }
                match limit {
                    None => decision(true, Some(*threshold), Reason::Ratio),
                    Some(l) if l.try_acquire() => decision(true, None, Reason::Ratio),
                    Some(_) => decision(false, None, Reason::RateLimited),
                }
            }
        }
    }

    /// Whether the request carries the force-trace header from a trusted source.
    fn forced(&self, req: &RequestFacts<'_>, client: IpAddr) -> bool {
        if self.trusted.is_empty() {
            return false;
        }
        let asked = req
            .headers
            .get(&FORCE_TRACE)
            .is_some_and(|v| matches!(v.as_bytes(), b"1" | b"true"));
        asked && {
            let client = canonical(client);
            self.trusted.iter().any(|net| net.contains(&client))
        }
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it is, so that it
/// matches the canonical client addresses.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
