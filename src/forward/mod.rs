//! Forwarding: turns a request from the relay into a request to the local
//! app, streams the answer back, and hands the finished exchange to the
//! capture recorder. Also replays stored exchanges.
//!
//! The rules applied here are the HTTP contract: method, path, query, headers
//! and body bytes reach the app unchanged, except hop-by-hop headers; the app
//! gets `X-Forwarded-For/-Proto/-Host`; Host is preserved unless the user
//! asked otherwise. When the app cannot answer, the forwarder answers
//! itself: 502 when it is unreachable, 504 when it is too slow.
//!
//! The parts: `target` (where requests go, the Host policy), `pool` (the
//! kept-alive connections to the app), `held` (held events: ack only once
//! recorded, never twice to the app), `abandoned` (calls that outlive their
//! stream), `replay`, and `record` (handing the exchange to the capture).

mod abandoned;
mod held;
mod pool;
mod reclaim;
mod record;
mod replay;
mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use abandoned::MAX_ABANDONED_CALLS;
pub use held::{DeadLetters, ERR_ANSWER_UNDELIVERED, HELD_TIMEOUT_ATTEMPTS, MAX_DEAD_IDS};
pub use replay::{not_replayable, ReplayOptions, ReplayOutcome, Signing};
pub use target::{HostHeader, Target, TargetError};

use abandoned::CallGuard;
use held::InFlight;
use pool::{AppPool, CallError};
use record::{Busy, Pending, Recording};

use crate::capture::{
    self, BodyData, BodyLimits, CapturedBody, ExchangeId, Outcome, RecordedResponse, Recorder,
};
use crate::tunnel::body_hash::{Check, CheckHash};
use crate::tunnel::protocol::{
    strip_hop_by_hop, strip_protocol_headers, AgentError, LinkMeta, RequestMeta, HDR_ERROR,
};
use crate::tunnel::{Body, BoxError};

/// Most of an app's answer to a held event read back for the relay (the
/// sender is gone; this only completes the exchange).
const HELD_RESPONSE_MAX: usize = crate::units::DEFAULT_MAX_BODY as usize;

/// How a [`Forwarder`] is set up.
#[derive(Clone)]
pub struct ForwarderConfig {
    /// Where requests go.
    pub target: Target,
    /// Other targets by path prefix below the tunnel (`[[route]]`): the
    /// longest matching prefix wins, `target` takes the rest.
    pub routes: Vec<(String, Target)>,
    /// The `[[webhook]]` rules replays are re-signed by.
    pub webhooks: Arc<crate::verify::Rules>,
    /// Host header policy.
    pub host_header: HostHeader,
    /// Where exchanges are recorded; `None` records nothing.
    pub recorder: Option<Recorder>,
    /// How much of each body the capture keeps.
    pub body_limits: BodyLimits,
}

/// A request ready to go to the app, and what the capture knows of it.
struct Outgoing {
    method: Method,
    /// Path and query below the target's base path.
    path: String,
    /// Headers as the app will see them.
    headers: HeaderMap,
    body: Body,
    /// How long the app has to answer.
    timeout: Duration,
    pending: Pending,
    /// Whether the caller waits for the stored id (a held delivery acks
    /// only once recorded; a replay reports it). A live exchange does not,
    /// and is then recorded without anyone waiting on the writer.
    wants_id: bool,
}

/// Forwards requests to the local app. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    config: ForwarderConfig,
    /// Kept-alive connections to the app.
    pool: AppPool,
    in_flight: Arc<InFlight>,
    /// Permits for calls left to finish after their stream was reset.
    abandoned: Arc<tokio::sync::Semaphore>,
    /// Exchanges between arrival and being queued for storing.
    busy: Arc<watch::Sender<usize>>,
    /// Held events the relay still has queued for this tunnel, as it last
    /// said (see [`Forwarder::backlog`]).
    backlog: watch::Sender<u64>,
    /// The relay's dead letters for this tunnel (see
    /// [`Forwarder::dead_letters`]).
    dead_letters: watch::Sender<DeadLetters>,
    /// Cancelled when the agent gives up on the exchanges in flight (a
    /// second Ctrl-C, or the bound on stopping): each still waiting for the
    /// app is answered and recorded as abandoned.
    abandon: CancellationToken,
}

/// The recorded error of an exchange still waiting for the app when the
/// agent stopped and gave up on it.
pub const ERR_ABANDONED_AT_EXIT: &str =
    "abandoned at exit: whtunnel stopped before the app answered";

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The request headers as the relay received them: `meta`'s Host first,
/// then `headers`, then `meta`'s hop-by-hop headers.
fn captured_request_headers(headers: &HeaderMap, meta: &RequestMeta) -> capture::Headers {
    let host = meta.host.as_deref().map(str::as_bytes);
    let value_bytes = host.map_or(0, <[u8]>::len)
        + headers.values().map(HeaderValue::len).sum::<usize>()
        + meta.hop_headers.iter().map(|(_, v)| v.len()).sum::<usize>();
    let count = usize::from(host.is_some()) + headers.len() + meta.hop_headers.len();
    let mut list = capture::Headers::received(count, value_bytes);
    if let Some(host) = host {
        list.push(&header::HOST, host);
    }
    for (name, value) in headers {
        list.push(name, value.as_bytes());
    }
    for (name, value) in &meta.hop_headers {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => list.push(&n, value.as_bytes()),
            // The metadata check lets only header names through; were one
            // not, the list is kept as text rather than the header dropped.
            Err(_) => list
                .to_mut()
                .push((name.clone(), value.as_bytes().to_vec())),
        }
    }
    list
}

impl Forwarder {
    /// A forwarder with kept-alive connections to the app.
    pub fn new(config: ForwarderConfig) -> Self {
        Forwarder {
            inner: Arc::new(Inner {
                config,
                pool: AppPool::default(),
                in_flight: Arc::default(),
                abandoned: Arc::new(tokio::sync::Semaphore::new(MAX_ABANDONED_CALLS)),
                busy: Arc::new(watch::channel(0).0),
                backlog: watch::channel(0).0,
                dead_letters: watch::channel(DeadLetters::default()).0,
                abandon: CancellationToken::new(),
            }),
        }
    }

    /// The target requests go to.
    pub fn target(&self) -> &Target {
        &self.inner.config.target
    }

    /// The target a request to `path` goes to: the `[[route]]` with the
    /// longest prefix covering it, else the default target.
    pub fn target_for(&self, path: &str) -> &Target {
        self.inner
            .config
            .routes
            .iter()
            .filter(|(prefix, _)| crate::config::prefix_matches(prefix, path))
            .max_by_key(|(prefix, _)| prefix.trim_end_matches('/').len())
            .map_or(&self.inner.config.target, |(_, t)| t)
    }

    /// The recorder, if capture is on.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.inner.config.recorder.as_ref()
    }

    /// Waits, up to `within`, for the calls still finishing after their
    /// stream was reset, so that they are recorded before the recorder
    /// closes (the relay holds their events; unrecorded, they would reach
    /// the app again after a restart).
    pub async fn settle(&self, within: Duration) {
        let all = self
            .inner
            .abandoned
            .acquire_many(MAX_ABANDONED_CALLS as u32);
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Held events the relay still has queued for this tunnel: the count
    /// the relay announces when the agent connects, less one per held
    /// delivery finished. Watch it to show the backlog draining.
    pub fn backlog(&self) -> watch::Receiver<u64> {
        self.inner.backlog.subscribe()
    }

    /// A new link: the relay holds `held` events for this tunnel.
    pub fn reset_backlog(&self, held: u64) {
        self.inner.backlog.send_replace(held);
    }

    /// Exchanges in flight: arrived (or replayed) and not yet queued for
    /// storing. Watch it to say what stopping waits for.
    pub fn in_flight(&self) -> watch::Receiver<usize> {
        self.inner.busy.subscribe()
    }

    /// Cancelling this gives up on every exchange still waiting for the app
    /// (now and later): each is answered 503 and recorded as cancelled with
    /// [`ERR_ABANDONED_AT_EXIT`].
    pub fn abandon_token(&self) -> CancellationToken {
        self.inner.abandon.clone()
    }

    fn busy(&self) -> Busy {
        Busy::new(&self.inner.busy)
    }

    /// Handles one request from the relay (it carries [`RequestMeta`]) on
    /// a link whose relay announced `link`.
    pub async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        link: &LinkMeta,
    ) -> Response<Body> {
        let started = Instant::now();
        let busy = self.busy();
        let (mut parts, body) = req.into_parts();
        let meta = match RequestMeta::take_headers(&mut parts.headers, link) {
            Ok(m) => m,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    AgentError::BadRequest,
                    &format!("whtunnel: the relay's request metadata is not valid: {e}"),
                )
            }
        };
        let received_at =
            DateTime::<Utc>::from_timestamp_millis(meta.received_at_ms).unwrap_or_else(Utc::now);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());

        // What the relay received, for the capture: Host first, as senders
        // put it, then the rest, then the hop-by-hop headers HTTP/2 cannot
        // carry. Taken only when capture is on; the values share the
        // decoded head's bytes.
        let captured_headers = if self.recorder().is_some() {
            captured_request_headers(&parts.headers, &meta)
        } else {
            capture::Headers::default()
        };

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        self.apply_host(&mut headers, meta.host.as_deref(), &path);
        add_forwarded(&mut headers, &meta);

        // The relay's body hash is checked against the bytes the app gets:
        // here as they pass, or, for a body the capture keeps whole, by the
        // store against its copy (see `body_hash`).
        let (body, body_hashes) = if self.recorder().is_some() {
            let relay = meta.body_blake3;
            let kept_whole = http_body::Body::size_hint(&body)
                .exact()
                .is_some_and(|n| n <= self.inner.config.body_limits.max_capture);
            let check = if kept_whole {
                Check::Stored
            } else {
                Check::Streaming
            };
            let (b, slot) = CheckHash::new(body, relay, check);
            (b.map_err(BoxError::from).boxed_unsync(), Some(slot))
        } else {
            (body.map_err(BoxError::from).boxed_unsync(), None)
        };
        let mut out = Outgoing {
            method: parts.method,
            path,
            headers,
            body,
            timeout: Duration::from_millis(meta.timeout_ms.max(1)),
            wants_id: false,
            pending: Pending {
                received_at,
                started,
                method: String::new(),
                path: String::new(),
                headers: captured_headers,
                remote_addr: meta.remote_addr,
                relay_event_id: meta.event_id.clone(),
                replay_of: None,
                body_hashes,
                in_flight: None,
                busy: Some(busy),
            },
        };
        out.pending.method = out.method.to_string();
        out.pending.path = out.path.clone();
        let attempt = meta.attempt.unwrap_or(0);
        let Some(event_id) = meta.event_id.filter(|_| meta.attempt.is_some()) else {
            if let (Some(_), Some(id)) = (self.recorder(), &out.pending.relay_event_id) {
                out.pending.in_flight = InFlight::try_register(&self.inner.in_flight, id);
            }
            return self.send(out).await.0;
        };
        let resp = self.deliver_held(event_id, attempt, out).await;
        // One held delivery done: one fewer queued. (The relay's own count
        // rides on each delivery, but with several in flight it counts the
        // others too; the count announced at connect, less one per finished
        // delivery, is the one that reaches zero.)
        self.inner.backlog.send_if_modified(|n| {
            let before = *n;
            *n = n.saturating_sub(1);
            *n != before
        });
        resp
    }

    fn apply_host(&self, headers: &mut HeaderMap, original: Option<&str>, path: &str) {
        let value = match &self.inner.config.host_header {
            HostHeader::Preserve => original.and_then(|h| HeaderValue::from_str(h).ok()),
            HostHeader::Rewrite => HeaderValue::from_str(self.target_for(path).authority()).ok(),
            HostHeader::Value(v) => Some(v.clone()),
        };
        match value {
            Some(v) => {
                headers.insert(header::HOST, v);
            }
            None => {
                headers.remove(header::HOST);
            }
        }
    }

    /// Sends a request to the app and records the exchange. Returns the
    /// response for the sender and a receiver for the stored id.
    async fn send(&self, out: Outgoing) -> (Response<Body>, Option<IdReceiver>) {
        let cfg = &self.inner.config;
        let Outgoing {
            method,
            path,
            headers,
            body,
            timeout,
            mut pending,
            wants_id,
        } = out;
        // Without capture nothing is recorded: the exchange is in flight
        // until this call returns.
        let _busy = cfg.recorder.is_none().then(|| pending.busy.take());
        let target = self.target_for(&path);
        let Ok(uri) = target.origin_form(&path) else {
            let resp = error_response(
                StatusCode::BAD_REQUEST,
                AgentError::BadRequest,
                "whtunnel: malformed request path",
            );
            return (resp, None);
        };
        // Recorded or not, the body the app did not read comes back when the
        // call fails, so that the capture keeps it whatever the app did.
        let (body, request_body, unread) = match &cfg.recorder {
            Some(_) => {
                let (b, rx) = capture::tee(body, &cfg.body_limits);
                let (b, unread) = reclaim::reclaim(b);
                (b.boxed_unsync(), Some(rx), Some(unread))
            }
            None => (body, None, None),
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        // If the relay cancels the stream (sender gone, relay timeout, link
        // lost) this future is dropped mid-await. The app may already be
        // working on the request, so the guard lets the call finish in the
        // background and records what the app answered.
        let deadline = tokio::time::Instant::now() + timeout;
        // Shown at once as a row in progress; the finished exchange replaces it.
        let live = cfg.recorder.as_ref().map_or(0, |r| {
            let p = &pending;
            r.started(p.received_at, &p.method, &p.path, p.replay_of, timeout)
        });
        let mut guard = CallGuard {
            call: Some(
                self.inner
                    .pool
                    .request(target.authority_parsed().clone(), request),
            ),
            deadline,
            fwd: cfg.recorder.is_some().then(|| self.clone()),
            armed: cfg.recorder.clone().map(|recorder| Recording {
                recorder,
                pending,
                target: target.to_string(),
                request_body,
                live,
            }),
        };
        let abandon = &self.inner.abandon;
        let result = match guard.call.as_mut() {
            Some(call) => tokio::select! {
                r = tokio::time::timeout_at(deadline, call) => Some(r),
                () = abandon.cancelled() => None,
            },
            None => unreachable!("the call was set just above"),
        };
        guard.call = None;
        let recording = guard.armed.take();
        let Some(result) = result else {
            let resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                AgentError::AppUnreachable,
                &format!("whtunnel: {ERR_ABANDONED_AT_EXIT}"),
            );
            return self.record_own_answer(
                resp,
                recording,
                Outcome::Cancelled,
                ERR_ABANDONED_AT_EXIT.to_string(),
                wants_id,
            );
        };

        let (resp, outcome, error) = match result {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                let app_headers = if recording.is_some() {
                    capture::Headers::from_map(&parts.headers)
                } else {
                    capture::Headers::default()
                };
                strip_hop_by_hop(&mut parts.headers);
                strip_protocol_headers(&mut parts.headers);
                let body = body.map_err(BoxError::from).boxed_unsync();
                let Some(recording) = recording else {
                    return (Response::from_parts(parts, body), None);
                };
                let (id_tx, id_rx) = id_channel(wants_id);
                let status = parts.status.as_u16();
                let runtime = tokio::runtime::Handle::current();
                let body = capture::tee_then(body, &cfg.body_limits, move |body| {
                    let response = RecordedResponse {
                        status,
                        headers: app_headers,
                        body,
                    };
                    recording.finish_with(Outcome::Answered, response, None, id_tx, &runtime);
                });
                let resp = Response::from_parts(parts, body.boxed_unsync());
                return (resp, id_rx);
            }
            Ok(Err(e)) => {
                if let Some(unread) = unread {
                    read_unread(unread, deadline).await;
                }
                let reason = describe_client_error(&e, target);
                // Refused tells "app down" from a handler failing on this
                // one request: the relay dead-letters only the latter.
                let kind = if e.is_connect() {
                    AgentError::AppUnreachable
                } else {
                    AgentError::AppBrokeOff
                };
                let resp = error_response(StatusCode::BAD_GATEWAY, kind, &reason);
                (resp, Outcome::AppUnreachable, reason)
            }
            Err(_) => {
                let (resp, reason) = timeout_response(target, timeout);
                (resp, Outcome::AppTimeout, reason)
            }
        };
        self.record_own_answer(resp, recording, outcome, error, wants_id)
    }

    /// Records an answer whtunnel made itself (`resp`) as the exchange's
    /// response; the receiver of its id only when `wants_id`.
    fn record_own_answer(
        &self,
        resp: Response<Body>,
        recording: Option<Recording>,
        outcome: Outcome,
        error: String,
        wants_id: bool,
    ) -> (Response<Body>, Option<IdReceiver>) {
        let Some(recording) = recording else {
            return (resp, None);
        };
        let body = Bytes::from(format!("{error}\n"));
        let response = RecordedResponse {
            status: resp.status().as_u16(),
            headers: capture::Headers::from_map(resp.headers()),
            body: CapturedBody {
                total_len: body.len() as u64,
                data: BodyData::Memory(body),
                truncated: false,
            },
        };
        let (id_tx, id_rx) = id_channel(wants_id);
        let runtime = tokio::runtime::Handle::current();
        recording.finish_with(outcome, response, Some(error), id_tx, &runtime);
        (resp, id_rx)
    }
}

/// How long a failed call may take to give its unread request body back
/// (the client's connection task may hold it for a moment).
const RECLAIM_WAIT: Duration = Duration::from_millis(500);

/// Reads the rest of a request body the app never read, so that its tee
/// records it: the capture keeps a webhook's body even when the app was
/// down. Bounded by the exchange's deadline; the bytes are dropped as they
/// come (the tee keeps its own bounded copy).
async fn read_unread<B>(unread: oneshot::Receiver<B>, deadline: tokio::time::Instant)
where
    B: http_body::Body + Unpin,
{
    let wait = deadline.min(tokio::time::Instant::now() + RECLAIM_WAIT);
    let Ok(Ok(mut body)) = tokio::time::timeout_at(wait, unread).await else {
        return;
    };
    let drain = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout_at(deadline, drain).await;
}

/// Reads a body to its end, keeping at most `max` bytes.
async fn collect_capped(mut body: Body, max: usize) -> Bytes {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            let room = max.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    out.freeze()
}

// As `HeaderName`s: inserting by `&'static str` copies a custom name into
// a fresh allocation on every request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sends the id an exchange was stored under (`None`: not stored).
type IdSender = oneshot::Sender<Option<ExchangeId>>;
/// Receives what an [`IdSender`] sends.
type IdReceiver = oneshot::Receiver<Option<ExchangeId>>;

/// Where a recording sends the stored id: a channel only when someone
/// waits for it (a held delivery, a replay); a live exchange gets none.
fn id_channel(wanted: bool) -> (Option<IdSender>, Option<IdReceiver>) {
    if !wanted {
        return (None, None);
    }
    let (tx, rx) = oneshot::channel();
    (Some(tx), Some(rx))
}

fn add_forwarded(headers: &mut HeaderMap, meta: &RequestMeta) {
    if let Some(addr) = &meta.remote_addr {
        // The sender's IP without the port. The metadata check let only an
        // IP socket address through (`1.2.3.4:5`, `[::1]:5`, `[fe80::1%2]:5`),
        // so the IP is what precedes the last ':', brackets and an IPv6
        // scope id removed: cut, not parsed and formatted again, since this
        // runs for every request.
        let ip = addr.rsplit_once(':').map_or(addr.as_str(), |(ip, _)| ip);
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = ip.split_once('%').map_or(ip, |(ip, _)| ip).as_bytes();
        let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
            Some(prev) => HeaderValue::from_bytes(&[prev, b", ", ip].concat()),
            None => HeaderValue::from_bytes(ip),
        };
        if let Ok(v) = value {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    let proto = match &*meta.proto {
        "http" => Ok(HeaderValue::from_static("http")),
        "https" => Ok(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other),
    };
    if let Ok(v) = proto {
        headers.insert(X_FORWARDED_PROTO, v);
    }
    if let Some(host) = meta
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

fn describe_client_error(e: &CallError, target: &Target) -> String {
    use std::error::Error as _;
    let mut cause = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        format!("whtunnel: could not connect to the app at {target} ({cause}); is it running?")
    } else {
        format!("whtunnel: the app at {target} failed to answer ({cause})")
    }
}

fn timeout_response(target: &Target, timeout: Duration) -> (Response<Body>, String) {
    let reason = format!(
        "whtunnel: the app at {target} did not answer within {:.1}s",
        timeout.as_secs_f64()
    );
    (
        error_response(StatusCode::GATEWAY_TIMEOUT, AgentError::AppTimeout, &reason),
        reason,
    )
}

fn error_response(status: StatusCode, kind: AgentError, reason: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{reason}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(HDR_ERROR, kind.header_value());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host first, then the map in its order, then the hop-by-hop headers;
    /// a hop-by-hop header that is no header (the metadata check keeps
    /// those out) turns the list into text rather than dropping anything.
    #[test]
    fn captured_request_headers_keep_the_received_order() {
        let mut map = HeaderMap::new();
        map.append("content-type", HeaderValue::from_static("application/json"));
        map.append("x-dup", HeaderValue::from_static("1"));
        map.append("x-dup", HeaderValue::from_static("2"));
        let mut meta = RequestMeta {
            host: Some("hooks.example".into()),
            hop_headers: vec![
                ("connection".into(), "x-hop".into()),
                ("x-hop".into(), "h".into()),
            ],
            ..RequestMeta::default()
        };
        let pairs = |h: &capture::Headers| -> Vec<(String, Vec<u8>)> {
            h.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
        };
        let want = |hop_name: &str| -> Vec<(String, Vec<u8>)> {
            [
                ("host", "hooks.example"),
                ("content-type", "application/json"),
                ("x-dup", "1"),
                ("x-dup", "2"),
                ("connection", "x-hop"),
                (hop_name, "h"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
        };
        let received = captured_request_headers(&map, &meta);
        assert!(received.is_received(), "kept as received, not as text");
        assert_eq!(pairs(&received), want("x-hop"));
        meta.hop_headers[1].0 = "not a name".into();
        let text = captured_request_headers(&map, &meta);
        assert!(!text.is_received());
        assert_eq!(pairs(&text), want("not a name"));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let meta = RequestMeta {
            remote_addr: Some("127.0.0.1:4444".into()),
            proto: "https".into(),
            host: Some("hooks.example.com".into()),
            ..Default::default()
        };
        add_forwarded(&mut h, &meta);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "hooks.example.com");

        // An IPv6 sender: the address without brackets or port.
        let mut h = HeaderMap::new();
        let meta = RequestMeta {
            remote_addr: Some("[2001:db8::7]:443".into()),
            ..meta
        };
        add_forwarded(&mut h, &meta);
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        // A link-local one: the IP as an app parses it, without the scope.
        let mut h = HeaderMap::new();
        let meta = RequestMeta {
            remote_addr: Some("[fe80::1%2]:443".into()),
            ..meta
        };
        assert!(crate::tunnel::protocol::RequestMeta::check(&meta).is_ok());
        add_forwarded(&mut h, &meta);
        assert_eq!(h["x-forwarded-for"], "fe80::1");
    }
}
