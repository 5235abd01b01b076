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
//!   `max_ack_pending` = the drain's concurrency). A failed try is
//!   negatively acknowledged with the drain's back-off; JetStream redelivers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::relay::drain::HoldDelivery;
use crate::relay::held::{Caps, HeldEvent, NewEvent, OfflinePolicy};
use crate::tunnel::link::LinkClient;
use crate::tunnel::protocol::{RequestMeta, HDR_ACK};

/// The stream of held events.
pub const HELD_STREAM: &str = "whtunnel_held";
/// Object store for held bodies too large for one message.
pub const BODIES_BUCKET: &str = "whtunnel_bodies";
/// Known tunnel names and their offline policy.
pub const NAMES_BUCKET: &str = "whtunnel_names";
/// Largest body carried inside the event's message.
pub const INLINE_MAX: usize = 768 * 1024;

fn subject(name: &str) -> String {
    format!("whtunnel.held.{name}")
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
#[derive(Serialize, Deserialize)]
struct Envelope {
    event_id: String,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    meta: RequestMeta,
    /// Object-store name of the body, when not inline.
    body_object: Option<String>,
}

/// The cluster's held events.
pub struct HeldStream {
    js: jetstream::Context,
    stream: stream::Stream,
    bodies: object_store::ObjectStore,
    names: kv::Store,
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
        let stream = match js.get_stream(HELD_STREAM).await {
            Ok(s) => s,
            Err(_) => match js.create_stream(config).await {
                Ok(s) => s,
                Err(e) => js.get_stream(HELD_STREAM).await.map_err(|_| {
                    format!(
                        "cannot create the {HELD_STREAM} stream: {e} (JetStream reserves \
                             --hold-max-total-bytes on disk: lower it or raise max_file_store)"
                    )
                })?,
            },
        };
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
        Ok(HeldStream {
            js: js.clone(),
            stream,
            bodies,
            names,
        })
    }

    /// Remembers `name` (and its offline policy) for the age cap from now.
    pub async fn remember(&self, name: &str, policy: OfflinePolicy) {
        let value = Bytes::from(policy.to_string());
        if let Err(e) = self.names.put(name, value).await {
            tracing::warn!(tunnel = %name, "could not remember the tunnel in the cluster: {e}");
        }
    }

    /// The offline policy of a known tunnel; `None` for a name never held.
    pub async fn policy(&self, name: &str) -> Result<Option<OfflinePolicy>, String> {
        match self.names.get(name).await {
            Ok(Some(v)) => Ok(std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok())),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
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

    /// Events held for `name` and not yet acknowledged.
    pub async fn pending(&self, name: &str) -> u64 {
        let stream = self.stream.clone();
        let filter = subject(name);
        let mut subjects = match stream.info_with_subjects(filter.clone()).await {
            Ok(s) => s,
            Err(_) => return 0,
        };
        let mut n = 0;
        while let Some(Ok((s, count))) = subjects.next().await {
            if s == filter {
                n += count as u64;
            }
        }
        n
    }

    /// Delivers `name`'s held events to the agent on `sender` until
    /// `closed`, `concurrency` at once, acknowledging each to JetStream
    /// only after the agent acknowledged it.
    pub async fn deliver(
        self: Arc<Self>,
        name: String,
        sender: LinkClient,
        closed: CancellationToken,
        concurrency: usize,
        cfg: HoldDelivery,
        timeout: Duration,
    ) {
        let consumer_config = consumer::pull::Config {
            durable_name: Some(format!("held-{name}")),
            filter_subject: subject(&name),
            ack_policy: consumer::AckPolicy::Explicit,
            // A try that outlives the response timeout has failed.
            ack_wait: timeout + Duration::from_secs(5),
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
                let consumer: consumer::PullConsumer = self
                    .stream
                    .get_or_create_consumer(&format!("held-{name}"), consumer_config.clone())
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
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
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
            tokio::spawn(async move {
                let _permit = permit;
                this.attempt(&name, msg, &sender, &closed, cfg, timeout)
                    .await;
            });
        }
    }

    /// One delivery try of one held message.
    async fn attempt(
        &self,
        name: &str,
        msg: jetstream::Message,
        sender: &LinkClient,
        closed: &CancellationToken,
        cfg: HoldDelivery,
        timeout: Duration,
    ) {
        let (seq, delivered, left) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered, i.pending + 1),
            Err(_) => (0, 1, 1),
        };
        let Some((envelope, body)) = self.decode(&msg.payload).await else {
            tracing::warn!(tunnel = %name, "dropping a held event that cannot be read");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let ev = HeldEvent {
            seq: seq as i64,
            attempts: (delivered.max(1) - 1) as u32,
            event: NewEvent {
                event_id: envelope.event_id.clone(),
                tunnel: name.to_string(),
                method: envelope.method,
                path: envelope.path,
                headers: envelope.headers,
                meta: envelope.meta,
                body,
            },
        };
        let Some(req) = crate::relay::drain::held_request(&ev, timeout, left, sender.link_meta())
        else {
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let acked = match tokio::time::timeout(timeout, sender.send(req)).await {
            Ok(Ok(resp)) => {
                let acked = resp.headers().contains_key(HDR_ACK);
                let _ = resp.into_body().collect().await;
                acked
            }
            _ => false,
        };
        if acked {
            // Removed from the work queue once JetStream confirms the ack.
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(tunnel = %name, event = %ev.event.event_id, "the held event's ack was not confirmed ({e}); it may be delivered again");
                return;
            }
            if let Some(key) = envelope.body_object {
                let _ = self.bodies.delete(&key).await;
            }
        } else if closed.is_cancelled() || sender.is_closed() {
            // The link is gone: the next session delivers it, at once.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        } else {
            let doublings = ev.attempts.min(16);
            let backoff = (cfg.retry_min * (1u32 << doublings)).min(cfg.retry_max);
            tracing::info!(tunnel = %name, event = %ev.event.event_id, "held event not delivered; retrying in {backoff:?}");
            let _ = msg.ack_with(AckKind::Nak(Some(backoff))).await;
        }
    }

    async fn decode(&self, payload: &[u8]) -> Option<(Envelope, Bytes)> {
        let split = payload.iter().position(|&b| b == b'\n')?;
        let envelope: Envelope = serde_json::from_slice(&payload[..split]).ok()?;
        let body = match &envelope.body_object {
            None => Bytes::copy_from_slice(&payload[split + 1..]),
            Some(key) => {
                let mut object = self.bodies.get(key).await.ok()?;
                let mut buf = Vec::new();
                object.read_to_end(&mut buf).await.ok()?;
                Bytes::from(buf)
            }
        };
        Some((envelope, body))
    }
}
