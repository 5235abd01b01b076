//! Agents connecting to the relay: the authenticated websocket upgrade, and
//! the registry entry that routes a tunnel name to the agent's HTTP/2 link.
//!
//! Everything that can be refused is refused before the upgrade, with a
//! status and a one-line reason the agent prints: 400 for a protocol
//! mismatch or a bad name, 401 for a token, 403 for a name that belongs to
//! another user or lies outside the user's names, 409 for a name another
//! agent of the same user holds, 429 after too many bad tokens.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::auth::Tokens;
use super::drain::{Delivery, HoldOrder};
use super::held::OfflinePolicy;
use super::owners::{Claimed, Refused};
use super::users::Identity;
use super::{text, Shared, TunnelSession};
use crate::tunnel::link::{self, LinkClient};
use crate::tunnel::protocol::{
    is_valid_name, Control, HDR_AGENT_ID, HDR_CONTROL, HDR_DEAD, HDR_HELD, HDR_HOLD_CONCURRENCY,
    HDR_HOLD_ORDER, HDR_NAME, HDR_OFFLINE, HDR_PROTOCOL, HDR_PUBLIC_URL, HDR_TAKEOVER,
    PROTOCOL_VERSION,
};
use crate::tunnel::{ws_io, Body, WsIo};

/// The SHA-256 of a token, hex: how the held store remembers which token
/// held a tunnel without keeping the token.
pub(crate) fn token_sha256(token: &str) -> String {
    use sha2::{Digest, Sha256};
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

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
pub(crate) async fn upgrade(
    shared: Arc<Shared>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
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
    // Token guessing: an address that failed too often waits, whatever it
    // presents now.
    if let Some(wait) = shared.limiter.auth_blocked(remote.ip()) {
        return *wait;
    }
    let presented = Tokens::bearer(headers.get(header::AUTHORIZATION)).unwrap_or("");
    let Some(identity) = shared.accounts.authenticate(presented) else {
        shared.limiter.auth_failed(remote.ip(), "agent upgrade");
        return text(
            StatusCode::UNAUTHORIZED,
            "token refused: this relay does not accept the agent's token (check --token-file or WHTUNNEL_TOKEN)",
        );
    };
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
    let user = identity.user.clone();
    if !identity.may_hold(&name) {
        tracing::info!(tunnel = %name, %user, from = %remote.ip(), "agent refused: name outside the user's patterns");
        return text(
            StatusCode::FORBIDDEN,
            &format!(
                "tunnel name '{name}' is not among user '{user}''s names ({}); pick a matching --name",
                identity.patterns.as_deref().unwrap_or_default().join(", ")
            ),
        );
    }
    let agent_id = header_str(headers, HDR_AGENT_ID)
        .filter(|id| !id.is_empty() && id.len() <= 64)
        .map(str::to_string);
    let asked_takeover = header_str(headers, HDR_TAKEOVER) == Some("1");
    let mut takeover = asked_takeover;
    let policy = match header_str(headers, HDR_OFFLINE) {
        None => shared.config.offline,
        Some(v) => match v.parse::<OfflinePolicy>() {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{HDR_OFFLINE}: {e}")),
        },
    };
    let hold = shared.config.hold_delivery;
    let concurrency = match header_str(headers, HDR_HOLD_CONCURRENCY).map(str::parse::<u32>) {
        None => hold.concurrency,
        // Capped by the relay's own setting.
        Some(Ok(n)) if n >= 1 => n.min(hold.concurrency),
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("{HDR_HOLD_CONCURRENCY}: expected a whole number of at least 1"),
            )
        }
    };
    let order = match header_str(headers, HDR_HOLD_ORDER) {
        None => hold.order,
        Some(v) => match v.parse::<HoldOrder>() {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{HDR_HOLD_ORDER}: {e}")),
        },
    };
    let drain = (concurrency.max(1) as usize, order == HoldOrder::Strict);
    // The name is its first user's, durably: nobody else claims it, takes
    // it over or receives what is held for it.
    match shared.owners.claim(&name, &user, shared.max_names()).await {
        Ok(Claimed::Kept) => {}
        // A name changing hands starts empty: what a previous owner left
        // held (its expiry forgets the name first and the events after)
        // is never delivered to this user.
        Ok(Claimed::New) => {
            if let Err(e) = super::forget_held(&shared, &name).await {
                tracing::warn!(tunnel = %name, %user, "agent refused: {e}");
                // Not kept: a later claim must find the name free and
                // purge again, never find it owned and skip the purge.
                if let Err(e) = shared.owners.release(&name, &user).await {
                    tracing::warn!(tunnel = %name, %user, "could not release the claim: {e}");
                }
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("whtunnel: {e}; retry later"),
                );
            }
        }
        Err(refused) => {
            tracing::info!(tunnel = %name, %user, from = %remote.ip(), takeover = asked_takeover, "agent refused: {refused}");
            let status = match refused {
                Refused::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            return text(status, &refused.to_string());
        }
    }
    {
        let tunnels = shared.tunnels.lock();
        if let Some(max) = identity.max_tunnels {
            let connected = tunnels
                .iter()
                .filter(|(n, s)| s.identity.user == user && **n != name)
                .count();
            if connected >= max as usize {
                return text(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "user '{user}' already has {connected} tunnels connected, its cap (max_tunnels in the users file); stop one first"
                    ),
                );
            }
        }
        match tunnels.get(&name) {
            // The same agent again (same id, same user): its old link is
            // dead but not yet noticed. An id presented by another user is
            // no proof of anything.
            Some(s)
                if !takeover
                    && agent_id.is_some()
                    && s.agent_id == agent_id
                    && s.identity == identity =>
            {
                takeover = true;
            }
            Some(s) if !takeover => {
                let how = if s.took_over {
                    "was taken over by another agent"
                } else {
                    "is held by another agent"
                };
                let what = if s.took_over {
                    "pass --takeover to take it back, or --retry-taken to wait for it"
                } else {
                    "stop that agent or pass --takeover"
                };
                tracing::info!(tunnel = %name, %user, from = %remote.ip(), "agent refused: name held by another agent");
                return text(
                    StatusCode::CONFLICT,
                    &format!(
                        "tunnel name '{name}' {how} (user {}, from {}); {what}",
                        s.identity.user, s.remote
                    ),
                );
            }
            _ => {}
        }
    }
    // The registry seam: in a cluster, the name must also be free (or ours
    // to take) in the holders bucket, decided there by compare-and-set so
    // two relays never both grant it. Its owner was checked above, in the
    // cluster's owners bucket when the relay has users
    // (`cluster::owners`): an owner never changes while an agent holds the
    // name, so the two checks cannot interleave badly.
    let claim = match &shared.cluster {
        None => None,
        Some(cluster) => match cluster.claim(&name, agent_id.clone(), takeover).await {
            Ok(claim) => Some(claim),
            Err(crate::cluster::ClaimError::Held(_)) => {
                return text(
                    StatusCode::CONFLICT,
                    &format!(
                        "tunnel name '{name}' is held by another agent on another relay of this cluster; stop that agent or pass --takeover"
                    ),
                )
            }
            Err(e) => {
                tracing::warn!(tunnel = %name, "cannot claim the tunnel: {e}");
                return super::retry_later(
                    "whtunnel: the relay cannot reach its cluster store; retry later",
                    5,
                );
            }
        },
    };
    tracing::info!(
        tunnel = %name,
        %user,
        from = %remote.ip(),
        takeover = asked_takeover,
        reconnect = takeover && !asked_takeover,
        "agent upgrade accepted"
    );
    let base = match &shared.config.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = super::request_host(headers, req.uri()).unwrap_or("localhost");
            format!("{}://{host}", shared.scheme)
        }
    };
    let public_url = super::host::tunnel_url(&base, shared.config.domain.as_deref(), &name);
    let accept = derive_accept_key(
        headers
            .get(header::SEC_WEBSOCKET_KEY)
            .expect("checked above")
            .as_bytes(),
    );

    let (held, dead) = match &shared.cluster {
        Some(cluster) => (
            cluster.held().pending(&name).await,
            cluster.held().dead_count(&name).await,
        ),
        None => {
            let state = shared.held.as_ref().and_then(|h| h.state(&name));
            (state.map_or(0, |s| s.pending), state.map_or(0, |s| s.dead))
        }
    };

    let owner = token_sha256(presented);
    let session = SessionAsk {
        name,
        takeover,
        policy,
        agent_id,
        drain,
        owner,
        identity,
        remote: remote.ip(),
        took_over: asked_takeover,
        claim,
    };
    if let Some(acme) = &shared.config.acme {
        // A known tunnel: its host name may now have a certificate.
        acme.want(&session.name);
    }
    let link_meta = shared.link_meta();
    tokio::spawn(run_session(shared, req, session));

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
    h.insert(HDR_DEAD, HeaderValue::from(dead));
    link_meta.write(h);
    resp
}

/// What an accepted upgrade request asked for.
struct SessionAsk {
    name: String,
    takeover: bool,
    policy: OfflinePolicy,
    agent_id: Option<String>,
    /// Held events in flight at once, and strict order.
    drain: (usize, bool),
    /// SHA-256 (hex) of the agent's token.
    owner: String,
    identity: Identity,
    remote: IpAddr,
    /// `--takeover` was asked for (not a reconnect of the same agent).
    took_over: bool,
    /// The name's entry in the cluster's holders bucket, when clustered.
    claim: Option<crate::cluster::Claim>,
}

/// Gives a claim back when its session never started.
async fn release_claim(shared: &Shared, claim: Option<crate::cluster::Claim>) {
    if let (Some(cluster), Some(claim)) = (&shared.cluster, claim) {
        cluster.release(&claim).await;
    }
}

async fn run_session(shared: Arc<Shared>, req: Request<Incoming>, ask: SessionAsk) {
    let SessionAsk {
        name,
        takeover,
        policy,
        agent_id,
        drain,
        owner,
        identity,
        remote,
        took_over,
        claim,
    } = ask;
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!("agent upgrade failed: {e}");
            release_claim(&shared, claim).await;
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
    let (sender, conn) =
        match link::handshake(WsIo::new(ws), closed.clone(), shared.link_meta()).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!("HTTP/2 handshake with agent failed: {e}");
                release_claim(&shared, claim).await;
                return;
            }
        };
    let ready_sender = sender.clone();
    let id = shared.next_session_id();
    if !shared.accounts.still_valid(&identity, &name) {
        // Revoked between the upgrade and now.
        return;
    }
    {
        let mut tunnels = shared.tunnels.lock();
        if let Some(old) = tunnels.get(&name) {
            if !takeover || old.identity.user != identity.user {
                // Lost a race with another agent claiming the same name.
                // (Its claim replaced ours in the bucket: nothing to give back.)
                return;
            }
            if took_over {
                tracing::warn!(tunnel = %name, user = %identity.user, from = %remote, previous_from = %old.remote, "tunnel taken over by another agent");
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
                drain,
                identity,
                remote,
                took_over,
            },
        );
    }
    if let Some(held) = &shared.held {
        held.set_strict(&name, drain.1);
    }
    if let (Some(cluster), Some(claim)) = (shared.cluster.clone(), claim) {
        // Refreshed while connected; a takeover elsewhere closes this link.
        let session = closed.clone();
        let keeper = cluster.clone();
        tokio::spawn(async move { keeper.keep(claim, session).await });
        // The held-events seam: this session drains the tunnel's events
        // from JetStream, whichever relay held them.
        cluster.held().remember(&name, policy, &owner).await;
        let task = cluster.held().clone().deliver(
            name.clone(),
            ready_sender.clone(),
            closed.clone(),
            drain.0,
            drain.1,
            shared.config.hold_delivery,
            shared.config.response_timeout,
        );
        tokio::spawn(task);
    }
    tracing::info!(tunnel = %name, "agent connected");
    tokio::spawn(send_ready(ready_sender));
    if let Some(held) = shared.held.clone() {
        // Remember the name across restarts: while this agent is away, its
        // webhooks are held (or rejected) instead of answered 404.
        let (n, o) = (name.clone(), owner.clone());
        let remembered = move || {
            held.remember(&n, policy)?;
            held.set_owner(&n, &o)
        };
        match tokio::task::spawn_blocking(remembered).await {
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
    if let Some(cluster) = &shared.cluster {
        cluster.held().remember(&name, policy, &owner).await;
    }
    if let Some(held) = shared.held.clone() {
        // "Last seen" is now: the name is remembered for the age cap from here.
        let n = name.clone();
        let _ = tokio::task::spawn_blocking(move || held.remember(&n, policy)).await;
    }
    // ...and kept by its owner for the name lifetime from here.
    if let Err(e) = shared.owners.touch(&name).await {
        tracing::warn!(tunnel = %name, "could not mark the name as used: {e}");
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
            .map(|s| (s.sender.clone(), s.closed.clone(), s.id, s.drain))
    };
    let Some((sender, closed, id, (concurrency, strict))) = link else {
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
        concurrency,
        strict,
    };
    tokio::spawn(task.run(sender, closed));
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
