//! The relay's held-event API, on its own listener, for `whtunnel held`:
//!
//! - `GET /_whtunnel/held/<name>`: the tunnel's held and dead-lettered
//!   events as JSON;
//! - `POST /_whtunnel/held/<name>/<event-id>/retry`: a dead letter back
//!   into the queue;
//! - `DELETE /_whtunnel/held/<name>/<event-id>`: drop an event.
//!
//! Authenticated with `Authorization: Bearer <token>`: with a users file,
//! the token's user must own the name; with plain tokens, the token must be
//! the one that last held the tunnel. Either way an agent sees and changes
//! only its own tunnel's events.
//!
//! On a relay of a cluster the same API reads and changes the cluster's
//! JetStream stream ([`crate::cluster::held`]), so any relay answers for
//! events held anywhere in the cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::agents::{kick_delivery, token_sha256};
use super::auth::Tokens;
use super::drain::tell_dead_letter_cleared;
use super::users::Accounts;
use super::{text, Shared};
use crate::tunnel::protocol::is_valid_name;
use crate::tunnel::Body;

/// Path prefix of the API.
pub const HELD_API_PATH: &str = "/_whtunnel/held/";

/// Most events one listing returns.
const LIST_LIMIT: usize = 1000;

/// Serves one API request.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let store = match (&shared.held, &shared.cluster) {
        (Some(held), _) => Store::Local(held.clone()),
        (None, Some(cluster)) => Store::Cluster(cluster.clone()),
        (None, None) => {
            return text(
                StatusCode::NOT_FOUND,
                "whtunnel relay: this relay holds no events (it has no data directory)",
            )
        }
    };
    let rest = req.uri().path()[HELD_API_PATH.len()..].to_string();
    let parts: Vec<&str> = rest.split('/').collect();
    let name = parts[0].to_string();
    if !is_valid_name(&name) {
        return text(StatusCode::BAD_REQUEST, "invalid tunnel name");
    }
    if let Some(wait) = shared.limiter.auth_blocked(remote.ip()) {
        return *wait;
    }
    let presented = Tokens::bearer(req.headers().get(header::AUTHORIZATION)).unwrap_or("");
    let Some(identity) = shared.accounts.authenticate(presented) else {
        shared.limiter.auth_failed(remote.ip(), "held API");
        return text(
            StatusCode::UNAUTHORIZED,
            "token refused: this relay does not accept the token (check --token-file or WHTUNNEL_TOKEN)",
        );
    };
    // Same answer for "unknown tunnel" and "another user's tunnel": the
    // API does not tell which names exist.
    let allowed = match &shared.accounts {
        // Users: the name's owner, and no one else.
        Accounts::Users(_) => {
            match shared.owners.owner(&name).await {
                Ok(owner) => owner.as_deref() == Some(&*identity.user),
                // Not "not yours": the owners store could not answer.
                Err(e) => {
                    tracing::warn!(tunnel = %name, "cannot read the name's owner: {e}");
                    return super::retry_later(
                        "whtunnel relay: cannot read who owns this tunnel name right now; retry later",
                        5,
                    );
                }
            }
        }
        // Plain tokens: the token that last held the tunnel.
        Accounts::Tokens(_) => {
            let owner = match &store {
                Store::Local(held) => {
                    let (h, n) = (held.clone(), name.clone());
                    tokio::task::spawn_blocking(move || h.owner(&n))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                }
                Store::Cluster(cluster) => match cluster.held().token_owner(&name).await {
                    Ok(owner) => owner,
                    Err(e) => {
                        tracing::warn!(tunnel = %name, "cannot read the cluster's tunnel names: {e}");
                        return super::retry_later(
                            "whtunnel: the relay cannot reach its cluster store; retry later",
                            5,
                        );
                    }
                },
            };
            owner.as_deref() == Some(token_sha256(presented).as_str())
        }
    };
    if !allowed {
        return text(
            StatusCode::FORBIDDEN,
            &format!("tunnel '{name}' is not held by this user or token"),
        );
    }
    let method = req.method().clone();
    let event = parts.get(1).map(|s| s.to_string());
    let action = parts.get(2).copied().map(str::to_string);
    let held = match store {
        Store::Local(held) => held,
        Store::Cluster(cluster) => {
            let request = (method, event, action.as_deref(), parts.len());
            return in_cluster(&shared, &cluster, &name, request).await;
        }
    };
    let (h, n) = (held.clone(), name.clone());
    match (method, event, action.as_deref(), parts.len()) {
        (Method::GET, None, None, 1) => {
            let listed = tokio::task::spawn_blocking(move || h.list(&n, LIST_LIMIT)).await;
            let Ok(Ok(events)) = listed else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "could not read the held-event store");
            };
            let st = held.state(&name).unwrap_or_default();
            json(&serde_json::json!({
                "tunnel": name,
                "pending": st.pending,
                "dead": st.dead,
                "events": events,
            }))
        }
        (Method::POST, Some(id), Some("retry"), 3) => {
            let id2 = id.clone();
            match tokio::task::spawn_blocking(move || h.retry(&n, &id2)).await {
                Ok(Ok(true)) => {
                    kick_delivery(&shared, &name, None);
                    tell_dead_letter_cleared(&shared, &name, &id);
                    json(&serde_json::json!({"event_id": id, "retried": true}))
                }
                Ok(Ok(false)) => text(
                    StatusCode::NOT_FOUND,
                    &format!("no dead-lettered event {id} on tunnel '{name}'"),
                ),
                _ => text(StatusCode::INTERNAL_SERVER_ERROR, "could not update the held-event store"),
            }
        }
        (Method::DELETE, Some(id), None, 2) => {
            let id2 = id.clone();
            match tokio::task::spawn_blocking(move || h.drop_event(&n, &id2)).await {
                Ok(Ok(true)) => {
                    tell_dead_letter_cleared(&shared, &name, &id);
                    json(&serde_json::json!({"event_id": id, "dropped": true}))
                }
                Ok(Ok(false)) => text(
                    StatusCode::NOT_FOUND,
                    &format!("no held event {id} on tunnel '{name}'"),
                ),
                _ => text(StatusCode::INTERNAL_SERVER_ERROR, "could not update the held-event store"),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "whtunnel relay: GET /_whtunnel/held/<name>, POST .../<event-id>/retry, DELETE .../<event-id>",
        ),
    }
}

/// Where the relay keeps held events.
enum Store {
    /// Its own SQLite store.
    Local(Arc<super::held::HeldStore>),
    /// The cluster's JetStream stream.
    Cluster(Arc<crate::cluster::Cluster>),
}

/// The API on a relay of a cluster: the same requests and answers, on the
/// cluster's stream.
async fn in_cluster(
    shared: &Arc<Shared>,
    cluster: &crate::cluster::Cluster,
    name: &str,
    request: (Method, Option<String>, Option<&str>, usize),
) -> Response<Body> {
    use crate::cluster::held::ChangeError;
    let held = cluster.held();
    let failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(tunnel = %name, "held API: {e}");
        super::retry_later(
            "whtunnel: the relay cannot reach its cluster store; retry later",
            5,
        )
    };
    match request {
        (Method::GET, None, None, 1) => match held.list(name, LIST_LIMIT).await {
            Ok(listing) => json(&serde_json::json!({
                "tunnel": name,
                "pending": listing.pending,
                "dead": listing.dead,
                "events": listing.events,
            })),
            Err(e) => failed(&e),
        },
        (Method::POST, Some(id), Some("retry"), 3) => match held.retry(name, &id).await {
            Ok(true) => {
                tell_cleared_in_cluster(shared, held, name, &id).await;
                json(&serde_json::json!({"event_id": id, "retried": true}))
            }
            Ok(false) => text(
                StatusCode::NOT_FOUND,
                &format!("no dead-lettered event {id} on tunnel '{name}'"),
            ),
            Err(ChangeError::Full) => super::retry_later(
                "whtunnel: this tunnel's held-event queue is full; retry later",
                60,
            ),
            Err(e) => failed(&e),
        },
        (Method::DELETE, Some(id), None, 2) => match held.drop_event(name, &id).await {
            Ok(true) => {
                tell_cleared_in_cluster(shared, held, name, &id).await;
                json(&serde_json::json!({"event_id": id, "dropped": true}))
            }
            Ok(false) => text(
                StatusCode::NOT_FOUND,
                &format!("no held event {id} on tunnel '{name}'"),
            ),
            Err(e) => failed(&e),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "whtunnel relay: GET /_whtunnel/held/<name>, POST .../<event-id>/retry, DELETE .../<event-id>",
        ),
    }
}

/// Tells `name`'s agent, when it is connected to this relay, that a dead
/// letter was retried or dropped (an agent on another relay hears the
/// count at its next connect).
async fn tell_cleared_in_cluster(
    shared: &Arc<Shared>,
    held: &crate::cluster::HeldStream,
    name: &str,
    event_id: &str,
) {
    let Some(sender) = shared.sender_for(name) else {
        return;
    };
    let count = held.dead_count(name).await;
    tokio::spawn(super::drain::tell_dead_letter(
        sender,
        crate::tunnel::protocol::Control::DeadLetterCleared,
        event_id.to_string(),
        count,
    ));
}

fn json(value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(bytes::Bytes::from(value.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}
