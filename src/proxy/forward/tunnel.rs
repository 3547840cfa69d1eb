//! Byte streams that outlive their request: `CONNECT` tunnels and upgraded (WebSocket)
//! connections, and the relay they share with opaque TCP. Each holds its downstream
//! connection's [`ConnGuard`], so it counts in `--max-connections` and
//! `tracemesh_open_connections` until it closes, and is closed after `--idle-timeout` with no
//! bytes moving either way.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use super::{target::Destination, upstream::Connector, ForwardError, ProxyBody};
use crate::{
    metrics::ConnectionMetrics,
    proxy::conn::{Activity, ConnGuard, Mode, Watched},
};

/// What a stream that outlives its request needs from its connection.
#[derive(Clone)]
pub struct StreamContext {
    pub metrics: ConnectionMetrics,
    pub tracker: TaskTracker,
    pub guard: Arc<ConnGuard>,
    pub idle_timeout: Duration,
}

/// `CONNECT host:port`: connect (the loop check included), answer 200, then relay bytes both
/// ways once hyper hands over the client's connection.
///
/// # Errors
/// The connect failed; the client gets 502/504/508.
pub async fn connect(
    mut req: Request<Incoming>,
    dest: Destination,
    connector: &Connector,
    ctx: StreamContext,
) -> Result<Response<ProxyBody>, ForwardError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (upstream, _) = connector.connect(&dest).await?;
    ctx.tracker.clone().spawn(async move {
        if let Ok(client) = on_upgrade.await {
            relay(
                TokioIo::new(client),
                upstream,
                &ctx.metrics,
                ctx.idle_timeout,
            )
            .await;
        }
        drop(ctx.guard);
    });
    Ok(Response::new(ProxyBody::synthetic(Bytes::new())))
}

/// After a `101 Switching Protocols`: relays the two upgraded connections.
pub fn upgraded<B>(client: OnUpgrade, rsp: &mut Response<B>, ctx: StreamContext) {
    let upstream = hyper::upgrade::on(rsp);
    ctx.tracker.clone().spawn(async move {
        if let (Ok(client), Ok(upstream)) = (client.await, upstream.await) {
            relay(
                TokioIo::new(client),
                TokioIo::new(upstream),
                &ctx.metrics,
                ctx.idle_timeout,
            )
            .await;
        }
        drop(ctx.guard);
    });
}

/// Copies bytes both ways until both sides close, or until nothing moved for `idle`, counting
/// them as opaque traffic.
pub(crate) async fn relay<A, B>(client: A, upstream: B, m: &ConnectionMetrics, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    m.opaque.inc();
    let activity = Activity::new(Mode::Bytes, idle, idle, idle);
    let mut client = Watched::new(client, activity.clone());
    let mut upstream = Watched::new(upstream, activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = r {
                tracing::debug!(%error, "opaque relay ended with an error");
            }
        }
        _ = activity.expired() => tracing::debug!(?idle, "opaque relay idle; closing"),
    }
    m.opaque_bytes_in.inc_by(client.bytes_read());
    m.opaque_bytes_out.inc_by(upstream.bytes_read());
}
