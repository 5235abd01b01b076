//! Replays: a stored request (or its edited form) sent to the app again
//! and recorded as a replay of the original.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::record::Pending;
use super::{full, headers_to_vec, Forwarder, Outgoing};
use crate::capture::{BodyData, Exchange, ExchangeId, RequestEdit};
use crate::tunnel::protocol::{strip_hop_by_hop, HDR_ERROR};

/// The result of a replay.
#[derive(Debug)]
pub struct ReplayOutcome {
    /// The status the app answered (or 502/504 when it could not).
    pub status: StatusCode,
    /// How long it took.
    pub duration: Duration,
    /// The id of the recorded replay, when it was stored.
    pub id: Option<ExchangeId>,
    /// Why it failed, if the app did not answer.
    pub error: Option<String>,
}

/// Why a stored request cannot be replayed as recorded: its body was not
/// kept in full, so a replay would send a different (empty or cut) body.
/// `None` when it can be.
pub fn not_replayable(original: &Exchange) -> Option<String> {
    let body = &original.request.body;
    if !body.truncated {
        return None;
    }
    let id = original
        .id
        .map(|i| format!("#{i}"))
        .unwrap_or_else(|| "the exchange".into());
    Some(format!(
        "cannot replay {id} as recorded: its request body was not kept in full \
         ({} bytes arrived, fewer kept), so a replay would send a different body; \
         pass --force to send what was kept",
        body.total_len
    ))
}

impl Forwarder {
    /// Re-sends a stored request (or its edited form) to the target and
    /// records the new exchange as a replay of it. A request whose body was
    /// not kept in full is refused (see [`not_replayable`]) unless it is
    /// edited: an edit says which body to send.
    pub async fn replay(&self, original: &Exchange, edit: Option<RequestEdit>) -> ReplayOutcome {
        if edit.is_none() {
            if let Some(why) = not_replayable(original) {
                return ReplayOutcome {
                    status: StatusCode::BAD_REQUEST,
                    duration: Duration::ZERO,
                    id: None,
                    error: Some(why),
                };
            }
        }
        self.replay_forced(original, edit).await
    }

    /// [`replay`](Forwarder::replay) that sends whatever body was kept,
    /// even a cut one (`whtunnel replay --force`).
    pub async fn replay_forced(
        &self,
        original: &Exchange,
        edit: Option<RequestEdit>,
    ) -> ReplayOutcome {
        let started = Instant::now();
        let (method, path, header_list, body) = match edit {
            Some(e) => (e.method, e.path, e.headers, e.body),
            None => {
                let body = match &original.request.body.data {
                    BodyData::Empty => Bytes::new(),
                    BodyData::Memory(b) => b.clone(),
                    BodyData::File(p) => match tokio::fs::read(p).await {
                        Ok(b) => Bytes::from(b),
                        Err(e) => {
                            return ReplayOutcome {
                                status: StatusCode::INTERNAL_SERVER_ERROR,
                                duration: started.elapsed(),
                                id: None,
                                error: Some(format!(
                                    "cannot read the stored body {}: {e}",
                                    p.display()
                                )),
                            }
                        }
                    },
                };
                (
                    original.request.method.clone(),
                    original.request.path.clone(),
                    original.request.headers.clone(),
                    body,
                )
            }
        };
        let method = match Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return ReplayOutcome {
                    status: StatusCode::BAD_REQUEST,
                    duration: started.elapsed(),
                    id: None,
                    error: Some(format!("invalid method '{method}'")),
                }
            }
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &header_list {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                headers.append(k, v);
            }
        }
        let original_host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        strip_hop_by_hop(&mut headers);
        // The stored body is complete, so its length is known again.
        headers.remove(header::CONTENT_LENGTH);
        if !body.is_empty() || method_expects_body(&method) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        self.apply_host(&mut headers, original_host.as_deref(), &path);
        let pending = Pending {
            received_at: Utc::now(),
            started,
            method: method.to_string(),
            path: path.clone(),
            headers: headers_to_vec(&headers),
            remote_addr: None,
            relay_event_id: None,
            replay_of: original.id,
            in_flight: None,
            busy: Some(self.busy()),
        };
        let (resp, id_rx) = self
            .send(Outgoing {
                method,
                path,
                headers,
                body: full(body),
                timeout: crate::units::DEFAULT_RESPONSE_TIMEOUT,
                pending,
            })
            .await;
        let status = resp.status();
        let error = resp
            .headers()
            .contains_key(HDR_ERROR)
            .then(|| String::from("the app did not answer"));
        // Drain the response so the exchange completes and is recorded.
        let _ = resp.into_body().collect().await;
        let id = match id_rx {
            Some(rx) => rx.await.ok().flatten(),
            None => None,
        };
        ReplayOutcome {
            status,
            duration: started.elapsed(),
            id,
            error,
        }
    }
}

fn method_expects_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}
