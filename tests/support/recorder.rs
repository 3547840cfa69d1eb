//! [`TcpRecorder`]: a raw TCP "app" that keeps every byte it receives, per connection, and
//! answers a fixed `HTTP/1.1 200` once it holds one whole request. It parses nothing beyond
//! the framing it needs to know a request has ended, so it shows exactly what the proxy wrote
//! towards the app: a smuggled request, a relayed malformed one, or nothing at all.
//!
//! Each answer carries `Connection: close` and the recorder then half-closes, so the proxy
//! never reuses one upstream connection for two requests: one connection is one request, and a
//! relay (which would pass the answer through) ends as soon as the client has read it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::serve::{self, Served};

/// What the recorder answers to every request.
pub const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\nx-app: recorder\r\n\r\nok";

/// The bytes one accepted connection brought, so far.
type Received = Arc<Mutex<Vec<u8>>>;

/// A running recorder; stops, with its connections, on `Drop`.
pub struct TcpRecorder {
    served: Served,
    connections: Arc<Mutex<Vec<Received>>>,
}

// === impl TcpRecorder ===

impl TcpRecorder {
    /// Starts a recorder on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let connections: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = connections.clone();
        let served = serve::accept_loop(serve::bind_loopback().await, move |mut stream, _| {
            let received = Received::default();
            record.lock().expect("recorder lock").push(received.clone());
            async move {
                let mut buf = [0u8; 16 * 1024];
                let mut answered = false;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let whole = {
                        let mut r = received.lock().expect("recorder lock");
                        r.extend_from_slice(&buf[..n]);
                        whole_request(&r)
                    };
                    if whole && !answered {
                        answered = true;
                        if stream.write_all(ANSWER).await.is_err() {
                            return;
                        }
                        let _ = stream.shutdown().await;
                    }
                }
            }
        });
        Self {
            served,
            connections,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.lock().expect("recorder lock").len()
    }

    /// The bytes each connection brought so far, in accept order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .expect("recorder lock")
            .iter()
            .map(|r| r.lock().expect("recorder lock").clone())
            .collect()
    }

    /// Every byte received, on any connection.
    pub fn total_bytes(&self) -> usize {
        self.received().iter().map(Vec::len).sum()
    }
}

/// Whether `buf` holds a whole HTTP/1 request: a head, then `Content-Length` bytes, or chunks up
/// to the last one. Only as much parsing as the recorder needs to know when to answer.
fn whole_request(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_owned)
    };
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return body.windows(5).any(|w| w == b"0\r\n\r\n");
    }
    let len = header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}
