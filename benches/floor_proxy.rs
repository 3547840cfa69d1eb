//! The floor of our stack: the least a hyper 1 proxy does, measured next to tracemesh in
//! `benches/bench.sh` (leg `floor`). One current-thread runtime; each downstream connection
//! gets one upstream connection of the same protocol, opened when it is accepted; requests are
//! forwarded as they come, with no tracing, no metrics, no limits and no header hygiene.
//! Whatever tracemesh costs above this is ours to explain.
//!
//! Usage: `floor_proxy LISTEN UPSTREAM [h1|h2c]` (built by `cargo build --release --example
//! floor_proxy`).

use std::net::SocketAddr;

use hyper::{body::Incoming, client::conn, server::conn as server, service::service_fn, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream): (SocketAddr, SocketAddr) = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => (l.parse().expect("LISTEN"), u.parse().expect("UPSTREAM")),
        _ => {
            eprintln!("usage: floor_proxy LISTEN UPSTREAM [h1|h2c]");
            std::process::exit(64);
        }
    };
    let h2 = args.get(3).map(String::as_str) == Some("h2c");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        loop {
            let Ok((down, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = down.set_nodelay(true);
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let (up, down) = (TokioIo::new(up), TokioIo::new(down));
                if h2 {
                    let Ok((send, c)) = conn::http2::handshake(TokioExecutor::new(), up).await
                    else {
                        return;
                    };
                    tokio::spawn(c);
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut send = send.clone();
                        async move { send.send_request(req).await }
                    });
                    let _ = server::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(down, svc)
                        .await;
                } else {
                    let Ok((send, c)) = conn::http1::handshake(up).await else {
                        return;
                    };
                    tokio::spawn(c);
                    let send = std::sync::Arc::new(tokio::sync::Mutex::new(send));
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let send = send.clone();
                        async move {
                            let mut send = send.lock().await;
                            send.ready().await?;
                            send.send_request(req).await
                        }
                    });
                    let _ = server::http1::Builder::new()
                        .serve_connection(down, svc)
                        .await;
                }
            });
        }
    });
}
