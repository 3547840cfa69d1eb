//! Outbound: the app's own calls. The span is a CLIENT span; the stack is [`super::stack`]
//! with [`super::Direction::Outbound`].
//!
//! On a connection iptables redirected to us, the original destination wins (transparent
//! mode). Otherwise each request names its destination: an absolute-form URI or `CONNECT` (the
//! app uses us as its `http_proxy`) or, for origin-form, the `Host` header (explicit mode).
//! Either way the destination passes the loop check at connect time.

use std::net::SocketAddr;

use super::Target;

/// Where an outbound connection's requests go.
pub fn target(orig_dst: Option<SocketAddr>) -> Target {
    match orig_dst {
        Some(addr) => Target::Fixed { addr },
        None => Target::FromRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirected_connection_goes_to_its_original_destination() {
        let dst: SocketAddr = "10.0.0.9:80".parse().unwrap();
        assert_eq!(target(Some(dst)).addr(), Some(dst));
        assert!(matches!(target(None), Target::FromRequest));
    }
}
