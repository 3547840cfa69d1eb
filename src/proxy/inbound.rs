//! Inbound: traffic entering the pod, forwarded to the app on loopback. The span is a SERVER
//! span; the stack is [`super::stack`] with [`super::Direction::Inbound`].

use std::net::{Ipv4Addr, SocketAddr};

use super::Target;

/// Where an inbound connection's requests go: the configured app address, else the app on
/// loopback at the port the client originally dialled (transparent mode behind `tracemesh
/// init`). Without either there is nowhere to go, and requests get 400.
pub fn target(app_addr: Option<SocketAddr>, orig_dst: Option<SocketAddr>) -> Target {
    match (app_addr, orig_dst) {
        (Some(app), _) => Target::fixed(app),
        (None, Some(orig)) => Target::fixed(SocketAddr::from((Ipv4Addr::LOCALHOST, orig.port()))),
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
    fn transparent_mode_goes_to_loopback_at_the_original_port() {
        let orig: SocketAddr = "10.0.0.7:9090".parse().unwrap();
        assert_eq!(
            target(None, Some(orig)).addr(),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert!(matches!(target(None, None), Target::Nowhere));
    }
}
