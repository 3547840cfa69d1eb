//! The bodies the forwarder handles. [`RequestBody`] wraps the client's request body on its way
//! upstream and tells the forwarder two things: when it has been sent whole (the response
//! timeout starts only then, so a slow upload or a long client stream is not a timeout), and
//! whether it failed on the client's side (a client fault, never the upstream's). [`ProxyBody`]
//! is the response body, the upstream's streamed or one the proxy wrote itself; it holds the
//! request's claim on its connection until it is done, so the connection is not idle meanwhile.

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::proxy::conn::InFlight;

const SENDING: u8 = 0;
const SENT: u8 = 1;
const FAILED: u8 = 2;

/// What became of a request body, shared between the body (in the upstream client) and the
/// forwarder waiting for the response; and, the other way, whether the forwarder gave up on the
/// exchange (an HTTP/2 body still being sent is then reset).
#[derive(Debug, Default)]
pub struct BodyState {
    state: AtomicU8,
    waker: AtomicWaker,
    canceled: AtomicBool,
    cancel_waker: AtomicWaker,
}

// === impl BodyState ===

impl BodyState {
    fn set(&self, to: u8) {
        self.state.store(to, Ordering::Release);
        self.waker.wake();
    }

    /// The client's side of the body failed (bad chunk, cut short, reset).
    pub fn client_failed(&self) -> bool {
        self.state.load(Ordering::Acquire) == FAILED
    }

    /// The forwarder gave up on the exchange: the response did not come (timeout, or the request
    /// was dropped), or its body was dropped unfinished (the client went away).
    pub fn cancel(&self) {
        self.canceled.store(true, Ordering::Release);
        self.cancel_waker.wake();
    }

    /// Ready once [`cancel`](Self::cancel) was called; until then `cx` is woken when it is.
    pub fn poll_canceled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.canceled.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.cancel_waker.register(cx.waker());
        if self.canceled.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ready once the body has ended, well or not; until then `cx` is woken when it does.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.load(Ordering::Acquire) != SENDING {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.state.load(Ordering::Acquire) != SENDING {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

pin_project! {
    /// The client's request body on its way upstream (see the module docs). `first` is a frame
    /// the forwarder read ahead to check the body before opening a connection.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        first: Option<Frame<Bytes>>,
        state: Arc<BodyState>,
        // Body bytes sent, for the access log (when it is on).
        counted: Option<crate::telemetry::RequestBytes>,
    }

    impl PinnedDrop for RequestBody {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unfinished (the upstream answered early, or gave up): nothing more is sent.
            let state = this.project().state;
            if state.state.load(Ordering::Acquire) == SENDING {
                state.set(SENT);
            }
        }
    }
}

// === impl RequestBody ===

impl RequestBody {
    pub fn new(
        inner: Incoming,
        first: Option<Frame<Bytes>>,
        counted: Option<crate::telemetry::RequestBytes>,
    ) -> (Self, Arc<BodyState>) {
        let state = Arc::new(BodyState::default());
        if first.is_none() && inner.is_end_stream() {
            state.set(SENT);
        }
        let body = RequestBody {
            inner,
            first,
            state: state.clone(),
            counted,
        };
        (body, state)
    }

    pub fn state(&self) -> &BodyState {
        &self.state
    }

    /// The state shared with the forwarder, for a response body to signal the pipe.
    pub fn shared_state(&self) -> Arc<BodyState> {
        self.state.clone()
    }
}

/// Reads the first frame of `body` if the client has sent it: `Err` when the client's body is
/// already broken, so that nothing is forwarded for it.
pub async fn read_ahead(
    body: &mut Incoming,
    wait: std::time::Duration,
) -> Result<Option<Frame<Bytes>>, hyper::Error> {
    let first = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(wait, first).await {
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) | Err(_) => Ok(None),
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        if let Some(frame) = this.first.take() {
            if this.inner.is_end_stream() {
                this.state.set(SENT);
            }
            if let (Some(c), Some(data)) = (this.counted.as_ref(), frame.data_ref()) {
                c.add(data.len());
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let (Some(c), Some(Ok(data))) = (
            this.counted.as_ref(),
            frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)),
        ) {
            c.add(data.map_or(0, Bytes::len));
        }
        match &frame {
            None => this.state.set(SENT),
            Some(Err(_)) => this.state.set(FAILED),
            Some(Ok(_)) if this.inner.is_end_stream() => this.state.set(SENT),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let ahead = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.remaining() as u64);
        if ahead == 0 {
            return hint;
        }
        let mut h = SizeHint::new();
        h.set_lower(hint.lower() + ahead);
        if let Some(upper) = hint.upper() {
            h.set_upper(upper + ahead);
        }
        h
    }
}

/// A body's error on its way down: hyper's (an HTTP/1 upstream) or h2's (an HTTP/2 one), boxed
/// as hyper's server takes it, so that it still finds an h2 reset reason in it to pass on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as the upstream connection delivers it.
pub enum UpstreamBody {
    Http1(Incoming),
    Http2(RecvBody),
}

/// An HTTP/2 upstream's response body, read from h2 directly: each chunk's flow-control
/// capacity is given back as it is taken, so the upstream may send more once the client has
/// taken what came.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// The response's `Content-Length`, for the size hint (h2 itself checks the body against it).
    length: Option<u64>,
    /// The request body's state while its pipe may still be sending: dropped unfinished (the
    /// client went away), this body cancels the pipe. Else the pipe, waiting for window from
    /// an app that waits for its own response to be read, would hold the stream and the app's
    /// connection open for good.
    pipe: Option<Arc<BodyState>>,
    ended: bool,
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let (Some(state), false) = (&self.pipe, self.ended) {
            state.cancel();
        }
    }
}

// === impl RecvBody ===

impl RecvBody {
    pub fn new(recv: h2::RecvStream, length: Option<u64>, pipe: Option<Arc<BodyState>>) -> Self {
        RecvBody {
            recv,
            data_done: false,
            length,
            pipe,
            ended: false,
        }
    }

    /// hyper's rule, kept so that behaviour did not change with the client: an upstream that
    /// resets its stream with `NO_ERROR` or `CANCEL` has ended the body, not failed it.
    fn ended_or_failed(e: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
        match e.reason() {
            Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => None,
            _ => Some(Err(Box::new(e))),
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Poll::Ready(Self::ended_or_failed(e));
                }
                None => self.data_done = true,
            }
        }
        let last = match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Self::ended_or_failed(e),
        };
        self.ended = true;
        Poll::Ready(last)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

pin_project! {
    /// A response body: the upstream's, streamed, or one the proxy wrote itself.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Http1 { #[pin] body: Incoming, in_flight: InFlight },
        Http2 { body: RecvBody, in_flight: InFlight },
        Synthetic { data: Option<Bytes> },
    }
}

// === impl ProxyBody ===

impl ProxyBody {
    pub fn synthetic(data: Bytes) -> Self {
        ProxyBody::Synthetic {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn upstream(body: UpstreamBody, in_flight: InFlight) -> Self {
        match body {
            UpstreamBody::Http1(body) => ProxyBody::Http1 { body, in_flight },
            UpstreamBody::Http2(body) => ProxyBody::Http2 { body, in_flight },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Http1 { body, .. } => body.poll_frame(cx).map_err(Into::into),
            ProxyBodyProj::Http2 { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBodyProj::Synthetic { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Http1 { body, .. } => body.is_end_stream(),
            ProxyBody::Http2 { body, .. } => body.is_end_stream(),
            ProxyBody::Synthetic { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Http1 { body, .. } => body.size_hint(),
            ProxyBody::Http2 { body, .. } => body.size_hint(),
            ProxyBody::Synthetic { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
