//! The first HTTP/1 request head of a connection, read whole before hyper sees it, for the one
//! framing check hyper cannot be asked to make: a request with both `Content-Length` and
//! `Transfer-Encoding` (RFC 9112 §6.3 lets a server reject it, and a proxy should, since the two
//! framings disagree about where the next request starts). hyper resolves it silently (chunked
//! wins, the connection closes after the response), so the raw head is checked here and the
//! request is refused with 400 by the stack (see `Sanitize`).
//!
//! Only the first head of a connection is read ahead; for later ones on a keep-alive connection
//! hyper's resolution stands, which still delivers one unambiguous message to the app and then
//! closes. The read is bounded by `--max-header-bytes` and `--header-read-timeout` from the
//! first byte; a head larger than the bound is left to hyper, which answers 431.

use bytes::BytesMut;
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::config::Limits;

/// Header lines looked at; hyper's own limit is 100, and more is answered 431 there.
const MAX_HEADERS: usize = 128;

pub enum FirstHead {
    /// The bytes read so far (the whole head, or as much as the bound allows).
    Read { buf: BytesMut, ambiguous: bool },
    /// The head did not arrive within the header read timeout.
    TimedOut,
    /// The client closed before the head was complete.
    Closed,
}

/// Reads until `buf` holds a whole request head (or `max_header_bytes`), then checks it.
pub async fn read_first(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    limits: &Limits,
) -> std::io::Result<FirstHead> {
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        if let Some(end) = head_end(&buf) {
            let ambiguous = both_framings(&buf[..end]);
            return Ok(FirstHead::Read { buf, ambiguous });
        }
        if buf.len() >= limits.max_header_bytes {
            return Ok(FirstHead::Read {
                buf,
                ambiguous: false,
            });
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_elapsed) => return Ok(FirstHead::TimedOut),
            Ok(Ok(0)) => return Ok(FirstHead::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Where the head ends: after the first empty line (CRLF CRLF, or bare LFs as httparse allows).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    // Leading empty lines are not the end of a head (RFC 9112 §2.2).
    while let Some(rest) = buf.get(start..) {
        if rest.starts_with(b"\r\n") {
            start += 2;
        } else if rest.starts_with(b"\n") {
            start += 1;
        } else {
            break;
        }
    }
    let mut i = start;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = &buf[nl + 1..];
        if next.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// Both `Content-Length` and `Transfer-Encoding` in one head. A head httparse cannot parse is
/// hyper's to refuse.
fn both_framings(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let has = |name: &str| {
        req.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    has("content-length") && has("transfer-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous() {
        let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
        assert!(both_framings(smuggle));
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n";
        assert!(both_framings(te_first));
        assert!(!both_framings(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n"
        ));
        assert!(!both_framings(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"));
    }
}
