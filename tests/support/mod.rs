#![allow(dead_code)] // each test crate uses a different subset of the harness
//! Integration-test harness shared by every `tests/*.rs` crate (`mod support;`). This is the one
//! `mod.rs` in the tree: cargo would build a `tests/support.rs` as a test crate of its own.
//!
//! - [`process`]: the real `tracemesh` binary behind a guard that kills and reaps it on `Drop`.
//! - [`otlp`]: an OTLP/gRPC and OTLP/HTTP trace receiver that decodes spans for assertions.
//! - [`apps`]: in-process HTTP apps (h1 + h2c on one port) with scripted behaviours.
//! - [`client`]: HTTP/1.1 (origin- and absolute-form), h2c and raw-TCP client helpers.
//! - [`body`]: a deterministic byte pattern and FNV-1a digests for byte-exact streaming tests.
//! - [`echo`]: opaque TCP echo and WebSocket echo, with a WebSocket client.
//! - [`grpc`]: a gRPC server (health + a raw-bytes echo with every call shape) and its clients.
//! - [`serve`]: the accept loops behind every peer, for a test that needs a peer of its own.
//! - [`recorder`]: a raw TCP app that keeps every byte the proxy wrote to it, per connection.
//! - [`chromium`]: headless Chromium over the DevTools protocol (page errors, eval, screenshot).
//! - [`netns`]: network namespaces on a bridge, `tracemesh init` and proxies under their own UID,
//!   for the root-only end-to-end tests.
//!
//! Every in-process peer binds `127.0.0.1:0` and stops on `Drop`, connections included. Nothing here sleeps
//! as a way of waiting: waits poll a condition until a deadline, then panic saying what they saw.

pub mod apps;
pub mod body;
pub mod chromium;
pub mod client;
pub mod echo;
pub mod grpc;
pub mod netns;
pub mod otlp;
pub mod process;
pub mod recorder;
pub mod serve;

use std::{future::Future, time::Duration};

/// How long a harness wait lasts unless the caller gives its own deadline. Generous, because the
/// machine is shared; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How often polling waits look again.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `check` every [`POLL`] until it returns `Some`, and returns that value.
///
/// # Panics
/// After `timeout`, naming `what` was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
