//! Echo peers below HTTP: [`TcpEcho`] (opaque TCP, every byte back, half-close honoured) and
//! [`WsEcho`] (a WebSocket server, RFC 6455, on tokio-tungstenite), plus [`ws_echo`], a client
//! that upgrades through any address (the proxy) and reads each message back.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest,
    handshake::server::{Callback, ErrorResponse, Request as WsRequest, Response as WsResponse},
    Message,
};

use super::{
    serve::{self, Served},
    DEADLINE,
};

/// Opaque TCP echo; stops, with its connections, on `Drop`.
#[derive(Debug)]
pub struct TcpEcho {
    served: Served,
    connections: Arc<AtomicUsize>,
}

/// WebSocket echo: text and binary messages come back unchanged; a close is answered.
#[derive(Debug)]
pub struct WsEcho {
    served: Served,
    handshakes: Arc<Mutex<Vec<(Uri, HeaderMap)>>>,
}

/// Records each handshake request, then accepts it.
struct Recorder(Arc<Mutex<Vec<(Uri, HeaderMap)>>>);

impl Callback for Recorder {
    fn on_request(self, req: &WsRequest, rsp: WsResponse) -> Result<WsResponse, ErrorResponse> {
        let seen = (req.uri().clone(), req.headers().clone());
        self.0.lock().expect("handshakes lock").push(seen);
        Ok(rsp)
    }
}

/// What [`ws_echo`] saw.
#[derive(Debug, Clone)]
pub struct WsExchange {
    /// The handshake's status: 101.
    pub status: StatusCode,
    /// The handshake response's headers.
    pub headers: HeaderMap,
    /// One text reply per message sent, in order.
    pub echoed: Vec<String>,
}

// === impl TcpEcho ===

impl TcpEcho {
    pub async fn start() -> Self {
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let served = serve::accept_loop(serve::bind_loopback().await, move |mut stream, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                let (mut rd, mut wr) = stream.split();
                if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                    let _ = wr.shutdown().await;
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
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

// === impl WsEcho ===

impl WsEcho {
    pub async fn start() -> Self {
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let record = handshakes.clone();
        let served = serve::accept_loop(serve::bind_loopback().await, move |stream, _| {
            let record = record.clone();
            async move {
                let recorder = Recorder(record);
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, recorder).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(_) | Message::Binary(_) => msg,
                        Message::Close(_) => break,
                        // tungstenite answers pings itself.
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
                let _ = ws.close(None).await;
            }
        });
        Self { served, handshakes }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// Each handshake's request URI and headers (as rewritten by the proxy).
    pub fn handshakes(&self) -> Vec<(Uri, HeaderMap)> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }
}

/// Connects to `connect_to`, upgrades `ws://{authority}{path}` (so `Host: authority`) with
/// `headers` added, sends each message as text, reads one reply per message, and closes.
///
/// # Panics
/// If the handshake fails, or a reply is missing or late ([`DEADLINE`] in total).
pub async fn ws_echo(
    connect_to: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    messages: &[&str],
) -> WsExchange {
    let run = async {
        let stream = TcpStream::connect(connect_to)
            .await
            .unwrap_or_else(|e| panic!("connecting to {connect_to}: {e}"));
        let mut req = format!("ws://{authority}{path}")
            .into_client_request()
            .expect("a valid ws:// URL");
        for (name, value) in headers {
            let name: HeaderName = name.parse().expect("a valid header name");
            req.headers_mut()
                .append(name, HeaderValue::from_str(value).expect("a valid header"));
        }
        let (mut ws, rsp) = tokio_tungstenite::client_async(req, stream)
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake via {connect_to}: {e}"));
        let mut echoed = Vec::with_capacity(messages.len());
        for m in messages {
            ws.send(Message::text(*m))
                .await
                .expect("sending a WebSocket message");
            let reply = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break t.to_string(),
                    Some(Ok(Message::Binary(b))) => break String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => panic!("WebSocket read via {connect_to}: {e}"),
                    None => panic!("WebSocket closed via {connect_to} after {echoed:?}"),
                }
            };
            echoed.push(reply);
        }
        let _ = ws.close(None).await;
        WsExchange {
            status: rsp.status(),
            headers: rsp.headers().clone(),
            echoed,
        }
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("WebSocket echo via {connect_to} not done within {DEADLINE:?}"))
}
