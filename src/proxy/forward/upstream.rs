//! Upstream connections. Each downstream connection owns its upstream connection ([`Upstream`]):
//! HTTP/1 requests of one downstream connection are sequential, so they reuse one HTTP/1
//! connection; HTTP/2 streams of one downstream connection share one HTTP/2 connection. There is
//! no global pool to check out from, so a request's `Host`/`:authority` is free to be whatever the
//! client sent while the bytes go to the address the connection was resolved to, and an upstream
//! connection never outlives the downstream one that opened it.
//!
//! HTTP/1 connections are hyper's; HTTP/2 ones are driven on h2 directly ([`http2`]).
//!
//! [`Connector`] opens connections: it resolves the destination, refuses any address that is
//! the proxy itself ([`super::SelfAddrs`], 508), and connects with `--connect-timeout`.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{future::Either, FutureExt};

use http::{uri::Authority, Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, TrySendError},
};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;

use super::{
    body::{BodyState, BoxError, RecvBody, RequestBody, UpstreamBody},
    target::{Destination, SelfAddrs},
    ForwardError,
};

mod http2;

/// Opens upstream connections (see the module docs). Shared by every connection.
#[derive(Clone, Debug)]
pub struct Connector {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub own: SelfAddrs,
}

// === impl Connector ===

impl Connector {
    /// Resolves `dest` and connects to the first address that accepts.
    ///
    /// # Errors
    /// [`ForwardError::Loop`] before any connection is attempted, or the last connect failure.
    pub async fn connect(
        &self,
        dest: &Destination,
    ) -> Result<(TcpStream, SocketAddr), ForwardError> {
        // Name resolution counts against the connect timeout: a resolver that hangs (search
        // domains, an unreachable DNS server) is a connect that does not happen.
        let addrs = tokio::time::timeout(self.connect_timeout, self.own.resolve(dest))
            .await
            .map_err(|_| ForwardError::ConnectTimeout {
                addr: dest.authority(),
                after: self.connect_timeout,
            })??;
        let mut last = None;
        for addr in addrs {
            let connect = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr));
            match connect.await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr));
                }
                Ok(Err(e)) => last = Some(ForwardError::from_connect(dest.authority(), e)),
                Err(_) => {
                    last = Some(ForwardError::ConnectTimeout {
                        addr: dest.authority(),
                        after: self.connect_timeout,
                    })
                }
            }
        }
        Err(last.expect("resolve returns at least one address"))
    }
}

/// A connection as the slot keeps it.
enum Slot {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::Conn),
}

/// A connection as one request uses it: HTTP/1's is the request's alone until it is checked
/// back in; HTTP/2's is a handle on the shared connection.
enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(h2::client::SendRequest<bytes::Bytes>),
}

/// An idle (HTTP/1) or shared (HTTP/2) upstream connection and what it was opened for.
struct Pooled {
    dest: DestKey,
    conn: Slot,
}

/// What an upstream connection may be reused for: the same fixed address, or the same named
/// authority (explicit mode; resolved once, when the connection opened).
#[derive(Clone, PartialEq, Eq)]
enum DestKey {
    Addr(SocketAddr),
    Name(Authority),
}

impl From<&Destination> for DestKey {
    fn from(d: &Destination) -> Self {
        match d {
            Destination::Addr(a) => DestKey::Addr(*a),
            Destination::Name(a) => DestKey::Name(a.clone()),
        }
    }
}

/// One downstream connection's upstream connection (see the module docs).
pub struct Upstream {
    connector: Connector,
    h2: bool,
    slot: Mutex<Option<Pooled>>,
    /// HTTP/2: one connection is opened at a time, so the first streams of a downstream
    /// connection share it instead of each opening its own. Taken only when the slot is empty.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("h2", &self.h2).finish()
    }
}

// === impl Upstream ===

impl Upstream {
    pub fn new(connector: Connector, h2: bool) -> Self {
        Upstream {
            connector,
            h2,
            slot: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` to `dest` and waits for the response headers: at most `--response-timeout`
    /// once the request body has been sent whole (`body` says when).
    ///
    /// Not an `async fn`, here and in [`send_on`](Self::send_on): an `async fn` moves its
    /// arguments into locals and keeps both slots in its state, and these states, the request
    /// (376 bytes) inside each, make up the future every request boxes. An `async move` block
    /// uses what it captured in place.
    ///
    /// # Errors
    /// Connection failures, [`ForwardError::Timeout`], [`ForwardError::ClientBody`] when the
    /// client's body failed, else [`ForwardError::Upstream`].
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub fn send<'a>(
        &'a self,
        dest: &'a Destination,
        req: Request<RequestBody>,
        body: &'a BodyState,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ForwardError>> + 'a {
        async move {
            let key = DestKey::from(dest);
            let res = 'sent: {
                match self.checkout(&key) {
                    Some(sender) => {
                        // The reused connection closed before the request was written to it
                        // (the app timed out an idle keep-alive connection, or sent GOAWAY):
                        // nothing reached the app, so the request goes once more, on a new
                        // connection. Matched apart from the retry, so the first attempt's
                        // result is not held while the new connection opens.
                        let req = match self.send_on(sender, key.clone(), req, body).await {
                            Err(WaitError::Unsent(req, _)) => req,
                            r => break 'sent r,
                        };
                        let sender = self.open(dest, &key).await?;
                        self.send_on(sender, key, *req, body).await
                    }
                    None if self.h2 => {
                        // Held while opening only, never while a response is awaited.
                        let sender = {
                            let _opening = self.opening.lock().await;
                            match self.checkout(&key) {
                                // Another stream opened it meanwhile.
                                Some(sender) => sender,
                                None => self.open(dest, &key).await?,
                            }
                        };
                        self.send_on(sender, key, req, body).await
                    }
                    None => {
                        let sender = self.open(dest, &key).await?;
                        self.send_on(sender, key, req, body).await
                    }
                }
            };
            res.map_err(|e| match e {
                WaitError::Timeout(after) => ForwardError::Timeout {
                    addr: dest.authority(),
                    after,
                },
                WaitError::Failed(_) | WaitError::Unsent(..) if body.client_failed() => {
                    ForwardError::ClientBody { source: None }
                }
                WaitError::Failed(source) | WaitError::Unsent(_, source) => {
                    ForwardError::Upstream {
                        addr: dest.authority(),
                        source: source.into(),
                    }
                }
            })
        }
    }

    /// Sends `req` on `sender`; an HTTP/1 connection goes back to the slot for the next request
    /// once this one is written.
    #[allow(clippy::manual_async_fn)] // on purpose, see `send`
    fn send_on<'a>(
        &'a self,
        sender: Sender,
        key: DestKey,
        req: Request<RequestBody>,
        body: &'a BodyState,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, WaitError>> + 'a {
        async move {
            let timeout = self.connector.response_timeout;
            // One await of one `WaitResponse` for both protocols: each await of its own is a
            // state of this future, with the request future inside.
            let sent = match sender {
                Sender::H1(mut tx) => {
                    if let Err(e) = tx.ready().await {
                        return Err(WaitError::Unsent(Box::new(req), Box::new(e)));
                    }
                    let fut = tx.try_send_request(req);
                    self.checkin(key, Slot::H1(tx));
                    Either::Left(fut.map(http1_response))
                }
                Sender::H2(mut tx) => {
                    // Fails when the connection is gone or going away: nothing was sent.
                    if let Err(e) = std::future::poll_fn(|cx| tx.poll_ready(cx)).await {
                        return Err(WaitError::Unsent(Box::new(req), Box::new(e)));
                    }
                    let (rsp, pipe) =
                        http2::start(&mut tx, req).map_err(|e| WaitError::Failed(Box::new(e)))?;
                    let state = match pipe {
                        Some((pipe, state)) => {
                            let mut pipe = Some(pipe);
                            std::future::poll_fn(|cx| Poll::Ready(pipe.take().map(|p| p.run(cx))))
                                .await;
                            Some(state)
                        }
                        None => None,
                    };
                    Either::Right(rsp.map(move |r| http2_response(r, state)))
                }
            };
            WaitResponse::new(sent, body, timeout).await
        }
    }

    fn checkout(&self, key: &DestKey) -> Option<Sender> {
        let mut slot = self.slot.lock().expect("upstream slot poisoned");
        let pooled = slot.as_ref()?;
        if pooled.dest != *key {
            return None;
        }
        match &pooled.conn {
            Slot::H1(tx) if !tx.is_closed() => match slot.take().map(|p| p.conn) {
                Some(Slot::H1(tx)) => Some(Sender::H1(tx)),
                _ => unreachable!("matched as HTTP/1 above"),
            },
            Slot::H2(conn) if conn.is_open() => Some(Sender::H2(conn.sender())),
            _ => {
                *slot = None;
                None
            }
        }
    }

    fn checkin(&self, dest: DestKey, conn: Slot) {
        *self.slot.lock().expect("upstream slot poisoned") = Some(Pooled { dest, conn });
    }

    /// A new connection to `dest`, ready for a request; an HTTP/2 one is in the slot already,
    /// for the streams after this one. Boxed: it is awaited once per connection, and its state
    /// (the connect and the handshake, 1.2 KB) would otherwise be a state of every request's
    /// future.
    fn open<'a>(
        &'a self,
        dest: &'a Destination,
        key: &'a DestKey,
    ) -> Pin<Box<dyn Future<Output = Result<Sender, ForwardError>> + Send + 'a>> {
        Box::pin(self.open_now(dest, key))
    }

    async fn open_now(&self, dest: &Destination, key: &DestKey) -> Result<Sender, ForwardError> {
        let (stream, _addr) = self.connector.connect(dest).await?;
        let failed = |source: BoxError| ForwardError::Upstream {
            addr: dest.authority(),
            source: source.into(),
        };
        if self.h2 {
            let conn = http2::Conn::handshake(stream)
                .await
                .map_err(|e| failed(Box::new(e)))?;
            let tx = conn.sender();
            self.checkin(key.clone(), Slot::H2(conn));
            Ok(Sender::H2(tx))
        } else {
            let io = TokioIo::new(stream);
            let (mut tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| failed(Box::new(e)))?;
            tokio::spawn(async move {
                if let Err(error) = conn.with_upgrades().await {
                    tracing::debug!(%error, "upstream http/1 connection ended");
                }
            });
            tx.ready().await.map_err(|e| failed(Box::new(e)))?;
            Ok(Sender::H1(tx))
        }
    }
}

fn http1_response(
    r: Result<Response<Incoming>, TrySendError<Request<RequestBody>>>,
) -> Result<Response<UpstreamBody>, WaitError> {
    match r {
        Ok(rsp) => Ok(rsp.map(UpstreamBody::Http1)),
        Err(mut e) => Err(match e.take_message() {
            Some(req) => WaitError::Unsent(Box::new(req), Box::new(e.into_error())),
            None => WaitError::Failed(Box::new(e.into_error())),
        }),
    }
}

fn http2_response(
    r: Result<Response<h2::RecvStream>, h2::Error>,
    pipe: Option<std::sync::Arc<BodyState>>,
) -> Result<Response<UpstreamBody>, WaitError> {
    let rsp = r.map_err(|e| WaitError::Failed(Box::new(e)))?;
    let length = http2::content_length(rsp.headers());
    Ok(rsp.map(|recv| UpstreamBody::Http2(RecvBody::new(recv, length, pipe))))
}

enum WaitError {
    Timeout(Duration),
    Failed(BoxError),
    /// The connection handed the request back before writing any of it.
    Unsent(Box<Request<RequestBody>>, BoxError),
}

type Sent = Result<Response<UpstreamBody>, WaitError>;

pin_project! {
    /// The response headers, waiting at most `timeout` after the body has been sent. Dropped
    /// before they came (a timeout, or the request given up), it tells the body's pipe to stop.
    ///
    /// Written by hand: as an `async fn` (a biased `select!` on the response and the body's end,
    /// then `tokio::time::timeout`) it held the request future twice, as its argument and as
    /// the pinned local, 960 bytes inside every request's boxed future.
    struct WaitResponse<'a, F> {
        #[pin]
        sent: F,
        body: &'a BodyState,
        timeout: Duration,
        answered: bool,
        // Armed once the body has ended.
        #[pin]
        timer: Option<tokio::time::Sleep>,
    }

    impl<'a, F> PinnedDrop for WaitResponse<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            if !this.answered {
                this.body.cancel();
            }
        }
    }
}

impl<'a, F> WaitResponse<'a, F> {
    fn new(sent: F, body: &'a BodyState, timeout: Duration) -> Self {
        WaitResponse {
            sent,
            body,
            timeout,
            answered: false,
            timer: None,
        }
    }
}

impl<F: Future<Output = Sent>> Future for WaitResponse<'_, F> {
    type Output = Sent;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The response first: one that is ready wins over a timeout that is due.
        if let Poll::Ready(r) = this.sent.poll(cx) {
            *this.answered = true;
            return Poll::Ready(r);
        }
        if this.timer.is_none() {
            if this.body.poll_ended(cx).is_pending() {
                return Poll::Pending;
            }
            this.timer.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(WaitError::Timeout(*this.timeout))),
            _ => Poll::Pending,
        }
    }
}
