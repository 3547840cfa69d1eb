//! The upstream HTTP/2 connection's life, as an HTTP/2 app sees it: an app that sends GOAWAY
//! after every stream still answers every request (a request the closing connection did not
//! take goes once more, on a new one); the app's connection closes when the client's does, so
//! no upstream connection outlives its downstream one; and a client that resets its stream in
//! the middle of an upload resets the app's stream too, instead of leaving it waiting for the
//! rest of a body that will not come; and a client that goes away in the middle of a two-way
//! stream, while the app waits for its answer to be read before it reads more, resets the app's
//! stream instead of leaving both waiting on each other for good.

mod support;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    body::BoxBody,
    client,
    process::{Proxy, ProxyBuilder},
    serve::{accept_loop, bind_loopback, serve_http, BoxError, Served},
    DEADLINE,
};
use tokio::{net::TcpStream, sync::mpsc};

fn untraced(name: &str, app: &Served) -> ProxyBuilder {
    Proxy::builder()
        .name(name)
        .env("OTEL_TRACES_EXPORTER", "none")
        .arg("--app-addr")
        .arg(app.addr().to_string())
}

async fn h2c(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake with the proxy");
    tokio::spawn(conn);
    sender
}

/// An h2c connection on h2 itself, which adds no header of its own (hyper's client adds
/// `content-length`) and whose connection task, aborted, closes the socket at once.
async fn raw_h2c(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    (client.ready().await.expect("ready"), conn)
}

fn get(path: &str) -> Request<BoxBody> {
    client::request(
        Method::GET,
        &format!("http://app{path}"),
        "",
        &[],
        support::body::empty(),
    )
}

/// Connections the app has accepted, and how many of them are still open.
#[derive(Default)]
struct Connections {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// An h2c-only app answering `ok <path>`. With `goaway_after_each`, every connection sends
/// GOAWAY as soon as its first request arrives, and closes once that one is answered.
fn h2_app(
    listener: tokio::net::TcpListener,
    goaway_after_each: bool,
) -> (Served, Arc<Connections>) {
    let counts = Arc::new(Connections::default());
    let seen = counts.clone();
    let served = accept_loop(listener, move |stream, _peer| {
        let counts = seen.clone();
        async move {
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            counts.open.fetch_add(1, Ordering::SeqCst);
            let (first_tx, mut first) = mpsc::channel::<()>(1);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let first_tx = first_tx.clone();
                async move {
                    let _ = first_tx.try_send(());
                    let body = format!("ok {}", req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            if goaway_after_each {
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = first.recv() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            } else {
                let _ = conn.await;
            }
            counts.open.fetch_sub(1, Ordering::SeqCst);
        }
    });
    (served, counts)
}

/// The reset reason somewhere in `e`'s chain of causes.
fn reset_reason(e: &hyper::Error) -> Option<h2::Reason> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        cause = c.source();
    }
    None
}

async fn read_ok(rsp: Response<Incoming>, path: &str) {
    assert_eq!(rsp.status(), StatusCode::OK, "{path}");
    let body = rsp
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    assert_eq!(body, format!("ok {path}").as_bytes(), "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_sends_goaway_after_every_stream_still_answers_every_request() {
    let (app, counts) = h2_app(bind_loopback().await, true);
    let p = untraced("h2-goaway", &app).start().await;
    let mut sender = h2c(p.inbound()).await;
    for i in 0..10 {
        let path = format!("/{i}");
        let rsp = tokio::time::timeout(DEADLINE, sender.send_request(get(&path)))
            .await
            .expect("answered in time")
            .expect("a response through the proxy");
        read_ok(rsp, &path).await;
    }
    // One connection per request: each took one stream and closed.
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_connection_closes_when_the_clients_does() {
    let (app, counts) = h2_app(bind_loopback().await, false);
    let p = untraced("h2-release", &app).start().await;
    let mut sender = h2c(p.inbound()).await;
    for i in 0..3 {
        let path = format!("/{i}");
        let rsp = sender.send_request(get(&path)).await.expect("a response");
        read_ok(rsp, &path).await;
    }
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        1,
        "three streams, one connection"
    );
    assert_eq!(counts.open.load(Ordering::SeqCst), 1);
    drop(sender);
    let closed = tokio::time::timeout(DEADLINE, async {
        while counts.open.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the app's connection is still open {DEADLINE:?} after the client's closed"
    );
    // The proxy still serves: a new client gets a new upstream connection.
    let mut again = h2c(p.inbound()).await;
    read_ok(
        again.send_request(get("/again")).await.expect("a response"),
        "/again",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_its_upload_resets_the_apps_stream() {
    // The app reads the body to its end and reports how it ended; it never answers first.
    let (got_tx, mut got) = mpsc::channel::<Result<usize, Option<h2::Reason>>>(4);
    let (chunk_tx, mut first_chunk) = mpsc::channel::<()>(1);
    let app = serve_http(
        bind_loopback().await,
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let got_tx = got_tx.clone();
            let chunk_tx = chunk_tx.clone();
            async move {
                let mut body = req.into_body();
                let mut read = 0;
                let end = loop {
                    match body.frame().await {
                        Some(Ok(f)) => {
                            read += f.data_ref().map_or(0, Bytes::len);
                            let _ = chunk_tx.try_send(());
                        }
                        Some(Err(e)) => break Err(reset_reason(&e)),
                        None => break Ok(read),
                    }
                };
                let _ = got_tx.send(end).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        }),
    );
    let p = untraced("h2-upload-reset", &app).start().await;
    let mut sender = h2c(p.inbound()).await;

    let (body_tx, body_rx) = mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), rx))
    });
    let req = client::request(
        Method::POST,
        "http://app/upload",
        "",
        &[],
        StreamBody::new(stream).boxed_unsync(),
    );
    let call = tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status()) });
    body_tx
        .send(Bytes::from_static(b"first chunk"))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, first_chunk.recv())
        .await
        .expect("the first chunk reaches the app")
        .unwrap();
    // The client gives up: hyper resets its stream, with the body still open.
    call.abort();
    let end = tokio::time::timeout(DEADLINE, got.recv())
        .await
        .expect("the app's body ends within the deadline, not never")
        .expect("the app reports");
    let reason = end.expect_err("a body that was cut off, not one that ended well");
    assert_eq!(
        reason,
        Some(h2::Reason::CANCEL),
        "the app's stream was reset with CANCEL"
    );
    drop(body_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_stalled_two_way_stream_resets_the_apps_stream() {
    // An echo-shaped app: it answers at once, writes 64 MiB (far more than every window and
    // socket buffer on the way holds) before it reads any of the upload,
    // and reports when a write fails (its stream was reset).
    let (report_tx, mut report) = mpsc::channel::<&'static str>(4);
    let app = serve_http(
        bind_loopback().await,
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let report_tx = report_tx.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Bytes>(1);
                tokio::spawn(async move {
                    let _upload = req.into_body(); // held, unread, while writing
                    for _ in 0..4096 {
                        if tx.send(Bytes::from(vec![b'x'; 16 << 10])).await.is_err() {
                            let _ = report_tx.send("reset").await;
                            return;
                        }
                    }
                    let _ = report_tx.send("wrote it all").await;
                });
                let mut rx = rx;
                let body = futures_util::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx)
                        .map(|chunk| chunk.map(|c| Ok::<_, BoxError>(Frame::data(c))))
                });
                Ok::<_, Infallible>(Response::new(StreamBody::new(body)))
            }
        }),
    );
    let p = untraced("h2-stalled-bidi", &app).start().await;
    // h2 itself, not hyper: aborting its connection's task closes the socket at once, where
    // hyper's client would keep a connection with a stalled upload open.
    let (mut client, conn) = raw_h2c(p.inbound()).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://app/echo")
        .body(())
        .unwrap();
    let (rsp, mut upload) = client.send_request(req, false).expect("stream opened");
    // 2 MiB offered, more than the app's window, so the proxy's pipe ends up waiting for window
    // that the app will not open while its own writes are stuck.
    for _ in 0..128 {
        upload
            .send_data(Bytes::from(vec![b'u'; 16 << 10]), false)
            .expect("queued");
    }
    let rsp = tokio::time::timeout(DEADLINE, rsp)
        .await
        .expect("response headers in time")
        .expect("a response through the proxy");
    assert_eq!(rsp.status(), StatusCode::OK);
    // Let both directions fill up, then the client goes away without reading the answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.abort();
    let _ = conn.await;
    drop((rsp, upload, client));
    let outcome = tokio::time::timeout(DEADLINE, report.recv())
        .await
        .expect("the app's stream is reset after the client left, not held open for good")
        .expect("the app reports");
    assert_eq!(outcome, "reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_headers_end_the_stream_reaches_the_app_with_content_length_zero() {
    let (seen_tx, mut seen) = mpsc::channel::<(String, Option<String>)>(4);
    let app = serve_http(
        bind_loopback().await,
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let seen_tx = seen_tx.clone();
            async move {
                let length = req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
                let _ = seen_tx.send((req.method().to_string(), length)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        }),
    );
    let p = untraced("h2-content-length", &app).start().await;
    // h2 itself, not hyper: hyper's client would add the header before the proxy saw it.
    let (mut client, _conn) = raw_h2c(p.inbound()).await;
    for method in [Method::POST, Method::GET] {
        let req = Request::builder()
            .method(method.clone())
            .uri("http://app/upload")
            .body(())
            .unwrap();
        let (rsp, _) = client.send_request(req, true).expect("stream opened");
        let rsp = tokio::time::timeout(DEADLINE, rsp)
            .await
            .expect("answered in time")
            .expect("a response");
        assert_eq!(rsp.status(), StatusCode::OK);
        let (got_method, length) = seen.recv().await.expect("the app saw the request");
        assert_eq!(got_method, method.as_str());
        let want = (method == Method::POST).then(|| "0".to_owned());
        assert_eq!(length, want, "{method}: the Content-Length the app saw");
    }
}
