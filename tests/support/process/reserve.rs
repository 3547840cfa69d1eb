//! Addresses a proxy listener will bind, chosen before the proxy starts (for peers that must be
//! configured with it first).

use std::{net::SocketAddr, sync::Mutex};

/// A loopback address for a proxy listener that someone must know before the proxy starts: the
/// header-forwarding app is started with its proxy's outbound address, and that proxy is
/// started with the app's address.
///
/// The port is free when chosen, but released before the proxy binds it, so it comes from below
/// the kernel's ephemeral range: the kernel never hands such a port to another socket by itself
/// (`bind(0)`, `connect`), which a released ephemeral port could be given to in between.
#[derive(Debug, Clone)]
pub struct ReservedListen {
    flag: &'static str,
    addr: SocketAddr,
}

// === impl ReservedListen ===

impl ReservedListen {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `[flag, addr]`, for [`ProxyBuilder::args`].
    pub fn flag(&self) -> [String; 2] {
        [self.flag.to_owned(), self.addr.to_string()]
    }
}

/// Reserves an address for `--outbound-listen`.
pub fn reserve_outbound() -> ReservedListen {
    ReservedListen {
        flag: "--outbound-listen",
        addr: reserve_port(),
    }
}

/// Reserves an address for `--inbound-listen`.
pub fn reserve_inbound() -> ReservedListen {
    ReservedListen {
        flag: "--inbound-listen",
        addr: reserve_port(),
    }
}

/// A free `127.0.0.1` port below the ephemeral range, never the same one twice in a process.
///
/// # Panics
/// If no port can be bound after many tries.
pub fn reserve_port() -> SocketAddr {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(low..ephemeral_low);
        if handed_out.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            handed_out.push(port);
            return addr;
        }
    }
    panic!("no free 127.0.0.1 port in {low}..{ephemeral_low}");
}
