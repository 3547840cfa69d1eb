//! [`RequestText`]: the few request strings a span keeps (path, authority, `Host`,
//! `User-Agent`), copied out of the request into one inline buffer when the span starts.
//!
//! A span record used to keep `Uri` and `HeaderValue` clones instead. Those are cheap, but they
//! share hyper's connection read buffer (8 KiB), so each record kept its request's buffer alive
//! until export: the queue pinned up to one buffer per queued span (RSS 32 MiB instead of 14 in
//! the benchmark once the exporter drained per batch). Copying the ~100 bytes that matter costs
//! less. Text that does not fit inline goes to the heap (one allocation, for unusually long
//! paths or agents).

/// Bytes kept inline; paths, authorities and agents of ordinary requests fit.
const INLINE: usize = 240;

// The inline variant is the point: no allocation for ordinary requests. Both variants are
// `str`s, so reading a part back costs no UTF-8 check (~100 instructions a span when the
// buffer was bytes: callgrind, BENCHMARKS.md).
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Storage {
    Inline(arrayvec::ArrayString<INLINE>),
    Heap(Box<str>),
}

/// The request's path (no query), authority, `Host` and `User-Agent`, as text. Values that are
/// not valid UTF-8 are left out (as they would be from the span's attributes).
#[derive(Clone)]
pub struct RequestText {
    storage: Storage,
    /// End offsets of path, authority, host and user agent in the storage.
    ends: [u16; 4],
}

impl RequestText {
    /// Copies the parts out of `uri` and `headers`.
    pub fn new(uri: &http::Uri, host: Option<&[u8]>, user_agent: Option<&[u8]>) -> Self {
        fn text(b: Option<&[u8]>) -> &str {
            b.and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        let parts = [uri.path(), authority, text(host), text(user_agent)];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut ends = [0u16; 4];
        let storage = if total <= INLINE {
            let mut inline = arrayvec::ArrayString::new();
            for (i, p) in parts.iter().enumerate() {
                // Fits: `total` was measured.
                let _ = inline.try_push_str(p);
                ends[i] = u16::try_from(inline.len()).unwrap_or(u16::MAX);
            }
            Storage::Inline(inline)
        } else {
            // Offsets are u16: anything longer than that is cut, at a character boundary
            // (hyper's header limit is far below).
            let limit = usize::from(u16::MAX);
            let mut heap = String::with_capacity(total.min(limit));
            for (i, p) in parts.iter().enumerate() {
                let mut n = p.len().min(limit - heap.len());
                while !p.is_char_boundary(n) {
                    n -= 1;
                }
                heap.push_str(&p[..n]);
                ends[i] = u16::try_from(heap.len()).unwrap_or(u16::MAX);
            }
            Storage::Heap(heap.into_boxed_str())
        };
        RequestText { storage, ends }
    }

    fn part(&self, i: usize) -> &str {
        let text: &str = match &self.storage {
            Storage::Inline(s) => s,
            Storage::Heap(s) => s,
        };
        let start = if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1])
        };
        // Every end offset is at a character boundary; `get` keeps this free of panics.
        text.get(start..usize::from(self.ends[i])).unwrap_or("")
    }

    fn non_empty(&self, i: usize) -> Option<&str> {
        Some(self.part(i)).filter(|s| !s.is_empty())
    }

    /// The path, without the query string.
    pub fn path(&self) -> &str {
        self.part(0)
    }

    /// The URI's authority (HTTP/2 `:authority`, or an absolute-form HTTP/1 target).
    pub fn authority(&self) -> Option<&str> {
        self.non_empty(1)
    }

    /// `Host` as the client sent it.
    pub fn host(&self) -> Option<&str> {
        self.non_empty(2)
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.non_empty(3)
    }
}

impl std::fmt::Debug for RequestText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestText")
            .field("path", &self.path())
            .field("authority", &self.authority())
            .field("host", &self.host())
            .field("user_agent", &self.user_agent())
            .finish()
    }
}

/// `host[:port]` of an authority or `Host` value, without the brackets of an IPv6 literal
/// kept (`[::1]:80` → (`[::1]`, 80)), as `http::uri::Authority` splits it; the port defaults
/// to 80. `None` for a value that has no host or is not an authority (userinfo, a path, spaces).
pub fn host_port(authority: &str) -> Option<(&str, u16)> {
    let valid = |b: u8| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@' | b'"');
    // One pass: every byte valid, and where the last `:` and the last `]` are.
    let (mut colon, mut bracket) = (None, None);
    for (i, b) in authority.bytes().enumerate() {
        if !valid(b) {
            return None;
        }
        match b {
            b':' => colon = Some(i),
            b']' => bracket = Some(i),
            _ => {}
        }
    }
    let (host, port) = match colon {
        // `[::1]` alone: the colon is inside the brackets.
        Some(i) if bracket.is_none_or(|j| j < i) => {
            (&authority[..i], authority[i + 1..].parse().ok()?)
        }
        _ => (authority, 80),
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_as_given_and_the_query_is_dropped() {
        let uri: http::Uri = "http://svc.ns:8080/a/b?q=1".parse().unwrap();
        let t = RequestText::new(&uri, Some(b"svc.ns:8080"), Some(b"curl/8"));
        assert_eq!(t.path(), "/a/b");
        assert_eq!(t.authority(), Some("svc.ns:8080"));
        assert_eq!(t.host(), Some("svc.ns:8080"));
        assert_eq!(t.user_agent(), Some("curl/8"));
        assert!(matches!(t.storage, Storage::Inline(_)));
    }

    #[test]
    fn long_text_goes_to_the_heap_and_non_utf8_is_left_out() {
        let path = format!("/{}", "x".repeat(400));
        let uri: http::Uri = path.parse().unwrap();
        let t = RequestText::new(&uri, None, Some(b"\xff\xfe"));
        assert_eq!(t.path(), path);
        assert_eq!(t.authority(), None);
        assert_eq!(t.user_agent(), None);
        assert!(matches!(t.storage, Storage::Heap(_)));
    }

    #[test]
    fn text_beyond_64_kib_is_cut_at_a_character_boundary() {
        let uri: http::Uri = "/p".parse().unwrap();
        // Three-byte characters after 4 bytes: the 65,535-byte limit falls inside one.
        let agent = "€".repeat(65_536 / 3 + 1);
        let t = RequestText::new(&uri, Some(b"hh"), Some(agent.as_bytes()));
        assert_eq!((t.path(), t.host()), ("/p", Some("hh")));
        let kept = t.user_agent().unwrap();
        assert!(agent.starts_with(kept));
        assert_eq!(kept.len(), (usize::from(u16::MAX) - 4) / 3 * 3);
    }

    #[test]
    fn host_and_port_split_like_authority() {
        assert_eq!(host_port("svc:8080"), Some(("svc", 8080)));
        assert_eq!(host_port("svc"), Some(("svc", 80)));
        assert_eq!(host_port("[::1]:9"), Some(("[::1]", 9)));
        assert_eq!(host_port("[::1]"), Some(("[::1]", 80)));
        assert_eq!(host_port(":80"), None);
        assert_eq!(host_port("svc:notaport"), None);
        assert_eq!(host_port("a b"), None);
        assert_eq!(host_port("user@svc"), None);
    }
}
