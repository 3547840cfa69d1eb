//! Header hygiene at the edges of the proxy: the request's framing is checked and its
//! hop-by-hop headers are removed before any other layer sees it ([`Sanitize`], the outermost
//! layer, so that the span layer injects its context *after* the strip and a client's
//! `Connection: traceparent` cannot remove it), the request is put in the form its upstream
//! connection expects ([`prepare`]), and the response's hop-by-hop headers go too.
//!
//! `Host` (HTTP/1) and `:authority` (HTTP/2) reach the upstream as the client sent them; only an
//! absolute-form HTTP/1 request has its `Host` replaced by the target's authority, as RFC 9112
//! §3.2.2 requires of a proxy. HTTP/1 framing that hyper accepts but a proxy must not pass on
//! (a transfer coding other than a lone `chunked`, which could not be re-encoded faithfully) is
//! refused with 400 (RFC 9112 §6.1).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    uri::{Authority, PathAndQuery},
    Method, Request, Uri, Version,
};

use super::ForwardError;
use crate::proxy::conn::Activity;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), in the order of
/// [`HopByHop`]'s bits.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Checks framing and strips hop-by-hop headers from every request before the layers below
/// see it (see the module docs). A framing error rides to the forwarder in an extension, so
/// the answer (400) passes through the span and RED layers like any other.
///
/// On HTTP/1, `activity` says whether the head just parsed carried both `Content-Length` and
/// `Transfer-Encoding` (found by the connection's `HeadScan`, since hyper resolves it
/// silently): that request is refused the same way.
#[derive(Clone)]
pub struct Sanitize<S> {
    inner: S,
    activity: Option<Arc<Activity>>,
}

impl<S> Sanitize<S> {
    pub fn new(inner: S, activity: Option<Arc<Activity>>) -> Self {
        Sanitize { inner, activity }
    }
}

// === impl Sanitize ===

impl<S, B> tower::Service<Request<B>> for Sanitize<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let present = HopByHop::scan(req.headers());
        let http1 = req.version() < Version::HTTP_2;
        if http1 {
            let ambiguous = self.activity.as_ref().is_some_and(|a| a.take_ambiguous());
            let framing = if ambiguous {
                Err(ForwardError::Framing(
                    "both Content-Length and Transfer-Encoding",
                ))
            } else if present.has(TRANSFER_ENCODING_BIT) {
                check_framing(req.headers())
            } else {
                Ok(())
            };
            if let Err(e) = framing {
                req.extensions_mut().insert(e);
            }
        }
        let upgrade = http1 && present.has(UPGRADE_BIT) && wants_upgrade(req.headers());
        strip_present(req.headers_mut(), upgrade, present);
        self.inner.call(req)
    }
}

/// hyper has already refused conflicting `Content-Length`s, a coding that does not end in
/// `chunked` and `Transfer-Encoding` on HTTP/1.0; what is left for a proxy to refuse is any
/// coding but a lone `chunked`.
fn check_framing(headers: &HeaderMap) -> Result<(), ForwardError> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => Ok(()),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ForwardError::Framing("transfer coding other than chunked")),
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names. `TE: trailers` is
/// kept: gRPC requires it end to end. `keep_upgrade` keeps `Connection: upgrade` + `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_present(headers, keep_upgrade, HopByHop::scan(headers));
}

/// Bits of [`HopByHop`]: the index in [`HOP_BY_HOP`], and `TE` after them.
const CONNECTION_BIT: u8 = 1 << 0;
const TRANSFER_ENCODING_BIT: u8 = 1 << 4;
const UPGRADE_BIT: u8 = 1 << 5;
const TE_BIT: u8 = 1 << HOP_BY_HOP.len();

/// Which of the hop-by-hop headers and `TE` a message carries, from one pass over its names.
///
/// Most messages carry none of them, and a lookup or `remove` of a missing name still hashes
/// it: the six removes and the `TE` lookup this first replaced were 2.4k instructions per
/// proxied request (callgrind, BENCHMARKS.md). It also answers the framing and upgrade checks,
/// which were lookups of their own. The names are matched as strings (a length switch, then one
/// compare): comparing each name with six `HeaderName`s in turn was 0.9k per request.
#[derive(Clone, Copy)]
struct HopByHop(u8);

impl HopByHop {
    fn scan(headers: &HeaderMap) -> Self {
        let mut bits = 0u8;
        for name in headers.keys() {
            bits |= match name.as_str() {
                "connection" => CONNECTION_BIT,
                "keep-alive" => 1 << 1,
                "proxy-connection" => 1 << 2,
                "proxy-authorization" => 1 << 3,
                "transfer-encoding" => TRANSFER_ENCODING_BIT,
                "upgrade" => UPGRADE_BIT,
                "te" => TE_BIT,
                _ => 0,
            };
        }
        HopByHop(bits)
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

fn strip_present(headers: &mut HeaderMap, keep_upgrade: bool, present: HopByHop) {
    if present.0 == 0 {
        return;
    }
    if present.has(CONNECTION_BIT) {
        nominated_by_connection(headers, keep_upgrade);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if !present.has(1 << i)
            || keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE)
        {
            continue;
        }
        headers.remove(name);
    }
    if present.has(TE_BIT) {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
}

/// Removes the headers that `Connection` names (but `TE`, which [`strip_hop_by_hop`] judges,
/// and `Upgrade` when upgrading).
fn nominated_by_connection(headers: &mut HeaderMap, keep_upgrade: bool) {
    let nominated = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().contains(&b',') || !is_standard_connection_token(v.as_bytes()));
    if !nominated {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for name in listed {
        // `TE: trailers` is end to end for gRPC; a nominated TE goes below like any TE.
        if name != header::TE {
            headers.remove(name);
        }
    }
}

fn is_standard_connection_token(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// `Connection: upgrade` with an `Upgrade` header: a WebSocket-style switch.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Puts `req` in the form its upstream connection sends. HTTP/1: origin-form target, `Host` as
/// the client sent it (the target's authority for an absolute-form request or when absent),
/// HTTP/1.1. HTTP/2: untouched, `:authority` included.
pub fn prepare<B>(req: &mut Request<B>, fallback_host: impl FnOnce() -> Authority) {
    if req.version() == Version::HTTP_2 {
        return;
    }
    let absolute = req.method() != Method::CONNECT && req.uri().authority().is_some();
    if absolute || !req.headers().contains_key(header::HOST) {
        let authority = match req.uri().authority() {
            Some(a) if absolute => a.clone(),
            _ => fallback_host(),
        };
        // Host is host and port only: userinfo in an absolute-form URI never travels on.
        let host = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h);
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    if absolute {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hop_by_hop_name_sets_its_own_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            assert_eq!(HopByHop::scan(&h).0, 1 << i, "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert_eq!(HopByHop::scan(&h).0, TE_BIT);
        h.insert("x-keep-alive", HeaderValue::from_static("1"));
        h.remove(header::TE);
        assert_eq!(HopByHop::scan(&h).0, 0);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("traceparent", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["te", "traceparent"]);
    }

    #[test]
    fn a_te_other_than_trailers_goes_and_clean_headers_stay_as_they_were() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic eDp5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);

        let mut clean = HeaderMap::new();
        clean.insert(header::HOST, "a".parse().unwrap());
        clean.append("x-many", "1".parse().unwrap());
        clean.append("x-many", "2".parse().unwrap());
        let before = clean.clone();
        strip_hop_by_hop(&mut clean, false);
        assert_eq!(clean, before);
    }

    #[test]
    fn every_connection_line_counts() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(header::CONNECTION, "traceparent".parse().unwrap());
        h.insert("traceparent", "from the client".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn upgrade_headers_survive_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "Upgrade");
    }

    #[test]
    fn only_a_lone_chunked_coding_is_accepted() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            check_framing(&h)
        };
        assert!(te(&[]).is_ok());
        assert!(te(&["chunked"]).is_ok());
        assert!(te(&[" Chunked "]).is_ok());
        assert!(te(&["gzip, chunked"]).is_err());
        assert!(te(&["chunked", "chunked"]).is_err());
        assert!(te(&["identity"]).is_err());
    }

    #[test]
    fn host_is_kept_except_for_absolute_form() {
        let mut origin = Request::builder()
            .uri("/x?y=1")
            .header("host", "orders.shop.svc")
            .body(())
            .unwrap();
        prepare(&mut origin, || "10.0.0.7:8080".parse().unwrap());
        assert_eq!(origin.headers()["host"], "orders.shop.svc");
        assert_eq!(origin.uri(), "/x?y=1");

        let mut absolute = Request::builder()
            .uri("http://inventory:8080/items")
            .header("host", "ignored")
            .body(())
            .unwrap();
        prepare(&mut absolute, || unreachable!());
        assert_eq!(absolute.headers()["host"], "inventory:8080");
        assert_eq!(absolute.uri(), "/items");

        let mut userinfo = Request::builder()
            .uri("http://user:pw@inventory:8080/items")
            .body(())
            .unwrap();
        prepare(&mut userinfo, || unreachable!());
        assert_eq!(userinfo.headers()["host"], "inventory:8080");

        let mut http10 = Request::builder()
            .version(Version::HTTP_10)
            .uri("/")
            .body(())
            .unwrap();
        prepare(&mut http10, || "10.0.0.7:8080".parse().unwrap());
        assert_eq!(http10.headers()["host"], "10.0.0.7:8080");
        assert_eq!(http10.version(), Version::HTTP_11);

        let mut h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://orders.shop.svc/x")
            .body(())
            .unwrap();
        prepare(&mut h2, || unreachable!());
        assert_eq!(h2.uri(), "http://orders.shop.svc/x");
    }
}
