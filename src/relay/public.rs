//! The public side: a webhook request for `/t/<name>/...` is turned into an
//! HTTP/2 request on the agent's link, and the answer streams back.
//!
//! Bodies stream in both directions; nothing here buffers a whole body.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{text, Shared};
use crate::tunnel::protocol::{is_hop_by_hop, split_public_path, RequestMeta, HDR_META};
use crate::tunnel::{Body, BoxError};

/// Forwards one public request to the agent holding its tunnel.
pub(crate) async fn forward(
    shared: Arc<Shared>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let received_at = SystemTime::now();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // Every miss reads the same (see `limits::UNKNOWN_TUNNEL`) and counts
    // against the sender's IP.
    let Some((name, app_path)) = split_public_path(path_and_query) else {
        return shared.limiter.unknown_tunnel(remote.ip());
    };
    let name = name.to_string();
    let Some(mut sender) = shared.sender_for(&name) else {
        return shared.limiter.unknown_tunnel(remote.ip());
    };
    let _inflight = match shared.limiter.check_tunnel(&name, remote.ip()) {
        Ok(slot) => slot,
        Err(too_many) => return *too_many,
    };
    let max_body = shared.config.max_body;
    if let Some(len) = declared_length(req.headers()) {
        if len > max_body {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("whtunnel: request body of {len} bytes is over this relay's limit of {max_body} bytes"),
            );
        }
    }

    let (parts, body) = req.into_parts();
    let timeout = shared.config.response_timeout;
    // The agent gives up a little earlier so it records the 504 itself.
    let agent_timeout = timeout.saturating_sub((timeout / 10).min(Duration::from_millis(500)));
    let mut headers = parts.headers;
    let hop_headers = strip_hop_by_hop(&mut headers);
    let meta = RequestMeta {
        remote_addr: Some(remote.to_string()),
        proto: shared.scheme.to_string(),
        host: headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string())),
        received_at_ms: received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        timeout_ms: agent_timeout.as_millis() as u64,
        hop_headers,
        event_id: None,
        attempt: None,
    };
    // HTTP/2 carries the authority in :authority; the original Host travels
    // in the metadata.
    headers.remove(header::HOST);
    headers.insert(
        HeaderName::from_static(HDR_META),
        meta.encode()
            .parse()
            .expect("JSON metadata is a valid header value"),
    );

    let over_limit = Arc::new(AtomicBool::new(false));
    let body = CappedBody {
        inner: body,
        remaining: max_body,
        over_limit: over_limit.clone(),
    };
    // Abuse limit: a body trickling in too slowly is cut off (408), and one
    // that breaks on the sender's side is noticed (400).
    let (body, body_verdict) = shared.limiter.watch_body(body);
    let mut out = Request::new(body.boxed_unsync());
    *out.method_mut() = parts.method;
    *out.uri_mut() = match format!("http://tunnel{app_path}").parse() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "whtunnel: malformed request path"),
    };
    *out.headers_mut() = headers;

    let answer = tokio::time::timeout(timeout, sender.send_request(out)).await;
    if over_limit.load(Ordering::Acquire) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("whtunnel: request body is over this relay's limit of {max_body} bytes"),
        );
    }
    if let Some(answer) = shared.limiter.body_answer(&body_verdict) {
        return answer;
    }
    match answer {
        Ok(Ok(resp)) => resp.map(|b| b.map_err(BoxError::from).boxed_unsync()),
        Ok(Err(e)) => {
            tracing::info!(tunnel = %name, "exchange failed on the agent link: {e}");
            text(
                StatusCode::BAD_GATEWAY,
                "whtunnel: the agent's connection dropped while handling this request",
            )
        }
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "whtunnel: the app did not answer within {}s",
                timeout.as_secs_f32()
            ),
        ),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Removes hop-by-hop headers, and every header the Connection header names,
/// returning them (lossily as text) for the capture.
fn strip_hop_by_hop(headers: &mut HeaderMap) -> Vec<(String, String)> {
    let mut named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    named.extend(
        headers
            .keys()
            .filter(|k| is_hop_by_hop(k.as_str()))
            .cloned(),
    );
    let mut removed = Vec::new();
    for name in named {
        if let http::header::Entry::Occupied(e) = headers.entry(&name) {
            let (k, values) = e.remove_entry_mult();
            for v in values {
                removed.push((
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
        }
    }
    removed
}

/// Passes a body through until it exceeds the relay's limit, then fails it
/// and raises a flag, so the exchange is answered 413 instead of with
/// whatever the aborted stream produced.
struct CappedBody {
    inner: Incoming,
    remaining: u64,
    over_limit: Arc<AtomicBool>,
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.over_limit.store(true, Ordering::Release);
                        return Poll::Ready(Some(
                            Err("request body over the relay's limit".into()),
                        ));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-custom-hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-custom-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("x-dup", "a".parse().unwrap());
        h.append("x-dup", "b".parse().unwrap());
        let removed = strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-dup"]);
        assert_eq!(h.get_all("x-dup").iter().count(), 2);
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(removed.contains(&("x-custom-hop".into(), "1".into())));
    }
}
