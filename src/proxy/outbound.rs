//! Outbound: the app's own calls. The span is a CLIENT span; the stack is [`super::stack`]
//! with [`super::Direction::Outbound`].
//!
//! On a connection iptables redirected to us, the original destination wins (transparent
//! mode). Otherwise each request names its destination: an absolute-form URI (the app uses us
//! as its `http_proxy`) or, for origin-form, the `Host` header (explicit mode).

use std::net::SocketAddr;

use super::Target;

/// Where an outbound connection's requests go. `own` is the outbound listener's address, used to
/// refuse requests that would loop back into it.
pub fn target(orig_dst: Option<SocketAddr>, own: SocketAddr) -> Target {
    match orig_dst {
        Some(dst) if dst != own => Target::fixed(dst),
        _ => Target::FromRequest { own },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirected_connection_goes_to_its_original_destination() {
        let own: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        let dst: SocketAddr = "10.0.0.9:80".parse().unwrap();
        assert_eq!(target(Some(dst), own).addr(), Some(dst));
        assert!(matches!(target(None, own), Target::FromRequest { .. }));
    }
}
