//! Forwarding one request to its upstream (the app for inbound, the destination for outbound)
//! with hyper-util's pooled client, and the rescue layer that turns a failure into an answer:
//! refused or failed connection → 502, timeout → 504, no destination → 400, a request that would
//! loop into the proxy → 508; gRPC requests also get a `grpc-status`. The cause rides in a
//! response extension so the span layer can say why.
//!
//! HTTP/1 requests go upstream as HTTP/1.1 and HTTP/2 requests as HTTP/2 (prior knowledge), so
//! gRPC and its trailers pass through untouched. `Upgrade` (WebSocket) and `CONNECT` become
//! opaque, counted byte streams once the upstream agrees.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    uri::{Authority, Parts, PathAndQuery, Scheme},
    Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client, ResponseFuture as ClientFuture},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use pin_project_lite::pin_project;
use tokio_util::task::TaskTracker;

use crate::{config::Limits, metrics::ConnectionMetrics};

/// What went wrong while forwarding. Cheap to clone: it rides in a response extension.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("connection to {addr} refused")]
    Refused {
        addr: Authority,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("no connection to {addr} within {after:?}")]
    ConnectTimeout { addr: Authority, after: Duration },
    #[error("connection to {addr} failed")]
    Connect {
        addr: Authority,
        #[source]
        source: Arc<hyper_util::client::legacy::Error>,
    },
    #[error("no response headers from {addr} within {after:?}")]
    Timeout { addr: Authority, after: Duration },
    #[error("upstream {addr} failed before its response headers")]
    Upstream {
        addr: Authority,
        #[source]
        source: Arc<hyper_util::client::legacy::Error>,
    },
    #[error("the request names no destination (absolute-form URI or Host header)")]
    NoDestination,
    #[error("only http:// is proxied; use CONNECT for TLS")]
    UnsupportedScheme,
    #[error("the request would loop back into the proxy")]
    Loop,
}

/// [`ForwardError`]'s variants without their data: a bounded label for spans and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardErrorKind {
    Refused,
    ConnectTimeout,
    Connect,
    Timeout,
    Upstream,
    NoDestination,
    UnsupportedScheme,
    Loop,
}

impl ForwardErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardErrorKind::Refused => "connection_refused",
            ForwardErrorKind::ConnectTimeout => "connect_timeout",
            ForwardErrorKind::Connect => "connect_error",
            ForwardErrorKind::Timeout => "timeout",
            ForwardErrorKind::Upstream => "upstream_error",
            ForwardErrorKind::NoDestination => "no_destination",
            ForwardErrorKind::UnsupportedScheme => "unsupported_scheme",
            ForwardErrorKind::Loop => "loop",
        }
    }
}

impl ForwardError {
    pub fn kind(&self) -> ForwardErrorKind {
        match self {
            ForwardError::Refused { .. } => ForwardErrorKind::Refused,
            ForwardError::ConnectTimeout { .. } => ForwardErrorKind::ConnectTimeout,
            ForwardError::Connect { .. } => ForwardErrorKind::Connect,
            ForwardError::Timeout { .. } => ForwardErrorKind::Timeout,
            ForwardError::Upstream { .. } => ForwardErrorKind::Upstream,
            ForwardError::NoDestination => ForwardErrorKind::NoDestination,
            ForwardError::UnsupportedScheme => ForwardErrorKind::UnsupportedScheme,
            ForwardError::Loop => ForwardErrorKind::Loop,
        }
    }

    /// The answer the client gets.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ForwardErrorKind::Refused | ForwardErrorKind::Connect | ForwardErrorKind::Upstream => {
                StatusCode::BAD_GATEWAY
            }
            ForwardErrorKind::ConnectTimeout | ForwardErrorKind::Timeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ForwardErrorKind::NoDestination | ForwardErrorKind::UnsupportedScheme => {
                StatusCode::BAD_REQUEST
            }
            ForwardErrorKind::Loop => StatusCode::LOOP_DETECTED,
        }
    }

    /// The gRPC status for gRPC clients: UNAVAILABLE, or DEADLINE_EXCEEDED for timeouts.
    fn grpc_status(&self) -> &'static str {
        match self.kind() {
            ForwardErrorKind::ConnectTimeout | ForwardErrorKind::Timeout => "4",
            ForwardErrorKind::NoDestination | ForwardErrorKind::UnsupportedScheme => "3",
            _ => "14",
        }
    }

    /// Pre-built bodies: no formatting on the error path either.
    fn body(&self) -> &'static [u8] {
        match self.kind() {
            ForwardErrorKind::Refused => b"tracemesh: upstream connection refused\n",
            ForwardErrorKind::ConnectTimeout => b"tracemesh: upstream connect timed out\n",
            ForwardErrorKind::Connect => b"tracemesh: upstream connection failed\n",
            ForwardErrorKind::Timeout => b"tracemesh: upstream response timed out\n",
            ForwardErrorKind::Upstream => b"tracemesh: upstream failed before responding\n",
            ForwardErrorKind::NoDestination => b"tracemesh: request names no destination\n",
            ForwardErrorKind::UnsupportedScheme => b"tracemesh: only http:// is proxied\n",
            ForwardErrorKind::Loop => b"tracemesh: request would loop into the proxy\n",
        }
    }

    /// Classifies a client error by its cause: `is_connect` errors carry the `io::Error`.
    fn from_client(
        addr: Authority,
        e: hyper_util::client::legacy::Error,
        connect_timeout: Duration,
    ) -> Self {
        if e.is_connect() {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<io::Error>() {
                    match io.kind() {
                        io::ErrorKind::ConnectionRefused => {
                            return ForwardError::Refused {
                                addr,
                                source: Arc::new(io::Error::new(io.kind(), io.to_string())),
                            }
                        }
                        io::ErrorKind::TimedOut => {
                            return ForwardError::ConnectTimeout {
                                addr,
                                after: connect_timeout,
                            }
                        }
                        _ => {}
                    }
                }
                source = s.source();
            }
            return ForwardError::Connect {
                addr,
                source: Arc::new(e),
            };
        }
        ForwardError::Upstream {
            addr,
            source: Arc::new(e),
        }
    }
}

pin_project! {
    /// A response body: the upstream's, streamed, or one the proxy wrote itself.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Upstream { #[pin] body: Incoming },
        Synthetic { data: Option<Bytes> },
    }
}

impl ProxyBody {
    pub fn synthetic(data: Bytes) -> Self {
        ProxyBody::Synthetic {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ProxyBodyProj::Upstream { body } => body.poll_frame(cx),
            ProxyBodyProj::Synthetic { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body } => body.is_end_stream(),
            ProxyBody::Synthetic { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body } => body.size_hint(),
            ProxyBody::Synthetic { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The pooled upstream clients, one per protocol. Shared by every connection of a listener.
#[derive(Clone, Debug)]
pub struct Clients {
    h1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

impl Clients {
    pub fn new(limits: &Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(limits.idle_timeout)
            // We rewrite Host ourselves only when the client sent none.
            .set_host(false)
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(limits.idle_timeout)
            .http2_only(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(Some(Duration::from_secs(20)))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .set_host(false)
            .build(connector);
        Clients { h1, h2 }
    }
}

/// Where a connection's requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every request to one address: the app (inbound), or a redirected connection's original
    /// destination (outbound, transparent mode).
    Fixed {
        addr: SocketAddr,
        authority: Authority,
    },
    /// Each request names its destination: absolute-form URI, else `Host` (outbound, explicit
    /// mode). `own` is the listener's address, to refuse requests that would loop.
    FromRequest { own: SocketAddr },
    /// Nowhere (inbound with no app address on a connection that was not redirected).
    Nowhere,
}

impl Target {
    pub fn fixed(addr: SocketAddr) -> Self {
        let authority = Authority::from_maybe_shared(Bytes::from(addr.to_string()))
            .expect("a socket address is a valid authority");
        Target::Fixed { addr, authority }
    }

    /// The upstream address when it is known for the whole connection.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Target::Fixed { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    fn authority_for<B>(&self, req: &Request<B>) -> Result<Authority, ForwardError> {
        match self {
            Target::Fixed { authority, .. } => Ok(authority.clone()),
            Target::Nowhere => Err(ForwardError::NoDestination),
            Target::FromRequest { own } => {
                let authority = match req.uri().authority() {
                    Some(a) => {
                        if req.method() != Method::CONNECT
                            && req.uri().scheme().is_some_and(|s| *s != Scheme::HTTP)
                        {
                            return Err(ForwardError::UnsupportedScheme);
                        }
                        a.clone()
                    }
                    None => {
                        let host = req
                            .headers()
                            .get(header::HOST)
                            .ok_or(ForwardError::NoDestination)?;
                        Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes()))
                            .map_err(|_| ForwardError::NoDestination)?
                    }
                };
                if would_loop(&authority, *own) {
                    return Err(ForwardError::Loop);
                }
                Ok(authority)
            }
        }
    }
}

fn would_loop(authority: &Authority, own: SocketAddr) -> bool {
    let port = authority.port_u16().unwrap_or(80);
    if port != own.port() {
        return false;
    }
    match authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => {
            ip == own.ip()
                || (own.ip().is_unspecified() || own.ip().is_loopback()) && ip.is_loopback()
        }
        Err(_) => authority.host().eq_ignore_ascii_case("localhost"),
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names. `TE: trailers` is
/// kept: gRPC requires it end to end. `keep_upgrade` keeps `Connection: upgrade` + `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        if conn.as_bytes().contains(&b',') || !is_standard_connection_token(conn.as_bytes()) {
            let listed: Vec<HeaderName> = conn
                .to_str()
                .unwrap_or("")
                .split(',')
                .filter_map(|t| HeaderName::try_from(t.trim()).ok())
                .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
                .collect();
            for name in listed {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(header::TE);
        }
    }
}

fn is_standard_connection_token(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Forwards requests to a [`Target`] (see the module docs). Built once per connection; hyper
/// clones it for every request, so everything sits behind one `Arc`.
#[derive(Clone, Debug)]
pub struct Forward(Arc<ForwardInner>);

#[derive(Debug)]
struct ForwardInner {
    clients: Clients,
    target: Target,
    limits: Limits,
    opaque: ConnectionMetrics,
    /// Upgraded streams and tunnels outlive their request: they join the drain like any
    /// connection, so shutdown gives them the same grace.
    tracker: TaskTracker,
}

impl Forward {
    pub fn new(
        clients: Clients,
        target: Target,
        limits: Limits,
        opaque: ConnectionMetrics,
        tracker: TaskTracker,
    ) -> Self {
        Forward(Arc::new(ForwardInner {
            clients,
            target,
            limits,
            opaque,
            tracker,
        }))
    }
}

// === impl Forward ===

impl tower::Service<Request<Incoming>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ForwardError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> ForwardFuture {
        let this = &*self.0;
        let authority = match this.target.authority_for(&req) {
            Ok(a) => a,
            Err(e) => return ForwardFuture::failed(e),
        };
        if req.method() == Method::CONNECT {
            return ForwardFuture::tunnel(
                req,
                authority,
                this.limits.connect_timeout,
                this.opaque.clone(),
                this.tracker.clone(),
            );
        }

        let h2 = req.version() == Version::HTTP_2;
        let upgrade = !h2 && wants_upgrade(req.headers());
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let mut parts = Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        strip_hop_by_hop(req.headers_mut(), upgrade);
        if !h2 {
            *req.version_mut() = Version::HTTP_11;
            if !req.headers().contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
        }
        let client = if h2 {
            &this.clients.h2
        } else {
            &this.clients.h1
        };
        ForwardFuture::Send {
            fut: tokio::time::timeout(this.limits.response_timeout, client.request(req)),
            authority,
            limits: this.limits,
            on_upgrade,
            opaque: this.opaque.clone(),
            tracker: this.tracker.clone(),
        }
    }
}

pin_project! {
    /// [`Forward`]'s future: no box on the common path.
    #[project = ForwardFutureProj]
    pub enum ForwardFuture {
        Send {
            #[pin]
            fut: tokio::time::Timeout<ClientFuture>,
            authority: Authority,
            limits: Limits,
            on_upgrade: Option<hyper::upgrade::OnUpgrade>,
            opaque: ConnectionMetrics,
            tracker: TaskTracker,
        },
        Tunnel { fut: Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ForwardError>> + Send>> },
        Failed { error: Option<ForwardError> },
    }
}

impl ForwardFuture {
    fn failed(e: ForwardError) -> Self {
        ForwardFuture::Failed { error: Some(e) }
    }

    /// `CONNECT host:port`: connect, answer 200, then relay bytes both ways. Rare enough to box.
    fn tunnel(
        mut req: Request<Incoming>,
        authority: Authority,
        connect_timeout: Duration,
        opaque: ConnectionMetrics,
        tracker: TaskTracker,
    ) -> Self {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let fut = async move {
            let addr = authority.as_str().to_owned();
            let upstream =
                match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Err(_) => {
                        return Err(ForwardError::ConnectTimeout {
                            addr: authority,
                            after: connect_timeout,
                        })
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(ForwardError::Refused {
                            addr: authority,
                            source: Arc::new(e),
                        })
                    }
                    Ok(Err(e)) => {
                        return Err(ForwardError::Refused {
                            addr: authority,
                            source: Arc::new(e),
                        })
                    }
                    Ok(Ok(s)) => s,
                };
            let _ = upstream.set_nodelay(true);
            tracker.spawn(async move {
                if let Ok(client) = on_upgrade.await {
                    let mut client = TokioIo::new(client);
                    let mut upstream = upstream;
                    relay(&mut client, &mut upstream, &opaque).await;
                }
            });
            Ok(Response::new(ProxyBody::synthetic(Bytes::new())))
        };
        ForwardFuture::Tunnel { fut: Box::pin(fut) }
    }
}

impl Future for ForwardFuture {
    type Output = Result<Response<ProxyBody>, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ForwardFutureProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            ForwardFutureProj::Tunnel { fut } => fut.as_mut().poll(cx),
            ForwardFutureProj::Send {
                fut,
                authority,
                limits,
                on_upgrade,
                opaque,
                tracker,
            } => {
                let res = match ready!(fut.poll(cx)) {
                    Err(_elapsed) => {
                        return Poll::Ready(Err(ForwardError::Timeout {
                            addr: authority.clone(),
                            after: limits.response_timeout,
                        }))
                    }
                    Ok(res) => res,
                };
                let mut rsp = res.map_err(|e| {
                    ForwardError::from_client(authority.clone(), e, limits.connect_timeout)
                })?;
                let upgraded = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
                if upgraded {
                    if let Some(client_upgrade) = on_upgrade.take() {
                        let upstream_upgrade = hyper::upgrade::on(&mut rsp);
                        let opaque = opaque.clone();
                        tracker.spawn(async move {
                            if let (Ok(client), Ok(upstream)) =
                                (client_upgrade.await, upstream_upgrade.await)
                            {
                                relay(
                                    &mut TokioIo::new(client),
                                    &mut TokioIo::new(upstream),
                                    &opaque,
                                )
                                .await;
                            }
                        });
                    }
                }
                strip_hop_by_hop(rsp.headers_mut(), upgraded);
                Poll::Ready(Ok(rsp.map(|body| ProxyBody::Upstream { body })))
            }
        }
    }
}

/// Copies bytes both ways until both sides close, counting them as opaque traffic.
pub(crate) async fn relay<A, B>(client: &mut A, upstream: &mut B, m: &ConnectionMetrics)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    m.opaque.inc();
    match tokio::io::copy_bidirectional(client, upstream).await {
        Ok((from_client, to_client)) => {
            m.opaque_bytes_in.inc_by(from_client);
            m.opaque_bytes_out.inc_by(to_client);
        }
        Err(error) => tracing::debug!(%error, "opaque relay ended with an error"),
    }
}

/// Turns [`ForwardError`]s into responses (see the module docs).
#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> Rescue<S> {
    pub fn new(inner: S) -> Self {
        Rescue { inner }
    }
}

/// The response for a failed forward: pre-built body, the error in an extension.
pub fn error_response(error: ForwardError, grpc: bool) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::synthetic(Bytes::from_static(error.body())));
    *rsp.status_mut() = error.status();
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if grpc {
        h.insert("grpc-status", HeaderValue::from_static(error.grpc_status()));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(error.kind().as_str()),
        );
    }
    rsp.extensions_mut().insert(error);
    rsp
}

impl<S, B> tower::Service<Request<B>> for Rescue<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = ForwardError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Forward is always ready; a layer that is not would have to shed here (503).
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        RescueFuture {
            inner: self.inner.call(req),
            grpc,
        }
    }
}

pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ForwardError>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::debug!(error = %e, "forwarding failed");
                error_response(e, *this.grpc)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("traceparent", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["te", "traceparent"]);
    }

    #[test]
    fn upgrade_headers_survive_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "Upgrade");
    }

    #[test]
    fn requests_to_the_listener_itself_are_loops() {
        let own: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        assert!(would_loop(&"127.0.0.1:4140".parse().unwrap(), own));
        assert!(would_loop(&"localhost:4140".parse().unwrap(), own));
        assert!(!would_loop(&"127.0.0.1:8080".parse().unwrap(), own));
        assert!(!would_loop(&"example.com:4140".parse().unwrap(), own));
    }

    #[test]
    fn errors_map_to_gateway_statuses() {
        let addr: Authority = "127.0.0.1:1".parse().unwrap();
        let refused = ForwardError::Refused {
            addr: addr.clone(),
            source: Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused.to_string(), "connection to 127.0.0.1:1 refused");
        let timeout = ForwardError::Timeout {
            addr,
            after: Duration::from_secs(1),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let rsp = error_response(timeout, true);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        assert!(rsp.extensions().get::<ForwardError>().is_some());
    }
}
