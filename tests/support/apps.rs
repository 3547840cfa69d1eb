//! In-process HTTP test apps (HTTP/1.1 and h2c on one port, via hyper-util's auto builder), each
//! with one [`Behaviour`] and a record of every request it saw. Clients are in `client`, byte
//! patterns and digests in `body`, TCP and WebSocket echo in `echo`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use super::{
    body::{digest_body, empty, full, pattern_body, BoxBody},
    client::try_send_http1,
};
use super::{
    eventually,
    serve::{self, Served},
};

/// The headers the forwarding app copies from its inbound request to its outbound one, as a
/// framework with trace propagation would.
pub const FORWARDED_HEADERS: &[&str] = &["traceparent", "tracestate", "b3"];

/// What an [`App`] does with each request.
#[derive(Clone)]
pub enum Behaviour {
    /// 200, the request body streamed back, `x-app: echo`.
    Echo,
    /// This status and body.
    Status { status: StatusCode, body: Bytes },
    /// Waits, then 200 with an empty body.
    Delay(Duration),
    /// 200 with a `len`-byte pattern body ([`super::body::pattern_chunk`]), streamed with content-length.
    Stream { len: u64 },
    /// Reads the request body as it streams; 200 `len:<n> fnv:<hex>` ([`super::body::digest_line`]).
    UploadDigest,
    /// Calls `next` through `via_proxy` as an HTTP proxy (absolute-form, HTTP/1.1), copying
    /// [`FORWARDED_HEADERS`] and `x-b3-*`; answers with the next hop's status and body.
    Forward { next: String, via_proxy: SocketAddr },
    /// Calls each of `calls` in turn through `via_proxy` (copying the trace headers as
    /// [`Behaviour::Forward`] does), whatever they answer, then 200 with their statuses as the
    /// body (`200,500`): an app that handles its dependencies' failures. No response header of
    /// theirs is copied.
    CallAll {
        calls: Vec<String>,
        via_proxy: SocketAddr,
    },
    /// An app that breaks propagation: requests whose path starts with [`HELD_PREFIX`] wait
    /// until `gate` opens; then it calls `next` through `via_proxy` without copying any trace
    /// header, and answers with the next hop's status and body.
    CallUntraced {
        next: String,
        via_proxy: SocketAddr,
        gate: Gate,
    },
    /// 200 headers at once, then `chunks` chunks of `chunk N\n`, one every `every`.
    SlowBody { chunks: usize, every: Duration },
    /// Requests whose path starts with [`HELD_PREFIX`] wait until `gate` opens; then every
    /// request waits `delay` and gets 200 with `body`. Arrival is recorded before the wait, so
    /// [`App::wait_for_requests`] proves a held request is in flight.
    Gated {
        gate: Gate,
        delay: Duration,
        body: Bytes,
    },
    /// Never answers.
    Hang,
    /// Anything else.
    Custom(Handler),
}

/// The path prefix [`Behaviour::Gated`] holds at its gate.
pub const HELD_PREFIX: &str = "/held/";

/// A gate that [`Behaviour::Gated`] requests wait at, opened once by the test.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

/// The function behind [`Behaviour::Custom`].
pub type Handler = Arc<dyn Fn(&SeenRequest) -> Response<Full<Bytes>> + Send + Sync>;

/// A request as the app saw it (after the proxy rewrote it).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub peer: SocketAddr,
}

/// A running app; stops, with its connections, on `Drop`.
pub struct App {
    served: Served,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

// === impl Behaviour ===

impl Behaviour {
    /// [`Behaviour::Status`] from anything byte-like.
    pub fn status(status: u16, body: impl Into<Bytes>) -> Self {
        let status = StatusCode::from_u16(status).expect("a valid status code");
        Self::Status {
            status,
            body: body.into(),
        }
    }

    /// [`Behaviour::Forward`] to `next` through the proxy's outbound listener.
    pub fn forward(next: impl Into<String>, via_proxy: SocketAddr) -> Self {
        Self::Forward {
            next: next.into(),
            via_proxy,
        }
    }

    /// [`Behaviour::Custom`].
    pub fn custom(
        f: impl Fn(&SeenRequest) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Self::Custom(Arc::new(f))
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Status { .. } => "status",
            Self::Delay(_) => "delay",
            Self::Stream { .. } => "stream",
            Self::UploadDigest => "upload-digest",
            Self::Forward { .. } => "forward",
            Self::CallAll { .. } => "call-all",
            Self::CallUntraced { .. } => "call-untraced",
            Self::SlowBody { .. } => "slow-body",
            Self::Gated { .. } => "gated",
            Self::Hang => "hang",
            Self::Custom(_) => "custom",
        }
    }
}

// === impl Gate ===

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }

    /// Opens the gate: every held request, and every later one, goes on.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = open.wait_for(|open| *open).await;
    }
}

// === impl App ===

impl App {
    /// Starts an app on `127.0.0.1:0`.
    pub async fn start(behaviour: Behaviour) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = serve::bind_loopback().await;
        let record = seen.clone();
        let served = serve::accept_loop(listener, move |stream, peer| {
            let (behaviour, seen) = (behaviour.clone(), record.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (behaviour, seen) = (behaviour.clone(), seen.clone());
                async move { Ok::<_, Infallible>(respond(behaviour, seen, peer, req).await) }
            });
            async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = builder.serve_connection_with_upgrades(io, service).await;
            }
        });
        Self { served, seen }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.served.addr())
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// The only request seen so far.
    ///
    /// # Panics
    /// Unless exactly one was seen.
    pub fn seen_one(&self) -> SeenRequest {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one request at {}, saw {seen:#?}",
            self.addr()
        );
        seen.into_iter().next().expect("one request")
    }

    /// Waits until `n` requests were seen.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<SeenRequest> {
        let what = format!("{n} requests at app {}", self.addr());
        eventually(timeout, &what, || {
            let seen = self.seen();
            async move { (seen.len() >= n).then_some(seen) }
        })
        .await
    }
}

async fn respond(
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let request = SeenRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        peer,
    };
    seen.lock().expect("seen lock").push(request.clone());
    let name = behaviour.name();
    let mut rsp = match behaviour {
        Behaviour::Echo => Response::new(req.into_body().map_err(Into::into).boxed_unsync()),
        Behaviour::Status { status, body } => with_status(status, full(body)),
        Behaviour::Delay(delay) => {
            tokio::time::sleep(delay).await;
            Response::new(empty())
        }
        Behaviour::Stream { len } => Response::new(pattern_body(len)),
        Behaviour::UploadDigest => match digest_body(req.into_body()).await {
            Ok(line) => Response::new(full(line)),
            Err(e) => with_status(StatusCode::BAD_REQUEST, full(e)),
        },
        Behaviour::Forward { next, via_proxy } => forward(&request, &next, via_proxy).await,
        Behaviour::CallAll { calls, via_proxy } => {
            let mut statuses = Vec::new();
            for next in &calls {
                let rsp = forward(&request, next, via_proxy).await;
                statuses.push(rsp.status().as_u16().to_string());
            }
            Response::new(full(statuses.join(",")))
        }
        Behaviour::CallUntraced {
            next,
            via_proxy,
            gate,
        } => {
            if request.uri.path().starts_with(HELD_PREFIX) {
                gate.passed().await;
            }
            let mut bare = request.clone();
            bare.headers.clear();
            forward(&bare, &next, via_proxy).await
        }
        Behaviour::SlowBody { chunks, every } => Response::new(slow_body(chunks, every)),
        Behaviour::Gated { gate, delay, body } => {
            if request.uri.path().starts_with(HELD_PREFIX) {
                gate.passed().await;
            }
            tokio::time::sleep(delay).await;
            Response::new(full(body))
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Custom(f) => f(&request).map(|b| b.map_err(|e| match e {}).boxed_unsync()),
    };
    rsp.headers_mut()
        .insert("x-app", HeaderValue::from_static(name));
    rsp
}

fn with_status(status: StatusCode, body: BoxBody) -> Response<BoxBody> {
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    rsp
}

fn slow_body(chunks: usize, every: Duration) -> BoxBody {
    let stream = futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(every).await;
        let frame = Frame::data(Bytes::from(format!("chunk {i}\n")));
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    StreamBody::new(stream)
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// One hop of the header-forwarding app: `GET next` in absolute-form to the proxy.
async fn forward(inbound: &SeenRequest, next: &str, via_proxy: SocketAddr) -> Response<BoxBody> {
    let uri: Uri = next.parse().expect("Forward.next is an absolute URL");
    let authority = uri
        .authority()
        .expect("Forward.next has an authority")
        .to_string();
    let mut req = Request::get(uri)
        .body(empty())
        .expect("valid request parts");
    req.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(&authority).expect("authority is a header"),
    );
    for (name, value) in &inbound.headers {
        let n = name.as_str();
        if FORWARDED_HEADERS.contains(&n) || n.starts_with("x-b3-") {
            req.headers_mut().append(name.clone(), value.clone());
        }
    }
    let rsp = match try_send_http1(via_proxy, req).await {
        Ok(rsp) => rsp,
        Err(e) => return with_status(StatusCode::BAD_GATEWAY, full(format!("forward: {e}"))),
    };
    let status = rsp.status();
    match rsp.into_body().collect().await {
        Ok(body) => with_status(status, full(body.to_bytes())),
        Err(e) => with_status(StatusCode::BAD_GATEWAY, full(format!("forward body: {e}"))),
    }
}
