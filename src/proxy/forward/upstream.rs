//! Upstream connections. Each downstream connection owns its upstream connection ([`Upstream`]):
//! HTTP/1 requests of one downstream connection are sequential, so they reuse one HTTP/1
//! connection; HTTP/2 streams of one downstream connection share one HTTP/2 connection. There is
//! no global pool to check out from, so a request's `Host`/`:authority` is free to be whatever the
//! client sent while the bytes go to the address the connection was resolved to, and an upstream
//! connection never outlives the downstream one that opened it.
//!
//! [`Connector`] opens connections: it resolves the destination, refuses any address that is
//! the proxy itself ([`super::SelfAddrs`], 508), and connects with `--connect-timeout`.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use http::{uri::Authority, Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2, TrySendError},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{
    body::{BodyState, RequestBody},
    target::{Destination, SelfAddrs},
    ForwardError,
};

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

enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

/// An idle (HTTP/1) or shared (HTTP/2) upstream connection and what it was opened for.
struct Pooled {
    dest: DestKey,
    sender: Sender,
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
    /// # Errors
    /// Connection failures, [`ForwardError::Timeout`], [`ForwardError::ClientBody`] when the
    /// client's body failed, else [`ForwardError::Upstream`].
    pub async fn send(
        &self,
        dest: &Destination,
        req: Request<RequestBody>,
        body: &BodyState,
    ) -> Result<Response<Incoming>, ForwardError> {
        let key = DestKey::from(dest);
        let res = match self.checkout(&key) {
            Some(sender) => match self.send_on(sender, key.clone(), false, req, body).await {
                // The reused connection closed before the request was written to it (the app
                // timed out an idle keep-alive connection, or sent GOAWAY): nothing reached the
                // app, so the request goes once more, on a new connection.
                Err(WaitError::Unsent(req, _)) => {
                    let sender = self.open(dest).await?;
                    self.send_on(sender, key, true, *req, body).await
                }
                r => r,
            },
            None if self.h2 => {
                // Held while opening only, never while a response is awaited.
                let sender = {
                    let _opening = self.opening.lock().await;
                    match self.checkout(&key) {
                        // Another stream opened it meanwhile.
                        Some(sender) => sender,
                        None => {
                            let sender = self.open(dest).await?;
                            if let Sender::H2(tx) = &sender {
                                self.checkin(key.clone(), Sender::H2(tx.clone()));
                            }
                            sender
                        }
                    }
                };
                self.send_on(sender, key, false, req, body).await
            }
            None => {
                let sender = self.open(dest).await?;
                self.send_on(sender, key, true, req, body).await
            }
        };
        res.map_err(|e| match e {
            WaitError::Timeout(after) => ForwardError::Timeout {
                addr: dest.authority(),
                after,
            },
            WaitError::Hyper(_) | WaitError::Unsent(..) if body.client_failed() => {
                ForwardError::ClientBody { source: None }
            }
            WaitError::Hyper(source) | WaitError::Unsent(_, source) => ForwardError::Upstream {
                addr: dest.authority(),
                source: std::sync::Arc::new(source),
            },
        })
    }

    /// Sends `req` on `sender`, kept for the next request (HTTP/1) or shared (HTTP/2, `fresh`
    /// only: a reused one is in the slot already).
    async fn send_on(
        &self,
        sender: Sender,
        key: DestKey,
        fresh: bool,
        req: Request<RequestBody>,
        body: &BodyState,
    ) -> Result<Response<Incoming>, WaitError> {
        let timeout = self.connector.response_timeout;
        match sender {
            Sender::H1(mut tx) => {
                if let Err(e) = tx.ready().await {
                    return Err(WaitError::Unsent(Box::new(req), e));
                }
                let fut = tx.try_send_request(req);
                self.checkin(key, Sender::H1(tx));
                wait_response(fut, body, timeout).await
            }
            Sender::H2(mut tx) => {
                let fut = tx.try_send_request(req);
                if fresh {
                    self.checkin(key, Sender::H2(tx));
                }
                wait_response(fut, body, timeout).await
            }
        }
    }

    fn checkout(&self, key: &DestKey) -> Option<Sender> {
        let mut slot = self.slot.lock().expect("upstream slot poisoned");
        let pooled = slot.as_ref()?;
        if pooled.dest != *key {
            return None;
        }
        match &pooled.sender {
            Sender::H1(tx) if !tx.is_closed() => slot.take().map(|p| p.sender),
            Sender::H2(tx) if !tx.is_closed() => Some(Sender::H2(tx.clone())),
            _ => {
                *slot = None;
                None
            }
        }
    }

    fn checkin(&self, dest: DestKey, sender: Sender) {
        *self.slot.lock().expect("upstream slot poisoned") = Some(Pooled { dest, sender });
    }

    /// A new connection to `dest`, ready for a request.
    async fn open(&self, dest: &Destination) -> Result<Sender, ForwardError> {
        let (stream, _addr) = self.connector.connect(dest).await?;
        let io = TokioIo::new(stream);
        let failed = |source| ForwardError::Upstream {
            addr: dest.authority(),
            source: std::sync::Arc::new(source),
        };
        if self.h2 {
            let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake(io)
                .await
                .map_err(failed)?;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "upstream http/2 connection ended");
                }
            });
            tx.ready().await.map_err(failed)?;
            Ok(Sender::H2(tx))
        } else {
            let (mut tx, conn) = http1::Builder::new().handshake(io).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(error) = conn.with_upgrades().await {
                    tracing::debug!(%error, "upstream http/1 connection ended");
                }
            });
            tx.ready().await.map_err(failed)?;
            Ok(Sender::H1(tx))
        }
    }
}

enum WaitError {
    Timeout(Duration),
    Hyper(hyper::Error),
    /// The connection handed the request back before writing any of it.
    Unsent(Box<Request<RequestBody>>, hyper::Error),
}

impl From<TrySendError<Request<RequestBody>>> for WaitError {
    fn from(mut e: TrySendError<Request<RequestBody>>) -> Self {
        match e.take_message() {
            Some(req) => WaitError::Unsent(Box::new(req), e.into_error()),
            None => WaitError::Hyper(e.into_error()),
        }
    }
}

type Sent = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>;

/// The response headers, waiting at most `timeout` after the body has been sent.
async fn wait_response(
    fut: impl std::future::Future<Output = Sent>,
    body: &BodyState,
    timeout: Duration,
) -> Result<Response<Incoming>, WaitError> {
    tokio::pin!(fut);
    tokio::select! {
        biased;
        r = &mut fut => return r.map_err(WaitError::from),
        () = body.ended() => {}
    }
    // By reference: moving the pinned future into the timeout would give it a second slot in
    // this future's state.
    match tokio::time::timeout(timeout, &mut fut).await {
        Ok(r) => r.map_err(WaitError::from),
        Err(_) => Err(WaitError::Timeout(timeout)),
    }
}
