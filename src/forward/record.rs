//! Handing a finished exchange to the capture: what is known before the
//! app answers ([`Pending`]), the exchange on its way to the recorder
//! ([`Recording`]), and the wait for both bodies before it is stored.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::held::InFlightEntry;
use crate::capture::{
    self, BodyDigest, BodyProof, CapturedBody, Exchange, ExchangeId, Outcome, RecordedRequest,
    RecordedResponse, Recorder,
};
use crate::tunnel::body_hash::BodyHashes;

/// The parts of an exchange known before the body and answer are.
pub(super) struct Pending {
    pub(super) received_at: DateTime<Utc>,
    pub(super) started: Instant,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: capture::Headers,
    pub(super) remote_addr: Option<String>,
    pub(super) relay_event_id: Option<String>,
    pub(super) replay_of: Option<ExchangeId>,
    /// Filled once the request body has streamed by: the relay's hash of
    /// it and this agent's (the body-hash proof).
    pub(super) body_hashes: Option<Arc<OnceLock<BodyHashes>>>,
    /// Holds off redeliveries of the same relay event until this exchange
    /// is queued for storing.
    pub(super) in_flight: Option<InFlightEntry>,
    /// Counts the exchange as in flight until it is queued for storing.
    pub(super) busy: Option<Busy>,
}

/// One exchange in flight, counted in the forwarder's
/// [`in_flight`](super::Forwarder::in_flight) until dropped.
pub(super) struct Busy(pub(super) std::sync::Arc<tokio::sync::watch::Sender<usize>>);

impl Busy {
    pub(super) fn new(count: &std::sync::Arc<tokio::sync::watch::Sender<usize>>) -> Busy {
        count.send_modify(|n| *n += 1);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// An exchange on its way to the recorder: the request as far as it is
/// known, where it went, and the request body as the tee captures it.
pub(super) struct Recording {
    pub(super) recorder: Recorder,
    pub(super) pending: Pending,
    /// The target it was sent to, as text.
    pub(super) target: String,
    /// The request body, once it has streamed to the app (or failed to).
    pub(super) request_body: Option<oneshot::Receiver<CapturedBody>>,
    /// Its number from [`Recorder::started`].
    pub(super) live: u64,
}

/// The answer of an exchange: from the app, or made by the agent itself.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: capture::Headers,
    /// The response body, once it has streamed to the relay.
    pub(super) body: oneshot::Receiver<CapturedBody>,
}

/// Waits for a captured body; a tee that went away without a word kept
/// nothing.
async fn captured(rx: Option<oneshot::Receiver<CapturedBody>>) -> CapturedBody {
    match rx {
        Some(rx) => rx.await.unwrap_or_else(|_| captured_nothing()),
        None => CapturedBody::default(),
    }
}

/// What a tee that went away without a word kept: nothing, cut off.
fn captured_nothing() -> CapturedBody {
    CapturedBody {
        truncated: true,
        ..CapturedBody::default()
    }
}

impl Recording {
    /// Waits for both bodies to finish streaming, then records the
    /// exchange. The stored id goes to `id_tx` (when someone waits for it).
    pub(super) async fn finish(
        mut self,
        outcome: Outcome,
        answer: Option<Answer>,
        error: Option<String>,
        id_tx: Option<super::IdSender>,
    ) {
        let request_body = captured(self.request_body.take()).await;
        let response = match answer {
            Some(a) => Some(RecordedResponse {
                status: a.status,
                headers: a.headers,
                body: captured(Some(a.body)).await,
            }),
            None => None,
        };
        if let Some(wait) = self.commit(request_body, response, outcome, error, id_tx) {
            wait.await;
        }
    }

    /// Records an exchange whose response is complete (the app's, once its
    /// body has streamed by through [`capture::tee_then`], or one whtunnel
    /// made), without a task of its own when it can: the request body is
    /// nearly always captured by then (the app answered after reading it)
    /// and nobody waits for a live exchange's id. Otherwise the rest runs
    /// as a task on `runtime`.
    pub(super) fn finish_with(
        mut self,
        outcome: Outcome,
        response: RecordedResponse,
        error: Option<String>,
        id_tx: Option<super::IdSender>,
        runtime: &tokio::runtime::Handle,
    ) {
        let request_body = match self.request_body.as_mut().map(|rx| rx.try_recv()) {
            None => CapturedBody::default(),
            Some(Ok(body)) => body,
            Some(Err(oneshot::error::TryRecvError::Closed)) => captured_nothing(),
            Some(Err(oneshot::error::TryRecvError::Empty)) => {
                let rx = self.request_body.take();
                runtime.spawn(async move {
                    let body = captured(rx).await;
                    if let Some(wait) = self.commit(body, Some(response), outcome, error, id_tx) {
                        wait.await;
                    }
                });
                return;
            }
        };
        self.request_body = None;
        if let Some(wait) = self.commit(request_body, Some(response), outcome, error, id_tx) {
            runtime.spawn(wait);
        }
    }

    /// Hands the finished exchange to the recorder. When someone waits for
    /// its id, returns the wait that answers `id_tx`.
    fn commit(
        self,
        request_body: CapturedBody,
        response: Option<RecordedResponse>,
        outcome: Outcome,
        error: Option<String>,
        id_tx: Option<super::IdSender>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let Recording {
            recorder,
            pending: p,
            target,
            request_body: _,
            live,
        } = self;
        let in_flight = p.in_flight;
        let busy = p.busy;
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
            outcome: Some(outcome),
            error,
            // Recognised by the recorder's writer thread, off this runtime.
            event: None,
            replay_of: p.replay_of,
            relay_event_id: p.relay_event_id,
            webhook: Default::default(),
            body_proof: p
                .body_hashes
                .as_ref()
                .and_then(|slot| slot.get())
                .map(|h| BodyProof {
                    relay: h.relay.map(BodyDigest::Blake3),
                    intact: h.intact(),
                })
                .unwrap_or_default(),
            live,
        };
        // Nobody asked for the id (a live exchange): do not wait for it,
        // which lets the writer group it with others and spares it a
        // wake-up of this runtime per exchange.
        let Some(id_tx) = id_tx.filter(|tx| !tx.is_closed()) else {
            recorder.record_in_background(ex);
            drop((in_flight, busy));
            return None;
        };
        let stored = recorder.record(ex);
        // Queued: a lookup from here on finds it (the writer answers lookups
        // after what was queued before them).
        drop((in_flight, busy));
        Some(async move {
            let id = stored.await.ok().and_then(Result::ok);
            let _ = id_tx.send(id);
        })
    }
}
