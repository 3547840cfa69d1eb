//! Opaque TCP: anything that is not HTTP (and TLS we do not terminate) is relayed byte for byte
//! to the connection's target and counted. It is never parsed and never broken.

use tokio::net::TcpStream;

use super::{forward::relay, io::PrefixedIo, Direction, Shared, Target};

/// Relays `client` (with the bytes detection already read) to the target. A connection with no
/// fixed target (explicit-mode outbound that is not HTTP) cannot be routed and is closed.
pub async fn forward(
    mut client: PrefixedIo<TcpStream>,
    target: Target,
    shared: &Shared,
    direction: Direction,
) {
    let Some(addr) = target.addr() else {
        tracing::debug!(
            direction = direction.as_str(),
            "opaque connection has no destination; closing"
        );
        return;
    };
    let connect = tokio::time::timeout(shared.limits.connect_timeout, TcpStream::connect(addr));
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            tracing::debug!(%error, %addr, "opaque connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "opaque connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let metrics = shared.metrics.connections(direction);
    // An opaque stream has no request boundary to drain at: it runs until either side closes,
    // or the process's grace period ends.
    relay(&mut client, &mut upstream, metrics).await;
}
