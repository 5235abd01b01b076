//! Agents connecting to the relay: the authenticated websocket upgrade, and
//! the registry entry that routes a tunnel name to the agent's HTTP/2 link.
//!
//! Everything that can be refused is refused before the upgrade, with a
//! status and a one-line reason the agent prints: 400 for a protocol
//! mismatch or a bad name, 401 for a token, 409 for a name already held.

use std::sync::Arc;

use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::auth::Tokens;
use super::held::{HeldEvent, HeldStore, OfflinePolicy};
use super::{text, Shared, TunnelSession};
use crate::tunnel::link::{self, LinkClient};
use crate::tunnel::protocol::{
    is_valid_name, Control, HDR_ACK, HDR_AGENT_ID, HDR_CONTROL, HDR_HELD, HDR_NAME, HDR_OFFLINE,
    HDR_PROTOCOL, HDR_PUBLIC_URL, HDR_TAKEOVER, PROTOCOL_VERSION,
};
use crate::tunnel::{ws_io, Body, WsIo};

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && header_str(headers, "sec-websocket-version") == Some("13")
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Checks an agent's upgrade request and, if it passes, answers 101 and
/// starts the session in the background.
pub(crate) async fn upgrade(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers();
    match header_str(headers, HDR_PROTOCOL).map(str::parse::<u32>) {
        Some(Ok(v)) if v == PROTOCOL_VERSION => {}
        other => {
            let theirs = match other {
                Some(Ok(v)) => v.to_string(),
                _ => "none".to_string(),
            };
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "protocol mismatch: this relay speaks whtunnel protocol {PROTOCOL_VERSION}, the agent sent {theirs}; run the same whtunnel version on both ends"
                ),
            );
        }
    }
    let presented = Tokens::bearer(headers.get(header::AUTHORIZATION)).unwrap_or("");
    if !shared.config.tokens.accepts(presented) {
        return text(
            StatusCode::UNAUTHORIZED,
            "token refused: this relay does not accept the agent's token (check --token or WHTUNNEL_TOKEN)",
        );
    }
    if !is_websocket_upgrade(headers) {
        return text(StatusCode::BAD_REQUEST, "expected a websocket upgrade");
    }
    let name = match header_str(headers, HDR_NAME) {
        Some(n) if is_valid_name(n) => n.to_string(),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "invalid tunnel name: use 1-63 characters of a-z, 0-9 and '-'",
            )
        }
    };
    let agent_id = header_str(headers, HDR_AGENT_ID)
        .filter(|id| !id.is_empty() && id.len() <= 64)
        .map(str::to_string);
    let mut takeover = header_str(headers, HDR_TAKEOVER) == Some("1");
    let policy = match header_str(headers, HDR_OFFLINE) {
        None => shared.config.offline,
        Some(v) => match v.parse::<OfflinePolicy>() {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{HDR_OFFLINE}: {e}")),
        },
    };
    if !takeover {
        let tunnels = shared.tunnels.lock();
        match tunnels.get(&name) {
            // The same agent again: its old link is dead but not yet noticed.
            Some(s) if agent_id.is_some() && s.agent_id == agent_id => takeover = true,
            Some(_) => {
                return text(
                    StatusCode::CONFLICT,
                    &format!(
                        "tunnel name '{name}' is held by another agent; stop that agent or pass --takeover"
                    ),
                )
            }
            None => {}
        }
    }
    let base = match &shared.config.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = header_str(headers, "host").unwrap_or("localhost");
            format!("{}://{host}", shared.scheme)
        }
    };
    let public_url = format!("{base}/t/{name}");
    let accept = derive_accept_key(
        headers
            .get(header::SEC_WEBSOCKET_KEY)
            .expect("checked above")
            .as_bytes(),
    );

    let held = shared
        .held
        .as_ref()
        .and_then(|h| h.state(&name))
        .map_or(0, |s| s.pending);

    tokio::spawn(run_session(shared, req, name, takeover, policy, agent_id));

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, "upgrade".parse().expect("static"));
    h.insert(header::UPGRADE, "websocket".parse().expect("static"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        accept.parse().expect("base64 is a valid header value"),
    );
    if let Ok(v) = public_url.parse() {
        h.insert(HDR_PUBLIC_URL, v);
    }
    h.insert(HDR_HELD, HeaderValue::from(held));
    resp
}

async fn run_session(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    name: String,
    takeover: bool,
    policy: OfflinePolicy,
    agent_id: Option<String>,
) {
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!("agent upgrade failed: {e}");
            return;
        }
    };
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(ws_io::ws_config()),
    )
    .await;
    let closed = CancellationToken::new();
    let (sender, conn) = match link::handshake(WsIo::new(ws), closed.clone()).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("HTTP/2 handshake with agent failed: {e}");
            return;
        }
    };
    let ready_sender = sender.clone();
    let id = shared.next_session_id();
    {
        let mut tunnels = shared.tunnels.lock();
        if let Some(old) = tunnels.get(&name) {
            if !takeover {
                // Lost a race with another agent claiming the same name.
                return;
            }
            old.closed.cancel();
        }
        tunnels.insert(
            name.clone(),
            TunnelSession {
                id,
                agent_id,
                sender,
                closed: closed.clone(),
            },
        );
    }
    tracing::info!(tunnel = %name, "agent connected");
    tokio::spawn(send_ready(ready_sender));
    if let Some(held) = shared.held.clone() {
        // Remember the name across restarts: while this agent is away, its
        // webhooks are held (or rejected) instead of answered 404.
        let n = name.clone();
        match tokio::task::spawn_blocking(move || held.remember(&n, policy)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(tunnel = %name, "could not remember the tunnel: {e}"),
            Err(_) => {}
        }
        kick_delivery(&shared, &name, None);
    }
    tokio::select! {
        result = conn.run() => {
            if let Err(e) = result {
                tracing::info!(tunnel = %name, "agent link ended: {e}");
            }
        }
        () = closed.cancelled() => {}
    }
    // Wakes this session's delivery task, wherever it waits, so it hands the
    // queue over to the next session at once.
    closed.cancel();
    {
        // Only if still ours: a takeover may have replaced it.
        let mut tunnels = shared.tunnels.lock();
        if tunnels.get(&name).is_some_and(|s| s.id == id) {
            tunnels.remove(&name);
        }
    }
    if let Some(held) = shared.held.clone() {
        // "Last seen" is now: the name is remembered for the age cap from here.
        let n = name.clone();
        let _ = tokio::task::spawn_blocking(move || held.remember(&n, policy)).await;
    }
    tracing::info!(tunnel = %name, "agent disconnected");
}

/// Starts delivering `name`'s held events if its agent is connected and no
/// delivery is running yet. `except`: a session that just failed, not to be
/// used again.
pub(crate) fn kick_delivery(shared: &Arc<Shared>, name: &str, except: Option<u64>) {
    let Some(held) = shared.held.clone() else {
        return;
    };
    let link = {
        let tunnels = shared.tunnels.lock();
        tunnels
            .get(name)
            .filter(|s| Some(s.id) != except && !s.closed.is_cancelled())
            .map(|s| (s.sender.clone(), s.closed.clone(), s.id))
    };
    let Some((sender, closed, id)) = link else {
        return;
    };
    if held.state(name).is_none_or(|s| s.pending == 0) || !held.start_delivery(name) {
        return;
    }
    let task = Delivery {
        shared: shared.clone(),
        held,
        name: name.to_string(),
        session: id,
    };
    tokio::spawn(task.run(sender, closed));
}

/// Back-off between attempts while the agent cannot deliver an event (its
/// app is down): 1 s doubling to 60 s.
const REDELIVER_MIN: Duration = Duration::from_secs(1);
const REDELIVER_MAX: Duration = Duration::from_secs(60);

/// One tunnel's delivery task, bound to one agent session.
struct Delivery {
    shared: Arc<Shared>,
    held: Arc<HeldStore>,
    name: String,
    session: u64,
}

type Sender = LinkClient;

impl Delivery {
    /// Delivers held events one at a time, oldest first, deleting each only
    /// when the agent acknowledges it was recorded. New traffic for the
    /// tunnel queues behind them (see `HeldStore::admit`) until the queue is
    /// empty. When this session's link ends first, the queue is handed to
    /// the session that replaced it, if any.
    async fn run(self, mut sender: Sender, closed: CancellationToken) {
        if self.deliver_all(&mut sender, &closed).await {
            return;
        }
        self.held.stop_delivery(&self.name);
        kick_delivery(&self.shared, &self.name, Some(self.session));
    }

    /// True when the queue is empty; false when the link ended first.
    async fn deliver_all(&self, sender: &mut Sender, closed: &CancellationToken) -> bool {
        let (held, name) = (&self.held, &self.name);
        let mut backoff = REDELIVER_MIN;
        let timeout = self.shared.config.response_timeout;
        loop {
            if closed.is_cancelled() || sender.is_closed() {
                return false;
            }
            let h = held.clone();
            let n = name.clone();
            let next = match tokio::task::spawn_blocking(move || h.next(&n)).await {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::warn!(tunnel = %name, "reading held events failed: {e}");
                    None
                }
                Err(_) => None,
            };
            let Some(ev) = next else {
                if held.finish_delivery(name) {
                    return true;
                }
                // Counted but not yet readable: give the writer a moment.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let h = held.clone();
            let seq = ev.seq;
            let _ = tokio::task::spawn_blocking(move || h.attempted(seq)).await;
            let Some(req) = held_request(&ev, timeout) else {
                tracing::warn!(tunnel = %name, event = %ev.event.event_id, "dropping a held event that cannot be sent");
                let h = held.clone();
                let _ = tokio::task::spawn_blocking(move || h.remove(&ev)).await;
                continue;
            };
            let answer = tokio::select! {
                a = tokio::time::timeout(timeout, sender.send(req)) => a,
                () = closed.cancelled() => return false,
            };
            if let Ok(Ok(resp)) = answer {
                // Any ack, even a kind this version does not know, means
                // the agent is done with the event.
                let acked = resp.headers().contains_key(HDR_ACK);
                let _ = resp.into_body().collect().await;
                if acked {
                    let h = held.clone();
                    let event_id = ev.event.event_id.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || h.remove(&ev)).await {
                        tracing::warn!(tunnel = %name, event = %event_id, "could not delete a delivered event: {e}");
                    }
                    backoff = REDELIVER_MIN;
                    continue;
                }
            }
            if sender.is_closed() {
                return false;
            }
            // Not delivered (app down or too slow, the agent could not record
            // it, or this one exchange failed): it stays first in line.
            tracing::info!(tunnel = %name, "held event not delivered; retrying in {backoff:?}");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = closed.cancelled() => return false,
            }
            backoff = (backoff * 2).min(REDELIVER_MAX);
        }
    }
}

fn held_request(ev: &HeldEvent, timeout: Duration) -> Option<Request<crate::tunnel::Body>> {
    let mut headers = HeaderMap::new();
    for (k, v) in &ev.event.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(k, v);
        }
    }
    let mut meta = ev.event.meta.clone();
    meta.event_id = Some(ev.event.event_id.clone());
    meta.attempt = Some(ev.attempts + 1);
    meta.timeout_ms = timeout
        .saturating_sub((timeout / 10).min(Duration::from_millis(500)))
        .as_millis() as u64;
    let method = http::Method::from_bytes(ev.event.method.as_bytes()).ok()?;
    let body = Full::new(ev.event.body.clone())
        .map_err(|never| match never {})
        .boxed_unsync();
    super::public::tunnel_request(method, &ev.event.path, headers, &meta, body)
}

/// Tells the agent its tunnel is routable (registered here), so it only
/// then announces the public URL.
async fn send_ready(sender: LinkClient) {
    let mut req = Request::new(crate::tunnel::Body::default());
    *req.uri_mut() = http::Uri::from_static("http://tunnel/_whtunnel/ready");
    req.headers_mut()
        .insert(HDR_CONTROL, Control::Ready.header_value());
    if let Ok(resp) = sender.send(req).await {
        let _ = resp.into_body().collect().await;
    }
}
