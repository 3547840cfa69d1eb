//! An in-process gRPC server (h2c) and its clients, for tests that send gRPC through the proxy.
//!
//! - `grpc.health.v1.Health` from tonic-health: unary `Check` (SERVING for [`KNOWN_SERVICE`],
//!   `NOT_FOUND` for an unknown name) and server-streaming `Watch`.
//! - `tracemesh.test.Echo`, raw-bytes messages (no protobuf schema), one method per call shape,
//!   because the health service has no client-streaming or bidi call: `Unary` answers the
//!   message; `ServerStream` answers each `\n`-separated line as a message; `ClientStream`
//!   answers all messages concatenated; `Bidi` answers each message as it arrives. A message
//!   `fail:<code>` ends any call with that gRPC status (message `asked to fail`), so tests can
//!   check `rpc.grpc.status_code` and trailers-only responses.
//!
//! Clients connect a tonic `Channel` to any address (the proxy) with HTTP/2 prior knowledge; the
//! `:authority` can differ from the address dialled, which is how the outbound listener routes.

use std::{convert::Infallible, net::SocketAddr, pin::Pin, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use futures_util::{stream, Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
    Code, Request, Response, Status, Streaming,
};
pub use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tower::ServiceExt as _;

use super::{
    serve::{self, Served},
    DEADLINE,
};

/// The service name the health server reports SERVING at start.
pub const KNOWN_SERVICE: &str = "tracemesh.test.Echo";

/// The echo service's method paths.
pub const ECHO_UNARY: &str = "/tracemesh.test.Echo/Unary";
pub const ECHO_SERVER_STREAM: &str = "/tracemesh.test.Echo/ServerStream";
pub const ECHO_CLIENT_STREAM: &str = "/tracemesh.test.Echo/ClientStream";
pub const ECHO_BIDI: &str = "/tracemesh.test.Echo/Bidi";

type MessageStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The running gRPC server; stops, with its connections, on `Drop`.
pub struct GrpcServer {
    served: Served,
    reporter: tonic_health::server::HealthReporter,
}

// === impl GrpcServer ===

impl GrpcServer {
    /// Starts health + echo on `127.0.0.1:0`, with [`KNOWN_SERVICE`] SERVING.
    pub async fn start() -> Self {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(KNOWN_SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let health = health.clone();
            async move {
                let rsp = if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                    health.oneshot(req).await.unwrap_or_else(|e| match e {})
                } else {
                    echo(req).await
                };
                Ok::<_, Infallible>(rsp)
            }
        });
        let served = serve::serve_http(serve::bind_loopback().await, service);
        Self { served, reporter }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Changes what `Check` and `Watch` report for `service` (watchers are notified).
    pub async fn set_status(&self, service: &str, status: tonic_health::ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }
}

async fn echo(req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
    let mut grpc = tonic::server::Grpc::new(BytesCodec);
    match req.uri().path() {
        ECHO_UNARY => {
            let svc = tower::service_fn(|r: Request<Bytes>| async move {
                answer(r.into_inner()).map(Response::new)
            });
            grpc.unary(svc, req).await
        }
        ECHO_SERVER_STREAM => {
            let svc = tower::service_fn(|r: Request<Bytes>| async move {
                let lines: Vec<Result<Bytes, Status>> = r
                    .into_inner()
                    .split(|b| *b == b'\n')
                    .map(|line| answer(Bytes::copy_from_slice(line)))
                    .collect();
                Ok(Response::new(Box::pin(stream::iter(lines)) as MessageStream))
            });
            grpc.server_streaming(svc, req).await
        }
        ECHO_CLIENT_STREAM => {
            let svc = tower::service_fn(|r: Request<Streaming<Bytes>>| async move {
                let mut messages = r.into_inner();
                let mut all = Vec::new();
                while let Some(m) = messages.message().await? {
                    all.extend_from_slice(&answer(m)?);
                }
                Ok(Response::new(Bytes::from(all)))
            });
            grpc.client_streaming(svc, req).await
        }
        ECHO_BIDI => {
            let svc = tower::service_fn(|r: Request<Streaming<Bytes>>| async move {
                let replies = r.into_inner().map(|m| m.and_then(answer));
                Ok(Response::new(Box::pin(replies) as MessageStream))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented(format!("no method {}", req.uri().path())).into_http(),
    }
}

/// The message back, or the status a `fail:<code>` message asks for.
fn answer(message: Bytes) -> Result<Bytes, Status> {
    match message.strip_prefix(b"fail:") {
        Some(code) => {
            let code: i32 = std::str::from_utf8(code)
                .ok()
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(Code::Unknown as i32);
            Err(Status::new(Code::from_i32(code), "asked to fail"))
        }
        None => Ok(message),
    }
}

/// A tonic codec whose messages are the raw bytes of each gRPC frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// A channel that dials `connect_to` and sends `:authority` = `authority` (or `connect_to`).
///
/// # Panics
/// If the connection cannot be made within [`DEADLINE`].
pub async fn channel(connect_to: SocketAddr, authority: Option<&str>) -> Channel {
    let mut endpoint = Endpoint::from_shared(format!("http://{connect_to}"))
        .expect("a valid endpoint URI")
        .connect_timeout(DEADLINE);
    if let Some(authority) = authority {
        let origin = format!("http://{authority}")
            .parse()
            .expect("a valid authority");
        endpoint = endpoint.origin(origin);
    }
    endpoint
        .connect()
        .await
        .unwrap_or_else(|e| panic!("gRPC channel to {connect_to}: {e}"))
}

/// A health client through `connect_to` (the proxy or the server itself).
pub async fn health_client(connect_to: SocketAddr) -> HealthClient<Channel> {
    HealthClient::new(channel(connect_to, None).await)
}

/// `Check(service)`: the status, or the gRPC error (`NOT_FOUND` for an unknown service).
pub async fn check(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, Status> {
    let req = HealthCheckRequest {
        service: service.into(),
    };
    let rsp = client.check(req).await?.into_inner();
    Ok(ServingStatus::try_from(rsp.status).unwrap_or(ServingStatus::Unknown))
}

/// An open `Watch(service)` stream.
pub struct Watch {
    service: String,
    stream: Streaming<tonic_health::pb::HealthCheckResponse>,
}

/// Opens `Watch(service)`; the server sends the current status at once, then each change.
///
/// # Panics
/// If the call is refused.
pub async fn watch(client: &mut HealthClient<Channel>, service: &str) -> Watch {
    let req = HealthCheckRequest {
        service: service.into(),
    };
    let rsp = client
        .watch(req)
        .await
        .unwrap_or_else(|e| panic!("Watch({service}) refused: {e}"));
    Watch {
        service: service.into(),
        stream: rsp.into_inner(),
    }
}

// === impl Watch ===

impl Watch {
    /// The next status streamed.
    ///
    /// # Panics
    /// If the stream fails, ends, or sends nothing within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> ServingStatus {
        let service = &self.service;
        let rsp = tokio::time::timeout(timeout, self.stream.message())
            .await
            .unwrap_or_else(|_| panic!("Watch({service}): no status within {timeout:?}"))
            .unwrap_or_else(|e| panic!("Watch({service}) failed: {e}"))
            .unwrap_or_else(|| panic!("Watch({service}) ended"));
        ServingStatus::try_from(rsp.status).unwrap_or(ServingStatus::Unknown)
    }
}

/// A client for `tracemesh.test.Echo`. Each call takes extra metadata (e.g. `traceparent`).
#[derive(Debug, Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

// === impl EchoClient ===

impl EchoClient {
    pub fn new(channel: Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// [`channel`] + [`EchoClient::new`].
    pub async fn connect(connect_to: SocketAddr, authority: Option<&str>) -> Self {
        Self::new(channel(connect_to, authority).await)
    }

    pub async fn unary(
        &mut self,
        message: &[u8],
        metadata: &[(&str, &str)],
    ) -> Result<Bytes, Status> {
        self.ready().await?;
        let req = with_metadata(Bytes::copy_from_slice(message), metadata);
        let path = PathAndQuery::from_static(ECHO_UNARY);
        Ok(self.grpc.unary(req, path, BytesCodec).await?.into_inner())
    }

    /// One reply per `\n`-separated line of `message`.
    pub async fn server_stream(
        &mut self,
        message: &[u8],
        metadata: &[(&str, &str)],
    ) -> Result<Vec<Bytes>, Status> {
        self.ready().await?;
        let req = with_metadata(Bytes::copy_from_slice(message), metadata);
        let path = PathAndQuery::from_static(ECHO_SERVER_STREAM);
        let replies = self
            .grpc
            .server_streaming(req, path, BytesCodec)
            .await?
            .into_inner();
        collect(replies).await
    }

    /// All `messages`, concatenated in one reply.
    pub async fn client_stream(
        &mut self,
        messages: Vec<Bytes>,
        metadata: &[(&str, &str)],
    ) -> Result<Bytes, Status> {
        self.ready().await?;
        let req = with_metadata(stream::iter(messages), metadata);
        let path = PathAndQuery::from_static(ECHO_CLIENT_STREAM);
        Ok(self
            .grpc
            .client_streaming(req, path, BytesCodec)
            .await?
            .into_inner())
    }

    /// [`EchoClient::client_stream`] with a pause of `every` before each message: a client
    /// stream that lasts `messages.len() × every`.
    pub async fn client_stream_paced(
        &mut self,
        messages: Vec<Bytes>,
        every: Duration,
    ) -> Result<Bytes, Status> {
        self.ready().await?;
        let paced = stream::iter(messages).then(move |m| async move {
            tokio::time::sleep(every).await;
            m
        });
        let req = with_metadata(paced, &[]);
        let path = PathAndQuery::from_static(ECHO_CLIENT_STREAM);
        Ok(self
            .grpc
            .client_streaming(req, path, BytesCodec)
            .await?
            .into_inner())
    }

    /// Each of `messages` echoed, in order.
    pub async fn bidi(
        &mut self,
        messages: Vec<Bytes>,
        metadata: &[(&str, &str)],
    ) -> Result<Vec<Bytes>, Status> {
        self.ready().await?;
        let req = with_metadata(stream::iter(messages), metadata);
        let path = PathAndQuery::from_static(ECHO_BIDI);
        let replies = self
            .grpc
            .streaming(req, path, BytesCodec)
            .await?
            .into_inner();
        collect(replies).await
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }
}

fn with_metadata<T>(message: T, metadata: &[(&str, &str)]) -> Request<T> {
    let mut req = Request::new(message);
    for (key, value) in metadata {
        let key: tonic::metadata::MetadataKey<_> = key.parse().expect("a valid metadata key");
        req.metadata_mut()
            .insert(key, value.parse().expect("a valid metadata value"));
    }
    req
}

async fn collect(mut replies: Streaming<Bytes>) -> Result<Vec<Bytes>, Status> {
    let mut out = Vec::new();
    while let Some(m) = replies.message().await? {
        out.push(m);
    }
    Ok(out)
}
