//! Where a request goes, and the one check every destination passes before a connection is
//! opened: it must not be this proxy.
//!
//! A connection's [`Target`] is resolved once: a fixed address (the app, or a redirected
//! connection's original destination) or, for explicit-mode outbound only, whatever each request
//! names. A request-named destination is resolved to socket addresses at connect time, and the
//! loop check runs on those addresses, never on the spelling: `127.1`, `0.0.0.0`,
//! `[::ffff:127.0.0.1]`, `localhost.` and any name that resolves to a loopback or local address
//! are the same place. [`SelfAddrs`] is that place: the proxy's listener ports on any loopback,
//! unspecified or local-interface address.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http::{header, uri::Authority, Method, Request};

use super::ForwardError;

/// Where a connection's requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Every request to one address: the app (inbound), or a redirected connection's original
    /// destination (outbound, transparent mode).
    Fixed { addr: SocketAddr },
    /// Each request names its destination: absolute-form URI or `CONNECT` target, else `Host`
    /// (outbound, explicit mode only).
    FromRequest,
    /// Nowhere (inbound with no app address on a connection that was not redirected).
    Nowhere,
}

/// One request's destination, before name resolution.
#[derive(Clone, Debug)]
pub enum Destination {
    Addr(SocketAddr),
    Name(Authority),
}

// === impl Target ===

impl Target {
    /// The upstream address when it is known for the whole connection.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Target::Fixed { addr } => Some(*addr),
            _ => None,
        }
    }

    /// Where `req` goes.
    ///
    /// # Errors
    /// [`ForwardError::NoDestination`] or [`ForwardError::UnsupportedScheme`].
    pub fn destination<B>(&self, req: &Request<B>) -> Result<Destination, ForwardError> {
        match self {
            Target::Fixed { addr } => Ok(Destination::Addr(*addr)),
            Target::Nowhere => Err(ForwardError::NoDestination),
            Target::FromRequest => {
                // Absolute-form, `CONNECT` and HTTP/2 `:authority` are in the URI; an HTTP/1
                // origin-form request names its destination only in `Host`.
                match req.uri().authority() {
                    Some(a) => {
                        if req.method() != Method::CONNECT
                            && req
                                .uri()
                                .scheme()
                                .is_some_and(|s| *s != http::uri::Scheme::HTTP)
                        {
                            return Err(ForwardError::UnsupportedScheme);
                        }
                        Ok(Destination::Name(a.clone()))
                    }
                    None => {
                        let host = req
                            .headers()
                            .get(header::HOST)
                            .ok_or(ForwardError::NoDestination)?;
                        Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes()))
                            .map(Destination::Name)
                            .map_err(|_| ForwardError::NoDestination)
                    }
                }
            }
        }
    }
}

// === impl Destination ===

impl Destination {
    /// The destination as an authority, for error messages and a missing `Host`.
    pub fn authority(&self) -> Authority {
        match self {
            Destination::Addr(a) => Authority::from_maybe_shared(Bytes::from(a.to_string()))
                .expect("a socket address is a valid authority"),
            Destination::Name(a) => a.clone(),
        }
    }
}

/// The proxy itself, as a destination: its listener ports on any loopback, unspecified or
/// local-interface address. Built once the listeners are bound, so ephemeral ports count.
#[derive(Debug, Clone)]
pub struct SelfAddrs(Arc<SelfInner>);

#[derive(Debug)]
struct SelfInner {
    ports: Vec<u16>,
    local_ips: Vec<IpAddr>,
}

// === impl SelfAddrs ===

impl SelfAddrs {
    /// `ports` are the proxy's listener ports; `local_ips` the addresses of this network
    /// namespace's interfaces (a pod's addresses do not change while it runs).
    pub fn new(ports: impl IntoIterator<Item = u16>, local_ips: Vec<IpAddr>) -> Self {
        let mut ports: Vec<u16> = ports.into_iter().collect();
        ports.sort_unstable();
        ports.dedup();
        let local_ips = local_ips.into_iter().map(|ip| ip.to_canonical()).collect();
        SelfAddrs(Arc::new(SelfInner { ports, local_ips }))
    }

    /// The addresses of this network namespace's interfaces.
    pub fn interface_ips() -> Vec<IpAddr> {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        addrs
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect()
    }

    /// One of the proxy's own ports, whatever the address.
    pub fn is_own_port(&self, port: u16) -> bool {
        self.0.ports.binary_search(&port).is_ok()
    }

    /// Whether connecting to `addr` would reach this proxy.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        if !self.is_own_port(addr.port()) {
            return false;
        }
        let ip = addr.ip().to_canonical();
        ip.is_loopback() || ip.is_unspecified() || self.0.local_ips.contains(&ip)
    }

    /// Resolves `dest` to the addresses to try, refusing any that is this proxy.
    ///
    /// # Errors
    /// [`ForwardError::Loop`] when any resolved address is this proxy (a name that resolves
    /// to both is refused whole), [`ForwardError::Resolve`] when a name does not resolve.
    pub async fn resolve(&self, dest: &Destination) -> Result<Vec<SocketAddr>, ForwardError> {
        let addrs = match dest {
            Destination::Addr(a) => vec![*a],
            Destination::Name(authority) => resolve_name(authority).await?,
        };
        if addrs.iter().any(|a| self.contains(*a)) {
            return Err(ForwardError::Loop {
                addr: dest.authority(),
            });
        }
        Ok(addrs)
    }
}

async fn resolve_name(authority: &Authority) -> Result<Vec<SocketAddr>, ForwardError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip.to_canonical(), port)]);
    }
    // RFC 6761 §6.3: localhost names are loopback, whatever a resolver says.
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    let failed = |source: io::Error| ForwardError::Resolve {
        addr: authority.clone(),
        source: Arc::new(source),
    };
    // getaddrinfo also takes the short and numeric forms (`127.1`, `2130706433`) that Rust's
    // parser does not; it runs on tokio's blocking pool.
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(failed)?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .collect();
    if found.is_empty() {
        return Err(failed(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses",
        )));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> SelfAddrs {
        SelfAddrs::new([4143, 4140, 4191], vec!["10.0.0.7".parse().unwrap()])
    }

    async fn resolves(authority: &str) -> Result<Vec<SocketAddr>, ForwardError> {
        proxy()
            .resolve(&Destination::Name(authority.parse().unwrap()))
            .await
    }

    #[tokio::test]
    async fn every_spelling_of_the_proxy_itself_is_a_loop() {
        for authority in [
            "127.0.0.1:4140",
            "127.1:4140",
            "127.0.0.2:4143",
            "0.0.0.0:4140",
            "[::ffff:127.0.0.1]:4140",
            "[::1]:4191",
            "[::]:4140",
            "localhost:4140",
            "localhost.:4140",
            "LocalHost:4143",
            "api.localhost:4140",
            "10.0.0.7:4140",
            "10.0.0.7:4143",
            "2130706433:4140",
        ] {
            let r = resolves(authority).await;
            assert!(
                matches!(r, Err(ForwardError::Loop { .. })),
                "{authority}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn other_ports_and_other_hosts_are_not_loops() {
        for authority in ["127.0.0.1:8080", "10.0.0.8:4140", "[::ffff:10.0.0.8]:4143"] {
            let r = resolves(authority).await.unwrap();
            assert_eq!(r.len(), 1, "{authority}");
        }
        assert_eq!(
            resolves("[::ffff:10.0.0.8]:4143").await.unwrap()[0],
            "10.0.0.8:4143".parse().unwrap(),
            "IPv4-mapped addresses are canonical"
        );
    }

    #[test]
    fn fixed_addresses_are_checked_by_address() {
        let p = proxy();
        assert!(p.contains("127.0.0.1:4140".parse().unwrap()));
        assert!(p.contains("[::ffff:10.0.0.7]:4191".parse().unwrap()));
        assert!(!p.contains("10.0.0.7:8080".parse().unwrap()));
    }

    #[test]
    fn only_explicit_mode_reads_the_destination_from_the_request() {
        let req = Request::builder()
            .uri("http://10.1.1.1:9099/s.txt")
            .header("host", "10.1.1.1:9099")
            .body(())
            .unwrap();
        let app: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        assert!(matches!(
            Target::Fixed { addr: app }.destination(&req),
            Ok(Destination::Addr(a)) if a == app
        ));
        assert!(matches!(
            Target::Nowhere.destination(&req),
            Err(ForwardError::NoDestination)
        ));
        assert!(matches!(
            Target::FromRequest.destination(&req),
            Ok(Destination::Name(a)) if a == "10.1.1.1:9099"
        ));
        let tls = Request::builder()
            .uri("https://example.com/")
            .body(())
            .unwrap();
        assert!(matches!(
            Target::FromRequest.destination(&tls),
            Err(ForwardError::UnsupportedScheme)
        ));
    }
}
