//! Propagation-gap detection: an app that makes an outbound call without passing on the trace
//! context of the request it is serving breaks the trace there. The sidecar sees both sides:
//! when an outbound request arrives with no trace context at all while inbound requests are in
//! flight, that is a gap, counted by the inbound route
//! (`tracemesh_propagation_gaps_total{route}`; `_several` when the requests in flight had
//! different routes). When exactly one inbound request was in flight, the call almost surely
//! serves it: the new root span gets a link to that request's SERVER span (when that span is
//! sampled, so the link leads somewhere), with `tracemesh.link.inferred=true`. Probes are not
//! counted as in flight. A request is in flight until its response body ends, so an app with a
//! long stream open sees its background calls counted as gaps of that stream's route. A link, never a parent: the inference may be wrong (a
//! background job that happened to run during a request), and a link says only "related".
//!
//! In-flight inbound requests are tracked in a fixed table of [`SLOTS`] slots, each its own
//! uncontended mutex taken with `try_lock` (a busy slot is skipped, never waited for). The count
//! is exact; a request that found no free slot is counted but cannot be linked to.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    config::routes::{Route, UNMATCHED},
    context::SpanContext,
    metrics::RouteLabels,
};

/// Inbound requests tracked at once (more are counted, not linkable).
pub const SLOTS: usize = 64;
/// Slots tried per request.
const PROBES: usize = 4;
/// The route label when the requests in flight had different routes.
pub const SEVERAL: &str = "_several";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightRequest {
    /// Its SERVER span.
    pub context: SpanContext,
    pub route: Option<Route>,
}

/// What the outbound side learns about a call without context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The SERVER span to link to, when exactly one request was in flight.
    pub link: Option<InFlightRequest>,
}

#[derive(Debug)]
pub struct Gaps {
    in_flight: AtomicUsize,
    slots: Box<[Mutex<Option<InFlightRequest>>]>,
    counter: Family<RouteLabels, Counter>,
    /// The same counts, for `/debug/traces`.
    by_route: Mutex<BTreeMap<&'static str, u64>>,
}

/// Holds an inbound request's place until it ends.
#[derive(Debug)]
pub struct InFlightGuard {
    gaps: Arc<Gaps>,
    slot: Option<usize>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            *self.gaps.slots[i].lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.gaps.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gaps {
    pub fn new(counter: Family<RouteLabels, Counter>) -> Self {
        Gaps {
            in_flight: AtomicUsize::new(0),
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            counter,
            by_route: Mutex::new(BTreeMap::new()),
        }
    }

    /// An inbound request starts; it is in flight until the guard drops.
    pub fn enter(self: &Arc<Self>, request: InFlightRequest) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let first = (u64::from_ne_bytes(request.context.span_id.0) as usize) % SLOTS;
        let slot =
            (0..PROBES)
                .map(|p| (first + p) % SLOTS)
                .find(|&i| match self.slots[i].try_lock() {
                    Ok(mut s) if s.is_none() => {
                        *s = Some(request);
                        true
                    }
                    _ => false,
                });
        InFlightGuard {
            gaps: self.clone(),
            slot,
        }
    }

    /// An outbound request without trace context: a gap if inbound requests are in flight.
    pub fn outbound_without_context(&self) -> Option<Gap> {
        let n = self.in_flight.load(Ordering::Acquire);
        if n == 0 {
            return None;
        }
        let tracked: Vec<InFlightRequest> = self
            .slots
            .iter()
            .filter_map(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let route = match tracked.split_first() {
            Some((first, rest))
                if tracked.len() == n && rest.iter().all(|r| r.route == first.route) =>
            {
                first.route.map_or(UNMATCHED, Route::as_str)
            }
            _ => SEVERAL,
        };
        self.counter.get_or_create(&RouteLabels { route }).inc();
        *self
            .by_route
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route)
            .or_default() += 1;
        // Only to a span that is exported: an unsampled SERVER span's link would lead nowhere.
        let link = (n == 1 && tracked.len() == 1)
            .then(|| tracked[0])
            .filter(|r| r.context.flags.is_sampled());
        Some(Gap { link })
    }

    /// Gaps so far, by inbound route.
    pub fn by_route(&self) -> BTreeMap<&'static str, u64> {
        self.by_route
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{SpanId, TraceFlags, TraceId};

    fn request(route: &'static str) -> InFlightRequest {
        InFlightRequest {
            context: SpanContext {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                flags: TraceFlags::SAMPLED,
            },
            route: Some(Route::Learned(route)),
        }
    }

    #[test]
    fn one_request_in_flight_is_linked_two_are_counted_only() {
        let gaps = Arc::new(Gaps::new(Family::default()));
        assert_eq!(gaps.outbound_without_context(), None, "nothing in flight");
        let a = request("/a");
        let guard = gaps.enter(a);
        assert_eq!(gaps.outbound_without_context(), Some(Gap { link: Some(a) }));
        let b = gaps.enter(request("/b"));
        assert_eq!(gaps.outbound_without_context(), Some(Gap { link: None }));
        drop(guard);
        drop(b);
        assert_eq!(gaps.outbound_without_context(), None);
        let counts = gaps.by_route();
        assert_eq!(counts.get("/a"), Some(&1));
        assert_eq!(counts.get(SEVERAL), Some(&1));
    }

    #[test]
    fn more_requests_than_slots_are_counted_not_linked() {
        let gaps = Arc::new(Gaps::new(Family::default()));
        let guards: Vec<_> = (0..SLOTS * 2).map(|_| gaps.enter(request("/x"))).collect();
        assert_eq!(gaps.outbound_without_context(), Some(Gap { link: None }));
        assert_eq!(
            gaps.by_route().get(SEVERAL),
            Some(&1),
            "untracked ones: unknown routes"
        );
        drop(guards);
        assert_eq!(gaps.in_flight.load(Ordering::Acquire), 0);
    }
}
