//! The admin listener under abuse: a flood of idle connections, beyond the process's file
//! descriptor limit (`prlimit --nofile`), leaves the proxy's CPU near idle instead of spinning on
//! EMFILE, and the proxy serves again once the flood is gone; below the limit, the listener holds
//! at most its own small number of connections, so the inbound listener keeps serving during the
//! flood; and idle or silent admin connections are closed after the header read timeout.
//!
//! CPU is the proxy's utime + stime from `/proc/PID/stat` over a fixed window: a measurement,
//! not a wait. Every wait polls a condition with a deadline.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use support::{
    apps::{App, Behaviour},
    body, client, eventually,
    process::{Proxy, ProxyBuilder},
    DEADLINE,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The admin listener's connection cap (`tracemesh::admin::MAX_CONNECTIONS`).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin header read timeout (`tracemesh::admin::HEADER_READ_TIMEOUT`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long CPU use is measured over.
const CPU_WINDOW: Duration = Duration::from_secs(2);

/// Above this share of one core over [`CPU_WINDOW`], the proxy is spinning. An idle proxy uses
/// well under 1%; an accept loop retrying EMFILE without a pause uses 100%.
const MAX_CPU_SHARE: f64 = 0.30;

/// A proxy whose app answers 200, run as `prlimit --nofile=N:N tracemesh proxy ..`.
async fn proxy_with_fd_limit(nofile: u32, app: &App) -> Proxy {
    let limit = format!("--nofile={nofile}:{nofile}");
    let p = ProxyBuilder::new()
        .name(format!("nofile-{nofile}"))
        .wrapper(["prlimit", limit.as_str()])
        .arg("--app-addr")
        .arg(app.addr().to_string())
        .start()
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid()))
        .expect("reading the proxy's /proc/PID/limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some(nofile.to_string().as_str()),
        "prlimit did not apply to the proxy itself: {open_files}"
    );
    p
}

/// The proxy's CPU time so far (utime + stime), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after `(comm)`: the first is field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("(comm)") + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("running getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// The proxy's share of one core over [`CPU_WINDOW`].
async fn cpu_share(pid: u32) -> f64 {
    let (cpu, wall) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(CPU_WINDOW).await;
    let share = (cpu_seconds(pid) - cpu) / wall.elapsed().as_secs_f64();
    eprintln!(
        "proxy {pid}: {:.1}% of a core over {CPU_WINDOW:?}",
        share * 100.0
    );
    share
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing /proc/PID/fd")
        .count()
}

/// `n` connections to `addr` that send nothing and stay open until dropped.
async fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("flood connection {i} to {addr} not established in time"))
            .unwrap_or_else(|e| panic!("flood connection {i} to {addr}: {e}"));
        held.push(stream);
    }
    held
}

/// `GET path` on a fresh connection: its status, or `None` if the request failed.
async fn try_get(addr: SocketAddr, path: &str) -> Option<StatusCode> {
    let req = client::request(Method::GET, path, &addr.to_string(), &[], body::empty());
    let rsp = tokio::time::timeout(Duration::from_secs(2), client::try_send_http1(addr, req));
    Some(rsp.await.ok()?.ok()?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_flood_beyond_the_fd_limit_leaves_cpu_idle_and_the_proxy_serving_once_it_ends() {
    const NOFILE: u32 = 64;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = proxy_with_fd_limit(NOFILE, &app).await;
    assert_eq!(try_get(p.inbound(), "/before").await, Some(StatusCode::OK));

    // More connections than the proxy has descriptors: it accepts until EMFILE, and the rest of
    // the flood sits in the backlog, readable, so every accept fails at once.
    let held = flood(p.admin(), 2 * NOFILE as usize).await;
    let pid = p.pid();
    eventually(
        DEADLINE,
        "the proxy's descriptors to run out",
        || async move { (open_fds(pid) >= NOFILE as usize - 2).then_some(()) },
    )
    .await;
    let share = cpu_share(pid).await;
    assert!(
        share < MAX_CPU_SHARE,
        "the proxy used {:.0}% of a core with its descriptors exhausted\n{}",
        share * 100.0,
        p.logs().join("\n")
    );
    // Still exhausted at the end of the window (the header read timeout had not yet closed the
    // first flood connections), so that is the state measured.
    let open = open_fds(pid);
    assert!(open >= NOFILE as usize - 2, "only {open} descriptors open");
    // The failed accepts were logged once, not at each retry.
    let logged = p
        .logs()
        .iter()
        .filter(|l| l.contains("admin accept failed"))
        .count();
    assert_eq!(logged, 1, "{}", p.logs().join("\n"));

    drop(held);
    let inbound = p.inbound();
    let status = eventually(
        DEADLINE,
        "inbound to serve after the flood",
        || async move { try_get(inbound, "/after").await },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let admin = p.admin();
    let ready = eventually(
        DEADLINE,
        "/ready to answer after the flood",
        || async move { try_get(admin, "/ready").await },
    )
    .await;
    assert_eq!(ready, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_holds_at_most_its_connection_cap_so_inbound_serves_during_a_flood() {
    const NOFILE: u32 = 512;
    let app = App::start(Behaviour::status(200, "ok")).await;
    let p = proxy_with_fd_limit(NOFILE, &app).await;
    assert_eq!(try_get(p.inbound(), "/before").await, Some(StatusCode::OK));
    let baseline = open_fds(p.pid());

    let held = flood(p.admin(), 3 * ADMIN_MAX_CONNECTIONS).await;
    p.wait_for_log("admin connection limit reached", DEADLINE)
        .await;
    let open = open_fds(p.pid());
    assert!(
        open <= baseline + ADMIN_MAX_CONNECTIONS + 2,
        "{open} descriptors open during the flood, {baseline} before it: the admin listener \
         holds more than {ADMIN_MAX_CONNECTIONS} connections"
    );
    // The rest of the flood waits in the backlog; the proxy is idle, not spinning.
    let share = cpu_share(p.pid()).await;
    assert!(
        share < MAX_CPU_SHARE,
        "the proxy used {:.0}% of a core at the admin connection cap",
        share * 100.0
    );
    assert_eq!(
        try_get(p.inbound(), "/during").await,
        Some(StatusCode::OK),
        "inbound did not serve during the admin flood\n{}",
        p.logs().join("\n")
    );

    drop(held);
    let admin = p.admin();
    let ready = eventually(
        DEADLINE,
        "/ready to answer after the flood",
        || async move { try_get(admin, "/ready").await },
    )
    .await;
    assert_eq!(ready, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_keep_alive_admin_connections_close_after_the_header_read_timeout() {
    let p = Proxy::builder().name("admin-idle").start().await;
    let admin = p.admin();

    let mut silent = TcpStream::connect(admin)
        .await
        .expect("connecting to admin");
    let mut idle = TcpStream::connect(admin)
        .await
        .expect("connecting to admin");
    let request = format!("GET /live HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.expect("writing");
    let opened = Instant::now();

    // The kept-alive connection gets its answer, then nothing until the proxy closes it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let bound = HEADER_READ_TIMEOUT + DEADLINE;
    let closed = loop {
        match tokio::time::timeout_at((opened + bound).into(), idle.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break opened.elapsed(),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("an idle keep-alive admin connection still open after {bound:?}"),
        }
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("live\n"),
        "one answer, nothing after it: {answer:?}"
    );
    assert!(
        closed >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "closed {closed:?} after its request, before the {HEADER_READ_TIMEOUT:?} timeout"
    );

    // A connection that never sent a byte is closed by the same clock, without an answer.
    let mut got = Vec::new();
    match tokio::time::timeout_at((opened + bound).into(), silent.read_to_end(&mut got)).await {
        Ok(_) => assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{got:?}"
        ),
        Err(_) => panic!("a silent admin connection still open after {bound:?}"),
    }
}
