//! The single writer in front of the store: a bounded queue drained by one
//! dedicated thread that batches whatever is queued into one SQLite
//! transaction, answers each caller, and publishes [`CaptureEvent`]s.
//!
//! Forwarding must never wait on capture: [`Recorder::record`] only does a
//! `try_send`; when the queue is full or storing fails, the exchange is
//! reported as [`CaptureEvent::NotStored`] and forwarding goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::checkpoint::{Checkpointer, WAL_FILE_LIMIT, WRITER_CHECKPOINT_PAGES};
use super::model::{BodyData, Exchange, ExchangeId, ExchangeSummary};
use super::store::{Store, StoreError};
use crate::verify::{RequestView, Rules};

/// Default capacity of the recorder's queue, in exchanges: about 2 s of
/// the most webhooks a second a 2-core machine forwards (~9,000, the
/// benchmark's 1 KiB c=32), so that none goes unrecorded while the writer
/// is held up (a checkpoint it had to make itself, a reader's lock).
pub const DEFAULT_QUEUE: usize = 16 * 1024;
/// The most body and header bytes the queued exchanges may hold in memory
/// together (bodies too large to be kept in memory are in files by then),
/// whatever their number: the queue's memory bound.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Capacity of the event broadcast; slow subscribers lag (and are told so by
/// `broadcast`), they never hold the writer back.
pub const EVENT_CAPACITY: usize = 1024;
/// At most this many exchanges per transaction, so one huge backlog does not
/// make a single long transaction.
const MAX_BATCH: usize = 256;
/// Under steady traffic the writer waits this long after a commit before
/// the next one, so that exchanges arriving meanwhile share a transaction:
/// a commit costs the same for one exchange as for fifty (WAL frames, page
/// writes, a wake-up of this thread). Jobs someone waits for ([`Recorder::record`]:
/// held events, whose acknowledgement waits for their row, and replays;
/// lookups; close) skip it.
///
/// 10 ms rather than 2: what a commit costs besides its rows (the WAL
/// frames of the pages every commit rewrites: the last table and index
/// leaves, the AUTOINCREMENT row) is shared by more exchanges under load
/// (docs/benchmarks.md, "#17 recording"), and a person does not see 10 ms
/// on a log line or in the inspector.
const GROUP_COMMIT_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// What the recorder publishes: each exchange as it starts, then once it
/// is stored (or could not be). `Started` and the final event carry the
/// same [`ExchangeSummary::live`] number, so a follower can replace the
/// in-progress row.
#[derive(Debug, Clone)]
pub enum CaptureEvent {
    /// The forwarder started sending a request to the app. The summary has
    /// `id` 0, `status` None, no event type or sizes yet, and `duration_ms`
    /// set to the time the app has to answer (after which the exchange ends
    /// one way or another, so a row still in progress well past it will
    /// never be filled in).
    Started(ExchangeSummary),
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

/// Where the id of a stored exchange goes: `None` when nobody waits for it.
type Reply = Option<oneshot::Sender<Result<ExchangeId, StoreError>>>;

enum Job {
    /// An exchange to store.
    Record {
        /// The exchange.
        ex: Box<Exchange>,
        /// Its share of the queue's bytes, given back once it is stored.
        bytes: tokio::sync::OwnedSemaphorePermit,
        /// Answered with its id once stored (or why it was not). Someone
        /// waiting for the id also means: commit without lingering (see
        /// [`GROUP_COMMIT_LINGER`]).
        reply: Reply,
    },
    /// Store what is queued before this, then stop; answer when done.
    Close(oneshot::Sender<()>),
    /// Find the exchange that answered a relay event, after storing what is
    /// queued before this.
    Lookup(String, oneshot::Sender<Option<ExchangeSummary>>),
}

/// The recorder's two broadcasts. `all` carries every [`CaptureEvent`] in
/// order; `finished` only the final ones, for followers that show
/// finished exchanges (the `--no-tui` log). Two channels because a
/// `Started` sent to a follower that drops it still wakes that follower's
/// task, once per request (a cross-thread wake-up: about 8 % of the agent's
/// CPU at 1 KiB, docs/benchmarks.md "Session 9"); and with nobody on
/// `all`, `Started` is not even built.
#[derive(Clone)]
struct Events {
    all: broadcast::Sender<CaptureEvent>,
    finished: broadcast::Sender<CaptureEvent>,
}

impl Events {
    fn new() -> Self {
        Self {
            all: broadcast::channel(EVENT_CAPACITY).0,
            finished: broadcast::channel(EVENT_CAPACITY).0,
        }
    }

    /// Publishes a `Stored` or `NotStored` event to both kinds of follower.
    fn finished(&self, event: CaptureEvent) {
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(event.clone());
        }
        let _ = self.finished.send(event);
    }
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Job>,
    events: Events,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The last live number handed out by [`Recorder::started`].
    live: Arc<AtomicU64>,
    /// What the writer judges signatures by.
    webhooks: Arc<parking_lot::RwLock<Webhooks>>,
    /// Held during each checkpoint of the store.
    #[cfg_attr(not(test), allow(dead_code))]
    checkpoint_gate: Arc<Mutex<()>>,
    /// What is left of the queue's byte budget: one permit per byte.
    queued_bytes: Arc<tokio::sync::Semaphore>,
    /// The whole budget, in bytes.
    queue_bytes: usize,
}

/// What an exchange holds in memory while queued, roughly: its in-memory
/// bodies and header bytes, and the rest of it as a flat 512.
fn queued_size(ex: &Exchange) -> usize {
    fn body(b: &super::model::CapturedBody) -> usize {
        match &b.data {
            BodyData::Memory(bytes) => bytes.len(),
            BodyData::Empty | BodyData::File(_) => 0,
        }
    }
    fn headers(h: &super::headers::Headers) -> usize {
        h.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
    let response = ex
        .response
        .as_ref()
        .map_or(0, |r| body(&r.body) + headers(&r.headers));
    512 + body(&ex.request.body) + headers(&ex.request.headers) + response
}

/// What the writer judges each exchange's sender and signature by.
#[derive(Debug, Clone, Default)]
struct Webhooks {
    rules: Arc<Rules>,
    /// The tunnel's public URL: Square and Twilio sign the URL the sender
    /// used, not the local one.
    public_url: Option<String>,
}

/// Bodies up to this size are read back from their spill file to check
/// their signature (a body over the relay's limit never arrives whole).
const MAX_VERIFY_LEN: u64 = crate::units::DEFAULT_MAX_BODY;

/// Fills `ex.webhook` (provider, delivery id, signature verdict) and the
/// event type from the sender's own place for it. Runs on the writer
/// thread: it may read a spilled body. The bytes are read as captured,
/// never rewritten; a body not kept in full is not judged.
fn judge(ex: &mut Exchange, hooks: &Webhooks) {
    if ex.webhook != Default::default() || ex.request.body.truncated {
        return;
    }
    let path = ex.request.path.as_str();
    let rule_matches = hooks.rules.for_path(path).is_some();
    let spilled;
    let body: &[u8] = match &ex.request.body.data {
        BodyData::Empty => &[],
        BodyData::Memory(b) => b,
        BodyData::File(p) if ex.request.body.total_len <= MAX_VERIFY_LEN => {
            match std::fs::read(p) {
                Ok(b) => {
                    spilled = b;
                    &spilled
                }
                Err(_) => return,
            }
        }
        BodyData::File(_) => return,
    };
    // Recognition alone parses the body: only a rule justifies big ones.
    if !rule_matches && body.len() > super::event::MAX_DETECT_LEN {
        return;
    }
    let headers = &ex.request.headers;
    let probe = RequestView::new(&ex.request.method, "", headers, body);
    let url = crate::verify::rules::public_url_for(hooks.public_url.as_deref(), &probe, path);
    let mut view = RequestView::new(&ex.request.method, &url, headers, body);
    view.relay_body = ex.body_proof.relay;
    let judged = hooks.rules.judge(path, &view, ex.received_at.into());
    ex.webhook = judged.webhook;
    if ex.event.is_none() {
        ex.event = judged.event;
    }
}

/// Bodies up to this size get their event type recognised even on the
/// caller's side (queue full); larger ones only in the writer thread.
const INLINE_DETECT_MAX: usize = 64 * 1024;

/// Fills `ex.event` from the request body when the forwarder did not.
/// `in_writer`: may read spilled body files (up to the detector's own limit)
/// and parse large bodies; false on the caller's side, where record() must
/// stay cheap.
fn fill_event(ex: &mut Exchange, in_writer: bool) {
    if ex.event.is_some() || ex.request.body.truncated {
        return;
    }
    let ct = ex
        .request
        .headers
        .get("content-type")
        .and_then(|v| std::str::from_utf8(v).ok());
    let max = if in_writer {
        super::event::MAX_DETECT_LEN
    } else {
        INLINE_DETECT_MAX
    };
    let event = match &ex.request.body.data {
        BodyData::Memory(b) if b.len() <= max => super::event::detect(b, ct),
        // Bodies between the in-memory and the detection limits were spilled
        // (e.g. a payload with 6000 transaction ids); still worth a look.
        BodyData::File(p) if in_writer && ex.request.body.total_len <= max as u64 => {
            std::fs::read(p)
                .ok()
                .and_then(|b| super::event::detect(&b, ct))
        }
        _ => None,
    };
    ex.event = event;
}

/// Deletes the tee's spill files of an exchange that will not be stored, off
/// the caller's task (record() must not do I/O).
fn discard_spilled(ex: Exchange) {
    let mut files = Vec::new();
    let bodies = std::iter::once(&ex.request.body).chain(ex.response.as_ref().map(|r| &r.body));
    for b in bodies {
        if let BodyData::File(p) = &b.data {
            if super::tee::is_spill_file(p) {
                files.push(p.clone());
            }
        }
    }
    if files.is_empty() {
        return;
    }
    let job = move || {
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(job)),
        Err(_) => job(),
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
        Self::with_limits(store, queue, QUEUE_BYTES)
    }

    /// Starts the writer with a queue of at most `queue` exchanges holding
    /// at most `bytes` of bodies and headers together.
    pub fn with_limits(store: Store, queue: usize, bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let queue_bytes = bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let events = Events::new();
        let ev = events.clone();
        let webhooks: Arc<parking_lot::RwLock<Webhooks>> = Arc::default();
        let hooks = webhooks.clone();
        let checkpoint_gate: Arc<Mutex<()>> = Arc::default();
        let checkpointer = start_checkpoints(&store, checkpoint_gate.clone());
        // A dedicated OS thread: SQLite calls block, and must never run on
        // the tokio runtime's workers.
        let thread = std::thread::Builder::new()
            .name("whtunnel-capture".into())
            .spawn(move || writer(store, checkpointer, rx, ev, hooks))
            .expect("spawn capture writer thread");
        Self {
            tx,
            events,
            thread: Arc::new(Mutex::new(Some(thread))),
            live: Arc::default(),
            webhooks,
            checkpoint_gate,
            queued_bytes: Arc::new(tokio::sync::Semaphore::new(queue_bytes)),
            queue_bytes,
        }
    }

    /// Held, it stops the store's checkpoints (tests: the writer must go on
    /// storing without them).
    #[cfg(test)]
    pub(crate) fn checkpoint_gate(&self) -> Arc<Mutex<()>> {
        self.checkpoint_gate.clone()
    }

    /// Judges the senders and signatures of exchanges recorded from now on
    /// by `rules` (recognition without a rule applies always).
    pub fn set_webhook_rules(&self, rules: Rules) {
        self.webhooks.write().rules = Arc::new(rules);
    }

    /// The tunnel's public URL (`http://relay/t/NAME`), once known: the URL
    /// a sender signs for Square and Twilio is it plus the request's path.
    pub fn set_public_url(&self, url: Option<String>) {
        self.webhooks.write().public_url = url;
    }

    /// Announces an exchange the forwarder is starting (it received at
    /// `received_at`, has `budget` to be answered) as
    /// [`CaptureEvent::Started`] and returns its live number, to be set as
    /// [`Exchange::live`] on the finished exchange. Never blocks: a
    /// broadcast like the others, and not even built while nobody follows
    /// [`Recorder::subscribe`].
    pub fn started(
        &self,
        received_at: DateTime<Utc>,
        method: &str,
        path: &str,
        replay_of: Option<ExchangeId>,
        budget: Duration,
    ) -> u64 {
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        if self.events.all.receiver_count() == 0 {
            return live;
        }
        let _ = self.events.all.send(CaptureEvent::Started(ExchangeSummary {
            id: 0,
            received_at,
            method: method.to_string(),
            path: path.to_string(),
            status: None,
            duration_ms: budget.as_secs_f64() * 1000.0,
            event: None,
            replay_of,
            request_size: 0,
            response_size: 0,
            outcome: None,
            error: None,
            live,
            provider: None,
            signature: None,
            delivery_id: None,
            signature_reason: None,
            relay_event_id: None,
            sender_timeout_ms: None,
        }));
        live
    }

    /// Queues an exchange without waiting; the receiver resolves once it is
    /// stored (or failed). Never blocks: when the queue is full the exchange is
    /// reported as not stored.
    pub fn record(&self, ex: Exchange) -> oneshot::Receiver<Result<ExchangeId, StoreError>> {
        let (reply, rx) = oneshot::channel();
        self.queue(ex, Some(reply));
        rx
    }

    /// Like [`Recorder::record`] for an exchange nobody waits for (a live
    /// exchange: the UI follows [`Recorder::subscribe`], the log
    /// [`Recorder::subscribe_finished`]). The
    /// writer may hold it for up to [`GROUP_COMMIT_LINGER`] to commit it
    /// together with others.
    pub fn record_in_background(&self, ex: Exchange) {
        self.queue(ex, None);
    }

    fn queue(&self, ex: Exchange, reply: Reply) {
        // No more than the whole budget (one larger than it is queued only
        // into an empty queue), in the u32 a semaphore takes.
        let size = queued_size(&ex)
            .min(self.queue_bytes)
            .min(u32::MAX as usize) as u32;
        let bytes = match self.queued_bytes.clone().try_acquire_many_owned(size) {
            Ok(p) => p,
            Err(_) => return self.not_stored(Box::new(ex), reply, StoreError::QueueFull),
        };
        let job = Job::Record {
            ex: Box::new(ex),
            bytes,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(e) => {
                let (job, err) = match e {
                    mpsc::error::TrySendError::Full(j) => (j, StoreError::QueueFull),
                    mpsc::error::TrySendError::Closed(j) => (j, StoreError::Closed),
                };
                if let Job::Record { ex, reply, .. } = job {
                    self.not_stored(ex, reply, err);
                }
            }
        }
    }

    /// Reports an exchange that could not be queued.
    fn not_stored(&self, mut ex: Box<Exchange>, reply: Reply, err: StoreError) {
        fill_event(&mut ex, false);
        let mut summary = ex.summary();
        summary.id = 0;
        self.events.finished(CaptureEvent::NotStored {
            summary,
            reason: err.to_string(),
        });
        if let Some(reply) = reply {
            let _ = reply.send(Err(err));
        }
        discard_spilled(*ex);
    }

    /// The stored exchange that answered relay event `event_id`, if any.
    /// Everything recorded before this call is stored before the lookup
    /// runs, so a redelivered event is never mistaken for a new one because
    /// its first answer was still queued.
    pub async fn find_relay_event(&self, event_id: &str) -> Option<ExchangeSummary> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Lookup(event_id.to_string(), reply))
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Follows every exchange: its start, then its end.
    pub fn subscribe(&self) -> broadcast::Receiver<CaptureEvent> {
        self.events.all.subscribe()
    }

    /// Follows finished exchanges only (`Stored` and `NotStored`): for a
    /// follower with nothing to do when one starts.
    pub fn subscribe_finished(&self) -> broadcast::Receiver<CaptureEvent> {
        self.events.finished.subscribe()
    }

    /// Flushes everything queued and stops the writer.
    pub async fn close(self) {
        let (done, wait) = oneshot::channel();
        // Waits for queue space (close is allowed to wait; record is not).
        if self.tx.send(Job::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        let handle = self.thread.lock().take();
        if let Some(h) = handle {
            // The thread has answered `done` and only drops the store now.
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Moves `store`'s checkpoints to a [`Checkpointer`] thread, leaving the
/// writer's own as a far bound. If the thread cannot start, the writer
/// checkpoints as SQLite does by default.
fn start_checkpoints(store: &Store, gate: Arc<Mutex<()>>) -> Option<Checkpointer> {
    let started = Checkpointer::start(&store.db_path(), gate).and_then(|c| {
        store
            .set_writer_checkpoint(WRITER_CHECKPOINT_PAGES, WAL_FILE_LIMIT)
            .map(|()| c)
    });
    match started {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("capture: no checkpoint thread ({e}); the writer checkpoints itself");
            None
        }
    }
}

/// The writer loop: take one job (blocking), then everything else already
/// queued, and store it as one batch.
fn writer(
    mut store: Store,
    checkpointer: Option<Checkpointer>,
    mut rx: mpsc::Receiver<Job>,
    events: Events,
    hooks: Arc<parking_lot::RwLock<Webhooks>>,
) {
    let mut closing: Option<oneshot::Sender<()>> = None;
    let mut last_commit: Option<std::time::Instant> = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        // No wait after a full batch either: a backlog is drained at once.
        if let (Some(t), false) = (last_commit, is_urgent(&first)) {
            if let Some(rest) = GROUP_COMMIT_LINGER.checked_sub(t.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let mut batch = Vec::new();
        let mut lookups = Vec::new();
        // The batch's share of the queue's bytes, given back once stored:
        // what waits to be stored, queued or in hand, stays within it.
        let mut held_bytes = Vec::new();
        let mut push = |job: Job, batch: &mut Vec<(Box<Exchange>, Reply)>| match job {
            Job::Record { ex, reply, bytes } => {
                batch.push((ex, reply));
                held_bytes.push(bytes);
            }
            Job::Close(done) => closing = Some(done),
            Job::Lookup(id, reply) => lookups.push((id, reply)),
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
                if let Job::Record { ex, reply, .. } = job {
                    batch.push((ex, reply));
                }
                if batch.len() >= MAX_BATCH {
                    store_batch(&mut store, std::mem::take(&mut batch), &events, &hooks);
                }
            }
        }
        let full = batch.len() >= MAX_BATCH;
        store_batch(&mut store, batch, &events, &hooks);
        drop(held_bytes);
        if let Some(c) = &checkpointer {
            c.committed();
        }
        last_commit = (!full).then(std::time::Instant::now);
        // Answered only now, so every record queued before them is visible.
        for (id, reply) in lookups {
            let _ = reply.send(store.find_by_relay_event(&id).ok().flatten());
        }
    }
    // Stop accepting: later `record` calls see Closed.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        if let Job::Record { ex, reply, .. } = job {
            store_batch(&mut store, vec![(ex, reply)], &events, &hooks);
        }
    }
    // The checkpoint thread's last checkpoint, then the writer's connection
    // (whose close checkpoints what is left, readers permitting).
    drop(checkpointer);
    drop(store);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Whether someone is waiting for this job to be done (see
/// [`GROUP_COMMIT_LINGER`]).
fn is_urgent(job: &Job) -> bool {
    match job {
        Job::Record { reply, .. } => reply.is_some(),
        Job::Close(_) | Job::Lookup(..) => true,
    }
}

fn store_batch(
    store: &mut Store,
    batch: Vec<(Box<Exchange>, Reply)>,
    events: &Events,
    hooks: &parking_lot::RwLock<Webhooks>,
) {
    if batch.is_empty() {
        return;
    }
    let (mut exs, replies): (Vec<Exchange>, Vec<Reply>) =
        batch.into_iter().map(|(ex, reply)| (*ex, reply)).unzip();
    let hooks = hooks.read().clone();
    for ex in exs.iter_mut() {
        judge(ex, &hooks);
        fill_event(ex, true);
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
    for ((ex, reply), result) in exs.into_iter().zip(replies).zip(results) {
        match result {
            Ok(id) => {
                let mut summary = ex.into_summary();
                summary.id = id;
                events.finished(CaptureEvent::Stored(summary));
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                let mut summary = ex.summary();
                summary.id = 0;
                tracing::warn!("capture: exchange not stored: {e}");
                events.finished(CaptureEvent::NotStored {
                    summary,
                    reason: e.to_string(),
                });
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e));
                }
                discard_spilled(ex);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::store::tests::sample;
    use crate::capture::store::{ListQuery, StoreConfig};

    fn store(dir: &std::path::Path) -> Store {
        Store::open(&StoreConfig::new(dir.to_path_buf())).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_a_burst_and_publishes_events() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::spawn(store(tmp.path()));
        let mut events = rec.subscribe();
        const N: usize = 5000;
        // Follow events concurrently, as the inspector does.
        let follower = tokio::spawn(async move {
            let (mut stored, mut last) = (Vec::new(), None);
            while stored.len() < N {
                match events.recv().await {
                    Ok(CaptureEvent::Stored(s)) => {
                        stored.push(s.id);
                        last = s.event;
                    }
                    Ok(CaptureEvent::NotStored { reason, .. }) => panic!("not stored: {reason}"),
                    Ok(CaptureEvent::Started(s)) => panic!("nothing was started: {s:?}"),
                    Err(e) => panic!("event stream: {e}"),
                }
            }
            (stored, last)
        });
        let mut pending = std::collections::VecDeque::with_capacity(N);
        let mut ids = Vec::new();
        for i in 0..N {
            let mut ex = sample(format!("{{\"type\":\"burst.{i}\"}}").as_bytes());
            ex.request.path = format!("/{i}");
            pending.push_back(rec.record(ex));
            // Keep at most 1000 outstanding (queue is 1024): record() itself
            // never waits, so the sender paces on replies.
            if pending.len() >= 1000 {
                ids.push(pending.pop_front().unwrap().await.unwrap().unwrap());
            }
        }
        for rx in pending {
            ids.push(rx.await.unwrap().unwrap());
        }
        let (stored, last_event) = follower.await.unwrap();
        assert_eq!(stored, ids, "one Stored event per exchange, in order");
        assert_eq!(last_event.as_deref(), Some("burst.4999"));
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), N, "ids are unique and increasing");
        rec.close().await;
        let s = Store::open_reader(tmp.path()).unwrap();
        assert_eq!(s.count().unwrap() as usize, N);
    }

    /// The writer goes on storing while no checkpoint can run. With the
    /// checkpoint thread held, 24 MiB of exchanges (more than the 16 MiB
    /// after which SQLite's writer checkpoints by default) are all stored,
    /// and the database file did not grow: the writer copied nothing from
    /// the log itself, which took it half a second per 16 MiB on a slow
    /// disk while its queue filled. Let go, the checkpoint thread copies
    /// the log in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Held on purpose while recording: it is the checkpoint thread (not a
    // task) that must wait on it.
    #[allow(clippy::await_holding_lock)]
    async fn the_writer_never_waits_for_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join(crate::capture::store::DB_FILE);
        let rec = Recorder::spawn(store(tmp.path()));
        let gate = rec.checkpoint_gate();
        let held = gate.lock();
        let size = || std::fs::metadata(&db).unwrap().len();
        let before = size();
        const N: usize = 1500;
        let body = vec![b'x'; 16 * 1024];
        let mut pending = std::collections::VecDeque::new();
        for _ in 0..N {
            pending.push_back(rec.record(sample(&body)));
            if pending.len() >= 512 {
                pending.pop_front().unwrap().await.unwrap().unwrap();
            }
        }
        for rx in pending {
            rx.await.unwrap().unwrap();
        }
        let wal = std::fs::metadata(
            tmp.path()
                .join(format!("{}-wal", crate::capture::store::DB_FILE)),
        )
        .unwrap()
        .len();
        assert!(wal > 24 << 20, "the exchanges are in the log: {wal} bytes");
        assert_eq!(
            size(),
            before,
            "the writer checkpointed into the database file"
        );
        drop(held);
        // The next commit wakes the checkpoint thread.
        rec.record(sample(b"one more")).await.unwrap().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while size() < 24 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 30 s: {} bytes",
                size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rec.close().await;
        let s = Store::open_reader(tmp.path()).unwrap();
        assert_eq!(s.count().unwrap() as usize, N + 1);
    }

    #[tokio::test]
    async fn started_then_stored_share_a_live_number() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::spawn(store(tmp.path()));
        let mut events = rec.subscribe();
        let budget = Duration::from_secs(30);
        let a = rec.started(Utc::now(), "POST", "/a", None, budget);
        let b = rec.started(Utc::now(), "POST", "/b", Some(7), budget);
        assert!(a > 0 && b > a, "live numbers are distinct: {a} {b}");
        for (live, path) in [(a, "/a"), (b, "/b")] {
            match events.recv().await.unwrap() {
                CaptureEvent::Started(s) => {
                    assert_eq!((s.id, s.status, s.live), (0, None, live));
                    assert_eq!(s.path, path);
                    assert_eq!(s.duration_ms, 30_000.0, "the budget");
                }
                other => panic!("expected Started, got {other:?}"),
            }
        }
        let mut ex = sample(b"x");
        ex.live = b;
        let id = rec.record(ex).await.unwrap().unwrap();
        match events.recv().await.unwrap() {
            CaptureEvent::Stored(s) => assert_eq!((s.id, s.live), (id, b)),
            other => panic!("expected Stored, got {other:?}"),
        }
        rec.close().await;
        // Not kept: a reader sees 0.
        let r = Store::open_reader(tmp.path()).unwrap();
        assert_eq!(r.summary(id).unwrap().unwrap().live, 0);
    }

    #[tokio::test]
    async fn a_finished_only_follower_gets_ends_in_order_and_no_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::spawn(store(tmp.path()));
        let mut finished = rec.subscribe_finished();
        let budget = Duration::from_secs(30);
        let mut ids = Vec::new();
        for path in ["/a", "/b"] {
            let live = rec.started(Utc::now(), "POST", path, None, budget);
            let mut ex = sample(b"x");
            ex.live = live;
            ids.push((rec.record(ex).await.unwrap().unwrap(), live));
        }
        // Full followers still see both kinds, in order.
        let mut all = rec.subscribe();
        let live = rec.started(Utc::now(), "POST", "/c", None, budget);
        let mut ex = sample(b"x");
        ex.live = live;
        ids.push((rec.record(ex).await.unwrap().unwrap(), live));
        for (id, live) in &ids {
            match finished.recv().await.unwrap() {
                CaptureEvent::Stored(s) => assert_eq!((s.id, s.live), (*id, *live)),
                other => panic!("expected Stored, got {other:?}"),
            }
        }
        assert!(finished.try_recv().is_err(), "nothing else: no Started");
        assert!(matches!(all.recv().await.unwrap(), CaptureEvent::Started(s) if s.live == live));
        assert!(matches!(all.recv().await.unwrap(), CaptureEvent::Stored(s) if s.live == live));
        rec.close().await;
    }

    #[tokio::test]
    async fn all_records_stored_when_paced() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::spawn(store(tmp.path()));
        let mut rxs = Vec::new();
        for _ in 0..1000 {
            rxs.push(rec.record(sample(b"x")));
        }
        for rx in rxs {
            assert!(rx.await.unwrap().is_ok());
        }
        rec.close().await;
        assert_eq!(
            Store::open_reader(tmp.path()).unwrap().count().unwrap(),
            1000
        );
    }

    /// A writer held up (here by another connection's write lock) loses
    /// nothing of a burst its queue holds: 5,000 webhooks arriving at once
    /// are all queued and stored once it can write. (A queue of 1,024
    /// dropped 0.5–2 % of the exchanges at 6,000–9,000 a second while the
    /// writer made a checkpoint.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_up_writer_loses_nothing_of_a_burst() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let blocker = rusqlite::Connection::open(tmp.path().join("capture.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let rec = Recorder::spawn(s);
        const N: usize = 5000;
        let mut pending: Vec<_> = (0..N)
            .map(|i| rec.record(sample(format!("{{\"n\":{i}}}").as_bytes())))
            .collect();
        let refused = pending
            .iter_mut()
            .map(|rx| rx.try_recv())
            .filter(|answer| matches!(answer, Ok(Err(_))))
            .count();
        assert_eq!(refused, 0, "exchanges refused by a held-up writer's queue");
        blocker.execute_batch("ROLLBACK").unwrap();
        for rx in pending {
            rx.await.unwrap().unwrap();
        }
        rec.close().await;
        assert_eq!(
            Store::open_reader(tmp.path()).unwrap().count().unwrap() as usize,
            N
        );
    }

    /// However many exchanges the queue may hold, together they hold at most
    /// its byte budget: with 1 MiB, 40 exchanges of 60,000-byte bodies do
    /// not all fit, and those refused are reported, not waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_holds_at_most_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let blocker = rusqlite::Connection::open(tmp.path().join("capture.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let rec = Recorder::with_limits(s, DEFAULT_QUEUE, 1 << 20);
        let body = vec![b'x'; 60_000];
        let mut pending: Vec<_> = (0..40).map(|_| rec.record(sample(&body))).collect();
        let mut queued = Vec::new();
        let mut refused = 0;
        for mut rx in pending.drain(..) {
            match rx.try_recv() {
                Ok(Err(StoreError::QueueFull)) => refused += 1,
                Err(oneshot::error::TryRecvError::Empty) => queued.push(rx),
                other => panic!("unexpected answer {other:?}"),
            }
        }
        // 1 MiB / ~60.6 KiB: 17, queued or in the writer's hands.
        assert_eq!(queued.len(), 17);
        assert_eq!(refused, 40 - queued.len());
        blocker.execute_batch("ROLLBACK").unwrap();
        for rx in queued {
            rx.await.unwrap().unwrap();
        }
        rec.close().await;
    }

    #[tokio::test]
    async fn queue_full_reports_not_stored_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        // Hold the database's write lock from another connection so the
        // writer is stuck on its first batch and the 1-slot queue fills.
        let blocker = rusqlite::Connection::open(tmp.path().join("capture.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let rec = Recorder::with_capacity(s, 1);
        let mut events = rec.subscribe();
        let first = rec.record(sample(b"1"));
        // Wait until the writer has taken the first job off the queue.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let second = rec.record(sample(b"2")); // fills the queue
        let spill = tmp.path().join("lost.spill");
        std::fs::write(&spill, b"spilled").unwrap();
        let mut lost = sample(b"{\"eventType\":\"lost.one\"}");
        lost.response.as_mut().unwrap().body = crate::capture::CapturedBody {
            data: BodyData::File(spill.clone()),
            total_len: 7,
            truncated: false,
        };
        // Answered before `record` returns: nothing waited for room.
        let mut third = rec.record(lost);
        assert!(matches!(third.try_recv(), Ok(Err(StoreError::QueueFull))));
        match events.recv().await.unwrap() {
            CaptureEvent::NotStored { summary, reason } => {
                assert_eq!(summary.id, 0);
                assert_eq!(summary.event.as_deref(), Some("lost.one"));
                assert!(reason.contains("queue full"), "{reason}");
            }
            other => panic!("expected NotStored, got {other:?}"),
        }
        // The unstored exchange's spill file is not leaked.
        for _ in 0..100 {
            if !spill.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!spill.exists());
        blocker.execute_batch("ROLLBACK").unwrap();
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        rec.close().await;
    }

    #[tokio::test]
    async fn database_failure_reports_not_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let rec = Recorder::spawn(s);
        let mut events = rec.subscribe();
        assert!(rec.record(sample(b"ok")).await.unwrap().is_ok());
        assert!(matches!(
            events.recv().await.unwrap(),
            CaptureEvent::Stored(_)
        ));
        // Break the schema under the writer.
        let other = rusqlite::Connection::open(tmp.path().join("capture.db")).unwrap();
        other.execute_batch("DROP TABLE exchanges_p0").unwrap();
        let res = rec.record(sample(b"lost")).await.unwrap();
        assert!(res.is_err());
        match events.recv().await.unwrap() {
            CaptureEvent::NotStored { summary, reason } => {
                assert_eq!(summary.path, "/hooks?key=0123");
                assert!(reason.contains("exchanges"), "{reason}");
            }
            other => panic!("expected NotStored, got {other:?}"),
        }
        rec.close().await;
    }

    #[tokio::test]
    async fn records_after_close_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = Recorder::spawn(store(tmp.path()));
        let other = rec.clone();
        let queued = rec.record(sample(b"before close"));
        rec.close().await;
        assert!(
            queued.await.unwrap().is_ok(),
            "queued before close is flushed"
        );
        let after = other.record(sample(b"after"));
        assert!(matches!(after.await.unwrap(), Err(StoreError::Closed)));
        let s = Store::open_reader(tmp.path()).unwrap();
        assert_eq!(s.list(&ListQuery::default()).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn recognises_events_in_spilled_bodies() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        // A ~280 KB payload (6000 long transaction ids) spilled to a file by the tee.
        let ids: Vec<String> = (0..6000).map(|i| format!("\"{i:044}\"")).collect();
        let body = format!(
            "{{\"eventType\":\"newTransactions\",\"transactions\":[{}]}}",
            ids.join(",")
        );
        assert!(body.len() > crate::capture::store::INLINE_BODY_MAX);
        std::fs::create_dir_all(s.spill_dir()).unwrap();
        let path = s.spill_dir().join("t.spill");
        std::fs::write(&path, &body).unwrap();
        let rec = Recorder::spawn(s);
        let mut ex = sample(b"");
        ex.request.body = crate::capture::CapturedBody {
            data: BodyData::File(path),
            total_len: body.len() as u64,
            truncated: false,
        };
        let id = rec.record(ex).await.unwrap().unwrap();
        rec.close().await;
        let r = Store::open_reader(tmp.path()).unwrap();
        assert_eq!(
            r.summary(id).unwrap().unwrap().event.as_deref(),
            Some("newTransactions")
        );
    }
}
