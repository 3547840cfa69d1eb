//! Per-connection bookkeeping: the guard that holds a connection's slot in `--max-connections`
//! and the open-connections gauge for as long as anything of it lives (upgraded streams and
//! `CONNECT` tunnels included), and [`Activity`], which decides when a connection is idle or
//! has been too slow to send a request head.
//!
//! Nothing here reads the clock per byte on HTTP connections: the clock is read when a request
//! head starts (its first byte after an idle period), when a request ends, and when the
//! watchdog wakes. Opaque relays, which have no request boundaries, note the time of each read.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use futures_util::task::AtomicWaker;

use prometheus_client::metrics::gauge::Gauge;

use super::head::HeadScan;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, OwnedSemaphorePermit},
    time::Instant,
};

/// Holds one connection's place: its permit of the listener's `--max-connections` and its unit
/// of `tracemesh_open_connections`, both given back when the last holder drops it. The
/// connection task holds it, and so does every upgraded stream or tunnel that outlives the
/// connection's HTTP phase.
pub struct ConnGuard {
    open: Gauge,
    _permit: Option<OwnedSemaphorePermit>,
}

// === impl ConnGuard ===

impl ConnGuard {
    pub fn new(open: Gauge, permit: Option<OwnedSemaphorePermit>) -> Arc<Self> {
        open.inc();
        Arc::new(ConnGuard {
            open,
            _permit: permit,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What a connection's watchdog decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request in flight and nothing received for `--idle-timeout`.
    Idle,
    /// A request head started arriving and was not complete within `--header-read-timeout`.
    HeaderRead,
    /// HTTP/1: a request was in flight, but no byte moved either way for the stall timeout (a
    /// body announced and never sent, a client that stopped reading).
    Stalled,
}

/// How a connection's activity is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1: idle between requests, with a head deadline once a head's first byte arrives.
    Http1,
    /// HTTP/2: idle while no stream is open. Frames between streams (PING, SETTINGS) do not
    /// start a head deadline.
    Http2,
    /// Opaque bytes: idle when nothing moved either way.
    Bytes,
}

/// Shared by a connection's I/O wrapper ([`Watched`]), its requests ([`InFlight`]) and its
/// watchdog ([`Activity::expired`]).
pub struct Activity {
    mode: Mode,
    epoch: Instant,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    stall_timeout: Duration,
    in_flight: AtomicUsize,
    /// HTTP/1: reads and writes so far, to tell a stalled request from a slow one.
    progress: AtomicU64,
    /// Milliseconds since `epoch` of the last request end (or, for opaque bytes, the last read).
    last: AtomicU64,
    /// Milliseconds since `epoch` + 1 when the current head's first byte arrived; 0 for none.
    head_started: AtomicU64,
    /// HTTP/1: requests ended so far, which tells [`HeadScan`] where a new head starts.
    ended: AtomicU64,
    /// HTTP/1: the head read last carries both `Content-Length` and `Transfer-Encoding`.
    ambiguous: AtomicBool,
    /// Milliseconds since `epoch` when the watchdog wakes next (`u64::MAX` before it first
    /// looks). A head's start or a request's end wakes it only when that makes a deadline
    /// earlier than this: otherwise it sees the change when it wakes anyway. Waking it twice
    /// per request, and the connection task's extra poll each time, was 2k instructions of a
    /// proxied HTTP/1 request (callgrind, BENCHMARKS.md).
    armed: AtomicU64,
    wake: Notify,
}

// === impl Activity ===

impl Activity {
    /// A request in flight on an HTTP/1 connection is stalled after `stall_timeout` with no
    /// byte moving either way.
    pub fn new(
        mode: Mode,
        idle_timeout: Duration,
        header_read_timeout: Duration,
        stall_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Activity {
            mode,
            epoch: Instant::now(),
            idle_timeout,
            header_read_timeout,
            stall_timeout,
            in_flight: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            last: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            ambiguous: AtomicBool::new(false),
            armed: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The first bytes of a request head are here (detection read them): its deadline runs.
    pub fn head_started(&self) {
        if self.mode == Mode::Http1 {
            let now = self.now_ms();
            self.head_started.store(now + 1, Ordering::SeqCst);
            self.nudge(now.saturating_add(millis(self.header_read_timeout)));
        }
    }

    /// Wakes the watchdog if `deadline` (just set) comes before its next wake-up. SeqCst pairs
    /// with [`Activity::expired`]'s: either this load sees the watchdog's new wake-up time, or
    /// the watchdog's second look at the state sees the change.
    fn nudge(&self, deadline: u64) {
        if deadline < self.armed.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// What the watchdog's deadlines are computed from (opaque reads included).
    fn state(&self) -> (usize, u64, u64) {
        (
            self.in_flight.load(Ordering::SeqCst),
            self.head_started.load(Ordering::SeqCst),
            self.last.load(Ordering::SeqCst),
        )
    }

    fn on_write(&self) {
        if self.mode == Mode::Http1 {
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_read(&self) {
        match self.mode {
            Mode::Http1 => {
                self.progress.fetch_add(1, Ordering::Relaxed);
                if self.in_flight.load(Ordering::Acquire) == 0
                    && self.head_started.load(Ordering::Acquire) == 0
                {
                    self.head_started();
                }
            }
            Mode::Http2 => {}
            Mode::Bytes => self.last.store(self.now_ms(), Ordering::Release),
        }
    }

    /// Whether the request head just parsed carries both framings (and forget it).
    pub fn take_ambiguous(&self) -> bool {
        self.ambiguous.load(Ordering::Relaxed) && self.ambiguous.swap(false, Ordering::Relaxed)
    }

    /// A request's head was parsed and the request is being served: the connection is busy
    /// until the returned guard drops (with the response body). The watchdog is not woken
    /// (no wake-up per request): it sees the request when its current deadline passes.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    /// Resolves when the connection has expired. Cancel-safe: drop it to stop watching.
    pub async fn expired(&self) -> Expired {
        // (progress, when it was seen) while a request is in flight.
        let mut mark: Option<(u64, u64)> = None;
        loop {
            let now = self.now_ms();
            let seen = self.state();
            let (deadline, why) = if self.in_flight.load(Ordering::Acquire) > 0 {
                // A request is being served, however long it streams, as long as bytes move.
                let progress = self.progress.load(Ordering::Relaxed);
                let since = match mark {
                    Some((p, at)) if p == progress => at,
                    _ => {
                        mark = Some((progress, now));
                        now
                    }
                };
                let stall = since + millis(self.stall_timeout);
                if self.mode == Mode::Http1 && now >= stall {
                    return Expired::Stalled;
                }
                // Wake no later than a head starting now would need: then the next head's
                // start never has to wake us (see `armed`), however long the stall timeout.
                let wake = match self.mode {
                    Mode::Http1 => stall.min(now.saturating_add(millis(self.header_read_timeout))),
                    _ => stall,
                };
                (wake, None)
            } else {
                mark = None;
                match self.head_started.load(Ordering::Acquire) {
                    0 => (
                        self.last.load(Ordering::Acquire) + millis(self.idle_timeout),
                        Some(Expired::Idle),
                    ),
                    started => (
                        started - 1 + millis(self.header_read_timeout),
                        Some(Expired::HeaderRead),
                    ),
                }
            };
            if let Some(why) = why {
                if now >= deadline {
                    return why;
                }
            }
            let wake_at = deadline.max(now + 1);
            self.armed.store(wake_at, Ordering::SeqCst);
            if self.state() != seen {
                // Changed while arming: the change may not have woken us (see `nudge`).
                continue;
            }
            let at = self.epoch + Duration::from_millis(wake_at);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

pin_project_lite::pin_project! {
    /// A future that is polled only when its own waker has fired. A connection task `select!`s
    /// between hyper's connection and the watchdog; without this, every wake-up of the
    /// connection (several per request) also re-polled the watchdog's timer and notification
    /// (3% of the proxy's CPU in the profile, BENCHMARKS.md).
    pub struct WhenWoken<F> {
        #[pin]
        inner: F,
        flag: Arc<WakeFlag>,
        waker: Waker,
    }
}

/// Set when the inner future's waker fires; wakes the task that polls [`WhenWoken`].
struct WakeFlag {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

impl<F> WhenWoken<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(WakeFlag {
            // The first poll runs the inner future, which registers its wake-ups.
            woken: AtomicBool::new(true),
            outer: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        WhenWoken { inner, flag, waker }
    }
}

impl<F: std::future::Future> std::future::Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Register first, then look: a wake-up in between is not lost.
        this.flag.outer.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

/// One request being served on a connection; dropping it ends the request's claim.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.now_ms();
        a.last.store(now, Ordering::SeqCst);
        a.ended.fetch_add(1, Ordering::Relaxed);
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.nudge(now.saturating_add(millis(a.idle_timeout)));
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream whose reads are reported to an [`Activity`]; on HTTP/1 its request heads
    /// pass a [`HeadScan`] on their way to hyper.
    pub struct Watched<T> {
        #[pin]
        io: T,
        activity: Arc<Activity>,
        read: u64,
        scan: Option<Box<HeadScan>>,
    }
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        let scan = (activity.mode == Mode::Http1).then(|| Box::new(HeadScan::new()));
        Watched {
            io,
            activity,
            read: 0,
            scan,
        }
    }

    /// Bytes read through this wrapper so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(res, Poll::Ready(Ok(()))) && n > 0 {
            *this.read += n as u64;
            let a = &**this.activity;
            a.on_read();
            if let Some(scan) = this.scan {
                let idle = a.in_flight.load(Ordering::Acquire) == 0;
                let ended = a.ended.load(Ordering::Relaxed);
                if scan.feed(ended, idle, &buf.filled()[before..]) {
                    a.ambiguous.store(true, Ordering::Relaxed);
                }
            }
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const HEAD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_expires_at_the_idle_timeout_not_the_head_timeout() {
        let a = Activity::new(Mode::Http1, IDLE, HEAD, IDLE);
        drop(a.begin());
        let start = Instant::now();
        assert_eq!(a.expired().await, Expired::Idle);
        let waited = start.elapsed();
        assert!(
            waited >= IDLE && waited < IDLE + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_complete_within_the_header_read_timeout() {
        let a = Activity::new(Mode::Http1, IDLE, HEAD, IDLE);
        let watch = {
            let a = a.clone();
            tokio::spawn(async move { a.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        a.on_read();
        let start = Instant::now();
        assert_eq!(watch.await.unwrap(), Expired::HeaderRead);
        let waited = start.elapsed();
        assert!(
            waited >= HEAD && waited < HEAD + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_while_bytes_move() {
        let a = Activity::new(Mode::Http1, IDLE, HEAD, IDLE);
        let req = a.begin();
        let watch = {
            let a = a.clone();
            tokio::spawn(async move { a.expired().await })
        };
        for _ in 0..6 {
            tokio::time::sleep(IDLE / 2).await;
            a.on_write();
        }
        assert!(!watch.is_finished());
        drop(req);
        let start = Instant::now();
        assert_eq!(watch.await.unwrap(), Expired::Idle);
        assert!(start.elapsed() >= IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_with_no_byte_moving_is_stalled() {
        let a = Activity::new(Mode::Http1, IDLE, HEAD, IDLE * 2);
        let _req = a.begin();
        a.on_read();
        let start = Instant::now();
        assert_eq!(a.expired().await, Expired::Stalled);
        let waited = start.elapsed();
        assert!(waited >= IDLE * 2 && waited < IDLE * 3, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn opaque_bytes_push_the_idle_deadline() {
        let a = Activity::new(Mode::Bytes, IDLE, HEAD, IDLE);
        let watch = {
            let a = a.clone();
            tokio::spawn(async move { a.expired().await })
        };
        tokio::time::sleep(Duration::from_secs(50)).await;
        a.on_read();
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(!watch.is_finished(), "bytes moved 50 s ago");
        assert_eq!(watch.await.unwrap(), Expired::Idle);
    }

    #[test]
    fn when_woken_polls_its_future_only_after_the_future_s_own_wake_up() {
        use std::{future::Future as _, sync::Mutex};
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let inner = {
            let (polls, inner_waker) = (polls.clone(), inner_waker.clone());
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                *inner_waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
        };
        let mut fut = Box::pin(WhenWoken::new(inner));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "only the first poll reaches it"
        );
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "one more poll after its wake-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_streams_start_no_head_deadline() {
        let a = Activity::new(Mode::Http2, IDLE, HEAD, IDLE);
        a.on_read();
        let start = Instant::now();
        assert_eq!(a.expired().await, Expired::Idle);
        assert!(start.elapsed() >= IDLE);
    }
}
