//! Held events, on the agent's side: the relay deletes a held event once
//! the agent acknowledges it, so the ack waits until the exchange is
//! recorded, a redelivery of an event the app already has is acknowledged
//! without reaching the app twice, and one still in progress is waited for
//! ([`InFlight`]).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use http::{Response, StatusCode};
use tokio::sync::Notify;

use super::{collect_capped, error_response, full, Forwarder, Outgoing, HELD_RESPONSE_MAX};
use crate::tunnel::protocol::{Ack, AgentError, Outcome, HDR_ACK, HDR_ERROR};
use crate::tunnel::Body;

/// Deliveries of one held event that may time out before the agent
/// acknowledges it anyway ([`Ack::TimedOut`]): the app is up, but hangs on it.
pub const HELD_TIMEOUT_ATTEMPTS: u32 = 3;

/// The recorded error of an exchange the app answered after its sender was
/// gone: the app has the request (a redelivery must not send it again), but
/// nobody received the answer. Stored in capture databases and compared on
/// redelivery: changing the text makes older records count as failed.
pub const ERR_ANSWER_UNDELIVERED: &str =
    "answered after the sender was gone (hung up, relay timeout or lost link); the answer reached nobody";

/// Most dead-lettered event ids kept for display (the relay's list is the
/// whole truth: `whtunnel held list`).
pub const MAX_DEAD_IDS: usize = 64;

/// The tunnel's events on the relay's dead-letter list, as far as the agent
/// knows: the count the relay announces at connect and with each event it
/// dead-letters, and the ids of those announced since (newest last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// Events on the dead-letter list.
    pub count: u64,
    /// Ids (the relay's event ids) of events dead-lettered while this agent
    /// was connected, at most [`MAX_DEAD_IDS`].
    pub ids: std::collections::VecDeque<String>,
}

impl DeadLetters {
    /// Event `id` was dead-lettered; the list now holds `count`.
    pub fn add(&mut self, id: String, count: u64) {
        self.count = count;
        if !self.ids.contains(&id) {
            if self.ids.len() >= MAX_DEAD_IDS {
                self.ids.pop_front();
            }
            self.ids.push_back(id);
        }
    }
}

impl Forwarder {
    /// The tunnel's dead-lettered events, as the relay reported them.
    pub fn dead_letters(&self) -> tokio::sync::watch::Receiver<DeadLetters> {
        self.inner.dead_letters.subscribe()
    }

    /// A new link: the relay's dead-letter list holds `count` events.
    pub fn reset_dead_letters(&self, count: u64) {
        self.inner.dead_letters.send_if_modified(|d| {
            let changed = d.count != count;
            d.count = count;
            changed
        });
    }

    /// The relay moved held event `id` to its dead-letter list, which now
    /// holds `count` events.
    pub fn dead_lettered(&self, id: String, count: u64) {
        self.inner.dead_letters.send_modify(|d| d.add(id, count));
    }

    /// Dead-lettered event `id` was retried or dropped; the list now holds
    /// `count` events.
    pub fn dead_letter_cleared(&self, id: &str, count: u64) {
        self.inner.dead_letters.send_modify(|d| {
            d.ids.retain(|x| x != id);
            d.count = count;
        });
    }
}

impl Forwarder {
    /// Delivers held event `event_id` (delivery `attempt`, from 1). One
    /// deadline for the whole delivery, waiting included: the relay gives
    /// up on it soon after.
    pub(super) async fn deliver_held(
        &self,
        event_id: String,
        attempt: u32,
        mut out: Outgoing,
    ) -> Response<Body> {
        // A held event: the relay deletes it once acknowledged, so the ack
        // waits until the exchange is recorded. A redelivery of an event that
        // already got an answer (the ack was lost in a crash, or the link
        // dropped while the app worked on it) is acknowledged without
        // reaching the app twice; one still in progress is waited for.
        // One deadline for the whole delivery, waiting included: the relay
        // gives up on it soon after.
        let deadline = tokio::time::Instant::now() + out.timeout;
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
                if prev.outcome.is_some_and(Outcome::app_answered) {
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
            out.pending.in_flight = Some(entry);
        }
        out.timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        out.wants_id = true;
        let (resp, id_rx) = self.send(out).await;
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
}

/// Exchanges for relay events that are still in progress, by event id, so
/// that a redelivery of an event waits for the attempt already under way
/// (the link dropped while the app worked on it) instead of reaching the app
/// a second time.
#[derive(Default)]
pub(super) struct InFlight {
    /// The exchanges in progress.
    map: Mutex<InFlightMap>,
    /// Told whenever any entry ends, so that an exchange allocates nothing
    /// for a waiter that rarely exists. A waiter (a redelivery) then looks
    /// again: it wakes once per exchange that ends while it waits.
    ended: Notify,
}

#[derive(Default)]
struct InFlightMap {
    /// Tells entries apart, so that one only ever removes itself.
    next: u64,
    /// The entry shares its key: one allocation per exchange.
    running: HashMap<Arc<str>, u64>,
}

impl InFlight {
    /// Registers an exchange for `id`; `None` when one is already in
    /// progress.
    pub(super) fn try_register(set: &Arc<InFlight>, id: &str) -> Option<InFlightEntry> {
        let mut map = set.map.lock();
        if map.running.contains_key(id) {
            return None;
        }
        map.next += 1;
        let generation = map.next;
        let id: Arc<str> = id.into();
        map.running.insert(id.clone(), generation);
        Some(InFlightEntry {
            set: set.clone(),
            id,
            generation,
        })
    }

    /// Registers an exchange for `id` once no other one for it is in
    /// progress; `None` if one still is at `deadline`.
    pub(super) async fn acquire(
        set: &Arc<InFlight>,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Option<InFlightEntry> {
        loop {
            // Listening before looking: `notified` counts from its creation,
            // so an entry that ends in between still wakes this one.
            let ended = set.ended.notified();
            if let Some(entry) = InFlight::try_register(set, id) {
                return Some(entry);
            }
            tokio::time::timeout_at(deadline, ended).await.ok()?;
        }
    }
}

/// One in-progress exchange in [`InFlight`]; dropping it ends it.
pub(super) struct InFlightEntry {
    set: Arc<InFlight>,
    id: Arc<str>,
    generation: u64,
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        let mut map = self.set.map.lock();
        if map.running.get(&self.id) == Some(&self.generation) {
            map.running.remove(&self.id);
        }
        drop(map);
        self.set.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::InFlight;

    /// A second exchange for an event waits for the first to end, then
    /// registers; one that never ends makes it give up at the deadline.
    /// Other events' exchanges ending do not let it in.
    #[tokio::test(start_paused = true)]
    async fn a_redelivery_waits_for_the_attempt_under_way_until_its_deadline() {
        let set = Arc::new(InFlight::default());
        let first = InFlight::try_register(&set, "ev_1").expect("free");
        assert!(InFlight::try_register(&set, "ev_1").is_none());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let waiter = tokio::spawn({
            let set = set.clone();
            async move { InFlight::acquire(&set, "ev_1", deadline).await.is_some() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(InFlight::try_register(&set, "ev_other").expect("another event"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "another event's end let it in");
        drop(first);
        assert!(waiter.await.unwrap(), "registered once the first ended");

        let _stuck = InFlight::try_register(&set, "ev_2").expect("free");
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        assert!(InFlight::acquire(&set, "ev_2", deadline).await.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
