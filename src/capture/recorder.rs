//! The single writer in front of the store: a bounded queue drained by one
//! dedicated thread that batches whatever is queued into one SQLite
//! transaction, answers each caller, and publishes [`CaptureEvent`]s.
//!
//! Forwarding must never wait on capture: [`Recorder::record`] only does a
//! `try_send`; when the queue is full or storing fails, the exchange is
//! reported as [`CaptureEvent::NotStored`] and forwarding goes on.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::model::{BodyData, Exchange, ExchangeId, ExchangeSummary};
use super::store::{Store, StoreError};

/// Default capacity of the recorder's queue.
pub const DEFAULT_QUEUE: usize = 1024;
/// Capacity of the event broadcast; slow subscribers lag (and are told so by
/// `broadcast`), they never hold the writer back.
pub const EVENT_CAPACITY: usize = 1024;
/// At most this many exchanges per transaction, so one huge backlog does not
/// make a single long transaction.
const MAX_BATCH: usize = 256;

/// What the recorder publishes after each exchange.
#[derive(Debug, Clone)]
pub enum CaptureEvent {
    /// The exchange was stored.
    Stored(ExchangeSummary),
    /// The exchange was forwarded but could not be stored.
    NotStored {
        /// The exchange's summary (id is 0).
        summary: ExchangeSummary,
        /// Why it was not stored.
        reason: String,
    },
}

type Reply = oneshot::Sender<Result<ExchangeId, StoreError>>;

enum Job {
    Record(Box<Exchange>, Reply),
    /// Store what is queued before this, then stop; answer when done.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
    events: broadcast::Sender<CaptureEvent>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Fills `ex.event` from the request body when the forwarder did not.
fn fill_event(ex: &mut Exchange) {
    if ex.event.is_some() {
        return;
    }
    if let BodyData::Memory(b) = &ex.request.body.data {
        let ct = ex
            .request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok());
        ex.event = super::event::detect(b, ct);
    }
}

impl Recorder {
    /// Starts the writer task over `store`.
    pub fn spawn(store: Store) -> Self {
        Self::with_capacity(store, DEFAULT_QUEUE)
    }

    /// Starts the writer with a queue of `queue` exchanges (tests use a tiny
    /// one to exercise the queue-full path).
    pub fn with_capacity(store: Store, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let ev = events.clone();
        // A dedicated OS thread: SQLite calls block, and must never run on
        // the tokio runtime's workers.
        let thread = std::thread::Builder::new()
            .name("whtunnel-capture".into())
            .spawn(move || writer(store, rx, ev))
            .expect("spawn capture writer thread");
        Self {
            tx,
            events,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    /// Queues an exchange without waiting; the receiver resolves once it is
    /// stored (or failed). Never blocks: when the queue is full the exchange is
    /// reported as not stored.
    pub fn record(&self, ex: Exchange) -> oneshot::Receiver<Result<ExchangeId, StoreError>> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job::Record(Box::new(ex), reply)) {
            Ok(()) => {}
            Err(e) => {
                let (job, err) = match e {
                    mpsc::error::TrySendError::Full(j) => (j, StoreError::QueueFull),
                    mpsc::error::TrySendError::Closed(j) => (j, StoreError::Closed),
                };
                if let Job::Record(mut ex, reply) = job {
                    fill_event(&mut ex);
                    let mut summary = ex.summary();
                    summary.id = 0;
                    let _ = self.events.send(CaptureEvent::NotStored {
                        summary,
                        reason: err.to_string(),
                    });
                    let _ = reply.send(Err(err));
                }
            }
        }
        rx
    }

    /// Follows stored exchanges.
    pub fn subscribe(&self) -> broadcast::Receiver<CaptureEvent> {
        self.events.subscribe()
    }

    /// Flushes everything queued and stops the writer.
    pub async fn close(self) {
        let (done, wait) = oneshot::channel();
        // Waits for queue space (close is allowed to wait; record is not).
        if self.tx.send(Job::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            // The thread has answered `done` and only drops the store now.
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The writer loop: take one job (blocking), then everything else already
/// queued, and store it as one batch.
fn writer(mut store: Store, mut rx: mpsc::Receiver<Job>, events: broadcast::Sender<CaptureEvent>) {
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Vec::new();
        let mut push = |job: Job, batch: &mut Vec<(Box<Exchange>, Reply)>| match job {
            Job::Record(ex, reply) => batch.push((ex, reply)),
            Job::Close(done) => closing = Some(done),
        };
        push(first, &mut batch);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => push(job, &mut batch),
                Err(_) => break,
            }
        }
        // On close, also drain what is still queued (it was accepted).
        if closing.is_some() {
            while let Ok(job) = rx.try_recv() {
                if let Job::Record(ex, reply) = job {
                    batch.push((ex, reply));
                }
                if batch.len() >= MAX_BATCH {
                    store_batch(&mut store, std::mem::take(&mut batch), &events);
                }
            }
        }
        store_batch(&mut store, batch, &events);
    }
    // Stop accepting: later `record` calls see Closed.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        if let Job::Record(ex, reply) = job {
            store_batch(&mut store, vec![(ex, reply)], &events);
        }
    }
    drop(store);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn store_batch(
    store: &mut Store,
    batch: Vec<(Box<Exchange>, Reply)>,
    events: &broadcast::Sender<CaptureEvent>,
) {
    if batch.is_empty() {
        return;
    }
    let (mut exs, replies): (Vec<Exchange>, Vec<Reply>) =
        batch.into_iter().map(|(ex, reply)| (*ex, reply)).unzip();
    for ex in exs.iter_mut() {
        fill_event(ex);
    }
    let results = match store.insert_batch(&exs) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            exs.iter()
                .map(|_| Err(StoreError::Failed(msg.clone())))
                .collect()
        }
    };
    for ((ex, reply), result) in exs.iter().zip(replies).zip(results) {
        let mut summary = ex.summary();
        match result {
            Ok(id) => {
                summary.id = id;
                let _ = events.send(CaptureEvent::Stored(summary));
                let _ = reply.send(Ok(id));
            }
            Err(e) => {
                summary.id = 0;
                tracing::warn!("capture: exchange not stored: {e}");
                let _ = events.send(CaptureEvent::NotStored {
                    summary,
                    reason: e.to_string(),
                });
                let _ = reply.send(Err(e));
            }
        }
    }
}
