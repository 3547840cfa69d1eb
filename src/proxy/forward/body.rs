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
        atomic::{AtomicU8, Ordering},
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

/// What became of a request body, shared between the body (in hyper's client) and the
/// forwarder waiting for the response.
#[derive(Debug, Default)]
pub struct BodyState {
    state: AtomicU8,
    waker: AtomicWaker,
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

pin_project! {
    /// A response body: the upstream's, streamed, or one the proxy wrote itself.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Upstream { #[pin] body: Incoming, in_flight: InFlight },
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

    pub fn upstream(body: Incoming, in_flight: InFlight) -> Self {
        ProxyBody::Upstream { body, in_flight }
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
            ProxyBodyProj::Upstream { body, .. } => body.poll_frame(cx),
            ProxyBodyProj::Synthetic { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Synthetic { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Synthetic { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
