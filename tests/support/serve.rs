//! Accept loops for the in-process peers. A [`Served`] owns the listener and every connection
//! task it spawned: dropping it closes the port and resets open connections, which is what a
//! crashed peer looks like to the proxy. Protocol logic lives in the peers' own files.

use std::{
    convert::Infallible, error::Error as StdError, future::Future, net::SocketAddr, os::fd::AsRawFd,
};

use bytes::Bytes;
use hyper::{body::Incoming, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use nix::sys::socket::Shutdown;
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// The error type boxed bodies and services use across the harness.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A running accept loop on `127.0.0.1`; stops, with its connections, on `Drop`.
#[derive(Debug)]
pub struct Served {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// A second handle on the listening socket, so `Drop` can stop it listening at once: the
    /// task's abort only takes effect when the runtime next polls it, and a connect in between
    /// would be accepted by the kernel and then reset, instead of refused.
    listening: std::net::TcpListener,
}

// === impl Served ===

impl Served {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // shutdown(2) on a listening socket makes Linux stop listening: later connects are refused.
        let _ = nix::sys::socket::shutdown(self.listening.as_raw_fd(), Shutdown::Both);
        // Aborting the loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// Binds `127.0.0.1:0`.
///
/// # Panics
/// If the kernel refuses an ephemeral port.
pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0 for an in-process peer")
}

/// Runs `handler` on every accepted connection, each in its own task.
///
/// # Panics
/// If the listener has no local address or cannot be duplicated; outside a Tokio runtime.
pub fn accept_loop<F, Fut>(listener: TcpListener, handler: F) -> Served
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().expect("listener has a local address");
    let listener = listener.into_std().expect("deregistering the listener");
    let listening = listener
        .try_clone()
        .expect("duplicating the listener's descriptor");
    let listener = TcpListener::from_std(listener).expect("registering the listener");
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(handler(stream, peer));
                    }
                    // After `Served::drop` shuts the listener down, accept fails until the
                    // task is aborted: stop accepting rather than spin.
                    Err(e) => {
                        eprintln!("[peer {addr}] accept failed, no longer accepting: {e}");
                        std::future::pending::<()>().await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Served {
        addr,
        task,
        listening,
    }
}

/// Serves HTTP/1.1 and HTTP/2 prior knowledge (h2c) on `listener` with hyper-util's auto builder,
/// upgrades included. Connection errors (resets, client gone) are expected in tests and ignored.
pub fn serve_http<S, B>(listener: TcpListener, service: S) -> Served
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    accept_loop(listener, move |stream, _peer| {
        let service = service.clone();
        async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        }
    })
}
