//! Held events in JetStream: any relay of the cluster can hold a webhook
//! (202) for a tunnel whose agent is connected nowhere, and the relay that
//! holds the agent delivers it, acknowledging it to JetStream only after the
//! agent acknowledged that it recorded the event, as the one-relay drain
//! does with SQLite ([`crate::relay::drain`]).
//!
//! - Stream [`HELD_STREAM`], subject `whtunnel.held.<name>` per tunnel,
//!   file storage, replicated, work-queue retention (an acknowledged event
//!   is removed, once), `discard new` with a per-subject cap: a full tunnel
//!   refuses new events (503) instead of dropping old ones. The event's id
//!   is the publish's `Nats-Msg-Id`, so a retried publish is stored once.
//! - One message per event: a JSON envelope line, then the body. A body
//!   over [`INLINE_MAX`] (NATS messages are 1 MiB by default) goes to the
//!   object store [`BODIES_BUCKET`] (JetStream chunks it) and the envelope
//!   names it; it is deleted after the event is acknowledged.
//! - Known tunnel names and their offline policy: KV [`NAMES_BUCKET`],
//!   kept for the hold age cap since the agent was last seen.
//! - Delivery: a durable pull consumer per tunnel (explicit ack,
//!   `max_ack_pending` = the drain's concurrency, 1 in strict order). A
//!   failed try is negatively acknowledged with the drain's back-off;
//!   JetStream redelivers (a negatively acknowledged message stays pending,
//!   so in strict order nothing overtakes it).
//! - Failed tries of an event (count, strikes, last error): KV
//!   [`FAILURES_BUCKET`], key `<name>.<event-id>`, deleted once the event
//!   leaves the queue. At the drain's `max_failures` strikes (the same rule
//!   as one relay, [`crate::relay::drain`]) the event moves to the
//!   dead-letter stream [`DEAD_STREAM`], subject `whtunnel.dead.<name>`:
//!   kept, listed, no longer delivered until retried.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::relay::drain::{send_held, tell_dead_letter, HoldDelivery, Sent};
use crate::relay::held::{Caps, HeldEvent, HeldSummary, NewEvent, OfflinePolicy};
use crate::tunnel::link::LinkClient;
use crate::tunnel::protocol::Control;
use crate::tunnel::protocol::RequestMeta;

/// The stream of held events.
pub const HELD_STREAM: &str = "whtunnel_held";
/// Object store for held bodies too large for one message.
pub const BODIES_BUCKET: &str = "whtunnel_bodies";
/// Known tunnel names and their offline policy.
pub const NAMES_BUCKET: &str = "whtunnel_names";
/// How long strict order waits for JetStream to count a tunnel's backlog
/// before the webhook is refused (503) rather than risk overtaking it.
pub const BACKLOG_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The stream of dead-lettered events.
pub const DEAD_STREAM: &str = "whtunnel_dead";
/// Failed tries of held events (strikes and last error).
pub const FAILURES_BUCKET: &str = "whtunnel_failures";
/// Largest body carried inside the event's message.
pub const INLINE_MAX: usize = 768 * 1024;

fn subject(name: &str) -> String {
    format!("whtunnel.held.{name}")
}

fn dead_subject(name: &str) -> String {
    format!("whtunnel.dead.{name}")
}

/// Drops every held and dead-lettered event of `name` from the cluster's
/// streams: the name changed hands (expired, or claimed afresh), and a next
/// owner must never receive the last one's events.
pub(crate) async fn purge_name(js: &jetstream::Context, name: &str) -> Result<(), String> {
    for (stream, filter) in [
        (HELD_STREAM, subject(name)),
        (DEAD_STREAM, dead_subject(name)),
    ] {
        // Both streams exist: every relay creates them when it joins.
        js.get_stream(stream)
            .await
            .map_err(|e| e.to_string())?
            .purge()
            .filter(filter)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The failures bucket's key for one event; `None` when the id cannot be a
/// key (ids are the relay's own, so only a corrupted one).
fn failures_key(name: &str, event_id: &str) -> Option<String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(name) && ok(event_id)).then(|| format!("{name}.{event_id}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why an event could not be held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The tunnel's (or the cluster's) held-event cap is reached.
    #[error("the held-event queue is full")]
    Full,
    /// JetStream did not take it.
    #[error("JetStream did not store the event: {0}")]
    Unavailable(String),
}

/// Everything of an event but its body, as stored.
#[derive(Clone, Serialize, Deserialize)]
struct Envelope {
    event_id: String,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    meta: RequestMeta,
    /// Object-store name of the body, when not inline.
    body_object: Option<String>,
    /// The body's length (absent in events held by older relays: then the
    /// inline body's length).
    #[serde(default)]
    body_len: Option<u64>,
    /// Set on a dead-lettered copy.
    #[serde(default)]
    dead: Option<DeadMark>,
}

/// Why and when an event was dead-lettered.
#[derive(Clone, Serialize, Deserialize)]
struct DeadMark {
    at_ms: i64,
    attempts: u32,
    last_error: String,
}

/// An event's failed tries, in [`FAILURES_BUCKET`].
#[derive(Default, Serialize, Deserialize)]
struct Failures {
    /// Failed tries, whatever the cause.
    tries: u32,
    /// Failures counted against the event (see `Failure::strike`).
    strikes: u32,
    last_error: Option<String>,
}

/// A tunnel name's entry in [`NAMES_BUCKET`].
#[derive(Serialize, Deserialize)]
struct Known {
    policy: String,
    /// SHA-256 (hex) of the plain token that last held the name: only it
    /// may list or change the tunnel's held events.
    #[serde(default)]
    token: Option<String>,
}

/// One stored message read back: its sequence, envelope, body length and
/// inline body (kept only for the message a search found).
struct Stored {
    seq: u64,
    envelope: Envelope,
    body_len: u64,
    body: Bytes,
}

/// A tunnel's held and dead-lettered events, as the held API lists them.
pub struct HeldListing {
    /// Events waiting for delivery.
    pub pending: u64,
    /// Events on the dead-letter list.
    pub dead: u64,
    /// Both kinds, oldest first, at most the limit asked for.
    pub events: Vec<HeldSummary>,
}

/// Why a held-API change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The tunnel's queue is at its cap: the retried event does not fit.
    #[error("the tunnel's held-event queue is full")]
    Full,
    /// JetStream could not be read or written.
    #[error("JetStream: {0}")]
    Unavailable(String),
}

/// The cluster's held events.
pub struct HeldStream {
    js: jetstream::Context,
    stream: stream::Stream,
    dead: stream::Stream,
    bodies: object_store::ObjectStore,
    names: kv::Store,
    failures: kv::Store,
    caps: Caps,
}

/// What one delivery try needs besides the message.
struct Try<'a> {
    name: &'a str,
    sender: &'a LinkClient,
    closed: &'a CancellationToken,
    cfg: HoldDelivery,
    timeout: Duration,
    /// When the app last acknowledged one of this session's held events.
    last_success: &'a parking_lot::Mutex<Option<std::time::Instant>>,
}

/// An event's message: the envelope's JSON line, then the inline body.
fn encode(envelope: &Envelope, body: Option<&[u8]>) -> Result<Bytes, String> {
    let mut payload = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
    payload.push(b'\n');
    if let Some(body) = body {
        payload.extend_from_slice(body);
    }
    Ok(Bytes::from(payload))
}

fn summary(m: &Stored, attempts: u32, last_error: Option<String>, dead: bool) -> HeldSummary {
    HeldSummary {
        event_id: m.envelope.event_id.clone(),
        received_at_ms: m.envelope.meta.received_at_ms,
        attempts,
        method: m.envelope.method.clone(),
        path: m.envelope.path.clone(),
        body_bytes: m.body_len,
        last_error,
        dead,
    }
}

impl HeldStream {
    /// Opens (or creates) the stream and buckets with `caps` as limits.
    pub async fn open(
        js: &jetstream::Context,
        caps: Caps,
        replicas: usize,
    ) -> Result<HeldStream, String> {
        let config = stream::Config {
            name: HELD_STREAM.to_string(),
            description: Some("whtunnel: webhooks held while their agent is away".into()),
            subjects: vec!["whtunnel.held.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_messages_per_subject: caps.max_events.min(i64::MAX as u64) as i64,
            max_bytes: caps.max_total_bytes.min(i64::MAX as u64) as i64,
            max_age: caps.max_age,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120).min(caps.max_age),
            ..Default::default()
        };
        let stream = ensure_stream(js, config).await?;
        // Dead letters are rare: a slice of the byte cap, reserved apart.
        let dead = stream::Config {
            name: DEAD_STREAM.to_string(),
            description: Some("whtunnel: held webhooks that failed too often".into()),
            subjects: vec!["whtunnel.dead.>".into()],
            retention: stream::RetentionPolicy::Limits,
            max_messages_per_subject: caps.max_events.min(i64::MAX as u64) as i64,
            max_bytes: (caps.max_total_bytes / 8).clamp(1 << 20, i64::MAX as u64) as i64,
            max_age: caps.max_age,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120).min(caps.max_age),
            ..Default::default()
        };
        let dead = ensure_stream(js, dead).await?;
        let bodies = match js.get_object_store(BODIES_BUCKET).await {
            Ok(b) => b,
            Err(_) => {
                let config = object_store::Config {
                    bucket: BODIES_BUCKET.to_string(),
                    description: Some("whtunnel: bodies of large held webhooks".into()),
                    max_age: caps.max_age,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                };
                match js.create_object_store(config).await {
                    Ok(b) => b,
                    Err(e) => js
                        .get_object_store(BODIES_BUCKET)
                        .await
                        .map_err(|_| format!("cannot create the {BODIES_BUCKET} bucket: {e}"))?,
                }
            }
        };
        let names = super::registry::ensure_kv(
            js,
            NAMES_BUCKET,
            "whtunnel: known tunnel names",
            caps.max_age,
            replicas,
        )
        .await?;
        let failures = super::registry::ensure_kv(
            js,
            FAILURES_BUCKET,
            "whtunnel: failed tries of held events",
            caps.max_age,
            replicas,
        )
        .await?;
        Ok(HeldStream {
            js: js.clone(),
            stream,
            dead,
            bodies,
            names,
            failures,
            caps,
        })
    }

    /// Remembers `name`, its offline policy and the SHA-256 (hex) of the
    /// token holding it, for the age cap from now.
    pub async fn remember(&self, name: &str, policy: OfflinePolicy, token_sha256: &str) {
        let known = Known {
            policy: policy.to_string(),
            token: Some(token_sha256.to_string()),
        };
        let value = Bytes::from(serde_json::to_vec(&known).unwrap_or_default());
        if let Err(e) = self.names.put(name, value).await {
            tracing::warn!(tunnel = %name, "could not remember the tunnel in the cluster: {e}");
        }
    }

    async fn known(&self, name: &str) -> Result<Option<Known>, String> {
        match self.names.get(name).await {
            // Relays before the token was kept wrote the bare policy.
            Ok(Some(v)) => Ok(serde_json::from_slice::<Known>(&v).ok().or_else(|| {
                std::str::from_utf8(&v).ok().map(|p| Known {
                    policy: p.to_string(),
                    token: None,
                })
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The offline policy of a known tunnel; `None` for a name never held.
    pub async fn policy(&self, name: &str) -> Result<Option<OfflinePolicy>, String> {
        Ok(self
            .known(name)
            .await?
            .and_then(|k| k.policy.parse::<OfflinePolicy>().ok()))
    }

    /// The SHA-256 (hex) of the plain token that last held `name`.
    pub async fn token_owner(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.known(name).await?.and_then(|k| k.token))
    }

    /// Stores `ev` durably (replicated when JetStream is); returns only
    /// once JetStream acknowledged it.
    pub async fn hold(&self, ev: &NewEvent) -> Result<(), HoldError> {
        let unavailable = |e: &dyn std::fmt::Display| HoldError::Unavailable(e.to_string());
        let body_object = if ev.body.len() > INLINE_MAX {
            let key = format!("{}-{}", ev.tunnel, ev.event_id);
            let mut reader: &[u8] = &ev.body;
            self.bodies
                .put(key.as_str(), &mut reader)
                .await
                .map_err(|e| unavailable(&e))?;
            Some(key)
        } else {
            None
        };
        let envelope = Envelope {
            event_id: ev.event_id.clone(),
            method: ev.method.clone(),
            path: ev.path.clone(),
            headers: ev.headers.clone(),
            meta: ev.meta.clone(),
            body_object: body_object.clone(),
            body_len: Some(ev.body.len() as u64),
            dead: None,
        };
        let mut payload = serde_json::to_vec(&envelope).map_err(|e| unavailable(&e))?;
        payload.push(b'\n');
        if body_object.is_none() {
            payload.extend_from_slice(&ev.body);
        }
        let publish = jetstream::context::Publish::build()
            .payload(Bytes::from(payload))
            .message_id(&ev.event_id);
        let acked = match self.js.send_publish(subject(&ev.tunnel), publish).await {
            Ok(ack) => ack.await,
            Err(e) => return Err(unavailable(&e)),
        };
        match acked {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(key) = &body_object {
                    let _ = self.bodies.delete(key).await;
                }
                let text = e.to_string();
                // 10077: per-subject cap; 10047: storage full (resources).
                if text.contains("10077")
                    || text.contains("maximum messages")
                    || text.contains("maximum bytes")
                {
                    Err(HoldError::Full)
                } else {
                    Err(HoldError::Unavailable(text))
                }
            }
        }
    }

    /// Events held for `name` and not yet acknowledged (0 when JetStream
    /// does not answer: a count to show, not to decide on).
    pub async fn pending(&self, name: &str) -> u64 {
        count(&self.stream, subject(name)).await.unwrap_or(0)
    }

    /// Events held for `name`, or `None` when JetStream does not answer
    /// within [`BACKLOG_CHECK_TIMEOUT`]: strict order asks this for every
    /// webhook and must not let live traffic overtake a backlog it could
    /// not see, nor keep the sender waiting on NATS's own timeouts.
    pub async fn backlog(&self, name: &str) -> Option<u64> {
        tokio::time::timeout(BACKLOG_CHECK_TIMEOUT, count(&self.stream, subject(name)))
            .await
            .ok()
            .flatten()
    }

    /// Events of `name` on the dead-letter list.
    pub async fn dead_count(&self, name: &str) -> u64 {
        count(&self.dead, dead_subject(name)).await.unwrap_or(0)
    }

    /// Delivers `name`'s held events to the agent on `sender` until
    /// `closed`, `concurrency` at once (one in `strict` order),
    /// acknowledging each to JetStream only after the agent acknowledged it.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliver(
        self: Arc<Self>,
        name: String,
        sender: LinkClient,
        closed: CancellationToken,
        concurrency: usize,
        strict: bool,
        cfg: HoldDelivery,
        timeout: Duration,
    ) {
        let concurrency = if strict { 1 } else { concurrency.max(1) };
        let durable = format!("held-{name}");
        let consumer_config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject(&name),
            ack_policy: consumer::AckPolicy::Explicit,
            // A try that outlives the response timeout has failed.
            ack_wait: timeout + Duration::from_secs(5),
            // A negatively acknowledged message stays pending until its
            // redelivery: with 1, nothing overtakes a failed event.
            max_ack_pending: concurrency as i64,
            max_deliver: -1,
            inactive_threshold: Duration::from_secs(3600),
            ..Default::default()
        };
        // JetStream may be electing a leader (a node just died): keep
        // asking until this session ends.
        let mut wait = Duration::from_millis(100);
        let mut messages = loop {
            let opened = async {
                // Each session starts on a fresh consumer. The last session's
                // pull requests outlive it on the server: an event held
                // just as its link dropped (a live exchange whose agent went
                // away) can be handed to that dead session and would wait
                // out the ack wait (the response timeout + 5 s) before
                // anyone saw it again. Replacing the consumer forgets those
                // deliveries; unacknowledged events stay in the stream and
                // come at once (a duplicate at worst, which the agent
                // answers `duplicate`).
                let _ = self.stream.delete_consumer(&durable).await;
                let consumer: consumer::PullConsumer = self
                    .stream
                    .create_consumer(consumer_config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                consumer.messages().await.map_err(|e| e.to_string())
            };
            match opened.await {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(tunnel = %name, "cannot read held events from the cluster yet: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = closed.cancelled() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        let slots = Arc::new(Semaphore::new(concurrency));
        let last_success = Arc::new(parking_lot::Mutex::new(None::<std::time::Instant>));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                () = closed.cancelled() => return,
            };
            let msg = tokio::select! {
                m = messages.next() => m,
                () = closed.cancelled() => return,
            };
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::debug!(tunnel = %name, "held-event consumer: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                None => return,
            };
            let this = self.clone();
            let (sender, closed, name) = (sender.clone(), closed.clone(), name.clone());
            let last_success = last_success.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let try_ = Try {
                    name: &name,
                    sender: &sender,
                    closed: &closed,
                    cfg,
                    timeout,
                    last_success: &last_success,
                };
                this.attempt(msg, try_).await;
            });
        }
    }

    /// One delivery try of one held message.
    async fn attempt(&self, msg: jetstream::Message, t: Try<'_>) {
        let name = t.name;
        let (seq, delivered, left) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered.max(1) as u32, i.pending + 1),
            Err(_) => (0, 1, 1),
        };
        let (envelope, body) = match self.decode(&msg.payload).await {
            Ok(decoded) => decoded,
            // Its body could not be read this time (a NATS node restarting,
            // a timeout): the event stays and is tried again.
            Err(Unreadable::Body(e)) => {
                let backoff = t.cfg.backoff(delivered);
                tracing::warn!(tunnel = %name, "cannot read a held event's body ({e}); retrying in {backoff:?}");
                let _ = msg.ack_with(AckKind::Nak(Some(backoff))).await;
                return;
            }
            Err(why) => {
                tracing::warn!(tunnel = %name, "dropping a held event: {why}");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let event_id = envelope.event_id.clone();
        let ev = HeldEvent {
            seq: seq as i64,
            attempts: delivered - 1,
            event: NewEvent {
                event_id: envelope.event_id.clone(),
                tunnel: name.to_string(),
                method: envelope.method.clone(),
                path: envelope.path.clone(),
                headers: envelope.headers.clone(),
                meta: envelope.meta.clone(),
                body: body.clone(),
            },
        };
        let Some(req) =
            crate::relay::drain::held_request(&ev, t.timeout, left, t.sender.link_meta())
        else {
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let (error, kind) = match send_held(t.sender, req, t.timeout).await {
            Sent::Acked => {
                *t.last_success.lock() = Some(std::time::Instant::now());
                // Removed from the work queue once JetStream confirms the ack.
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(tunnel = %name, event = %event_id, "the held event's ack was not confirmed ({e}); it may be delivered again");
                    return;
                }
                if let Some(key) = &envelope.body_object {
                    let _ = self.bodies.delete(key).await;
                }
                // Only a redelivered event can have failed tries on record
                // (a stale entry left otherwise expires with the age cap).
                if delivered > 1 {
                    self.forget_failures(name, &event_id).await;
                }
                return;
            }
            Sent::LinkGone => {
                // The next session delivers it, at once.
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                return;
            }
            Sent::Failed { error, kind } => (error, kind),
        };
        if t.closed.is_cancelled() || t.sender.is_closed() {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        let others_answered = t
            .last_success
            .lock()
            .is_some_and(|at| at.elapsed() <= t.cfg.retry_max);
        let strike = kind.strike(others_answered);
        let failures = self.failed(name, &event_id, &error, strike).await;
        if strike && failures.strikes >= t.cfg.max_failures {
            let mark = DeadMark {
                at_ms: now_ms(),
                attempts: delivered,
                last_error: error.clone(),
            };
            match self.bury(name, seq, envelope, &body, mark).await {
                Ok(()) => {
                    if let Err(e) = msg.double_ack().await {
                        tracing::warn!(tunnel = %name, event = %event_id, "a dead-lettered event's ack was not confirmed ({e}); it may be delivered again");
                    }
                    self.forget_failures(name, &event_id).await;
                    tracing::warn!(
                        tunnel = %name, event = %event_id,
                        "held event moved to the dead-letter list after {} failures ({error}); \
                         see `whtunnel held list`",
                        t.cfg.max_failures
                    );
                    let count = self.dead_count(name).await;
                    tokio::spawn(tell_dead_letter(
                        t.sender.clone(),
                        Control::DeadLetter,
                        event_id,
                        count,
                    ));
                    return;
                }
                Err(e) => {
                    tracing::warn!(tunnel = %name, event = %event_id, "could not move a held event to the dead-letter list ({e}); it stays held");
                }
            }
        }
        let backoff = t.cfg.backoff(delivered);
        tracing::info!(tunnel = %name, event = %event_id, "held event not delivered ({error}); retrying in {backoff:?}");
        let _ = msg.ack_with(AckKind::Nak(Some(backoff))).await;
    }

    /// Counts a failed try of `event_id` (a strike when it is the event's
    /// fault); returns the counts so far.
    async fn failed(&self, name: &str, event_id: &str, error: &str, strike: bool) -> Failures {
        let Some(key) = failures_key(name, event_id) else {
            return Failures::default();
        };
        let mut f: Failures = match self.failures.get(&key).await {
            Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
            _ => Failures::default(),
        };
        f.tries += 1;
        f.strikes += u32::from(strike);
        f.last_error = Some(error.to_string());
        if let Ok(v) = serde_json::to_vec(&f) {
            if let Err(e) = self.failures.put(&key, Bytes::from(v)).await {
                tracing::debug!(tunnel = %name, "could not count a failed try: {e}");
            }
        }
        f
    }

    async fn forget_failures(&self, name: &str, event_id: &str) {
        if let Some(key) = failures_key(name, event_id) {
            // Only failed events have an entry; a purge of a missing key
            // costs one tombstone, so look first.
            if matches!(self.failures.get(&key).await, Ok(Some(_))) {
                let _ = self.failures.purge(&key).await;
            }
        }
    }

    /// Stores a copy of held message `seq` on the dead-letter list.
    async fn bury(
        &self,
        name: &str,
        seq: u64,
        mut envelope: Envelope,
        body: &Bytes,
        mark: DeadMark,
    ) -> Result<(), String> {
        let id = format!("{}:dead:{seq}", envelope.event_id);
        envelope.body_len = Some(body.len() as u64);
        envelope.dead = Some(mark);
        let inline = envelope.body_object.is_none();
        let payload = encode(&envelope, inline.then_some(body.as_ref()))?;
        self.publish(dead_subject(name), payload, &id)
            .await
            .map_err(|e| e.to_string())
    }

    /// Publishes and waits for JetStream's ack.
    async fn publish(&self, to: String, payload: Bytes, msg_id: &str) -> Result<(), ChangeError> {
        let publish = jetstream::context::Publish::build()
            .payload(payload)
            .message_id(msg_id);
        let ack = self
            .js
            .send_publish(to, publish)
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        match ack.await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = e.to_string();
                if text.contains("10077") || text.contains("maximum messages") {
                    Err(ChangeError::Full)
                } else {
                    Err(ChangeError::Unavailable(text))
                }
            }
        }
    }

    /// The stored message after sequence `after` in `subject` of stream
    /// `stream`; `None` past the last.
    async fn next_stored(
        &self,
        stream: &str,
        subject: &str,
        after: u64,
    ) -> Result<Option<Stored>, String> {
        #[derive(Deserialize)]
        struct Got {
            message: Option<RawMsg>,
            error: Option<ApiError>,
        }
        #[derive(Deserialize)]
        struct RawMsg {
            seq: u64,
            #[serde(default)]
            data: String,
        }
        #[derive(Deserialize)]
        struct ApiError {
            code: u16,
            #[serde(default)]
            description: String,
        }
        let got: Got = self
            .js
            .request(
                format!("STREAM.MSG.GET.{stream}"),
                &serde_json::json!({"seq": after + 1, "next_by_subj": subject}),
            )
            .await
            .map_err(|e| e.to_string())?;
        match (got.message, got.error) {
            (Some(m), _) => {
                use base64::Engine;
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(m.data.as_bytes())
                    .map_err(|e| e.to_string())?;
                let payload = Bytes::from(payload);
                let split = payload
                    .iter()
                    .position(|&b| b == b'\n')
                    .ok_or_else(|| format!("message {} is not a held event", m.seq))?;
                let envelope = serde_json::from_slice::<Envelope>(&payload[..split])
                    .map_err(|_| format!("message {} is not a held event", m.seq))?;
                let body = payload.slice(split + 1..);
                Ok(Some(Stored {
                    seq: m.seq,
                    body_len: envelope.body_len.unwrap_or(body.len() as u64),
                    envelope,
                    body,
                }))
            }
            (None, Some(e)) if e.code == 404 => Ok(None),
            (None, Some(e)) => Err(format!("{} {}", e.code, e.description)),
            (None, None) => Ok(None),
        }
    }

    /// Up to `limit` messages of `subject`, oldest first; stops at `stop`
    /// returning true. Bodies are not kept (memory stays at one message),
    /// but for the one `stop` chose. With `only_stop`, only that one is
    /// returned (a search keeps nothing else).
    async fn scan(
        &self,
        stream: &str,
        subject: &str,
        limit: usize,
        only_stop: bool,
        mut stop: impl FnMut(&Stored) -> bool,
    ) -> Result<Vec<Stored>, String> {
        let mut out = Vec::new();
        let mut after = 0;
        for _ in 0..limit {
            let Some(mut m) = self.next_stored(stream, subject, after).await? else {
                break;
            };
            after = m.seq;
            if stop(&m) {
                out.push(m);
                break;
            }
            if !only_stop {
                m.body = Bytes::new();
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The message of `event_id` in `subject`, looking at no more than the
    /// per-tunnel cap's worth of messages.
    async fn find(
        &self,
        stream: &str,
        subject: &str,
        event_id: &str,
    ) -> Result<Option<Stored>, String> {
        let limit = self.caps.max_events.min(100_000) as usize;
        let mut found = self
            .scan(stream, subject, limit, true, |m| {
                m.envelope.event_id == event_id
            })
            .await?;
        Ok(found.pop().filter(|m| m.envelope.event_id == event_id))
    }

    /// `name`'s held and dead-lettered events, oldest first, at most
    /// `limit` (of each kind read, then together).
    pub async fn list(&self, name: &str, limit: usize) -> Result<HeldListing, String> {
        // Counted first: the lists read after them include every event
        // counted, unless it was delivered or dropped meanwhile.
        let (pending, dead_count) = (self.pending(name).await, self.dead_count(name).await);
        // Held first, then dead: an event moving to the dead letters
        // (copied there, then acknowledged) is seen at least once, and
        // when seen in both it is listed as dead.
        let held = self
            .scan(HELD_STREAM, &subject(name), limit, false, |_| false)
            .await?;
        let dead = self
            .scan(DEAD_STREAM, &dead_subject(name), limit, false, |_| false)
            .await?;
        let buried: std::collections::HashSet<&str> =
            dead.iter().map(|m| m.envelope.event_id.as_str()).collect();
        let mut events = Vec::with_capacity(held.len() + dead.len());
        for m in held
            .iter()
            .filter(|m| !buried.contains(m.envelope.event_id.as_str()))
        {
            let f = match failures_key(name, &m.envelope.event_id) {
                Some(key) => match self.failures.get(&key).await {
                    Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
                    _ => Failures::default(),
                },
                None => Failures::default(),
            };
            events.push(summary(m, f.tries, f.last_error, false));
        }
        for m in &dead {
            let mark = m.envelope.dead.clone();
            events.push(summary(
                m,
                mark.as_ref().map_or(0, |d| d.attempts),
                mark.map(|d| d.last_error),
                true,
            ));
        }
        events.sort_by_key(|e| e.received_at_ms);
        events.truncate(limit);
        Ok(HeldListing {
            pending,
            dead: dead_count,
            events,
        })
    }

    /// Puts dead-lettered `event_id` of `name` back at the end of the
    /// queue, its strikes cleared. False when there is no such dead letter.
    pub async fn retry(&self, name: &str, event_id: &str) -> Result<bool, ChangeError> {
        let unavailable = ChangeError::Unavailable;
        let Some(m) = self
            .find(DEAD_STREAM, &dead_subject(name), event_id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(false);
        };
        let mut envelope = m.envelope.clone();
        envelope.dead = None;
        let payload = encode(&envelope, Some(&m.body)).map_err(unavailable)?;
        // Its own id: the original's may still be in the duplicate window.
        self.publish(
            subject(name),
            payload,
            &format!("{event_id}:retry:{}", m.seq),
        )
        .await?;
        self.dead
            .delete_message(m.seq)
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        self.forget_failures(name, event_id).await;
        Ok(true)
    }

    /// Deletes `event_id` of `name`, held or dead-lettered. False when
    /// there is no such event.
    pub async fn drop_event(&self, name: &str, event_id: &str) -> Result<bool, ChangeError> {
        let unavailable = ChangeError::Unavailable;
        for (stream, handle, subj) in [
            (HELD_STREAM, &self.stream, subject(name)),
            (DEAD_STREAM, &self.dead, dead_subject(name)),
        ] {
            let Some(m) = self
                .find(stream, &subj, event_id)
                .await
                .map_err(unavailable)?
            else {
                continue;
            };
            handle
                .delete_message(m.seq)
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
            if let Some(key) = &m.envelope.body_object {
                let _ = self.bodies.delete(key).await;
            }
            self.forget_failures(name, event_id).await;
            return Ok(true);
        }
        Ok(false)
    }

    async fn decode(&self, payload: &[u8]) -> Result<(Envelope, Bytes), Unreadable> {
        let split = payload
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(Unreadable::Envelope)?;
        let envelope: Envelope =
            serde_json::from_slice(&payload[..split]).map_err(|_| Unreadable::Envelope)?;
        let body = match &envelope.body_object {
            None => Bytes::copy_from_slice(&payload[split + 1..]),
            Some(key) => {
                let mut object = self.bodies.get(key).await.map_err(|e| {
                    if e.kind() == object_store::GetErrorKind::NotFound {
                        Unreadable::BodyGone
                    } else {
                        Unreadable::Body(e.to_string())
                    }
                })?;
                let mut buf = Vec::new();
                object
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| Unreadable::Body(e.to_string()))?;
                Bytes::from(buf)
            }
        };
        Ok((envelope, body))
    }
}

/// Why a held message could not be turned back into an event.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    /// Not a held event at all: it never will be.
    #[error("it is not a held event")]
    Envelope,
    /// Its body object expired or was deleted: it never will be.
    #[error("its body is no longer in the object store")]
    BodyGone,
    /// Its body could not be read now; it may be later.
    #[error("{0}")]
    Body(String),
}

/// Messages stored under `filter`; `None` when JetStream does not answer.
async fn count(stream: &stream::Stream, filter: String) -> Option<u64> {
    let mut subjects = stream.info_with_subjects(filter.clone()).await.ok()?;
    let mut n = 0;
    while let Some(next) = subjects.next().await {
        let (s, count) = next.ok()?;
        if s == filter {
            n += count as u64;
        }
    }
    Some(n)
}

/// Opens stream `config.name`, creating it when it does not exist yet.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, String> {
    let name = config.name.clone();
    if let Ok(s) = js.get_stream(&name).await {
        return Ok(s);
    }
    match js.create_stream(config).await {
        Ok(s) => Ok(s),
        // Another relay may have made it meanwhile.
        Err(e) => js.get_stream(&name).await.map_err(|_| {
            format!(
                "cannot create the {name} stream: {e} (JetStream reserves \
                 --hold-max-total-bytes on disk: lower it or raise max_file_store)"
            )
        }),
    }
}
