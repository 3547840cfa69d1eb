//! Forwarding one request to its upstream: the app for inbound, the destination for outbound.
//! One stage a file, in the order a request meets them:
//!
//! - [`headers`]: framing checks and hop-by-hop stripping before any other layer
//!   ([`Sanitize`]), and the request's form towards the upstream.
//! - [`target`]: where the request goes, and the loop check on resolved addresses
//!   ([`SelfAddrs`]).
//! - [`upstream`]: the downstream connection's own upstream connection (HTTP/1 on hyper, HTTP/2
//!   on h2 directly).
//! - [`body`]: the request body on its way up (when it was sent, whether the client broke it)
//!   and the response body on its way down.
//! - [`tunnel`]: `CONNECT`, upgrades and the opaque relay.
//! - [`rescue`]: failures turned into answers; [`error`]: what the failures are.
//!
//! HTTP/1 requests go upstream as HTTP/1.1 and HTTP/2 requests as HTTP/2 (prior knowledge), so
//! gRPC and its trailers pass through untouched. Inbound never takes its destination from the
//! request: `CONNECT` is refused there (405), and the target is the app.

mod body;
mod error;
pub mod headers;
mod rescue;
pub mod target;
mod tunnel;
mod upstream;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{header, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;

pub(crate) use self::tunnel::relay;
pub use self::{
    body::ProxyBody,
    error::{ForwardError, ForwardErrorKind},
    headers::Sanitize,
    rescue::{error_response, Rescue},
    target::{Destination, SelfAddrs, Target},
    tunnel::StreamContext,
    upstream::{Connector, Upstream},
};
use self::{
    body::{read_ahead, RequestBody},
    headers::{prepare, strip_hop_by_hop, wants_upgrade},
};
use super::{conn::Activity, Direction};

/// How long a chunked HTTP/1 request body's first frame is waited for before the request is
/// forwarded without it. A client's bytes normally arrive with its head; this lets a body that
/// is broken from its first chunk be refused before anything reaches the upstream, without
/// stalling a client that streams its body later.
const READ_AHEAD: Duration = Duration::from_millis(50);

/// Forwards requests to a [`Target`] (see the module docs). Built once per connection; hyper
/// clones it for every request, so everything sits behind one `Arc`.
#[derive(Clone, Debug)]
pub struct Forward(Arc<ForwardInner>);

struct ForwardInner {
    direction: Direction,
    target: Target,
    connector: Connector,
    upstream: Upstream,
    stream: StreamContext,
    activity: Arc<Activity>,
}

impl std::fmt::Debug for ForwardInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("direction", &self.direction)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// [`Forward`]'s future.
pub type ForwardFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ForwardError>> + Send>>;

// === impl Forward ===

impl Forward {
    /// `h2` is the downstream connection's protocol (its upstream connection speaks the same);
    /// `activity` is told when each request starts and ends.
    pub fn new(
        direction: Direction,
        target: Target,
        connector: Connector,
        h2: bool,
        stream: StreamContext,
        activity: Arc<Activity>,
    ) -> Self {
        Forward(Arc::new(ForwardInner {
            direction,
            target,
            upstream: Upstream::new(connector.clone(), h2),
            connector,
            stream,
            activity,
        }))
    }
}

impl tower::Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ForwardError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> ForwardFuture {
        // `forward`'s own future, boxed: a wrapping `async move` block would hold a second
        // copy of the request (its captured argument) for the whole exchange.
        Box::pin(self.0.clone().forward(req))
    }
}

impl ForwardInner {
    /// Not an `async fn`: see [`Upstream::send`] for why.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    fn forward(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ForwardError>> + Send {
        async move {
            let in_flight = self.activity.begin();
            if let Some(e) = req.extensions_mut().remove::<ForwardError>() {
                return Err(e);
            }
            let dest = self.target.destination(&req)?;
            if req.method() == Method::CONNECT {
                if self.direction == Direction::Inbound {
                    return Err(ForwardError::MethodNotAllowed("CONNECT"));
                }
                return tunnel::connect(req, dest, &self.connector, self.stream.clone()).await;
            }

            let http1 = req.version() < Version::HTTP_2;
            let on_upgrade =
                (http1 && wants_upgrade(req.headers())).then(|| hyper::upgrade::on(&mut req));
            prepare(&mut req, || dest.authority());
            // In a block of its own, so its locals (the head's parts) are not kept in this
            // future's state while the response is awaited.
            let (req, sent) = {
                let (parts, mut body) = req.into_parts();
                // Not with `Expect: 100-continue`: reading ahead would send the 100 before the
                // app could refuse the upload.
                let chunked = http1
                    && !body.is_end_stream()
                    && !parts.headers.contains_key(header::CONTENT_LENGTH)
                    && !parts.headers.contains_key(header::EXPECT);
                let first = if chunked {
                    read_ahead(&mut body, READ_AHEAD).await.map_err(|e| {
                        ForwardError::ClientBody {
                            source: Some(Arc::new(e)),
                        }
                    })?
                } else {
                    None
                };
                let counted = parts
                    .extensions
                    .get::<crate::telemetry::RequestBytes>()
                    .cloned();
                let (body, sent) = RequestBody::new(body, first, counted);
                (Request::from_parts(parts, body), sent)
            };

            let mut rsp = self.upstream.send(&dest, req, &sent).await?;
            let upgraded = rsp.status() == StatusCode::SWITCHING_PROTOCOLS && on_upgrade.is_some();
            if let (true, Some(client)) = (upgraded, on_upgrade) {
                tunnel::upgraded(client, &mut rsp, self.stream.clone());
            }
            strip_hop_by_hop(rsp.headers_mut(), upgraded);
            Ok(rsp.map(|body| ProxyBody::upstream(body, in_flight)))
        }
    }
}
