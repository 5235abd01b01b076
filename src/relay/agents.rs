//! Agents connecting to the relay: the authenticated websocket upgrade, and
//! the registry entry that routes a tunnel name to the agent's HTTP/2 link.
//!
//! Everything that can be refused is refused before the upgrade, with a
//! status and a one-line reason the agent prints: 400 for a protocol
//! mismatch or a bad name, 401 for a token, 409 for a name already held.

use std::sync::Arc;

use http::{header, HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::auth::Tokens;
use super::{text, Session, Shared};
use crate::tunnel::protocol::{
    is_valid_name, HDR_NAME, HDR_PROTOCOL, HDR_PUBLIC_URL, HDR_TAKEOVER, PROTOCOL_VERSION,
};
use crate::tunnel::{h2, ws_io, Body, WsIo};

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
    let takeover = header_str(headers, HDR_TAKEOVER) == Some("1");
    if !takeover
        && shared
            .tunnels
            .lock()
            .expect("tunnel map lock")
            .contains_key(&name)
    {
        return text(
            StatusCode::CONFLICT,
            &format!(
                "tunnel name '{name}' is held by another agent; stop that agent or pass --takeover"
            ),
        );
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

    tokio::spawn(run_session(shared, req, name, takeover));

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
    resp
}

async fn run_session(shared: Arc<Shared>, req: Request<Incoming>, name: String, takeover: bool) {
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
    let (sender, conn) = match h2::client_builder()
        .handshake(TokioIo::new(WsIo::new(ws)))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("HTTP/2 handshake with agent failed: {e}");
            return;
        }
    };
    let id = shared.next_session_id();
    let closed = CancellationToken::new();
    {
        let mut tunnels = shared.tunnels.lock().expect("tunnel map lock");
        if let Some(old) = tunnels.get(&name) {
            if !takeover {
                // Lost a race with another agent claiming the same name.
                return;
            }
            old.closed.cancel();
        }
        tunnels.insert(
            name.clone(),
            Session {
                id,
                sender,
                closed: closed.clone(),
            },
        );
    }
    tracing::info!(tunnel = %name, "agent connected");
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::info!(tunnel = %name, "agent link ended: {e}");
            }
        }
        () = closed.cancelled() => {}
    }
    let mut tunnels = shared.tunnels.lock().expect("tunnel map lock");
    if tunnels.get(&name).is_some_and(|s| s.id == id) {
        tunnels.remove(&name);
    }
    tracing::info!(tunnel = %name, "agent disconnected");
}
