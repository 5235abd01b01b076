//! Delivering a tunnel's held events once its agent is back (the drain):
//! several at once, dispatched in arrival order; a failed one retried with
//! back-off without holding up the rest; one that keeps failing moved to
//! the dead-letter list. `strict` order keeps one at a time. What each
//! mode guarantees is written down in `docs/protocol.md`.
//!
//! The store is [`super::held`]; a session starts the drain through
//! [`super::agents::kick_delivery`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::held::{HeldEvent, HeldStore};
use super::Shared;
use crate::tunnel::link::LinkClient;
pub use crate::tunnel::protocol::HoldOrder;
use crate::tunnel::protocol::{
    strip_meta_headers, AgentError, Control, LinkMeta, HDR_ACK, HDR_CONTROL, HDR_DEAD, HDR_ERROR,
    HDR_EVENT_ID,
};

/// How held events are delivered once their agent is back.
#[derive(Debug, Clone, Copy)]
pub struct HoldDelivery {
    /// Held events in flight at once per tunnel (an agent may ask for fewer).
    pub concurrency: u32,
    /// The relay's order for tunnels whose agent did not choose.
    pub order: HoldOrder,
    /// Failures of one event (see `docs/protocol.md` for which count)
    /// after which it moves to the dead-letter list.
    pub max_failures: u32,
    /// First back-off before a failed event is tried again; it doubles.
    pub retry_min: Duration,
    /// Longest back-off between tries.
    pub retry_max: Duration,
}

impl Default for HoldDelivery {
    /// 16 at once, concurrent order, 8 failures, back-off 1 s doubling to 60 s.
    fn default() -> Self {
        HoldDelivery {
            concurrency: 16,
            order: HoldOrder::Concurrent,
            max_failures: 8,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl HoldDelivery {
    /// The back-off after an event's `attempts`-th failed try.
    pub(crate) fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(16);
        (self.retry_min * (1u32 << doublings)).min(self.retry_max)
    }
}

/// How one delivery attempt ended.
enum Attempt {
    /// Acknowledged by the agent and deleted here.
    Delivered,
    /// Not acknowledged; retried later.
    Failed { error: String, kind: Failure },
    /// The agent's link is gone: the next session takes over.
    LinkGone,
}

/// Why an attempt failed, which decides whether it is the event's fault.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The app took the event and did not answer in time.
    Timeout,
    /// The app refused the connection.
    Unreachable,
    /// The app took the connection and broke it off without answering.
    BrokeOff,
    /// Anything else (an earlier delivery still in progress, the agent
    /// could not record it...): never the event's fault.
    Other,
}

/// One tunnel's drain, bound to one agent session.
pub(crate) struct Delivery {
    pub(crate) shared: Arc<Shared>,
    pub(crate) held: Arc<HeldStore>,
    pub(crate) name: String,
    pub(crate) session: u64,
    /// In flight at once (1 in strict order).
    pub(crate) concurrency: usize,
    /// Strict order: nothing overtakes a failed event.
    pub(crate) strict: bool,
}

impl Delivery {
    /// Drains the queue, deleting each event only when the agent
    /// acknowledges it was recorded. When this session's link ends first,
    /// the queue is handed to the session that replaced it, if any.
    pub(crate) async fn run(self, sender: LinkClient, closed: CancellationToken) {
        if self.deliver_all(&sender, &closed).await {
            return;
        }
        self.held.stop_delivery(&self.name);
        super::agents::kick_delivery(&self.shared, &self.name, Some(self.session));
    }

    /// True when the queue is empty; false when the link ended first.
    async fn deliver_all(&self, sender: &LinkClient, closed: &CancellationToken) -> bool {
        let cfg = self.shared.config.hold_delivery;
        let (held, name) = (&self.held, &self.name);
        // Events are read forward from `cursor` in arrival order; failed
        // ones wait in `retries` (by position, so retried in arrival order).
        let mut cursor = 0i64;
        let mut retries: BTreeMap<i64, (Instant, HeldEvent)> = BTreeMap::new();
        let mut in_flight: JoinSet<(HeldEvent, Attempt)> = JoinSet::new();
        // The last acknowledged delivery: a refused or broken-off
        // connection is the event's fault only if the app answered other
        // events recently (within `retry_max`); otherwise the app is down.
        let mut last_success: Option<Instant> = None;
        // The app looks down (every try refused): pause the whole drain,
        // then probe with one event at a time until one gets through.
        let mut app_down = false;
        let mut paused_until: Option<Instant> = None;
        let mut down_backoff = cfg.retry_min;
        loop {
            if closed.is_cancelled() || sender.is_closed() {
                return false;
            }
            let now = Instant::now();
            if paused_until.is_some_and(|t| t <= now) {
                paused_until = None;
            }
            let limit = if self.strict || app_down {
                1
            } else {
                self.concurrency
            };
            while paused_until.is_none() && in_flight.len() < limit {
                let pick = if app_down || self.strict {
                    // Nothing overtakes a failed event (strict), and a
                    // probe of a down app tries the oldest failure first.
                    match retries.first_key_value() {
                        Some((_, (at, _))) if self.strict && !app_down && *at > now => None,
                        Some((&seq, _)) => Some(seq),
                        None => None,
                    }
                } else {
                    retries
                        .iter()
                        .find(|(_, (at, _))| *at <= now)
                        .map(|(&seq, _)| seq)
                };
                let ev = match pick {
                    Some(seq) => retries.remove(&seq).map(|(_, ev)| ev),
                    None if self.strict && !retries.is_empty() => None,
                    None => {
                        let pending = held.state(name).map_or(0, |s| s.pending);
                        let tracked = (in_flight.len() + retries.len()) as u64;
                        if pending > tracked {
                            let (h, n) = (held.clone(), name.clone());
                            match tokio::task::spawn_blocking(move || h.next_after(&n, cursor))
                                .await
                            {
                                Ok(Ok(next)) => next,
                                Ok(Err(e)) => {
                                    tracing::warn!(tunnel = %name, "reading held events failed: {e}");
                                    None
                                }
                                Err(_) => None,
                            }
                        } else {
                            None
                        }
                    }
                };
                let Some(ev) = ev else { break };
                cursor = cursor.max(ev.seq);
                let left = held.state(name).map_or(0, |s| s.pending);
                in_flight.spawn(attempt(
                    held.clone(),
                    sender.clone(),
                    ev,
                    self.shared.config.response_timeout,
                    left,
                ));
            }

            if in_flight.is_empty() && retries.is_empty() && paused_until.is_none() {
                if held.finish_delivery(name) {
                    return true;
                }
                // Counted but not yet readable, or put back behind the
                // cursor: read from the start again after a moment.
                cursor = 0;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    () = closed.cancelled() => return false,
                }
                continue;
            }

            // Wake for the next retry, the end of a pause, or (with room
            // to spare) to look for events stored meanwhile.
            let mut wake = retries.values().map(|(at, _)| *at).min();
            if let Some(p) = paused_until {
                wake = Some(wake.map_or(p, |w| w.max(p)));
            }
            if paused_until.is_none() && in_flight.len() < limit {
                let poll = now + Duration::from_millis(25);
                wake = Some(wake.map_or(poll, |w| w.min(poll)));
            }
            let done = tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => done,
                () = sleep_until(wake) => continue,
                () = closed.cancelled() => return false,
            };
            let Ok((mut ev, outcome)) = done else {
                continue;
            };
            match outcome {
                Attempt::Delivered => {
                    last_success = Some(Instant::now());
                    app_down = false;
                    down_backoff = cfg.retry_min;
                }
                Attempt::LinkGone => return false,
                Attempt::Failed { error, kind } => {
                    ev.attempts += 1;
                    let others_answered =
                        last_success.is_some_and(|t| t.elapsed() <= cfg.retry_max);
                    let strike = kind.strike(others_answered);
                    if kind == Failure::Unreachable && !others_answered && !app_down {
                        app_down = true;
                        paused_until = Some(Instant::now() + down_backoff);
                        tracing::info!(tunnel = %name, "the app is not reachable; held events wait {down_backoff:?}");
                        down_backoff = (down_backoff * 2).min(cfg.retry_max);
                    } else if app_down {
                        paused_until = Some(Instant::now() + down_backoff);
                        down_backoff = (down_backoff * 2).min(cfg.retry_max);
                    }
                    let (h, e) = (held.clone(), ev.clone());
                    let err = error.clone();
                    let max = cfg.max_failures;
                    let dead =
                        tokio::task::spawn_blocking(move || h.failed(&e, &err, strike, max)).await;
                    if let Ok(Ok(true)) = dead {
                        tracing::warn!(
                            tunnel = %name, event = %ev.event.event_id,
                            "held event moved to the dead-letter list after {max} failures ({error}); \
                             see `whtunnel held list`"
                        );
                        let count = held.state(name).map_or(0, |s| s.dead);
                        tokio::spawn(tell_dead_letter(
                            sender.clone(),
                            Control::DeadLetter,
                            ev.event.event_id.clone(),
                            count,
                        ));
                        continue;
                    }
                    let backoff = cfg.backoff(ev.attempts);
                    tracing::info!(tunnel = %name, event = %ev.event.event_id, "held event not delivered ({error}); retrying in {backoff:?}");
                    retries.insert(ev.seq, (Instant::now() + backoff, ev));
                }
            }
        }
    }
}

/// Tells `name`'s connected agent, if any, that dead-lettered event
/// `event_id` was retried or dropped ([`Control::DeadLetterCleared`]).
pub(crate) fn tell_dead_letter_cleared(shared: &Arc<Shared>, name: &str, event_id: &str) {
    let Some(held) = shared.held.as_ref() else {
        return;
    };
    let count = held.state(name).map_or(0, |s| s.dead);
    let sender = {
        let tunnels = shared.tunnels.lock();
        tunnels
            .get(name)
            .filter(|s| !s.closed.is_cancelled())
            .map(|s| s.sender.clone())
    };
    if let Some(sender) = sender {
        tokio::spawn(tell_dead_letter(
            sender,
            Control::DeadLetterCleared,
            event_id.to_string(),
            count,
        ));
    }
}

/// Tells the agent that held event `event_id` moved to the dead-letter
/// list ([`Control::DeadLetter`]) or left it ([`Control::DeadLetterCleared`]),
/// which now holds `count` of its tunnel's events, so the user sees it
/// without asking.
pub(crate) async fn tell_dead_letter(
    sender: LinkClient,
    control: Control,
    event_id: String,
    count: u64,
) {
    let mut req = Request::new(crate::tunnel::Body::default());
    *req.uri_mut() = http::Uri::from_static("http://tunnel/_whtunnel/dead-letter");
    let h = req.headers_mut();
    h.insert(HDR_CONTROL, control.header_value());
    h.insert(HDR_DEAD, HeaderValue::from(count));
    // Event ids are the relay's own (ULID-like); one that is not a valid
    // header value is not announced.
    let Ok(id) = HeaderValue::from_str(&event_id) else {
        return;
    };
    h.insert(HDR_EVENT_ID, id);
    if let Ok(resp) = sender.send(req).await {
        let _ = resp.into_body().collect().await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One delivery attempt of `ev`; `left`: the tunnel's queue length, sent
/// along for the agent to show.
async fn attempt(
    held: Arc<HeldStore>,
    sender: LinkClient,
    ev: HeldEvent,
    timeout: Duration,
    left: u64,
) -> (HeldEvent, Attempt) {
    let h = held.clone();
    let seq = ev.seq;
    let _ = tokio::task::spawn_blocking(move || h.attempted(seq)).await;
    let Some(req) = held_request(&ev, timeout, left, sender.link_meta()) else {
        tracing::warn!(event = %ev.event.event_id, "dropping a held event that cannot be sent");
        let (h, e) = (held.clone(), ev.clone());
        let _ = tokio::task::spawn_blocking(move || h.remove(&e)).await;
        return (ev, Attempt::Delivered);
    };
    let outcome = match send_held(&sender, req, timeout).await {
        Sent::Acked => {
            let (h, e) = (held.clone(), ev.clone());
            if let Ok(Err(err)) = tokio::task::spawn_blocking(move || h.remove(&e)).await {
                tracing::warn!(event = %ev.event.event_id, "could not delete a delivered event: {err}");
            }
            Attempt::Delivered
        }
        Sent::LinkGone => Attempt::LinkGone,
        Sent::Failed { error, kind } => Attempt::Failed { error, kind },
    };
    (ev, outcome)
}

/// How sending one held event to the agent ended; shared by this drain and
/// the cluster's ([`crate::cluster::held`]).
pub(crate) enum Sent {
    /// The agent acknowledged it: recorded, or known as answered.
    Acked,
    /// Not acknowledged, with the reason and whose fault it may be.
    Failed {
        /// One line for logs and `whtunnel held list`.
        error: String,
        /// What kind of failure (see [`Failure::strike`]).
        kind: Failure,
    },
    /// The agent's link is gone: the next session takes over.
    LinkGone,
}

impl Failure {
    /// Whether this failure counts against the event (towards the
    /// dead-letter list). `others_answered`: the app answered another held
    /// event of the tunnel recently (within `retry_max`), so a refused
    /// connection is this event's doing rather than the app being down.
    pub(crate) fn strike(self, others_answered: bool) -> bool {
        matches!(self, Failure::Timeout | Failure::BrokeOff)
            || (self == Failure::Unreachable && others_answered)
    }
}

/// Sends one held event's request on the agent's link and reads the
/// agent's verdict.
pub(crate) async fn send_held(
    sender: &LinkClient,
    req: Request<crate::tunnel::Body>,
    timeout: Duration,
) -> Sent {
    let failed = |error: String, kind| Sent::Failed { error, kind };
    match tokio::time::timeout(timeout, sender.send(req)).await {
        Err(_) => failed(
            format!("no answer within {}s", timeout.as_secs_f32()),
            Failure::Timeout,
        ),
        Ok(Err(e)) if sender.is_closed() || e.is_link_failure() => Sent::LinkGone,
        Ok(Err(e)) => failed(format!("the exchange failed: {e}"), Failure::Other),
        Ok(Ok(resp)) => {
            // Any ack, even a kind this version does not know, means the
            // agent is done with the event.
            let acked = resp.headers().contains_key(HDR_ACK);
            let error = resp
                .headers()
                .get(HDR_ERROR)
                .and_then(AgentError::from_header);
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if acked {
                return Sent::Acked;
            }
            match error {
                Some(AgentError::AppUnreachable) => failed(
                    "the app refused the connection".into(),
                    Failure::Unreachable,
                ),
                Some(AgentError::AppBrokeOff) => failed(
                    "the app broke the connection off without answering".into(),
                    Failure::BrokeOff,
                ),
                Some(AgentError::AppTimeout) => {
                    failed("the app did not answer in time".into(), Failure::Timeout)
                }
                Some(AgentError::InProgress) => failed(
                    "an earlier delivery is still in progress".into(),
                    Failure::Other,
                ),
                _ => failed(
                    format!(
                        "the agent did not acknowledge it (status {})",
                        status.as_u16()
                    ),
                    Failure::Other,
                ),
            }
        }
    }
}

pub(crate) fn held_request(
    ev: &HeldEvent,
    timeout: Duration,
    left: u64,
    link: &LinkMeta,
) -> Option<Request<crate::tunnel::Body>> {
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
    meta.held_left = Some(left);
    meta.body_blake3 =
        (!ev.event.body.is_empty()).then(|| crate::tunnel::body_hash::digest(&ev.event.body));
    meta.timeout_ms = super::agent_timeout(timeout).as_millis() as u64;
    meta.repair_stored(link);
    let method = http::Method::from_bytes(ev.event.method.as_bytes()).ok()?;
    let body = Full::new(ev.event.body.clone())
        .map_err(|never| match never {})
        .boxed_unsync();
    // Events stored by an older relay may carry a sender's copies.
    strip_meta_headers(&mut headers);
    super::public::tunnel_request(method, &ev.event.path, headers, &meta, link, body)
}
