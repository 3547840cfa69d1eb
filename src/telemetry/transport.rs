//! OTLP transport: one encoded `ExportTraceServiceRequest` to the collector, over OTLP/HTTP
//! (`POST` of `application/x-protobuf`, HTTP/1.1) or OTLP/gRPC (the unary
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` call over h2c), on one
//! connection kept open between exports and opened again after any failure.
//!
//! Success is a 2xx (HTTP) or `grpc-status: 0` (gRPC). Anything else, a refused connection
//! included, is an error that the export task counts; the caller bounds each call with the
//! export timeout. Only `http://` endpoints are supported (no TLS to the collector).
//!
//! Spec: <https://opentelemetry.io/docs/specs/otlp/#otlphttp> and `#otlpgrpc`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::OtlpProtocol;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why an export did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connecting to the collector at {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the collector: {0}")]
    Http(#[from] hyper::Error),
    #[error("the collector answered HTTP {0}")]
    Status(StatusCode),
    #[error("the collector answered grpc-status {code} {message}")]
    Grpc { code: String, message: String },
}

/// Why an endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("not a URL: {0}")]
    Invalid(#[from] http::uri::InvalidUri),
    #[error("only http:// endpoints are supported (no TLS to the collector)")]
    Scheme,
    #[error("the endpoint names no host")]
    NoHost,
}

enum Conn {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A client for one collector endpoint.
pub struct OtlpClient {
    protocol: OtlpProtocol,
    authority: http::uri::Authority,
    path: http::uri::PathAndQuery,
    connect_timeout: Duration,
    conn: Option<Conn>,
}

impl OtlpClient {
    /// `endpoint` is the full URL: for HTTP including `/v1/traces`, for gRPC the origin.
    pub fn new(protocol: OtlpProtocol, endpoint: &str) -> Result<Self, EndpointError> {
        let uri: Uri = endpoint.parse()?;
        if uri.scheme_str() != Some("http") {
            return Err(EndpointError::Scheme);
        }
        let authority = uri.authority().cloned().ok_or(EndpointError::NoHost)?;
        let path = match protocol {
            OtlpProtocol::Grpc => http::uri::PathAndQuery::from_static(GRPC_PATH),
            OtlpProtocol::HttpProtobuf => uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        };
        Ok(OtlpClient {
            protocol,
            authority,
            path,
            connect_timeout: Duration::from_secs(10),
            conn: None,
        })
    }

    /// Sends one encoded request. On any error the connection is dropped, to be opened anew by
    /// the next call.
    /// A kept connection that fails (the collector closed it while idle) is retried once on a
    /// new one.
    pub async fn send(&mut self, message: Bytes) -> Result<(), TransportError> {
        let reused = self.conn.is_some();
        let mut result = self.try_send(message.clone()).await;
        if result.is_err() && reused {
            self.conn = None;
            result = self.try_send(message).await;
        }
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn try_send(&mut self, message: Bytes) -> Result<(), TransportError> {
        let ready = match &mut self.conn {
            Some(Conn::Http1(c)) => c.ready().await.is_ok(),
            Some(Conn::Http2(c)) => c.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.conn = Some(self.connect().await?);
        }
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(self.path.clone())
            .build()
            .expect("scheme, authority and path are valid");
        match self.conn.as_mut().expect("connected above") {
            Conn::Http1(c) => {
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(self.path.clone())
                    .header(header::HOST, self.authority.as_str())
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    )
                    .body(Full::new(message))
                    .expect("a valid request");
                let rsp = c.send_request(req).await?;
                let status = rsp.status();
                // Read the body to its end so the connection can carry the next export.
                rsp.into_body().collect().await?;
                if !status.is_success() {
                    return Err(TransportError::Status(status));
                }
                Ok(())
            }
            Conn::Http2(c) => {
                let mut framed = BytesMut::with_capacity(5 + message.len());
                framed.put_u8(0); // not compressed
                framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
                framed.put_slice(&message);
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(uri)
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    )
                    .header(header::TE, HeaderValue::from_static("trailers"))
                    .body(Full::new(framed.freeze()))
                    .expect("a valid request");
                let rsp = c.send_request(req).await?;
                let status = rsp.status();
                let (parts, body) = rsp.into_parts();
                let collected = body.collect().await?;
                if status != StatusCode::OK {
                    return Err(TransportError::Status(status));
                }
                // Trailers, or the headers of a trailers-only response.
                let trailers = collected.trailers().cloned();
                let source = trailers.as_ref().unwrap_or(&parts.headers);
                let get = |name: &str| {
                    source
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let code = get("grpc-status");
                if code != "0" {
                    return Err(TransportError::Grpc {
                        code: if code.is_empty() { "none".into() } else { code },
                        message: get("grpc-message"),
                    });
                }
                Ok(())
            }
        }
    }

    async fn connect(&self) -> Result<Conn, TransportError> {
        let authority = self.authority.as_str();
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let connect_error = |source| TransportError::Connect {
            authority: authority.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        Ok(match self.protocol {
            OtlpProtocol::HttpProtobuf => {
                let (send, conn) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "collector connection closed");
                    }
                });
                Conn::Http1(send)
            }
            OtlpProtocol::Grpc => {
                let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "collector connection closed");
                    }
                });
                Conn::Http2(send)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_with_a_host() {
        assert!(OtlpClient::new(OtlpProtocol::Grpc, "http://localhost:4317").is_ok());
        assert!(matches!(
            OtlpClient::new(OtlpProtocol::Grpc, "https://collector:4317"),
            Err(EndpointError::Scheme)
        ));
        assert!(OtlpClient::new(OtlpProtocol::HttpProtobuf, "not a url").is_err());
        let c = OtlpClient::new(OtlpProtocol::HttpProtobuf, "http://c:4318/v1/traces").unwrap();
        assert_eq!(c.path.as_str(), "/v1/traces");
        assert_eq!(c.authority.as_str(), "c:4318");
    }
}
