//! Opaque TCP: anything that cannot be HTTP (and TLS we do not terminate), and every connection
//! to an `--opaque-ports` port, is relayed byte for byte to the connection's target and counted.
//! It is never parsed and never broken; it is closed after `--idle-timeout` with nothing moving.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::{conn::ConnGuard, forward::relay, io::PrefixedIo, Direction, Shared, Target};

/// Relays `client` (with the bytes detection already read) to the target. A connection with no
/// fixed target (explicit-mode outbound that is not HTTP), or whose target is the proxy itself,
/// cannot be routed and is closed.
pub async fn forward(
    client: PrefixedIo<TcpStream>,
    target: Target,
    shared: &Shared,
    direction: Direction,
    guard: Arc<ConnGuard>,
) {
    let Some(addr) = target.addr() else {
        tracing::debug!(
            direction = direction.as_str(),
            "opaque connection has no destination; closing"
        );
        return;
    };
    let dest = super::forward::Destination::Addr(addr);
    let upstream = match shared.connector.connect(&dest).await {
        Ok((s, _)) => s,
        Err(error) => {
            tracing::debug!(%error, %addr, "opaque connect failed");
            return;
        }
    };
    let metrics = shared.metrics.connections(direction);
    // An opaque stream has no request boundary to drain at: it runs until either side closes,
    // it goes idle, or the process's grace period ends.
    relay(client, upstream, metrics, shared.limits.idle_timeout).await;
    drop(guard);
}
