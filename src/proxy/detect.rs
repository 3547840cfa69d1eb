//! Protocol detection: what the first bytes of a connection say it speaks.
//!
//! A pure function over the bytes read so far. It owns no I/O and no timeout: the accept loop
//! reads, calls [`detect`] after each read, and calls it once more with `complete = true` when
//! the client closes, the buffer is full or the detect timeout passes.
//!
//! - HTTP/2 with prior knowledge: the 24-byte connection preface (RFC 9113 §3.4).
//! - TLS: a handshake record header, `0x16 0x03 0x00..=0x04` (RFC 8446 §5.1; `0x00` is SSL 3.0,
//!   kept because the record layer's version is only a hint).
//! - HTTP/1.x: a request line `method SP request-target SP HTTP/1.DIGIT CRLF` (RFC 9112 §3),
//!   with `method` a token (RFC 9110 §5.6.2) and a target of any bytes but controls and SP.
//!   Like httparse (and so hyper), a bare LF also ends the line and leading empty lines are
//!   skipped (RFC 9112 §2.2).
//! - Anything else is opaque: forwarded byte for byte, never broken.
//!
//! Decisions are made as early as the bytes allow and are monotone: once [`detect`] returns
//! `Some` for a prefix, it returns the same for every longer buffer, complete or not (the fuzz
//! target `detect` checks this). A request line that is still plausible when bytes stop coming
//! (`method SP` and a target so far) is HTTP/1, so that hyper answers an over-long line (431/414)
//! or applies its header-read timeout to a slow one, instead of the proxy relaying it as opaque
//! bytes.

/// What the first bytes of a connection say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, e.g. gRPC over cleartext).
    Http2,
    /// A TLS handshake record.
    Tls,
    /// None of the above: relayed as TCP.
    Opaque,
}

/// Most bytes detection looks at before deciding; bytes past it are ignored, and a buffer this
/// long is treated as complete. HTTP/2 and TLS are known within 24 bytes, so this bounds the
/// HTTP/1 request line: 8 KiB is the request-line limit common servers apply (nginx's default
/// `large_client_header_buffers`, Apache's `LimitRequestLine`), and a longer line is still
/// handed to hyper as HTTP/1 to be refused there. It is also the per-connection buffer the
/// accept loop allocates, so larger would cost memory on every connection.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Decides what `buf`, the first bytes of a connection, speaks.
///
/// `complete` means no more bytes are coming for detection (EOF, buffer full, or the detect
/// timeout); then it always decides, and an empty buffer is [`Protocol::Opaque`]. Otherwise it
/// returns `None` while more bytes could change the answer. Only the first
/// [`MAX_DETECT_BYTES`] are looked at, and a buffer that long counts as complete.
pub fn detect(buf: &[u8], complete: bool) -> Option<Protocol> {
    let complete = complete || buf.len() >= MAX_DETECT_BYTES;
    let buf = &buf[..buf.len().min(MAX_DETECT_BYTES)];

    let n = buf.len().min(H2_PREFACE.len());
    if n > 0 && buf[..n] == H2_PREFACE[..n] {
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        if !complete {
            return None;
        }
        // A cut-short preface: let the request-line rules decide ("PRI * HTTP/" is plausible).
    }

    match buf {
        [0x16, 0x03, 0x00..=0x04, ..] => return Some(Protocol::Tls),
        [0x16] | [0x16, 0x03] if !complete => return None,
        _ => {}
    }

    match request_line(buf) {
        Line::Valid => Some(Protocol::Http1),
        Line::Invalid => Some(Protocol::Opaque),
        Line::Partial { .. } if !complete => None,
        Line::Partial { plausible: true } => Some(Protocol::Http1),
        Line::Partial { plausible: false } => Some(Protocol::Opaque),
    }
}

/// How far `buf` gets through an HTTP/1 request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// A whole, valid request line.
    Valid,
    /// Bytes no request line can start with.
    Invalid,
    /// A prefix of a valid request line. `plausible` once the method and its SP are in.
    Partial { plausible: bool },
}

fn request_line(buf: &[u8]) -> Line {
    const VERSION: &[u8] = b"HTTP/1.";
    let mut rest = buf;
    loop {
        rest = match rest {
            [b'\r', b'\n', tail @ ..] | [b'\n', tail @ ..] => tail,
            [b'\r'] => return Line::Partial { plausible: false },
            _ => break,
        };
    }

    let method = rest.iter().take_while(|&&b| is_tchar(b)).count();
    rest = match &rest[method..] {
        [] => return Line::Partial { plausible: false },
        [b' ', tail @ ..] if method > 0 => tail,
        _ => return Line::Invalid,
    };

    let target = rest.iter().take_while(|&&b| is_target_byte(b)).count();
    rest = match &rest[target..] {
        [] => return Line::Partial { plausible: true },
        [b' ', tail @ ..] if target > 0 => tail,
        _ => return Line::Invalid,
    };

    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return Line::Invalid;
    }
    match &rest[n..] {
        [] => Line::Partial { plausible: true },
        [minor, tail @ ..] if minor.is_ascii_digit() => match tail {
            [] | [b'\r'] => Line::Partial { plausible: true },
            [b'\n', ..] | [b'\r', b'\n', ..] => Line::Valid,
            _ => Line::Invalid,
        },
        _ => Line::Invalid,
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Any byte but a control or SP. httparse also takes obs-text (0x80..) in a target.
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// The property check shared by the `detect` fuzz target and the seed-replay unit test.
#[cfg(any(test, feature = "test-util"))]
pub mod fuzzing {
    use super::{detect, Protocol, H2_PREFACE, MAX_DETECT_BYTES};

    /// Panics unless, over the prefixes of `data`: a complete buffer always decides; the first
    /// decision made on an incomplete prefix is the decision on every longer prefix, complete
    /// or not (monotone); and the preface and TLS rules hold. Every prefix is tried up to 512
    /// bytes (where every rule is decided unless a request line is still going), then every
    /// 61st, the full length, and the boundary around [`MAX_DETECT_BYTES`].
    pub fn check_detect(data: &[u8]) {
        let mut lengths: Vec<usize> = (0..=data.len().min(512)).collect();
        lengths.extend((512..data.len()).step_by(61));
        lengths.extend(
            [
                MAX_DETECT_BYTES - 1,
                MAX_DETECT_BYTES,
                MAX_DETECT_BYTES + 1,
                data.len(),
            ]
            .into_iter()
            .filter(|&n| n <= data.len()),
        );
        lengths.sort_unstable();
        lengths.dedup();

        let mut first: Option<(usize, Protocol)> = None;
        for len in lengths {
            let prefix = &data[..len];
            let open = detect(prefix, false);
            let done = detect(prefix, true);
            assert!(done.is_some(), "complete input {prefix:?} undecided");
            if let Some((at, decided)) = first {
                assert_eq!(
                    open,
                    Some(decided),
                    "decided {decided:?} at {at}, then {open:?} at {len}"
                );
                assert_eq!(
                    done,
                    Some(decided),
                    "decided {decided:?} at {at}, then {done:?} at {len}"
                );
            } else if let Some(decided) = open {
                first = Some((len, decided));
                assert_eq!(done, open, "completing changed the decision at {len}");
            }
            if prefix.starts_with(H2_PREFACE) {
                assert_eq!(open, Some(Protocol::Http2));
            }
            if matches!(prefix, [0x16, 0x03, 0x00..=0x04, ..]) {
                assert_eq!(open, Some(Protocol::Tls));
            }
            if len >= MAX_DETECT_BYTES {
                assert!(open.is_some(), "a full buffer must decide");
            }
        }
    }
}

#[cfg(test)]
mod tests;
