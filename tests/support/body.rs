//! Bodies for byte-exact streaming tests: a deterministic pattern (byte `i` is
//! `(i * 31 + 7) as u8`) that streams any length from one static table without allocating, and
//! FNV-1a 64 (http://www.isthe.com/chongo/tech/comp/fnv/) to digest a body as it streams, so a
//! 1 GiB transfer needs no memory. A digest is written `len:<n> fnv:<16 hex>`.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

use super::serve::BoxError;

/// The body type the harness's apps answer with and its clients send.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Chunk size of [`pattern_body`].
pub const PATTERN_CHUNK: usize = 64 * 1024;

/// A whole body in one frame.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// No body at all.
pub fn empty() -> BoxBody {
    Empty::new()
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// Byte `i` of the pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7)) as u8
}

/// Pattern bytes `offset .. offset + len`, without copying (`len` ≤ [`PATTERN_CHUNK`]). The
/// pattern repeats every 256 bytes, so every chunk is a slice of one static table.
///
/// # Panics
/// If `len` exceeds [`PATTERN_CHUNK`].
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    assert!(
        len <= PATTERN_CHUNK,
        "pattern chunks are at most {PATTERN_CHUNK} bytes"
    );
    static TABLE: OnceLock<&'static [u8]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let bytes: Vec<u8> = (0..(PATTERN_CHUNK + 256) as u64)
            .map(pattern_byte)
            .collect();
        Box::leak(bytes.into_boxed_slice())
    });
    let start = (offset % 256) as usize;
    Bytes::from_static(&table[start..start + len])
}

/// A streaming `len`-byte pattern body with an exact size hint (so hyper sends content-length).
pub fn pattern_body(len: u64) -> BoxBody {
    PatternBody { sent: 0, len }.boxed_unsync()
}

/// The digest of the first `len` pattern bytes, computed without holding them.
pub fn pattern_digest(len: u64) -> String {
    let mut fnv = Fnv64::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(PATTERN_CHUNK as u64);
        fnv.update(&pattern_chunk(offset, n as usize));
        offset += n;
    }
    digest_line(len, fnv.finish())
}

/// `len:<n> fnv:<16 hex>`.
pub fn digest_line(len: u64, fnv: u64) -> String {
    format!("len:{len} fnv:{fnv:016x}")
}

/// Reads `body` to its end, digesting as it goes.
///
/// # Errors
/// The body's own error, with how many bytes had arrived.
pub async fn digest_body<B>(body: B) -> Result<String, String>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let (mut len, mut fnv) = (0u64, Fnv64::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body failed after {len} bytes: {e}"))?;
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            fnv.update(data);
        }
    }
    Ok(digest_line(len, fnv.finish()))
}

/// FNV-1a, 64-bit, fed incrementally.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

// === impl Fnv64 ===

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a 64 of one slice.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut f = Fnv64::new();
    f.update(bytes);
    f.finish()
}

struct PatternBody {
    sent: u64,
    len: u64,
}

// === impl PatternBody ===

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let remaining = self.len - self.sent;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let n = remaining.min(PATTERN_CHUNK as u64);
        let chunk = pattern_chunk(self.sent, n as usize);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}
