//! The relay-to-relay hop: a webhook that reached this relay for a tunnel
//! held on another is sent on to that relay's `/t/<name>/...` over HTTP/2
//! (cleartext, prior knowledge: one multiplexed connection per peer, with
//! per-stream flow control, so a 25 MiB body streams in bounded memory and
//! a slow request never delays another). The peer's answer, whatever it is
//! (the app's, or the peer's own 413/502/504/202), streams back unchanged.
//!
//! The hop carries the cluster secret in [`HDR_CLUSTER_SECRET`] and the
//! original sender's address in [`HDR_CLUSTER_FROM`]. A relay trusts the
//! latter only when the former matches (constant-time), and strips both
//! from every request either way, so a sender cannot pose as a hop.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::tunnel::protocol::strip_hop_by_hop;
use crate::tunnel::{Body, BoxError};

/// The cluster secret, on a hop.
pub const HDR_CLUSTER_SECRET: &str = "whtunnel-cluster-secret";
/// The original sender's socket address, on a hop.
pub const HDR_CLUSTER_FROM: &str = "whtunnel-cluster-from";

/// A hop's body: small ones read first (so a failed hop can still hold
/// them), larger ones streamed as they arrive.
pub type HopBody = Either<Full<Bytes>, Incoming>;

/// Why a hop got no answer from the peer.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// The peer could not be reached at all: nothing was sent.
    #[error("cannot reach relay {addr}: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The peer was reached but the exchange broke off.
    #[error("the hop to relay {addr} failed: {reason}")]
    Broken {
        /// The peer's address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// No answer head within the deadline.
    #[error("relay {0} did not answer in time")]
    Timeout(String),
}

/// Sends hops to peers and recognises hops from them.
#[derive(Clone)]
pub struct Hop {
    client: Client<HttpConnector, HopBody>,
    secret: HeaderValue,
    secret_bytes: Vec<u8>,
}

impl Hop {
    /// A hop client authenticated with `secret`.
    pub fn new(secret: &str) -> Result<Hop, String> {
        let mut value = HeaderValue::from_str(secret)
            .map_err(|_| "the cluster secret must be printable ASCII".to_string())?;
        value.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .http2_adaptive_window(true)
            .build(connector);
        Ok(Hop {
            client,
            secret: value,
            secret_bytes: secret.as_bytes().to_vec(),
        })
    }

    /// Whether `headers` carry the cluster secret (they are left as they
    /// are; [`accept`](Self::accept) strips them later).
    pub fn is_hop(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        headers
            .get(HDR_CLUSTER_SECRET)
            .is_some_and(|s| bool::from(s.as_bytes().ct_eq(&self.secret_bytes)))
    }

    /// Removes the hop headers from `headers`; returns the original sender
    /// when they carried the right secret.
    pub fn accept(&self, headers: &mut HeaderMap) -> Option<SocketAddr> {
        use subtle::ConstantTimeEq;
        let secret = headers.remove(HDR_CLUSTER_SECRET);
        let from = headers.remove(HDR_CLUSTER_FROM);
        let ok = secret.is_some_and(|s| bool::from(s.as_bytes().ct_eq(&self.secret_bytes)));
        if !ok {
            return None;
        }
        from.and_then(|f| f.to_str().ok()?.parse().ok())
    }

    /// Sends `parts` + `body` to the relay at `addr` (a base URL) and
    /// returns its answer head within `timeout`; the answer's body streams.
    pub async fn send(
        &self,
        addr: &str,
        from: SocketAddr,
        mut parts: http::request::Parts,
        body: HopBody,
        timeout: Duration,
    ) -> Result<Response<Body>, HopError> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: http::Uri = format!("{}{path}", addr.trim_end_matches('/'))
            .parse()
            .map_err(|e| HopError::Unreachable {
                addr: addr.to_string(),
                reason: format!("bad address: {e}"),
            })?;
        // Connection-specific headers are not allowed in HTTP/2.
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(HDR_CLUSTER_SECRET, self.secret.clone());
        if let Ok(v) = HeaderValue::from_str(&from.to_string()) {
            parts.headers.insert(HDR_CLUSTER_FROM, v);
        }
        parts.uri = uri;
        parts.version = http::Version::HTTP_2;
        let req = Request::from_parts(parts, body);
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(HopError::Timeout(addr.to_string())),
            Ok(Err(e)) if e.is_connect() => Err(HopError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(HopError::Broken {
                addr: addr.to_string(),
                reason: e.to_string(),
            }),
            Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
        }
    }
}
