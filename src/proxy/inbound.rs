//! Inbound: traffic entering the pod, forwarded to the app. The span is a SERVER span; the
//! stack is [`super::stack`] with [`super::Direction::Inbound`].
//!
//! The destination is never taken from the request. Behind `tracemesh init` it is the
//! connection's original destination, the pod's own address and the port the client dialled, so
//! a port the app bound only to loopback stays private to the pod (as in Istio since 1.10);
//! `--app-addr` overrides it. A connection whose original destination is one of the proxy's own
//! ports is refused before this is asked (see `serve_connection`).

use std::net::SocketAddr;

use super::Target;

/// Where an inbound connection's requests go: the configured app address, else the original
/// destination. Without either there is nowhere to go, and requests get 400.
pub fn target(app_addr: Option<SocketAddr>, orig_dst: Option<SocketAddr>) -> Target {
    match (app_addr, orig_dst) {
        (Some(app), _) => Target::Fixed { addr: app },
        (None, Some(orig)) => Target::Fixed { addr: orig },
        (None, None) => Target::Nowhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_app_address_wins_over_original_destination() {
        let app: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let orig: SocketAddr = "10.0.0.7:9090".parse().unwrap();
        assert_eq!(target(Some(app), Some(orig)).addr(), Some(app));
    }

    #[test]
    fn transparent_mode_goes_to_the_pod_address_the_client_dialled() {
        let orig: SocketAddr = "10.0.0.7:9090".parse().unwrap();
        assert_eq!(target(None, Some(orig)).addr(), Some(orig));
        assert!(matches!(target(None, None), Target::Nowhere));
    }
}
