//! Replays: a stored request (or its edited form) sent to the app again
//! and recorded as a replay of the original. When the request's
//! `[[webhook]]` rule (or its recognised sender's preset) has a secret and
//! its scheme can be signed, the replay is signed afresh (new timestamp, new
//! signature over the bytes sent, same event id), so the app's own
//! verification passes after an edit or past the tolerance window.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::record::Pending;
use super::{full, Forwarder, Outgoing};
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
    /// What happened to the signature: re-signed, or why not.
    pub signing: Signing,
}

/// What a replay did about the request's signature.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Signing {
    /// No rule or recognised sender: nothing to sign.
    #[default]
    None,
    /// Signed afresh for this sender.
    Resigned(String),
    /// Sent with the recorded signature, as asked (`--as-is`).
    AsIs,
    /// Could not be signed afresh (asymmetric scheme, no secret): sent as
    /// recorded, and this says why.
    NotResigned(String),
}

impl std::fmt::Display for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signing::None => Ok(()),
            Signing::Resigned(who) => write!(f, "signed afresh for {who}"),
            Signing::AsIs => f.write_str("sent with the recorded signature (--as-is)"),
            Signing::NotResigned(why) => write!(f, "not signed afresh: {why}"),
        }
    }
}

/// How a replay treats the recorded request.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The edited request; `None` sends the recorded one.
    pub edit: Option<RequestEdit>,
    /// Send a body that was not kept in full (what was kept).
    pub force: bool,
    /// Keep the recorded signature headers instead of signing afresh.
    pub as_is: bool,
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
        let options = ReplayOptions {
            edit,
            ..ReplayOptions::default()
        };
        self.replay_with(original, options).await
    }

    /// [`replay`](Forwarder::replay) with every choice spelled out.
    pub async fn replay_with(&self, original: &Exchange, options: ReplayOptions) -> ReplayOutcome {
        let started = Instant::now();
        let fail = |status, error: String| ReplayOutcome {
            status,
            duration: started.elapsed(),
            id: None,
            error: Some(error),
            signing: Signing::None,
        };
        if options.edit.is_none() && !options.force {
            if let Some(why) = not_replayable(original) {
                return fail(StatusCode::BAD_REQUEST, why);
            }
        }
        let (method, path, mut header_list, body) = match options.edit {
            Some(e) => (e.method, e.path, e.headers, e.body),
            None => {
                let body = match &original.request.body.data {
                    BodyData::Empty => Bytes::new(),
                    BodyData::Memory(b) => b.clone(),
                    BodyData::File(p) => match tokio::fs::read(p).await {
                        Ok(b) => Bytes::from(b),
                        Err(e) => {
                            let why = format!("cannot read the stored body {}: {e}", p.display());
                            return fail(StatusCode::INTERNAL_SERVER_ERROR, why);
                        }
                    },
                };
                (
                    original.request.method.clone(),
                    original.request.path.clone(),
                    original.request.headers.clone().into_owned(),
                    body,
                )
            }
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("invalid method '{method}'"),
            );
        };
        let mut path = path;
        let signing = if options.as_is {
            Signing::AsIs
        } else {
            self.resign(method.as_str(), &mut path, &mut header_list, &body)
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
            headers: crate::capture::Headers::from_map(&headers),
            remote_addr: None,
            relay_event_id: None,
            replay_of: original.id,
            body_hashes: None,
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
                wants_id: true,
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
            signing,
        }
    }

    /// Signs `headers` afresh for `body` when the rule for `path` (or the
    /// recognised sender's preset with a configured secret) allows it:
    /// the signature headers the scheme sets are replaced, the rest kept,
    /// and a body hash the sender signs in the URL is set in `path`.
    fn resign(
        &self,
        method: &str,
        path: &mut String,
        headers: &mut Vec<crate::capture::Header>,
        body: &[u8],
    ) -> Signing {
        use crate::verify::{self, RequestView};
        let rules = &self.inner.config.webhooks;
        // The URL the sender signed (Square, Twilio) is the public one; the
        // capture keeps its Host and scheme.
        let probe = RequestView::new(method, "", &*headers, body);
        let url = verify::rules::public_url_for(None, &probe, path);
        let view = RequestView::new(method, &url, &*headers, body);
        let Some(rule) = rules.rule_for(path, &view) else {
            return Signing::None;
        };
        let who = rule
            .provider
            .map_or_else(|| "this rule".to_string(), |p| p.id().to_string());
        if rule.secret.is_none() {
            return Signing::NotResigned(format!(
                "no secret for {who} in whtunnel.toml (sent as recorded)"
            ));
        }
        match verify::sign(&rule, &view, std::time::SystemTime::now()) {
            Ok(set) => {
                *path = set.apply_query(path);
                for (name, value) in set.headers {
                    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                    headers.push((name, value.into_bytes()));
                }
                Signing::Resigned(who)
            }
            Err(e) => Signing::NotResigned(format!("{e} (sent as recorded)")),
        }
    }
}

fn method_expects_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}
