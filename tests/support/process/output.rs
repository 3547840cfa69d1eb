//! The child's stdout and stderr: each read line by line on its own thread, kept for
//! assertions, and echoed to the test's stderr as `[name] line`. Colour codes are stripped.

use std::{
    io::{BufRead, BufReader, Read},
    sync::{Arc, Mutex, MutexGuard},
};

/// Lines read so far from one of the child's pipes, and whether it reached EOF.
#[derive(Debug, Default)]
struct Lines {
    lines: Vec<String>,
    closed: bool,
}

/// Everything the child wrote so far, shared with its reader threads.
#[derive(Debug, Clone, Default)]
pub(super) struct Output {
    stderr: Arc<Mutex<Lines>>,
    stdout: Arc<Mutex<Lines>>,
}

// === impl Output ===

impl Output {
    /// Reads the child's stderr on a thread.
    pub(super) fn pump_stderr(&self, from: impl Read + Send + 'static, name: String) {
        pump(from, name, self.stderr.clone());
    }

    /// Reads the child's stdout on a thread.
    pub(super) fn pump_stdout(&self, from: impl Read + Send + 'static, name: String) {
        pump(from, name, self.stdout.clone());
    }

    pub(super) fn stderr(&self) -> Vec<String> {
        lock(&self.stderr).lines.clone()
    }

    pub(super) fn stdout(&self) -> Vec<String> {
        lock(&self.stdout).lines.clone()
    }

    /// Whether both pipes reached EOF.
    pub(super) fn closed(&self) -> bool {
        lock(&self.stderr).closed && lock(&self.stdout).closed
    }

    pub(super) fn find_stderr<T>(&self, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        lock(&self.stderr).lines.iter().find_map(|l| f(l))
    }

    /// Every line, for panic messages.
    pub(super) fn render(&self) -> String {
        let stderr = lock(&self.stderr).lines.join("\n");
        let stdout = lock(&self.stdout).lines.join("\n");
        format!("--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}\n--- end ---")
    }
}

fn lock(lines: &Mutex<Lines>) -> MutexGuard<'_, Lines> {
    // A reader thread cannot panic while holding the lock, but a failing test might have.
    lines
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads `from` line by line on a thread: keeps each line in `into`, echoes it as `[name] line`.
fn pump(from: impl Read + Send + 'static, name: String, into: Arc<Mutex<Lines>>) {
    std::thread::Builder::new()
        .name(format!("{name} pipe"))
        .spawn(move || {
            let mut reader = BufReader::new(from);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        eprintln!("[{name}] {line}");
                        lock(&into).lines.push(line);
                    }
                }
            }
            lock(&into).closed = true;
        })
        .expect("spawning a pipe reader thread");
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case colours are on.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
