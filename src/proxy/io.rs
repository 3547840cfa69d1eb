//! Connection I/O helpers: replaying the bytes protocol detection read, and reading a
//! redirected connection's original destination.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

pin_project! {
    /// An I/O stream that first yields `prefix` (the bytes detection consumed), then reads from
    /// the stream itself. Writes go straight through.
    #[derive(Debug)]
    pub struct PrefixedIo<T> {
        prefix: Bytes,
        #[pin]
        io: T,
    }
}

impl<T> PrefixedIo<T> {
    pub fn new(prefix: Bytes, io: T) -> Self {
        PrefixedIo { prefix, io }
    }
}

impl<T: AsyncRead> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Replayed: let detection's 8 KiB buffer go, rather than hold it for as long as
                // the connection lives (it was 8 of the 64 KB of heap an idle HTTP/1.1
                // connection held in tests/allocations.rs).
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
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

/// The destination a connection was originally addressed to, when iptables redirected it to
/// us (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`). `None` when the connection was not
/// redirected: no conntrack entry, or the original destination is this socket itself.
pub fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let orig = match local {
        SocketAddr::V4(_) => {
            let sin = getsockopt(stream, sockopt::OriginalDst).ok()?;
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // An IPv4 connection on a dual-stack socket.
            match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(sin6.sin6_port))),
                None => SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, 0)),
            }
        }
    };
    (orig != local).then_some(orig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"GET / HTTP/1.1\r\n"), b);
        a.write_all(b"Host: x\r\n\r\n").await.unwrap();
        drop(a);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn unredirected_loopback_connection_has_no_original_dst() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(original_dst(&s, s.local_addr().unwrap()), None);
    }
}
