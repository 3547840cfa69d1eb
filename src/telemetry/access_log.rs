//! The access log (`--access-log json`): one JSON object per request, on stdout, with the IDs
//! of the request's span, so a log line leads to its trace and a trace to its log lines.
//!
//! The request path hands a finished request's record to a bounded queue with `try_send` and
//! goes on; a thread of its own formats the lines and writes them in batches. A slow or blocked
//! stdout fills the queue, and lines that do not fit are dropped and counted
//! (`tracemesh_access_log_dropped_total`): a request never waits for its log line.
//!
//! Fields, in this order: `time` (the request's start, RFC 3339 UTC, microseconds),
//! `direction`, `trace_id`, `span_id`, `sampled` (whether the span was exported when the
//! request ended), `sampling_reason` (why: `head`, `error`, `slow`, `downstream`; `null` when
//! not exported), `method`, `route`, `path` (no query string), `status`, `grpc_status`,
//! `duration_ms`, `bytes_in` and `bytes_out` (body bytes), `client`, `upstream`, `error_type`
//! (the span's `error.type`). Absent values are `null`. A span parked unkept and later exported
//! with a sibling's keep says `"sampled":false`: the line is written when its request ends.

use std::{
    fmt::Write as _,
    io::Write,
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;

use super::{retention::KeepReason, semconv, SpanRecord};
use crate::metrics::Direction;

/// Lines the queue holds; more than this waiting for stdout are dropped. The queue's buffer is
/// allocated whole (about 600 bytes a line): 2.4 MiB, 135 ms of lines at 30k requests a second.
pub const QUEUE: usize = 4096;

/// How often the writer looks for lines. It polls rather than waits: a sender never has a
/// sleeping thread to wake (a futex call and a context switch per line, measured at +30% CPU per
/// request at 1,000 req/s with a blocking receiver).
const POLL: Duration = Duration::from_millis(5);

/// One request, as the access log sees it.
pub struct Entry {
    pub record: SpanRecord,
    /// Exported, and why; `None` when not (yet) exported.
    pub kept: Option<KeepReason>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The sending side, held by the span layer.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread on `out` with a queue of `capacity` lines.
    pub fn start(out: Box<dyn Write + Send>, capacity: usize, dropped: Counter) -> Self {
        let (tx, rx) = mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("tracemesh-access-log".into())
            .spawn(move || write_lines(&rx, out))
            .expect("spawning the access-log thread");
        AccessLog { tx, dropped }
    }

    /// Queues a line; never waits. A full queue drops it and counts the drop.
    pub fn log(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(entry)
        {
            self.dropped.inc();
        }
    }
}

/// The writer thread: takes what is queued, writes it in one call, and sleeps [`POLL`]; it ends
/// when every sender is gone and the queue is empty.
fn write_lines(rx: &Receiver<Entry>, mut out: Box<dyn Write + Send>) {
    let mut buf = String::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let mut closed = false;
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(e) => line(&e, &mut buf),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        // A failed write (stdout closed) loses these lines; the next batch tries again.
        if !buf.is_empty() {
            let _ = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
            if buf.len() >= 60 * 1024 {
                continue; // more waiting: no pause
            }
        }
        if closed {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Appends `e` as one JSON line.
pub fn line(e: &Entry, out: &mut String) {
    let r = &e.record;
    let status = semconv::status(r);
    out.push_str("{\"time\":\"");
    let _ = write!(out, "{}", humantime::format_rfc3339_micros(r.start));
    out.push_str("\",\"direction\":\"");
    out.push_str(match r.kind {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    });
    let _ = write!(
        out,
        "\",\"trace_id\":\"{}\",\"span_id\":\"{}\",\"sampled\":{},\"sampling_reason\":",
        r.context.trace_id,
        r.context.span_id,
        e.kept.is_some(),
    );
    match e.kept {
        Some(reason) => string(out, reason.as_str()),
        None => out.push_str("null"),
    }
    out.push_str(",\"method\":");
    string(out, r.method.as_str());
    out.push_str(",\"route\":");
    match r.route.and_then(crate::config::routes::Route::template) {
        Some(t) => string(out, t),
        None => out.push_str("null"),
    }
    out.push_str(",\"path\":");
    string(out, r.text.path());
    out.push_str(",\"status\":");
    match r.status {
        Some(s) => {
            let _ = write!(out, "{}", s.as_u16());
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"grpc_status\":");
    match r.grpc_status {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"duration_ms\":{:.3},\"bytes_in\":{},\"bytes_out\":{},\"client\":\"{}\",\"upstream\":",
        r.duration.as_secs_f64() * 1000.0,
        e.bytes_in,
        e.bytes_out,
        r.client,
    );
    match r.upstream {
        Some(u) => {
            let _ = write!(out, "\"{u}\"");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"error_type\":");
    match &status.error_type {
        Some(t) => string(out, t),
        None => out.push_str("null"),
    }
    out.push_str("}\n");
}

/// `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
