//! Protocol detection: what the first bytes of a connection say it speaks.
//!
//! A pure function over the bytes read so far. It owns no I/O and no timeout: the accept loop
//! reads, calls [`detect`] after each read, and closes the connection when no decision is made
//! within the detect timeout (or the client closes first). Undecided is never "opaque": a client
//! that says nothing, or too little, is not relayed anywhere. Server-first protocols are
//! configured as opaque ports and skip detection altogether.
//!
//! - HTTP/2 with prior knowledge: the 24-byte connection preface (RFC 9113 §3.4).
//! - TLS: a handshake record header, `0x16 0x03 0x00..=0x04` (RFC 8446 §5.1; `0x00` is SSL 3.0,
//!   kept because the record layer's version is only a hint).
//! - HTTP/1.x: a method token (RFC 9110 §5.6.2 `tchar`s) followed by SP. Whatever follows is
//!   hyper's to parse, and a malformed request line gets 400 there. Deciding this early is the
//!   point: bytes that start like an HTTP request are never relayed unparsed, so a request line
//!   hyper would reject cannot smuggle a request past the proxy's limits and spans. Leading CR
//!   and LF bytes are skipped (RFC 9112 §2.2, and laxer servers skip a lone CR), and HTAB, VT or
//!   FF after the method count like SP.
//! - Anything else, that is a first byte outside the above, is opaque: forwarded byte for byte.
//!
//! Decisions are made as early as the bytes allow and are monotone: once [`detect`] returns
//! `Some` for a prefix, it returns the same for every longer buffer (the fuzz target `detect`
//! checks this). A buffer of [`MAX_DETECT_BYTES`] still undecided (a giant token, or nothing
//! but empty lines) is HTTP/1, so that hyper refuses it.

/// What the first bytes of a connection say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// An HTTP/1.x request (a method token and SP).
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, e.g. gRPC over cleartext).
    Http2,
    /// A TLS handshake record.
    Tls,
    /// Bytes no HTTP request can start with: relayed as TCP.
    Opaque,
}

/// Most bytes detection looks at before deciding; a buffer this long always decides. HTTP/2 and
/// TLS are known within 24 bytes and HTTP/1 at its first SP, so this bounds only a method token
/// or leading empty lines. It is also the initial buffer the accept loop allocates per connection.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Decides what `buf`, the first bytes of a connection, speaks: `None` while more bytes could
/// change the answer. Only the first [`MAX_DETECT_BYTES`] are looked at.
pub fn detect(buf: &[u8]) -> Option<Protocol> {
    let full = buf.len() >= MAX_DETECT_BYTES;
    let buf = &buf[..buf.len().min(MAX_DETECT_BYTES)];

    let n = buf.len().min(H2_PREFACE.len());
    if n > 0 && buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }

    match buf {
        [0x16, 0x03, 0x00..=0x04, ..] => return Some(Protocol::Tls),
        [0x16] | [0x16, 0x03] => return None,
        _ => {}
    }

    // Servers differ in what they skip before a request line (nginx and llhttp skip a lone CR)
    // and in what may follow the method (Tomcat takes HTAB): any of it is HTTP here, so that
    // hyper refuses it rather than an app with a laxer parser accepting it unseen.
    let rest = &buf[buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()..];
    let method = rest.iter().take_while(|&&b| is_tchar(b)).count();
    match &rest[method..] {
        [] if full => Some(Protocol::Http1),
        [] => None,
        [b' ' | b'\t' | 0x0b | 0x0c, ..] if method > 0 => Some(Protocol::Http1),
        _ => Some(Protocol::Opaque),
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The property check shared by the `detect` fuzz target and the seed-replay unit test.
#[cfg(any(test, feature = "test-util"))]
pub mod fuzzing {
    use super::{detect, Protocol, H2_PREFACE, MAX_DETECT_BYTES};

    /// Panics unless, over the prefixes of `data`: the first decision made on a prefix is the
    /// decision on every longer prefix (monotone); a full buffer decides; bytes that start with a
    /// method token and SP are HTTP/1; and the preface and TLS rules hold. Every prefix is tried
    /// up to 512 bytes, then every 61st, the full length, and the boundary around
    /// [`MAX_DETECT_BYTES`].
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
            let decided = detect(prefix);
            if let Some((at, was)) = first {
                assert_eq!(
                    decided,
                    Some(was),
                    "decided {was:?} at {at}, then {decided:?} at {len}"
                );
            } else if let Some(p) = decided {
                first = Some((len, p));
            }
            if prefix.starts_with(H2_PREFACE) {
                assert_eq!(decided, Some(Protocol::Http2));
            }
            if matches!(prefix, [0x16, 0x03, 0x00..=0x04, ..]) {
                assert_eq!(decided, Some(Protocol::Tls));
            }
            if len >= MAX_DETECT_BYTES {
                assert!(decided.is_some(), "a full buffer must decide");
            }
            let method = prefix.iter().take_while(|&&b| super::is_tchar(b)).count();
            let preface = prefix.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(prefix);
            let space = matches!(prefix.get(method), Some(b' ' | b'\t' | 0x0b | 0x0c));
            if method > 0 && space && !preface {
                assert_eq!(
                    decided,
                    Some(Protocol::Http1),
                    "method and SP must be HTTP/1"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
