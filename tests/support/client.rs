//! Client helpers: one fresh connection per call, so each test controls exactly what the proxy
//! sees. HTTP/1.1 in origin-form (`GET /path`, `Host`) or absolute-form (`GET http://host/path`,
//! the app-uses-an-HTTP-proxy shape), HTTP/2 prior knowledge (h2c), and raw TCP bytes.
//!
//! The `try_*` functions return errors for tests that expect a failure; the others panic with
//! the target address and the cause.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    body::{self, BoxBody},
    serve::BoxError,
    DEADLINE,
};

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// HTTP/2 or chunked trailers, if any (gRPC status lives here).
    pub trailers: Option<HeaderMap>,
}

/// Sends `req` over a new HTTP/1.1 connection to `addr` (upgrades enabled). The URI is sent as
/// given: origin-form or absolute-form.
///
/// # Errors
/// Connect, handshake or request failure.
pub async fn try_send_http1<B>(
    addr: SocketAddr,
    req: Request<B>,
) -> Result<Response<Incoming>, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender.send_request(req).await?)
}

/// Sends `req` over a new h2c (prior knowledge) connection to `addr`. An origin-form URI gets
/// `http://{addr}` as scheme and authority (HTTP/2 needs both).
///
/// # Errors
/// Connect, handshake or request failure (including the server's `RST_STREAM`).
pub async fn try_send_h2c<B>(
    addr: SocketAddr,
    mut req: Request<B>,
) -> Result<Response<Incoming>, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if req.uri().authority().is_none() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = format!("http://{addr}{path}").parse()?;
    }
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// [`try_send_http1`], panicking on failure.
pub async fn send_http1<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let what = format!("{} {}", req.method(), req.uri());
    try_send_http1(addr, req)
        .await
        .unwrap_or_else(|e| panic!("HTTP/1.1 {what} via {addr} failed: {e}"))
}

/// [`try_send_h2c`], panicking on failure.
pub async fn send_h2c<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let what = format!("{} {}", req.method(), req.uri());
    try_send_h2c(addr, req)
        .await
        .unwrap_or_else(|e| panic!("h2c {what} via {addr} failed: {e}"))
}

/// Reads a response to its end, trailers included.
///
/// # Panics
/// If the body fails (reset, truncated), or takes longer than [`DEADLINE`].
pub async fn read_reply(rsp: Response<Incoming>) -> Reply {
    let (parts, body) = rsp.into_parts();
    let collected = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "response body ({}) not complete within {DEADLINE:?}",
                parts.status
            )
        })
        .unwrap_or_else(|e| panic!("response body ({}) failed: {e}", parts.status));
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// Builds a request with extra headers; `Host` is set to `host` unless `headers` has one.
///
/// # Panics
/// On an invalid URI or header.
pub fn request(
    method: Method,
    uri: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: BoxBody,
) -> Request<BoxBody> {
    let uri: Uri = uri
        .parse()
        .unwrap_or_else(|e| panic!("invalid URI {uri:?}: {e}"));
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("valid request parts");
    for (name, value) in headers {
        let name: HeaderName = name
            .parse()
            .unwrap_or_else(|e| panic!("header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value).unwrap_or_else(|e| panic!("header {name}: {e}"));
        req.headers_mut().append(name, value);
    }
    if !req.headers().contains_key(header::HOST) && !host.is_empty() {
        req.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(host).expect("host is a valid header"),
        );
    }
    req
}

/// `GET path` (origin-form) over HTTP/1.1 to `addr`, with `Host: addr`.
pub async fn http1_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let req = request(Method::GET, path, &addr.to_string(), headers, body::empty());
    let reply = read_reply(send_http1(addr, req).await).await;
    (reply.status, reply.headers, reply.body)
}

/// Any method and body over HTTP/1.1; `uri` may be origin-form or absolute-form. `Host` is the
/// URI's authority when absolute, else `addr`.
pub async fn http1_request(
    addr: SocketAddr,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: BoxBody,
) -> Reply {
    let host = authority_of(uri).unwrap_or_else(|| addr.to_string());
    read_reply(send_http1(addr, request(method, uri, &host, headers, body)).await).await
}

/// `GET absolute_url` sent to `proxy` as to an HTTP proxy (absolute-form over HTTP/1.1), with
/// `Host` set to the URL's authority.
pub async fn http1_proxy_get(
    proxy: SocketAddr,
    absolute_url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let host = authority_of(absolute_url)
        .unwrap_or_else(|| panic!("http1_proxy_get needs an absolute URL, got {absolute_url:?}"));
    let req = request(Method::GET, absolute_url, &host, headers, body::empty());
    let reply = read_reply(send_http1(proxy, req).await).await;
    (reply.status, reply.headers, reply.body)
}

/// Any request over h2c to `addr`; `uri` may be a path (then `:authority` is `addr`) or an
/// absolute URL (its authority becomes `:authority`, which routes an outbound request).
pub async fn h2c_request(
    addr: SocketAddr,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: BoxBody,
) -> Reply {
    read_reply(send_h2c(addr, request(method, uri, "", headers, body)).await).await
}

/// `GET` over h2c: see [`h2c_request`].
pub async fn h2c_get(
    addr: SocketAddr,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let reply = h2c_request(addr, Method::GET, uri, headers, body::empty()).await;
    (reply.status, reply.headers, reply.body)
}

/// Writes `bytes` to a new connection and reads until the peer closes, without half-closing
/// (an HTTP/1.1 request with `Connection: close` gets its full response).
///
/// # Panics
/// On connect/write failure, or if the peer has not closed within `timeout` (with what it sent).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    read_to_close(&mut stream, addr, timeout).await
}

/// Writes `bytes`, half-closes the write side, and reads until the peer closes (opaque TCP:
/// an echo answers exactly the bytes sent).
///
/// # Panics
/// As [`raw_request`].
pub async fn tcp_roundtrip(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
        wr.shutdown()
            .await
            .unwrap_or_else(|e| panic!("half-closing to {addr}: {e}"));
    };
    // Read while writing: a large echo would otherwise fill both socket buffers and deadlock.
    let mut out = Vec::new();
    let read = tokio::time::timeout(timeout, rd.read_to_end(&mut out));
    let ((), read) = tokio::join!(write, read);
    match read {
        Ok(Ok(_)) => out,
        Ok(Err(e)) => panic!("reading from {addr} after {} bytes: {e}", out.len()),
        Err(_) => panic!(
            "{addr} did not close within {timeout:?}; got {} bytes: {:?}",
            out.len(),
            String::from_utf8_lossy(&out)
        ),
    }
}

async fn read_to_close(stream: &mut TcpStream, addr: SocketAddr, timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) => out,
        Ok(Err(e)) => panic!("reading from {addr} after {} bytes: {e}", out.len()),
        Err(_) => panic!(
            "{addr} did not close within {timeout:?}; got {} bytes: {:?}",
            out.len(),
            String::from_utf8_lossy(&out)
        ),
    }
}

fn authority_of(uri: &str) -> Option<String> {
    let uri: Uri = uri.parse().ok()?;
    uri.authority().map(|a| a.as_str().to_owned())
}

/// Reads from `rd` until the peer closes (EOF or reset) or `within` passes: everything that
/// arrived, and whether the peer closed (`false`: still open at the deadline).
pub async fn read_until_closed<R>(rd: &mut R, within: Duration) -> (Vec<u8>, bool)
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(within, read).await.is_ok();
    (out, closed)
}
