//! The rescue layer: the one place where a [`ForwardError`] becomes an answer (see
//! [`ForwardError::status`]). The error rides in a response extension, so the span and RED
//! layers above say why. gRPC clients also get a `grpc-status`; an HTTP/1 client whose own
//! request was at fault (ambiguous framing, a broken body) gets `Connection: close`, since
//! nothing after such a request can be trusted to start at a message boundary.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Version};
use pin_project_lite::pin_project;

use super::{ForwardError, ProxyBody};
use crate::telemetry::Failure;

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

/// The response for a failed forward: pre-built body, the cause in a [`Failure`] extension.
pub fn error_response(error: ForwardError, grpc: bool, http1: bool) -> Response<ProxyBody> {
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
    if http1 && error.kind().is_client_fault() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let kind = error.kind();
    rsp.extensions_mut().insert(Failure {
        error_type: kind.as_str(),
        message: error.to_string().into(),
        client_fault: kind.is_client_fault(),
    });
    rsp
}

// === impl Rescue ===

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
        let http1 = req.version() < Version::HTTP_2;
        RescueFuture {
            inner: self.inner.call(req),
            grpc,
            http1,
        }
    }
}

pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
        http1: bool,
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
                error_response(e, *this.grpc, *this.http1)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_carries_its_cause_and_grpc_status() {
        let timeout = ForwardError::Timeout {
            addr: "127.0.0.1:1".parse().unwrap(),
            after: std::time::Duration::from_secs(1),
        };
        let rsp = error_response(timeout, true, false);
        assert_eq!(rsp.status(), 504);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        let failure = rsp
            .extensions()
            .get::<Failure>()
            .expect("the cause rides along");
        assert_eq!(failure.error_type, "timeout");
        assert!(!failure.client_fault);
        assert!(!rsp.headers().contains_key(header::CONNECTION));
    }

    #[test]
    fn an_http1_client_fault_closes_the_connection() {
        let rsp = error_response(ForwardError::Framing("test"), false, true);
        assert_eq!(rsp.status(), 400);
        assert_eq!(rsp.headers()[header::CONNECTION], "close");
    }
}
