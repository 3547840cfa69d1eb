//! The upstream HTTP/2 client, on the `h2` crate directly. A request's own task opens its
//! stream, waits for the response headers and reads the response body; the connection's task
//! only drives the connection and its keep-alive pings. hyper's client put a channel to its
//! dispatch task, a spawned task and a oneshot between every request and the connection
//! (BENCHMARKS.md, "The upstream HTTP/2 client on h2"). The one thing that still gets a task of
//! its own is a request body that is not all there when the request starts: it is piped by
//! [`Pipe`], within the stream's flow-control window.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use h2::{client::ResponseFuture, Ping, PingPong, Reason, SendStream};
use http::{header, HeaderValue, Method, Request};
use http_body::Body;
use tokio::net::TcpStream;

use crate::proxy::forward::body::{BodyState, RequestBody};

/// What the upstream may send before the proxy has passed it on: per stream, and for the
/// connection, which is one downstream connection's: 2 MiB received and not yet taken by hyper's
/// server (whose own send buffer, per stream, comes on top), and still enough to fill a 1 ms
/// round trip at 1 GB/s per stream. hyper's client was set to grow its window from 64 KiB by BDP
/// estimates instead, which cost every request a timestamp and a lock for the ping that
/// measures them.
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 2 << 20;
/// What one response's headers may take (hyper's default, kept).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// Data queued to send on the connection at most, as hyper's client had it.
const MAX_SEND_BUFFER: usize = 1 << 20;
/// Streams opened before the server's first SETTINGS say how many it takes (RFC 9113's
/// recommended minimum, as hyper).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// A ping every `KEEP_ALIVE` and an answer within `KEEP_ALIVE_TIMEOUT`, or the connection is
/// closed: an app that vanished without a FIN (a node gone, a netns torn down) is noticed before
/// the next request is sent into it.
const KEEP_ALIVE: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/2 upstream connection: the handle that opens streams on it.
pub struct Conn {
    tx: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection is over. Once this handle and the
    /// requests' are gone, h2 closes the connection when its last stream is done
    /// (`tests/upstream_h2.rs` holds it to that).
    closed: Arc<AtomicBool>,
}

// === impl Conn ===

impl Conn {
    /// The HTTP/2 handshake on `io`, and the connection's task spawned.
    pub async fn handshake(io: TcpStream) -> Result<Conn, h2::Error> {
        let (tx, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let pings = conn.ping_pong().expect("taken once, here");
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        tokio::spawn(async move {
            drive(conn, pings).await;
            done.store(true, Ordering::Release);
        });
        Ok(Conn { tx, closed })
    }

    /// False once the connection is over; a connection that is going away (GOAWAY received)
    /// may still say true, and the readiness check before [`start`] then fails.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// A handle for one request. Each request has its own, so that a connection replaced in
    /// the slot keeps serving the requests already on it. A fresh handle is ready at once: a
    /// stream over the app's concurrency limit waits in h2's queue of streams to open, and
    /// once its body is sent that wait counts against `--response-timeout`.
    pub fn sender(&self) -> h2::client::SendRequest<Bytes> {
        self.tx.clone()
    }
}

/// Opens a stream for `req` on `tx`, which [`poll_ready`](h2::client::SendRequest::poll_ready)
/// said is ready: its headers are queued now, with END_STREAM when it has no body. The body's
/// pipe comes back when there is one to send, with the state its response body signals it by.
///
/// A body of known length gets a `Content-Length` if it has none and the length is not zero or
/// the method defines a body (hyper's client did the same): an upload whose headers ended the
/// stream reaches the app as `content-length: 0`, not without one.
///
/// # Errors
/// h2 refused the request (a header HTTP/2 does not allow, or the connection went away); the
/// request is gone, and nothing was sent.
pub fn start(
    tx: &mut h2::client::SendRequest<Bytes>,
    req: Request<RequestBody>,
) -> Result<Started, h2::Error> {
    let (mut parts, body) = req.into_parts();
    let eos = body.is_end_stream();
    if let Some(len) = body.size_hint().exact() {
        let defines_body = !matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::DELETE
                | Method::OPTIONS
                | Method::CONNECT
                | Method::TRACE
        );
        if (len != 0 || defines_body) && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let (rsp, stream) = tx.send_request(Request::from_parts(parts, ()), eos)?;
    if eos {
        return Ok((rsp, None));
    }
    let state = body.shared_state();
    let pipe = Pipe {
        body,
        stream,
        pending: None,
        eos: false,
    };
    Ok((rsp, Some((pipe, state))))
}

/// A started stream: the response to wait for, and the body's pipe with its shared state.
pub type Started = (ResponseFuture, Option<(Pipe, Arc<BodyState>)>);

/// Drives the connection: until it ends, or until its handles are gone and its last stream
/// done. Pings it every [`KEEP_ALIVE`] and drops it when a ping goes unanswered.
async fn drive(mut conn: h2::client::Connection<TcpStream, Bytes>, mut pings: PingPong) {
    let keep_alive = async {
        loop {
            tokio::time::sleep(KEEP_ALIVE).await;
            match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(after = ?KEEP_ALIVE_TIMEOUT, "upstream http/2 ping unanswered");
                    return;
                }
            }
        }
    };
    tokio::select! {
        biased;
        r = &mut conn => if let Err(error) = r {
            tracing::debug!(%error, "upstream http/2 connection ended");
        },
        () = keep_alive => {}
    }
}

/// The `Content-Length` of a response, when it has one valid value (h2 has checked it already
/// and will hold the body to it).
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.parse().ok()
}

/// A request body on its way into its stream: frame by frame, each sent only once the stream's
/// window has room for it, so a fast client is held back by a slow upstream instead of queued
/// in memory. Ends early when the upstream resets the stream, and resets it when the client's
/// body fails or the forwarder gave up on the response.
pub struct Pipe {
    body: RequestBody,
    stream: SendStream<Bytes>,
    /// Data waiting for window; `eos` when the body ends with it.
    pending: Option<Bytes>,
    eos: bool,
}

impl Future for Pipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if this.body.state().poll_canceled(cx).is_ready() {
                this.stream.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            if let Some(data) = this.pending.as_mut() {
                let room = match this.stream.poll_capacity(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(room))) => room,
                    // The stream is gone (reset, or the connection ended).
                    Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                };
                let chunk = data.split_to(room.min(data.len()));
                let last = data.is_empty();
                if this.stream.send_data(chunk, last && this.eos).is_err() {
                    return Poll::Ready(());
                }
                if !last {
                    let left = data.len();
                    this.stream.reserve_capacity(left);
                    continue;
                }
                this.pending = None;
                if this.eos {
                    return Poll::Ready(());
                }
            }
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Some(Err(_)) => {
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.body.is_end_stream();
                        if data.is_empty() {
                            if eos {
                                let _ = this.stream.send_data(Bytes::new(), true);
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        this.stream.reserve_capacity(data.len());
                        this.pending = Some(data);
                        this.eos = eos;
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
            }
        }
    }
}

impl Pipe {
    /// Pipes the body: in place if it is all there already (a small unary call's one frame),
    /// else on a task of its own, since it may outlast the response headers (a client stream).
    pub fn run(mut self, cx: &mut Context<'_>) {
        if Pin::new(&mut self).poll(cx).is_pending() {
            tokio::spawn(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app that completes the handshake and then reads nothing more, as one whose process
    /// hangs or whose host vanished without a FIN: the proxy's ping goes unanswered, and the
    /// connection is closed `KEEP_ALIVE_TIMEOUT` after it, not kept for the next request.
    #[tokio::test]
    async fn a_connection_whose_ping_goes_unanswered_is_closed_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // Returned unpolled: its SETTINGS are sent, pings are never read.
            h2::server::handshake(tcp).await.unwrap()
        });
        let conn = Conn::handshake(TcpStream::connect(addr).await.unwrap())
            .await
            .unwrap();
        let _app = app.await.unwrap();
        // Paused only now, so that no timer can be advanced past while the handshake's bytes
        // are still on their way; from here on, the sleeps below take no real time.
        tokio::time::pause();

        // The ping goes at KEEP_ALIVE; until its timeout, the connection is still usable.
        tokio::time::sleep(KEEP_ALIVE + KEEP_ALIVE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(conn.is_open(), "closed before the ping's timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(!conn.is_open(), "open after an unanswered ping's timeout");
    }
}
