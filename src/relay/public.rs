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
use http::{header, HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use parking_lot::Mutex;

use super::held::{new_event_id, Admit, HeldStore, NewEvent, OfflinePolicy};
use super::limits::MinRateBody;
use super::{retry_later, text, Shared};
use crate::tunnel::body_hash::{self, HashTrailer};
use crate::tunnel::link::LinkClient;
use crate::tunnel::protocol::{
    content_length, split_public_path, strip_hop_by_hop, strip_meta_headers, LinkMeta, MetaError,
    RequestMeta, HDR_EVENT_ID,
};
use crate::tunnel::{Body, BoxError};

/// Headers a sender could use to pose as another address; dropped unless
/// the relay trusts a proxy in front of it (`--trust-forwarded`).
const FORWARDED_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// A live request's body is also kept up to this size, so that if the
/// agent's link drops before it answers, the request can still be held.
const FALLBACK_KEEP: u64 = 1024 * 1024;

/// Bodies with a declared length up to this are read whole before being
/// forwarded (see [`live`]).
const BUFFER_FIRST: u64 = 256 * 1024;

/// Forwards one public request to the agent holding its tunnel, or holds it
/// while that agent is away.
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
    forward_to(shared, remote, req, received_at, name, app_path).await
}

/// Forwards a request that came for `NAME.<domain>`: the whole path and
/// query go to tunnel `name` unchanged.
pub(crate) async fn forward_host(
    shared: Arc<Shared>,
    remote: SocketAddr,
    req: Request<Incoming>,
    name: String,
) -> Response<Body> {
    let received_at = SystemTime::now();
    let app_path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    forward_to(shared, remote, req, received_at, name, app_path).await
}

async fn forward_to(
    shared: Arc<Shared>,
    remote: SocketAddr,
    mut req: Request<Incoming>,
    received_at: SystemTime,
    name: String,
    app_path: String,
) -> Response<Body> {
    // A hop from another relay of the cluster carries the original sender;
    // the hop headers are stripped whoever sent them.
    let mut remote = remote;
    let mut from_peer = false;
    if let Some(cluster) = &shared.cluster {
        if let Some(from) = cluster.hop().accept(req.headers_mut()) {
            remote = from;
            from_peer = true;
        }
    }
    // Past its miss limit, an IP gets 429 for hits as well as misses: a
    // prober learns nothing from which names answer.
    if let Some(slow_down) = shared.limiter.over_miss_limit(remote.ip()) {
        return slow_down;
    }
    let max_body = shared.config.max_body;
    let declared = content_length(req.headers());
    if declared.is_some_and(|len| len > max_body) {
        return too_large(max_body);
    }
    let sender = shared.sender_for(&name);
    // Strict order in a cluster: while the tunnel's backlog in JetStream
    // drains, new traffic queues behind it, as on one relay. This relay
    // holds the agent, so every relay's traffic for it comes through here.
    // A backlog JetStream cannot count may be there: the sender is asked
    // to retry (503) rather than overtake events the relay could not see.
    if let (Some(_), Some(cluster)) = (&sender, shared.cluster.clone()) {
        let strict = shared.tunnels.lock().get(&name).is_some_and(|s| s.drain.1);
        let backlog = if strict {
            cluster.held().backlog(&name).await
        } else {
            Some(0)
        };
        let Some(backlog) = backlog else {
            return retry_later(
                "whtunnel: this tunnel delivers in strict order and the relay cannot see its held events right now; retry later",
                5,
            );
        };
        if backlog > 0 {
            let (parts, body) = req.into_parts();
            let p = match prepare(&shared, remote, received_at, app_path, parts) {
                Ok(p) => p,
                Err(e) => return cannot_forward(&e),
            };
            return cluster_hold(&shared, &cluster, name, remote, p, body, true).await;
        }
    }
    // The registry seam: no agent here, so ask the cluster who holds it.
    // A hop is never sent on again: if its agent left meanwhile, this relay
    // answers as the only one would.
    if sender.is_none() {
        if let Some(cluster) = shared.cluster.clone() {
            if !from_peer {
                if let Some(holder) = cluster.holder(&name).await {
                    return via_peer(&shared, &cluster, &holder, &name, remote, req, declared)
                        .await;
                }
            }
            // No agent anywhere: held in JetStream, as one relay would.
            let (parts, body) = req.into_parts();
            let p = match prepare(&shared, remote, received_at, app_path, parts) {
                Ok(p) => p,
                Err(e) => return cannot_forward(&e),
            };
            return cluster_hold(&shared, &cluster, name, remote, p, body, false).await;
        }
    }
    let known = sender.is_some()
        || shared
            .held
            .as_ref()
            .is_some_and(|h| h.state(&name).is_some());
    if !known {
        return shared.limiter.unknown_tunnel(remote.ip());
    }
    // Rate and in-flight limits apply to held events as to live ones.
    let _inflight = match shared.limiter.check_tunnel(&name, remote.ip()) {
        Ok(slot) => slot,
        Err(too_many) => return *too_many,
    };
    // Prepared before admitting: a refusal must not leave a held slot
    // reserved.
    let (parts, body) = req.into_parts();
    let prepared = match prepare(&shared, remote, received_at, app_path, parts) {
        Ok(p) => p,
        Err(e) => return cannot_forward(&e),
    };
    let admit = match &shared.held {
        Some(held) => held.admit(&name, sender.is_some()),
        None if sender.is_some() => Admit::Live,
        None => Admit::Unknown,
    };
    match (admit, sender) {
        (Admit::Live, Some(sender)) => live(shared, name, sender, prepared, body, declared).await,
        (Admit::Hold, _) => hold(shared, name, remote, prepared, body, declared).await,
        (Admit::Reject, _) => retry_later(
            "whtunnel: the agent for this tunnel is offline; retry later",
            30,
        ),
        (Admit::Full, _) => retry_later(
            "whtunnel: this tunnel's held-event queue is full; retry later",
            60,
        ),
        _ => shared.limiter.unknown_tunnel(remote.ip()),
    }
}

/// Carries a request to the relay that holds its tunnel and returns that
/// relay's answer (see [`crate::cluster::hop`]).
async fn via_peer(
    shared: &Arc<Shared>,
    cluster: &crate::cluster::Cluster,
    holder: &crate::cluster::Holder,
    name: &str,
    remote: SocketAddr,
    req: Request<Incoming>,
    declared: Option<u64>,
) -> Response<Body> {
    use crate::cluster::{HopBody, HopError};
    let _inflight = match shared.limiter.check_tunnel(name, remote.ip()) {
        Ok(slot) => slot,
        Err(too_many) => return *too_many,
    };
    let timeout = shared.config.response_timeout;
    let (parts, body) = req.into_parts();
    // Small bodies (nearly every webhook) are read first, as for a live
    // agent; larger ones stream through, the peer enforcing the limits.
    let mut kept = None;
    let body = if declared.is_some_and(|n| n <= BUFFER_FIRST) {
        let (body, verdict) = shared.limiter.watch_body(body);
        match tokio::time::timeout(timeout, body.collect()).await {
            Ok(Ok(c)) => {
                let bytes = c.to_bytes();
                kept = Some(bytes.clone());
                HopBody::Left(http_body_util::Full::new(bytes))
            }
            Ok(Err(_)) => return unreadable_body(shared, &verdict, false),
            Err(_) => return unreadable_body(shared, &verdict, true),
        }
    } else {
        HopBody::Right(body)
    };
    let held_parts = kept.is_some().then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    // The peer answers 504 itself after `timeout`; its answer gets a moment
    // more to come back.
    let deadline = timeout + Duration::from_secs(5);
    match cluster
        .hop()
        .send(&holder.addr, remote, parts, body, deadline)
        .await
    {
        Ok(resp) => resp,
        Err(e @ HopError::Unreachable { .. }) if kept.is_some() => {
            // The holder died (its entry outlives it by up to the TTL) and
            // nothing was sent: hold the event, as with no agent anywhere.
            tracing::info!(tunnel = %name, "{e}; holding the event");
            let (method, uri, headers) = held_parts.expect("kept with the body");
            let app_path = uri
                .path_and_query()
                .and_then(|p| split_public_path(p.as_str()))
                .map(|(_, rest)| rest)
                .unwrap_or_else(|| "/".into());
            let mut parts = Request::new(()).into_parts().0;
            parts.method = method;
            parts.uri = uri;
            parts.headers = headers;
            let p = match prepare(shared, remote, SystemTime::now(), app_path, parts) {
                Ok(p) => p,
                Err(e) => return cannot_forward(&e),
            };
            let body = kept.expect("checked");
            store_in_cluster(shared, cluster, name.to_string(), p, body).await
        }
        Err(e @ (HopError::Unreachable { .. } | HopError::Broken { .. })) => {
            tracing::info!(tunnel = %name, "{e}");
            text(
                StatusCode::BAD_GATEWAY,
                "whtunnel: the relay holding this tunnel's agent cannot be reached; retry later",
            )
        }
        Err(HopError::Timeout(_)) => text(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "whtunnel: the app did not answer within {}s",
                timeout.as_secs_f32()
            ),
        ),
    }
}

/// Holds a request in the cluster's JetStream stream: no agent is
/// connected anywhere (under the tunnel's offline policy), or it is and
/// asked for strict order while a backlog drains (`behind_backlog`).
async fn cluster_hold(
    shared: &Arc<Shared>,
    cluster: &crate::cluster::Cluster,
    name: String,
    remote: SocketAddr,
    p: Prepared,
    body: Incoming,
    behind_backlog: bool,
) -> Response<Body> {
    let policy = if behind_backlog {
        // Connected: the offline policy does not apply.
        Ok(Some(OfflinePolicy::Hold))
    } else {
        cluster.held().policy(&name).await
    };
    match policy {
        Ok(Some(OfflinePolicy::Hold)) => {}
        Ok(Some(OfflinePolicy::Reject)) => {
            return retry_later(
                "whtunnel: the agent for this tunnel is offline; retry later",
                30,
            )
        }
        Ok(None) => return shared.limiter.unknown_tunnel(remote.ip()),
        Err(e) => {
            tracing::warn!(tunnel = %name, "cannot read the cluster's tunnel names: {e}");
            return retry_later(
                "whtunnel: the relay cannot reach its cluster store; retry later",
                5,
            );
        }
    }
    let _inflight = match shared.limiter.check_tunnel(&name, remote.ip()) {
        Ok(slot) => slot,
        Err(too_many) => return *too_many,
    };
    let max_body = shared.config.max_body;
    let (body, body_verdict) = shared.limiter.watch_body(body);
    let mut draw = shared.hold_budget.draw(remote.ip());
    let read = tokio::time::timeout(
        shared.config.response_timeout,
        read_drawing(body, max_body, &mut draw),
    )
    .await;
    let body = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::TooLarge)) => return too_large(max_body),
        Ok(Err(ReadError::Budget(_))) => {
            return retry_later(
                "whtunnel: the relay is busy storing other events; retry later",
                5,
            )
        }
        Ok(Err(ReadError::Body)) => return unreadable_body(shared, &body_verdict, false),
        Err(_) => return unreadable_body(shared, &body_verdict, true),
    };
    let resp = store_in_cluster(shared, cluster, name, p, body).await;
    drop(draw);
    resp
}

/// Stores one complete event in the cluster, then answers 202.
async fn store_in_cluster(
    shared: &Arc<Shared>,
    cluster: &crate::cluster::Cluster,
    name: String,
    p: Prepared,
    body: Bytes,
) -> Response<Body> {
    let ev = new_event(&name, p, body);
    let event_id = ev.event_id.clone();
    // In a task of its own: a sender that hangs up does not cut a publish
    // short.
    let held = cluster.held().clone();
    let stored = tokio::spawn(async move { held.hold(&ev).await }).await;
    match stored {
        Ok(Ok(())) => {
            let why = if shared.sender_for(&name).is_some() {
                "it is delivered after the events held before it"
            } else {
                "the agent for this tunnel is offline; it is delivered when the agent reconnects"
            };
            let mut resp = text(
                StatusCode::ACCEPTED,
                &format!("whtunnel: event {event_id} is held: {why}"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&event_id) {
                resp.headers_mut().insert(HDR_EVENT_ID, v);
            }
            resp
        }
        Ok(Err(crate::cluster::HoldError::Full)) => retry_later(
            "whtunnel: this tunnel's held-event queue is full; retry later",
            60,
        ),
        Ok(Err(e)) => {
            tracing::warn!(tunnel = %name, "could not hold an event: {e}");
            retry_later(
                "whtunnel: the relay could not store this event; retry later",
                30,
            )
        }
        Err(_) => retry_later(
            "whtunnel: the relay could not store this event; retry later",
            30,
        ),
    }
}

/// The answer when a request body cannot be read whole: the limiter's
/// verdict (too slow, malformed) when it has one, else 408 after the
/// deadline or 400.
fn unreadable_body(
    shared: &Shared,
    verdict: &super::limits::BodyVerdict,
    timed_out: bool,
) -> Response<Body> {
    if let Some(answer) = shared.limiter.body_answer(verdict) {
        return answer;
    }
    if timed_out {
        text(
            StatusCode::REQUEST_TIMEOUT,
            "whtunnel: the request body did not arrive in time",
        )
    } else {
        text(
            StatusCode::BAD_REQUEST,
            "whtunnel: the request body could not be read",
        )
    }
}

fn too_large(max_body: u64) -> Response<Body> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("whtunnel: request body is over this relay's limit of {max_body} bytes"),
    )
}

/// A public request made ready for the tunnel: forwardable headers and the
/// metadata the agent needs. Every request gets an event id, so a request
/// that is held after its first try can be recognised when redelivered.
struct Prepared {
    method: http::Method,
    app_path: String,
    headers: HeaderMap,
    meta: RequestMeta,
}

/// The 400 for a request whose metadata cannot cross the link.
fn cannot_forward(e: &MetaError) -> Response<Body> {
    text(
        StatusCode::BAD_REQUEST,
        &format!("whtunnel: this request cannot be forwarded: {e}"),
    )
}

/// An IP address as a header value, formatted without an intermediate
/// `String`.
pub(super) fn ip_value(ip: std::net::IpAddr) -> http::HeaderValue {
    use std::io::Write as _;
    // The longest IPv6 text is 45 bytes.
    let mut buf = [0u8; 64];
    let mut rest = &mut buf[..];
    let _ = write!(rest, "{ip}");
    let len = 64 - rest.len();
    http::HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

fn prepare(
    shared: &Shared,
    remote: SocketAddr,
    received_at: SystemTime,
    app_path: String,
    parts: http::request::Parts,
) -> Result<Prepared, MetaError> {
    // The agent gives up a little earlier so it records the 504 itself.
    let agent_timeout = super::agent_timeout(shared.config.response_timeout);
    let mut headers = parts.headers;
    let peer = parts.extensions.get::<super::Peer>();
    let hop_headers = strip_hop_by_hop(&mut headers);
    if !shared.config.trust_forwarded {
        // The relay is the edge: what a sender claims about where it came
        // from is dropped, and the relay says it itself (the agent adds
        // X-Forwarded-For from `remote_addr`).
        //
        // Nearly every request carries none of them: one pass over the
        // names instead of a hashed lookup per name.
        if headers
            .keys()
            .any(|k| FORWARDED_HEADERS.contains(&k.as_str()))
        {
            for h in FORWARDED_HEADERS {
                headers.remove(*h);
            }
        }
        let ip = match peer {
            Some(p) if p.addr == remote => p.ip.clone(),
            _ => ip_value(remote.ip()),
        };
        headers.insert(HeaderName::from_static("x-real-ip"), ip);
    }
    let meta = RequestMeta {
        // The hop the agent appends to X-Forwarded-For: the TCP peer (a
        // trusted proxy's own address), whoever the limits counted.
        remote_addr: Some(peer.map_or_else(|| remote.to_string(), |p| p.text.to_string())),
        proto: shared.scheme.into(),
        host: super::request_host(&headers, &parts.uri).map(str::to_string),
        received_at_ms: received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        timeout_ms: agent_timeout.as_millis() as u64,
        hop_headers,
        event_id: Some(new_event_id()),
        attempt: None,
        held_left: None,
        body_blake3: None,
    };
    // HTTP/2 carries the authority in :authority; the original Host travels
    // in the metadata. A sender's own metadata headers are dropped, never
    // trusted.
    headers.remove(header::HOST);
    strip_meta_headers(&mut headers);
    // What cannot cross the link (an over-long Host...) is refused now,
    // before the request is held or sent.
    meta.check()?;
    Ok(Prepared {
        method: parts.method,
        app_path,
        headers,
        meta,
    })
}

/// Builds the HTTP/2 request for the agent on a link that announced
/// `link`; a body ends with the body-hash trailer of
/// [`crate::tunnel::body_hash`]. `None` when the path or the metadata cannot
/// cross (metadata from [`prepare`] always can).
pub(crate) fn tunnel_request(
    method: http::Method,
    app_path: &str,
    mut headers: HeaderMap,
    meta: &RequestMeta,
    link: &LinkMeta,
    body: Body,
) -> Option<Request<Body>> {
    meta.write_headers(link, &mut headers).ok()?;
    // The body-hash proof: in the metadata when the body was read whole
    // (nearly every webhook: no extra frame, and the body still ends with
    // its DATA), else behind a streamed body as a trailer.
    let body = if meta.body_blake3.is_none() && HashTrailer::applies(&body) {
        HashTrailer::new(body).boxed_unsync()
    } else {
        body
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(http::uri::Authority::from_static("tunnel"));
    uri.path_and_query = Some(app_path.parse().ok()?);
    let mut out = Request::new(body);
    *out.method_mut() = method;
    *out.uri_mut() = Uri::from_parts(uri).ok()?;
    *out.headers_mut() = headers;
    Some(out)
}

async fn live(
    shared: Arc<Shared>,
    name: String,
    sender: LinkClient,
    mut p: Prepared,
    body: Incoming,
    declared: Option<u64>,
) -> Response<Body> {
    let max_body = shared.config.max_body;
    let timeout = shared.config.response_timeout;
    let state = Arc::new(BodyState::default());
    // A small body with a declared length (nearly every webhook) is read
    // before forwarding, so that whenever the agent's link fails, even
    // before the body was sent, the request can be held instead of lost.
    // Larger and chunked bodies stream, with the same fallback while short.
    // Abuse limit: a body trickling in too slowly is cut off (408), and one
    // that breaks on the sender's side is noticed (400).
    let (body, body_verdict) = shared
        .limiter
        .watch_body(shared.metrics.count_request(body));
    let body = if declared.is_some_and(|n| n <= BUFFER_FIRST) {
        let read = tokio::time::timeout(timeout, body.collect()).await;
        let bytes = match read {
            Ok(Ok(c)) => c.to_bytes(),
            Ok(Err(_)) => return unreadable_body(&shared, &body_verdict, false),
            Err(_) => return unreadable_body(&shared, &body_verdict, true),
        };
        state.keep(&bytes, bytes.len() as u64);
        state.complete.store(true, Ordering::Release);
        if !bytes.is_empty() {
            p.meta.body_blake3 = Some(body_hash::digest(&bytes));
        }
        http_body_util::Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    } else {
        CappedBody {
            inner: body,
            remaining: max_body,
            read: 0,
            state: state.clone(),
        }
        .boxed_unsync()
    };
    let Some(out) = tunnel_request(
        p.method.clone(),
        &p.app_path,
        p.headers.clone(),
        &p.meta,
        sender.link_meta(),
        body,
    ) else {
        return text(StatusCode::BAD_REQUEST, "whtunnel: malformed request path");
    };
    let answer = tokio::time::timeout(timeout, sender.send(out)).await;
    if state.over_limit.load(Ordering::Acquire) {
        return too_large(max_body);
    }
    if let Some(answer) = shared.limiter.body_answer(&body_verdict) {
        return answer;
    }
    match answer {
        Ok(Ok(resp)) => {
            // Answered: the fallback copy is no longer needed.
            state.drop_kept();
            resp.map(|b| {
                shared
                    .metrics
                    .count_response(b)
                    .map_err(BoxError::from)
                    .boxed_unsync()
            })
        }
        Ok(Err(e)) => {
            tracing::info!(tunnel = %name, "exchange failed on the agent link: {e}");
            // The agent went away mid-request (not just this one exchange
            // failing). If the whole body went by, the request can still be
            // held and delivered when the agent returns.
            let link_gone = sender.is_closed() || e.is_link_failure();
            let body = link_gone.then(|| state.complete_body()).flatten();
            if let Some(body) = body {
                if let Some(resp) = hold_complete(&shared, &name, p, body).await {
                    return resp;
                }
            }
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

/// Holds a request whose slot [`HeldStore::admit`] reserved.
async fn hold(
    shared: Arc<Shared>,
    name: String,
    remote: SocketAddr,
    p: Prepared,
    body: Incoming,
    declared: Option<u64>,
) -> Response<Body> {
    let held = shared.held.clone().expect("admit only holds with a store");
    let max_body = shared.config.max_body;
    // The byte caps (the tunnel's and the relay-wide one) are checked
    // before reading when the length is known: that reserves nothing in
    // memory, only room on disk.
    let reserved = declared.unwrap_or(0);
    if let Err(e) = held.add_bytes(&name, reserved) {
        held.cancel(&name, 0);
        return queue_full(&e);
    }
    let deadline = shared.config.response_timeout;
    let (body, body_verdict) = shared
        .limiter
        .watch_body(shared.metrics.count_request(body));
    // Bodies being held sit in memory until stored: they draw on the
    // relay-wide budget as their bytes arrive, within the sender IP's share.
    let mut draw = shared.hold_budget.draw(remote.ip());
    let read = tokio::time::timeout(deadline, read_drawing(body, max_body, &mut draw)).await;
    let body = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            held.cancel(&name, reserved);
            return match e {
                ReadError::TooLarge => too_large(max_body),
                ReadError::Budget(super::budget::Refused::Busy) => retry_later(
                    "whtunnel: the relay is busy storing other events; retry later",
                    5,
                ),
                ReadError::Budget(super::budget::Refused::IpShare) => retry_later(
                    "whtunnel: this sender has too many event bodies in transit; retry later",
                    5,
                ),
                ReadError::Body => unreadable_body(&shared, &body_verdict, false),
            };
        }
        Err(_) => {
            held.cancel(&name, reserved);
            return unreadable_body(&shared, &body_verdict, true);
        }
    };
    let extra = (body.len() as u64).saturating_sub(reserved);
    if let Err(e) = held.add_bytes(&name, extra) {
        held.cancel(&name, reserved);
        return queue_full(&e);
    }
    drop(draw);
    store_held(&shared, held, name, p, body).await
}

/// The 503 for a byte cap: the tunnel's own, or the relay-wide one.
fn queue_full(e: &super::held::HeldError) -> Response<Body> {
    match e {
        super::held::HeldError::RelayFull => retry_later(
            "whtunnel: the relay's held-event storage is full; retry later",
            60,
        ),
        _ => retry_later(
            "whtunnel: this tunnel's held-event queue is full; retry later",
            60,
        ),
    }
}

enum ReadError {
    TooLarge,
    Budget(super::budget::Refused),
    Body,
}

/// Reads a body to be held, drawing on the memory budget as bytes arrive.
async fn read_drawing<B>(
    mut body: B,
    max_body: u64,
    draw: &mut super::budget::Draw,
) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Body)?;
        if let Ok(data) = frame.into_data() {
            let len = (buf.len() + data.len()) as u64;
            if len > max_body {
                return Err(ReadError::TooLarge);
            }
            draw.cover(len).map_err(ReadError::Budget)?;
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Holds a request that failed on the agent link after its body was read.
async fn hold_complete(
    shared: &Arc<Shared>,
    name: &str,
    p: Prepared,
    body: Bytes,
) -> Option<Response<Body>> {
    if let Some(cluster) = shared.cluster.clone() {
        // Held in JetStream, under the same policy as one relay's store.
        if !matches!(
            cluster.held().policy(name).await,
            Ok(Some(OfflinePolicy::Hold))
        ) {
            return None;
        }
        return Some(store_in_cluster(shared, &cluster, name.to_string(), p, body).await);
    }
    let held = shared.held.clone()?;
    if held.state(name)?.policy == OfflinePolicy::Reject {
        return None;
    }
    held.reserve(name, body.len() as u64).ok()?;
    Some(store_held(shared, held, name.to_string(), p, body).await)
}

/// Stores a reserved event durably, then answers 202. Nothing is
/// acknowledged that is not on disk.
async fn store_held(
    shared: &Arc<Shared>,
    held: Arc<HeldStore>,
    name: String,
    p: Prepared,
    body: Bytes,
) -> Response<Body> {
    let len = body.len() as u64;
    let ev = new_event(&name, p, body);
    let event_id = ev.event_id.clone();
    // Stored and announced in a task of its own: if this request is cancelled
    // meanwhile, the event is still stored and its delivery still started.
    let (h, s, n) = (held.clone(), shared.clone(), name.clone());
    let stored = tokio::spawn(async move {
        let r = tokio::task::spawn_blocking(move || h.insert(&ev)).await;
        if matches!(r, Ok(Ok(()))) {
            super::agents::kick_delivery(&s, &n, None);
        }
        r
    })
    .await
    .unwrap_or_else(Err);
    match stored {
        Ok(Ok(())) => {
            let why = if shared.sender_for(&name).is_some() {
                "it is delivered after the events held before it"
            } else {
                "the agent for this tunnel is offline; it is delivered when the agent reconnects"
            };
            let mut resp = text(
                StatusCode::ACCEPTED,
                &format!("whtunnel: event {event_id} is held: {why}"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&event_id) {
                resp.headers_mut().insert(HDR_EVENT_ID, v);
            }
            resp
        }
        other => {
            held.cancel(&name, len);
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "the store task failed".to_string(),
            };
            tracing::warn!(tunnel = %name, "could not hold an event: {why}");
            retry_later(
                "whtunnel: the relay could not store this event; retry later",
                30,
            )
        }
    }
}

/// What [`CappedBody`] saw, read after the exchange.
struct BodyState {
    over_limit: AtomicBool,
    /// The body's chunks while it is at most [`FALLBACK_KEEP`] bytes;
    /// `None` once it is larger. Chunks are `Bytes` clones: no copy.
    kept: Mutex<Option<Vec<Bytes>>>,
    complete: AtomicBool,
}

impl Default for BodyState {
    fn default() -> Self {
        BodyState {
            over_limit: AtomicBool::new(false),
            // Keeping until the body proves too large.
            kept: Mutex::new(Some(Vec::new())),
            complete: AtomicBool::new(false),
        }
    }
}

impl BodyState {
    fn keep(&self, chunk: &Bytes, total: u64) {
        let mut kept = self.kept.lock();
        if total > FALLBACK_KEEP {
            *kept = None;
        } else if let Some(v) = kept.as_mut() {
            v.push(chunk.clone());
        }
    }

    fn drop_kept(&self) {
        *self.kept.lock() = None;
    }

    /// The whole body, if it was read to the end and kept.
    fn complete_body(&self) -> Option<Bytes> {
        if !self.complete.load(Ordering::Acquire) {
            return None;
        }
        let kept = self.kept.lock();
        let chunks = kept.as_ref()?;
        let mut all = bytes::BytesMut::new();
        for c in chunks {
            all.extend_from_slice(c);
        }
        Some(all.freeze())
    }
}

/// Passes a body through until it exceeds the relay's limit, then fails it
/// and raises a flag, so the exchange is answered 413 instead of with
/// whatever the aborted stream produced. Keeps small bodies on the side
/// (see [`BodyState`]).
struct CappedBody {
    inner: MinRateBody<super::metrics::Counted<Incoming>>,
    remaining: u64,
    read: u64,
    state: Arc<BodyState>,
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
                        self.state.over_limit.store(true, Ordering::Release);
                        return Poll::Ready(Some(
                            Err("request body over the relay's limit".into()),
                        ));
                    }
                    self.remaining -= len;
                    self.read += len;
                    self.state.keep(data, self.read);
                }
                if self.inner.is_end_stream() {
                    self.state.complete.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.state.complete.store(true, Ordering::Release);
                Poll::Ready(None)
            }
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

/// The event to hold for a prepared request: its id (the one in its
/// metadata, or a new one), head and body.
fn new_event(name: &str, p: Prepared, body: Bytes) -> NewEvent {
    let event_id = p.meta.event_id.clone().unwrap_or_else(new_event_id);
    let mut meta = p.meta;
    meta.event_id = Some(event_id.clone());
    NewEvent {
        event_id,
        tunnel: name.to_string(),
        method: p.method.to_string(),
        path: p.app_path,
        headers: p
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        meta,
        body,
    }
}
