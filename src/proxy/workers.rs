//! The data path's threads: `--workers N` threads, each running a current-thread Tokio runtime
//! with its own inbound and outbound listener sockets, bound to the same addresses with
//! `SO_REUSEPORT`, so that the kernel spreads new connections over the workers and a connection
//! (its requests, its upstream connection, its HTTP/2 streams) lives on one thread from accept
//! to close. Nothing on the request path crosses threads: no work stealing, no cross-thread
//! wake-up per request. Measured against one work-stealing runtime in BENCHMARKS.md.
//!
//! The admin listener, span export and the drain sequence run on the caller's runtime.

use std::{net::SocketAddr, sync::Arc, thread, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{oneshot, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{serve, Direction, Shared};

/// A listening socket with `SO_REUSEPORT` (and `SO_REUSEADDR`), so that each worker can bind
/// its own on `addr`, non-blocking, for a worker's runtime to take.
///
/// # Errors
/// The socket could not be created, bound or set listening.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = sock::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    sock::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    sock::setsockopt(&fd, sockopt::ReusePort, &true)?;
    sock::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    sock::listen(&fd, sock::Backlog::new(1024)?)?;
    Ok(std::net::TcpListener::from(fd))
}

/// The period of [`timer_heartbeat`]: shorter than any timer a request arms on the common
/// path (`--response-timeout`, 30 s by default).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`HEARTBEAT`] on this worker's runtime, so that the timer every
/// request arms (its response timeout) is never the runtime's earliest. Tokio wakes its driver
/// through an `eventfd` write whenever a new timer is due before the driver's next wake-up,
/// even when the thread registering it is the driver's own and is not asleep: without this,
/// that was one `write` syscall and one spurious `epoll_wait` return per HTTP/1 request
/// (`BENCH_STAT=1` counted 0.87 writes per request). The price is one wake-up a second.
async fn timer_heartbeat() {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// The worker threads, running until their listeners close.
pub struct Workers {
    /// One per worker: fires when its accept loops have returned (its sockets are closed).
    closed: Vec<oneshot::Receiver<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread per `(inbound, outbound)` listener pair. Each serves until `stop`, then
    /// lets its connections drain (they are on `tracker`) until `halt`.
    ///
    /// # Errors
    /// A thread or its runtime could not be started.
    pub fn start(
        pairs: Vec<(std::net::TcpListener, std::net::TcpListener)>,
        shared: &Arc<Shared>,
        stop: &CancellationToken,
        halt: &CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        // `--max-connections` is per listener, whatever the number of sockets behind it.
        let limit = || Arc::new(Semaphore::new(shared.limits.max_connections));
        let (inbound_permits, outbound_permits) = (limit(), limit());
        let mut closed = Vec::with_capacity(pairs.len());
        let mut threads = Vec::with_capacity(pairs.len());
        for (n, (inbound, outbound)) in pairs.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (done, rx) = oneshot::channel();
            closed.push(rx);
            let (shared, stop, halt, tracker) =
                (shared.clone(), stop.clone(), halt.clone(), tracker.clone());
            let (in_permits, out_permits) = (inbound_permits.clone(), outbound_permits.clone());
            let thread = thread::Builder::new()
                .name(format!("tracemesh-worker-{n}"))
                .spawn(move || {
                    // This worker's own shard of the retention ring: its lock is uncontended.
                    crate::telemetry::retention::ring::set_thread_shard(n);
                    runtime.block_on(async move {
                        // Ends with the runtime, when this thread is done.
                        tokio::spawn(timer_heartbeat());
                        let listen = |l| TcpListener::from_std(l).expect("a listening socket");
                        let (inbound, outbound) = (listen(inbound), listen(outbound));
                        tokio::join!(
                            serve(
                                Direction::Inbound,
                                inbound,
                                in_permits,
                                shared.clone(),
                                stop.clone(),
                                tracker.clone()
                            ),
                            serve(
                                Direction::Outbound,
                                outbound,
                                out_permits,
                                shared,
                                stop,
                                tracker.clone()
                            ),
                        );
                        let _ = done.send(());
                        // This thread's connections finish here; `halt` cuts what is left.
                        tokio::select! {
                            _ = tracker.wait() => {}
                            _ = halt.cancelled() => {}
                        }
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers { closed, threads })
    }

    /// Waits until every worker's listeners are closed.
    pub async fn listeners_closed(&mut self) {
        for rx in self.closed.drain(..) {
            let _ = rx.await;
        }
    }

    /// Joins the threads (after `halt`, or once every connection has finished).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
