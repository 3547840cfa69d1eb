//! tracemesh: a per-pod sidecar L7 proxy that traces every hop.
//!
//! Map of the modules, in the order a request meets them:
//!
//! - [`config`]: the command line and `OTEL_*` environment, parsed once into types before any
//!   port is bound.
//! - [`proxy`]: listeners, the accept loop, protocol detection, the inbound and outbound stacks,
//!   forwarding to the upstream and opaque TCP.
//! - [`context`]: trace context formats (W3C `traceparent`/`tracestate`, B3 single and multi):
//!   extraction and injection.
//! - [`telemetry`]: the span layer, the sampler, and export over OTLP through a bounded queue.
//! - [`metrics`]: the Prometheus registry and the proxy's own health counters.
//! - [`admin`]: `/live`, `/ready`, `/metrics`.
//! - [`k8s`]: `tracemesh init` (iptables), `inject` (the pod mutation) and `webhook`.
//! - [`tls`]: serving certificates reloaded from files.
//! - [`demo`]: the local, no-cluster showcase.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod context;
pub mod demo;
pub mod k8s;
pub mod metrics;
pub mod proxy;
pub mod telemetry;
pub mod tls;
