//! Finds the one framing ambiguity hyper resolves silently: a request head with both
//! `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3 lets a server reject it, and a proxy
//! should, since the two framings disagree about where the next request starts). hyper lets
//! chunked win and closes after the response; the stack refuses such a request with 400
//! instead (see `Sanitize`), so the raw head is looked at here, as its bytes pass on their way
//! to hyper.
//!
//! [`HeadScan`] sits in a connection's [`Watched`](super::conn::Watched) reader. It scans from
//! the first byte of a head (a read while no request is in flight, after the previous one
//! ended) to the head's empty line, and then nothing until the next request has ended: body
//! bytes are never scanned. A later head that hyper had already buffered with an earlier
//! request (pipelining) is not seen, and hyper's resolution stands for it: one unambiguous
//! message to the app, then the connection closes.

/// A head longer than this is not scanned further (hyper answers 431 long before).
const MAX_SCAN: usize = 1 << 20;

/// The first bytes of a line kept for matching: `transfer-encoding:` is the longest name.
const NAME: usize = 18;

#[derive(Debug)]
pub struct HeadScan {
    /// Requests ended on the connection when this head's scan started.
    generation: u64,
    done: bool,
    scanned: usize,
    /// Non-empty lines of this head so far (the request line included).
    lines: u32,
    line_len: usize,
    name: [u8; NAME],
    content_length: bool,
    transfer_encoding: bool,
}

// === impl HeadScan ===

impl HeadScan {
    pub fn new() -> Self {
        HeadScan {
            generation: 0,
            done: false,
            scanned: 0,
            lines: 0,
            line_len: 0,
            name: [0; NAME],
            content_length: false,
            transfer_encoding: false,
        }
    }

    /// Looks at bytes just read, `ended` being the connection's count of ended requests and
    /// `idle` whether none is in flight (a head starts only then; one begun is read to its
    /// end). Returns true when they complete a head that carries both framings.
    pub fn feed(&mut self, ended: u64, idle: bool, bytes: &[u8]) -> bool {
        if ended != self.generation {
            *self = HeadScan {
                generation: ended,
                ..HeadScan::new()
            };
        }
        if self.done || (self.scanned == 0 && !idle) {
            return false;
        }
        // Line by line (memchr finds each end): only a line's first NAME bytes are looked at.
        // Byte by byte, this loop was 1.2k instructions of a proxied request (callgrind).
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            self.take(&rest[..end]);
            self.scanned += end + 1;
            rest = &rest[end + 1..];
            let empty = self.line_len == 0 || (self.line_len == 1 && self.name[0] == b'\r');
            if empty {
                // Empty lines before the request line are allowed (RFC 9112 §2.2).
                if self.lines > 0 {
                    self.done = true;
                    return self.content_length && self.transfer_encoding;
                }
            } else {
                if self.lines > 0 {
                    let line = &self.name[..self.line_len.min(NAME)];
                    self.content_length |= line.starts_with(b"content-length:");
                    self.transfer_encoding |= line.starts_with(b"transfer-encoding:");
                }
                self.lines += 1;
            }
            self.line_len = 0;
        }
        self.take(rest);
        self.scanned += rest.len();
        if self.scanned > MAX_SCAN {
            self.done = true;
        }
        false
    }

    /// Part of the current line, without its `\n`: its first NAME bytes kept, lowercased.
    fn take(&mut self, part: &[u8]) {
        if let Some(room) = self.name.get_mut(self.line_len..) {
            let n = room.len().min(part.len());
            for (slot, b) in room[..n].iter_mut().zip(part) {
                *slot = b.to_ascii_lowercase();
            }
        }
        self.line_len += part.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScan::new();
        chunks.iter().any(|c| s.feed(0, true, c))
    }

    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous() {
        let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
        assert!(scan(&[smuggle]));
        let te_first = b"\r\nPOST / HTTP/1.1\nTransfer-Encoding: chunked\ncontent-LENGTH: 6\n\n";
        assert!(scan(&[te_first]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n"
        ]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\nX-A: content-length: 1\r\n\
                          Transfer-Encoding: chunked\r\n\r\n"]));
    }

    #[test]
    fn a_head_split_at_any_byte_is_seen_whole() {
        let smuggle: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\
                               Transfer-Encoding: chunked\r\n\r\n";
        for cut in 0..smuggle.len() {
            let (a, b) = smuggle.split_at(cut);
            assert!(scan(&[a, b]), "cut at {cut}");
        }
    }

    #[test]
    fn a_head_fed_a_byte_at_a_time_is_seen_whole() {
        let smuggle: &[u8] = b"POST / HTTP/1.1\r\nX-Very-Long-Header-Name-Beyond-Eighteen: 1\r\n\
                               transfer-encoding: chunked\r\ncontent-length: 6\r\n\r\n";
        let bytes: Vec<&[u8]> = smuggle.chunks(1).collect();
        assert!(scan(&bytes));
        let clean: &[u8] = b"GET / HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\n\
                             Content-Length: 0\r\n\r\n";
        let bytes: Vec<&[u8]> = clean.chunks(1).collect();
        assert!(!scan(&bytes));
    }

    #[test]
    fn body_bytes_are_not_scanned_until_the_request_has_ended() {
        let mut s = HeadScan::new();
        assert!(!s.feed(0, true, b"POST / HTTP/1.1\r\nContent-Length: 60\r\n\r\n"));
        let body = b"x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!s.feed(0, true, body), "a body that looks like a head");
        assert!(
            !s.feed(1, false, body),
            "a body read while a request is in flight"
        );
        let next = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (a, b) = next.split_at(20);
        assert!(!s.feed(2, true, a));
        assert!(
            s.feed(2, false, b),
            "a head begun while idle is read to its end"
        );
    }

    #[test]
    fn the_request_line_is_not_a_header() {
        assert!(!scan(&[
            b"content-length: /\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
