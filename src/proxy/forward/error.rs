//! What can go wrong while forwarding, and the answer each failure gets: the status, the gRPC
//! status, a pre-built body, and a bounded label (`error_type`) for spans and metrics.
//!
//! Failures are told apart by whose fault they are. The upstream's (refused, timed out, failed
//! before its response headers) are 502/504; the client's (ambiguous framing, a request body that
//! broke off) are 400 and are never counted against the app; the proxy's own refusals (a loop
//! into itself, no destination, a method it does not forward there) say so.

use std::{io, sync::Arc, time::Duration};

use http::{uri::Authority, StatusCode};

/// What went wrong while forwarding. Cheap to clone: it rides in a response extension.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("connection to {addr} refused")]
    Refused {
        addr: Authority,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("no connection to {addr} within {after:?}")]
    ConnectTimeout { addr: Authority, after: Duration },
    #[error("connection to {addr} failed")]
    Connect {
        addr: Authority,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("{addr} does not resolve")]
    Resolve {
        addr: Authority,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("no response headers from {addr} within {after:?} of the request's end")]
    Timeout { addr: Authority, after: Duration },
    #[error("upstream {addr} failed before its response headers")]
    Upstream {
        addr: Authority,
        /// hyper's error (HTTP/1) or h2's (HTTP/2).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("the client's request body failed")]
    ClientBody {
        #[source]
        source: Option<Arc<hyper::Error>>,
    },
    #[error("ambiguous request framing: {0}")]
    Framing(&'static str),
    #[error("the request names no destination (absolute-form URI or Host header)")]
    NoDestination,
    #[error("only http:// is proxied; use CONNECT for TLS")]
    UnsupportedScheme,
    #[error("{0} is not forwarded on this listener")]
    MethodNotAllowed(&'static str),
    #[error("the request would loop back into the proxy ({addr})")]
    Loop { addr: Authority },
}

/// [`ForwardError`]'s variants without their data: a bounded label for spans and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardErrorKind {
    Refused,
    ConnectTimeout,
    Connect,
    Resolve,
    Timeout,
    Upstream,
    ClientBody,
    Framing,
    NoDestination,
    UnsupportedScheme,
    MethodNotAllowed,
    Loop,
}

// === impl ForwardErrorKind ===

impl ForwardErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardErrorKind::Refused => "connection_refused",
            ForwardErrorKind::ConnectTimeout => "connect_timeout",
            ForwardErrorKind::Connect => "connect_error",
            ForwardErrorKind::Resolve => "resolve_error",
            ForwardErrorKind::Timeout => "timeout",
            ForwardErrorKind::Upstream => "upstream_error",
            ForwardErrorKind::ClientBody => "client_body_error",
            ForwardErrorKind::Framing => "bad_framing",
            ForwardErrorKind::NoDestination => "no_destination",
            ForwardErrorKind::UnsupportedScheme => "unsupported_scheme",
            ForwardErrorKind::MethodNotAllowed => "method_not_allowed",
            ForwardErrorKind::Loop => "loop",
        }
    }

    /// The client caused it: the upstream never saw a request it could answer.
    pub fn is_client_fault(self) -> bool {
        matches!(
            self,
            ForwardErrorKind::ClientBody
                | ForwardErrorKind::Framing
                | ForwardErrorKind::NoDestination
                | ForwardErrorKind::UnsupportedScheme
                | ForwardErrorKind::MethodNotAllowed
        )
    }
}

// === impl ForwardError ===

impl ForwardError {
    pub fn kind(&self) -> ForwardErrorKind {
        match self {
            ForwardError::Refused { .. } => ForwardErrorKind::Refused,
            ForwardError::ConnectTimeout { .. } => ForwardErrorKind::ConnectTimeout,
            ForwardError::Connect { .. } => ForwardErrorKind::Connect,
            ForwardError::Resolve { .. } => ForwardErrorKind::Resolve,
            ForwardError::Timeout { .. } => ForwardErrorKind::Timeout,
            ForwardError::Upstream { .. } => ForwardErrorKind::Upstream,
            ForwardError::ClientBody { .. } => ForwardErrorKind::ClientBody,
            ForwardError::Framing(_) => ForwardErrorKind::Framing,
            ForwardError::NoDestination => ForwardErrorKind::NoDestination,
            ForwardError::UnsupportedScheme => ForwardErrorKind::UnsupportedScheme,
            ForwardError::MethodNotAllowed(_) => ForwardErrorKind::MethodNotAllowed,
            ForwardError::Loop { .. } => ForwardErrorKind::Loop,
        }
    }

    /// The answer the client gets.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ForwardErrorKind::Refused
            | ForwardErrorKind::Connect
            | ForwardErrorKind::Resolve
            | ForwardErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ForwardErrorKind::ConnectTimeout | ForwardErrorKind::Timeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ForwardErrorKind::ClientBody
            | ForwardErrorKind::Framing
            | ForwardErrorKind::NoDestination
            | ForwardErrorKind::UnsupportedScheme => StatusCode::BAD_REQUEST,
            ForwardErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ForwardErrorKind::Loop => StatusCode::LOOP_DETECTED,
        }
    }

    /// The gRPC status for gRPC clients: UNAVAILABLE, DEADLINE_EXCEEDED for timeouts,
    /// INVALID_ARGUMENT for the client's own faults.
    pub(super) fn grpc_status(&self) -> &'static str {
        match self.kind() {
            ForwardErrorKind::ConnectTimeout | ForwardErrorKind::Timeout => "4",
            k if k.is_client_fault() => "3",
            _ => "14",
        }
    }

    /// Pre-built bodies: no formatting on the error path either.
    pub(super) fn body(&self) -> &'static [u8] {
        match self.kind() {
            ForwardErrorKind::Refused => b"tracemesh: upstream connection refused\n",
            ForwardErrorKind::ConnectTimeout => b"tracemesh: upstream connect timed out\n",
            ForwardErrorKind::Connect => b"tracemesh: upstream connection failed\n",
            ForwardErrorKind::Resolve => b"tracemesh: upstream name does not resolve\n",
            ForwardErrorKind::Timeout => b"tracemesh: upstream response timed out\n",
            ForwardErrorKind::Upstream => b"tracemesh: upstream failed before responding\n",
            ForwardErrorKind::ClientBody => b"tracemesh: malformed or incomplete request body\n",
            ForwardErrorKind::Framing => b"tracemesh: ambiguous request framing\n",
            ForwardErrorKind::NoDestination => b"tracemesh: request names no destination\n",
            ForwardErrorKind::UnsupportedScheme => b"tracemesh: only http:// is proxied\n",
            ForwardErrorKind::MethodNotAllowed => b"tracemesh: method not forwarded here\n",
            ForwardErrorKind::Loop => b"tracemesh: request would loop into the proxy\n",
        }
    }

    /// Classifies a failed TCP connect.
    pub(super) fn from_connect(addr: Authority, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ForwardError::Refused {
                addr,
                source: Arc::new(e),
            },
            _ => ForwardError::Connect {
                addr,
                source: Arc::new(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_by_whose_fault_they_are() {
        let addr: Authority = "127.0.0.1:1".parse().unwrap();
        let refused = ForwardError::from_connect(
            addr.clone(),
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused.to_string(), "connection to 127.0.0.1:1 refused");
        let timeout = ForwardError::Timeout {
            addr: addr.clone(),
            after: Duration::from_secs(1),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.grpc_status(), "4");
        let body = ForwardError::ClientBody { source: None };
        assert_eq!(body.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body.kind().as_str(), "client_body_error");
        assert_eq!(body.grpc_status(), "3");
        assert_eq!(
            ForwardError::Loop { addr }.status(),
            StatusCode::LOOP_DETECTED
        );
    }
}
