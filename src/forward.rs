//! Forwarding: turns a request from the relay into a request to the local
//! app, streams the answer back, and hands the finished exchange to the
//! capture recorder. Also replays stored exchanges.
//!
//! The rules applied here are the HTTP contract: method, path, query, headers
//! and body bytes reach the app unchanged, except hop-by-hop headers; the app
//! gets `X-Forwarded-For/-Proto/-Host`; Host is preserved unless the user
//! asked otherwise. When the app cannot answer, the forwarder answers
//! itself: 502 when it is unreachable, 504 when it is too slow.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::capture::{
    self, BodyData, BodyLimits, CapturedBody, Exchange, ExchangeId, RecordedRequest,
    RecordedResponse, Recorder, RequestEdit,
};
use crate::tunnel::protocol::{
    strip_hop_by_hop, strip_protocol_headers, Ack, AgentError, RequestMeta, HDR_ACK, HDR_ERROR,
    HDR_META,
};
use crate::tunnel::{Body, BoxError};

/// Most of an app's answer to a held event read back for the relay (the
/// sender is gone; this only completes the exchange).
const HELD_RESPONSE_MAX: usize = crate::units::DEFAULT_MAX_BODY as usize;

/// Where requests go: an `http://` base URL on the developer's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: String,
    base_path: String,
}

/// A target that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid target '{input}': {reason} (use a port like 3000, host:port, or http://host:port/base)")]
pub struct TargetError {
    input: String,
    reason: &'static str,
}

impl FromStr for Target {
    type Err = TargetError;

    /// Accepts `3000`, `host:port`, or `http://host:port/base`.
    fn from_str(input: &str) -> Result<Self, TargetError> {
        let err = |reason| TargetError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if let Ok(port) = s.parse::<u16>() {
            if port == 0 {
                return Err(err("port 0 is not a port an app listens on"));
            }
            return Ok(Target {
                authority: format!("localhost:{port}"),
                base_path: String::new(),
            });
        }
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let uri: Uri = with_scheme.parse().map_err(|_| err("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(err("https targets are not supported yet")),
            _ => return Err(err("only http:// targets are supported")),
        }
        let authority = uri.authority().ok_or_else(|| err("no host"))?;
        if authority.as_str().contains('@') {
            return Err(err("credentials in the target URL are not supported"));
        }
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        if uri.query().is_some() {
            return Err(err("a target cannot have a query string"));
        }
        Ok(Target {
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

impl Target {
    /// The `host:port` requests are sent to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The URI for a request whose tunnel-relative path is `path_and_query`.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq = if path_and_query.starts_with('/') {
            path_and_query.to_string()
        } else {
            format!("/{path_and_query}")
        };
        Uri::builder()
            .scheme("http")
            .authority(self.authority.as_str())
            .path_and_query(format!("{}{pq}", self.base_path))
            .build()
    }
}

/// What Host header the app sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// The Host the sender used (the relay's public host).
    #[default]
    Preserve,
    /// The target's `host:port`, for dev servers that check Host.
    Rewrite,
    /// This exact value.
    Value(HeaderValue),
}

impl FromStr for HostHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "preserve" => Ok(HostHeader::Preserve),
            "rewrite" => Ok(HostHeader::Rewrite),
            v => HeaderValue::from_str(v)
                .map(HostHeader::Value)
                .map_err(|_| format!("'{v}' is not a valid Host header value")),
        }
    }
}

/// How a [`Forwarder`] is set up.
#[derive(Clone)]
pub struct ForwarderConfig {
    /// Where requests go.
    pub target: Target,
    /// Host header policy.
    pub host_header: HostHeader,
    /// Where exchanges are recorded; `None` records nothing.
    pub recorder: Option<Recorder>,
    /// How much of each body the capture keeps.
    pub body_limits: BodyLimits,
}

/// Forwards requests to the local app. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    config: ForwarderConfig,
    client: Client<HttpConnector, Body>,
    in_flight: Arc<InFlight>,
    /// Permits for calls left to finish after their stream was reset.
    abandoned: Arc<tokio::sync::Semaphore>,
}

/// Most calls left to finish in the background at once (as many as the link
/// carries streams): a sender that starts and drops requests to a slow app
/// cannot pile up connections to it. Past this, a dropped call is cut off.
pub const MAX_ABANDONED_CALLS: usize = crate::tunnel::h2::MAX_CONCURRENT_STREAMS as usize;

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

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn headers_to_vec(headers: &HeaderMap) -> Vec<capture::Header> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

impl Forwarder {
    /// A forwarder with a pooled HTTP client.
    pub fn new(config: ForwarderConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Forwarder {
            inner: Arc::new(Inner {
                config,
                client,
                in_flight: Arc::default(),
                abandoned: Arc::new(tokio::sync::Semaphore::new(MAX_ABANDONED_CALLS)),
            }),
        }
    }

    /// The target requests go to.
    pub fn target(&self) -> &Target {
        &self.inner.config.target
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

    /// Handles one request from the relay (it carries [`RequestMeta`]).
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let meta = match parts
            .headers
            .remove(HDR_META)
            .map(|v| RequestMeta::decode(v.as_bytes()))
        {
            Some(Ok(m)) => m,
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    AgentError::BadRequest,
                    "whtunnel: request without valid relay metadata",
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
        // put it, then the rest, then the hop-by-hop headers HTTP/2 cannot carry.
        // Copied only when capture is on: with --no-capture these were a
        // third of the agent's allocations per request.
        let mut captured_headers = Vec::new();
        if self.recorder().is_some() {
            captured_headers.reserve(parts.headers.len() + 1);
            if let Some(host) = &meta.host {
                captured_headers.push(("host".to_string(), host.as_bytes().to_vec()));
            }
            captured_headers.extend(headers_to_vec(&parts.headers));
            captured_headers.extend(
                meta.hop_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
            );
        }

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        self.apply_host(&mut headers, meta.host.as_deref());
        add_forwarded(&mut headers, &meta);

        let timeout = Duration::from_millis(meta.timeout_ms.max(1));
        let mut request = Pending {
            received_at,
            started,
            method: parts.method.to_string(),
            path: path.clone(),
            headers: captured_headers,
            remote_addr: meta.remote_addr.clone(),
            relay_event_id: meta.event_id.clone(),
            replay_of: None,
            in_flight: None,
        };
        let body = body.map_err(BoxError::from).boxed_unsync();
        let attempt = meta.attempt.unwrap_or(0);
        let Some(event_id) = meta.event_id.filter(|_| meta.attempt.is_some()) else {
            if let (Some(_), Some(id)) = (self.recorder(), &request.relay_event_id) {
                request.in_flight = InFlight::try_register(&self.inner.in_flight, id).ok();
            }
            return self
                .send(parts.method, &path, headers, body, timeout, request)
                .await
                .0;
        };

        // A held event: the relay deletes it once acknowledged, so the ack
        // waits until the exchange is recorded. A redelivery of an event that
        // already got an answer (the ack was lost in a crash, or the link
        // dropped while the app worked on it) is acknowledged without
        // reaching the app twice; one still in progress is waited for.
        // One deadline for the whole delivery, waiting included: the relay
        // gives up on it soon after.
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(recorder) = self.recorder() {
            let Some(entry) = InFlight::acquire(&self.inner.in_flight, &event_id, deadline).await
            else {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    AgentError::InProgress,
                    &format!(
                        "whtunnel: an earlier delivery of event {event_id} is still in progress"
                    ),
                );
            };
            if let Some(prev) = recorder.find_relay_event(&event_id).await {
                if prev.status.is_some()
                    && prev
                        .error
                        .as_deref()
                        .is_none_or(|e| e == ERR_ANSWER_UNDELIVERED)
                {
                    tracing::info!(event = %event_id, "already delivered as #{}; not sending it again", prev.id);
                    let mut resp = Response::new(full(format!(
                        "whtunnel: event {event_id} was already delivered as #{}\n",
                        prev.id
                    )));
                    resp.headers_mut()
                        .insert(HDR_ACK, Ack::Duplicate.header_value());
                    return resp;
                }
            }
            request.in_flight = Some(entry);
        }
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (resp, id_rx) = self
            .send(parts.method, &path, headers, body, timeout, request)
            .await;
        let error = resp.headers().get(HDR_ERROR).map(AgentError::from_header);
        let app_answered = error.is_none();
        // The app got it but never answered in time, again and again: the
        // one event must not hold up every later one for days. Each attempt
        // is recorded; the user replays it once the handler is fixed.
        let gave_up =
            error == Some(Some(AgentError::AppTimeout)) && attempt >= HELD_TIMEOUT_ATTEMPTS;
        let (parts, body) = resp.into_parts();
        // The relay answered the sender long ago; nobody streams this, and
        // reading it to the end is what completes the recording.
        let body = collect_capped(body, HELD_RESPONSE_MAX).await;
        let recorded = match id_rx {
            Some(rx) => rx.await.ok().flatten().is_some(),
            None => true,
        };
        let mut resp = Response::from_parts(parts, full(body));
        if app_answered && recorded {
            resp.headers_mut()
                .insert(HDR_ACK, Ack::Recorded.header_value());
        } else if gave_up && recorded {
            tracing::warn!(
                event = %event_id,
                "the app did not answer this held event in time on {attempt} deliveries; \
                 acknowledged so that later events are not held up (it is recorded: replay it)"
            );
            resp.headers_mut()
                .insert(HDR_ACK, Ack::TimedOut.header_value());
        }
        resp
    }

    fn apply_host(&self, headers: &mut HeaderMap, original: Option<&str>) {
        let value = match &self.inner.config.host_header {
            HostHeader::Preserve => original.and_then(|h| HeaderValue::from_str(h).ok()),
            HostHeader::Rewrite => HeaderValue::from_str(self.target().authority()).ok(),
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
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Body,
        timeout: Duration,
        pending: Pending,
    ) -> (
        Response<Body>,
        Option<oneshot::Receiver<Option<ExchangeId>>>,
    ) {
        let cfg = &self.inner.config;
        let Ok(uri) = self.target().uri_for(path) else {
            let resp = error_response(
                StatusCode::BAD_REQUEST,
                AgentError::BadRequest,
                "whtunnel: malformed request path",
            );
            return (resp, None);
        };
        let (body, req_done) = match &cfg.recorder {
            Some(_) => {
                let (b, rx) = capture::tee(body, &cfg.body_limits);
                (b.boxed_unsync(), Some(rx))
            }
            None => (body, None),
        };
        let mut out = Request::new(body);
        *out.method_mut() = method;
        *out.uri_mut() = uri;
        *out.headers_mut() = headers;

        // If the relay cancels the stream (sender gone, relay timeout, link
        // lost) this future is dropped mid-await. The app may already be
        // working on the request, so the guard lets the call finish in the
        // background and records what the app answered.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut guard = CallGuard {
            call: Some(self.inner.client.request(out)),
            deadline,
            fwd: cfg.recorder.is_some().then(|| self.clone()),
            armed: cfg
                .recorder
                .clone()
                .map(|r| (r, pending, self.target().to_string(), req_done)),
        };
        let call = guard.call.as_mut().expect("set just above");
        let result = tokio::time::timeout_at(deadline, call).await;
        guard.call = None;
        let recording = guard.armed.take();

        let (resp, error) = match result {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                let app_headers = if recording.is_some() {
                    headers_to_vec(&parts.headers)
                } else {
                    Vec::new()
                };
                strip_hop_by_hop(&mut parts.headers);
                strip_protocol_headers(&mut parts.headers);
                let body = body.map_err(BoxError::from).boxed_unsync();
                let Some((recorder, pending, target, req_done)) = recording else {
                    return (Response::from_parts(parts, body), None);
                };
                let (body, resp_done) = capture::tee(body, &cfg.body_limits);
                let (id_tx, id_rx) = oneshot::channel();
                tokio::spawn(record(
                    recorder,
                    pending,
                    target,
                    req_done,
                    Some((parts.status.as_u16(), app_headers, resp_done)),
                    None,
                    id_tx,
                ));
                let resp = Response::from_parts(parts, body.boxed_unsync());
                return (resp, Some(id_rx));
            }
            Ok(Err(e)) => {
                let reason = describe_client_error(&e, self.target());
                let resp =
                    error_response(StatusCode::BAD_GATEWAY, AgentError::AppUnreachable, &reason);
                (resp, reason)
            }
            Err(_) => timeout_response(self.target(), timeout),
        };
        let Some((recorder, pending, target, req_done)) = recording else {
            return (resp, None);
        };
        // The answer whtunnel made itself is recorded as the response.
        let body = Bytes::from(format!("{error}\n"));
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(CapturedBody {
            total_len: body.len() as u64,
            data: BodyData::Memory(body),
            truncated: false,
        });
        let status = resp.status().as_u16();
        let resp_headers = headers_to_vec(resp.headers());
        let (id_tx, id_rx) = oneshot::channel();
        tokio::spawn(record(
            recorder,
            pending,
            target,
            req_done,
            Some((status, resp_headers, rx)),
            Some(error),
            id_tx,
        ));
        (resp, Some(id_rx))
    }

    /// Re-sends a stored request (or its edited form) to the target and
    /// records the new exchange as a replay of it.
    pub async fn replay(&self, original: &Exchange, edit: Option<RequestEdit>) -> ReplayOutcome {
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
        let fwd = self;
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
        fwd.apply_host(&mut headers, original_host.as_deref());
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
        };
        let (resp, id_rx) = fwd
            .send(
                method,
                &path,
                headers,
                full(body),
                crate::units::DEFAULT_RESPONSE_TIMEOUT,
                pending,
            )
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

fn method_expects_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

fn add_forwarded(headers: &mut HeaderMap, meta: &RequestMeta) {
    if let Some(addr) = &meta.remote_addr {
        let ip = addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| addr.clone());
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&meta.proto) {
        headers.insert("x-forwarded-proto", v);
    }
    if let Some(host) = meta
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert("x-forwarded-host", host);
    }
}

fn describe_client_error(e: &hyper_util::client::legacy::Error, target: &Target) -> String {
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

/// Deliveries of one held event that may time out before the agent
/// acknowledges it anyway ([`Ack::TimedOut`]): the app is up, but hangs on it.
pub const HELD_TIMEOUT_ATTEMPTS: u32 = 3;

/// Finishes a call to the app whose forwarding future was dropped before
/// the app answered: the relay reset the stream because the sender went
/// away, its own deadline passed, or the link dropped. The request may
/// already be in the app's hands; cutting it off would leave the app's work
/// unrecorded, and a held redelivery of the same event could not tell that
/// the app already has it.
struct CallGuard {
    call: Option<hyper_util::client::legacy::ResponseFuture>,
    deadline: tokio::time::Instant,
    /// Set when capture is on (only then is a dropped call finished).
    fwd: Option<Forwarder>,
    armed: Option<(
        Recorder,
        Pending,
        String,
        Option<oneshot::Receiver<CapturedBody>>,
    )>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let (Some(call), Some(fwd), Some((recorder, pending, target, req_done))) =
            (self.call.take(), self.fwd.take(), self.armed.take())
        else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let deadline = self.deadline;
        let permit = fwd.inner.abandoned.clone().try_acquire_owned().ok();
        handle.spawn(async move {
            const RESET: &str =
                "cancelled: the stream was reset (sender hung up, relay timeout or lost link)";
            let (response, error) = match &permit {
                None => {
                    drop(call);
                    let why = format!(
                        "{RESET} while {MAX_ABANDONED_CALLS} earlier calls were still finishing"
                    );
                    (None, why)
                }
                Some(_) => match tokio::time::timeout_at(deadline, call).await {
                    Ok(Ok(resp)) => {
                        let (parts, body) = resp.into_parts();
                        let body = body.map_err(BoxError::from).boxed_unsync();
                        let (mut body, done) = capture::tee(body, &fwd.inner.config.body_limits);
                        // Nobody else reads it; reading it completes the capture.
                        let drained = async { while let Some(Ok(_)) = body.frame().await {} };
                        let _ = tokio::time::timeout_at(deadline, drained).await;
                        drop(body);
                        let headers = headers_to_vec(&parts.headers);
                        let response = Some((parts.status.as_u16(), headers, done));
                        (response, ERR_ANSWER_UNDELIVERED.to_string())
                    }
                    Ok(Err(e)) => {
                        let reason = describe_client_error(&e, fwd.target());
                        let why =
                            format!("{RESET}, then {}", reason.trim_start_matches("whtunnel: "));
                        (None, why)
                    }
                    Err(_) => (None, format!("{RESET}, and the app did not answer in time")),
                },
            };
            let (id_tx, _) = oneshot::channel();
            record(
                recorder,
                pending,
                target,
                req_done,
                response,
                Some(error),
                id_tx,
            )
            .await;
            drop(permit);
        });
    }
}

/// The recorded error of an exchange the app answered after its sender was
/// gone: the app has the request (a redelivery must not send it again), but
/// nobody received the answer. Stored in capture databases and compared on
/// redelivery: changing the text makes older records count as failed.
pub const ERR_ANSWER_UNDELIVERED: &str =
    "answered after the sender was gone (hung up, relay timeout or lost link); the answer reached nobody";

/// Exchanges for relay events that are still in progress, by event id, so
/// that a redelivery of an event waits for the attempt already under way
/// (the link dropped while the app worked on it) instead of reaching the app
/// a second time.
#[derive(Default)]
struct InFlight(Mutex<InFlightMap>);

#[derive(Default)]
struct InFlightMap {
    /// Tells entries apart, so that one only ever removes itself.
    next: u64,
    running: HashMap<String, (u64, CancellationToken)>,
}

impl InFlight {
    /// Registers an exchange for `id`; when one is already in progress,
    /// returns the token cancelled when it ends instead.
    fn try_register(set: &Arc<InFlight>, id: &str) -> Result<InFlightEntry, CancellationToken> {
        let mut map = set.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, running)) = map.running.get(id) {
            return Err(running.clone());
        }
        map.next += 1;
        let generation = map.next;
        let done = CancellationToken::new();
        map.running
            .insert(id.to_string(), (generation, done.clone()));
        Ok(InFlightEntry {
            set: set.clone(),
            id: id.to_string(),
            generation,
            done,
        })
    }

    /// Registers an exchange for `id` once no other one for it is in
    /// progress; `None` if one still is at `deadline`.
    async fn acquire(
        set: &Arc<InFlight>,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Option<InFlightEntry> {
        loop {
            match InFlight::try_register(set, id) {
                Ok(entry) => return Some(entry),
                Err(running) => {
                    tokio::time::timeout_at(deadline, running.cancelled())
                        .await
                        .ok()?;
                }
            }
        }
    }
}

/// One in-progress exchange in [`InFlight`]; dropping it ends it.
struct InFlightEntry {
    set: Arc<InFlight>,
    id: String,
    generation: u64,
    done: CancellationToken,
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        let mut map = self.set.0.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .running
            .get(&self.id)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            map.running.remove(&self.id);
        }
        drop(map);
        self.done.cancel();
    }
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

/// The parts of an exchange known before the body and answer are.
struct Pending {
    received_at: DateTime<Utc>,
    started: Instant,
    method: String,
    path: String,
    headers: Vec<capture::Header>,
    remote_addr: Option<String>,
    relay_event_id: Option<String>,
    replay_of: Option<ExchangeId>,
    /// Holds off redeliveries of the same relay event until this exchange
    /// is queued for storing.
    in_flight: Option<InFlightEntry>,
}

async fn captured(rx: Option<oneshot::Receiver<CapturedBody>>) -> CapturedBody {
    match rx {
        Some(rx) => rx.await.unwrap_or(CapturedBody {
            truncated: true,
            ..CapturedBody::default()
        }),
        None => CapturedBody::default(),
    }
}

/// Waits for both bodies to finish streaming, then records the exchange.
async fn record(
    recorder: Recorder,
    p: Pending,
    target: String,
    req_done: Option<oneshot::Receiver<CapturedBody>>,
    response: Option<(u16, Vec<capture::Header>, oneshot::Receiver<CapturedBody>)>,
    error: Option<String>,
    id_tx: oneshot::Sender<Option<ExchangeId>>,
) {
    let request_body = captured(req_done).await;
    let response = match response {
        Some((status, headers, rx)) => Some(RecordedResponse {
            status,
            headers,
            body: captured(Some(rx)).await,
        }),
        None => None,
    };
    let in_flight = p.in_flight;
    let ex = Exchange {
        id: None,
        received_at: p.received_at,
        target,
        remote_addr: p.remote_addr,
        request: RecordedRequest {
            method: p.method,
            path: p.path,
            headers: p.headers,
            body: request_body,
        },
        response,
        duration_ms: p.started.elapsed().as_secs_f64() * 1000.0,
        error,
        // Recognised by the recorder's writer thread, off this runtime.
        event: None,
        replay_of: p.replay_of,
        relay_event_id: p.relay_event_id,
    };
    // Nobody asked for the id (a live exchange): do not wait for it, which
    // lets the writer group it with others and spares it a wake-up of this
    // runtime per exchange.
    if id_tx.is_closed() {
        recorder.record_in_background(ex);
        drop(in_flight);
        return;
    }
    let stored = recorder.record(ex);
    // Queued: a lookup from here on finds it (the writer answers lookups
    // after what was queued before them).
    drop(in_flight);
    let id = stored.await.ok().and_then(Result::ok);
    let _ = id_tx.send(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t: Target = "3000".parse().unwrap();
        assert_eq!(t.to_string(), "http://localhost:3000");
        assert_eq!(
            t.uri_for("/a?x=1").unwrap().to_string(),
            "http://localhost:3000/a?x=1"
        );
        let t: Target = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:8080");
        let t: Target = "http://localhost:3000/base/".parse().unwrap();
        assert_eq!(t.to_string(), "http://localhost:3000/base");
        assert_eq!(
            t.uri_for("/hooks/x?y=2").unwrap().to_string(),
            "http://localhost:3000/base/hooks/x?y=2"
        );
        let t: Target = "http://example.test".parse().unwrap();
        assert_eq!(t.authority(), "example.test:80");
        for bad in [
            "0",
            "https://x:1",
            "ftp://x",
            "http://",
            "http://a:1/?q=1",
            "not a target",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        let e = "https://x:1".parse::<Target>().unwrap_err().to_string();
        assert!(e.contains("https targets are not supported"), "{e}");
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
    }

    #[test]
    fn host_header_policy() {
        assert_eq!(
            "preserve".parse::<HostHeader>().unwrap(),
            HostHeader::Preserve
        );
        assert_eq!(
            "rewrite".parse::<HostHeader>().unwrap(),
            HostHeader::Rewrite
        );
        assert_eq!(
            "api.local".parse::<HostHeader>().unwrap(),
            HostHeader::Value(HeaderValue::from_static("api.local"))
        );
        assert!("bad\nvalue".parse::<HostHeader>().is_err());
    }
}
