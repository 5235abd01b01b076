//! The inspector's engine without a terminal: owns the [`App`], the message
//! and effect queues and the channels, and carries out [`Effect`]s against a
//! [`Source`] (the capture store). `terminal` only adds input and drawing,
//! so everything but raw terminal I/O is testable with a fake source.

use std::collections::{HashSet, VecDeque};
use std::io::Read;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, watch};

use super::state::{update, App, DeadLetters, Effect, Msg, MAX_ROWS};
use crate::agent::ConnectionStatus;
use crate::capture::{
    BodyData, CaptureEvent, CapturedBody, Exchange, ExchangeId, ExchangeSummary, ListQuery,
    ReplayRequest, Store,
};

/// Bodies kept in files are read up to this much for display, editing and
/// body search.
pub const FILE_BODY_LIMIT: u64 = 8 << 20;
/// Exchanges read per body-search step, so the UI stays responsive while a
/// search walks thousands of exchanges.
pub const SEARCH_CHUNK: usize = 100;
/// Rows from other processes loaded per store poll (a burst larger than
/// this arrives over a few polls).
pub const POLL_CHUNK: usize = 500;

/// Read access to captured exchanges, as the inspector needs it.
pub trait Source {
    /// Newest first, at most `limit`.
    fn list(&self, limit: usize) -> Result<Vec<ExchangeSummary>, String>;
    /// One exchange with headers and bodies.
    fn get(&self, id: ExchangeId) -> Result<Option<Exchange>, String>;
    /// The highest id stored (0 when empty); polled, so it must be cheap.
    fn max_id(&self) -> Result<ExchangeId, String>;
    /// Exchanges with an id above `after`, lowest id first, at most `limit`.
    fn list_after(&self, after: ExchangeId, limit: usize) -> Result<Vec<ExchangeSummary>, String>;
}

impl Source for Store {
    fn list(&self, limit: usize) -> Result<Vec<ExchangeSummary>, String> {
        Store::list(self, &ListQuery { limit: Some(limit) }).map_err(|e| e.to_string())
    }

    fn get(&self, id: ExchangeId) -> Result<Option<Exchange>, String> {
        Store::get(self, id).map_err(|e| e.to_string())
    }

    fn max_id(&self) -> Result<ExchangeId, String> {
        Store::max_id(self).map_err(|e| e.to_string())
    }

    fn list_after(&self, after: ExchangeId, limit: usize) -> Result<Vec<ExchangeSummary>, String> {
        Store::list_after(self, after, limit).map_err(|e| e.to_string())
    }
}

/// Reads a body that the store kept in a file into memory (bounded), so that
/// `update` and `render` only ever see in-memory bytes.
pub fn load_file_body(body: &mut CapturedBody) {
    let BodyData::File(path) = &body.data else {
        return;
    };
    let mut buf = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(FILE_BODY_LIMIT).read_to_end(&mut buf));
    if read.is_ok() {
        if (buf.len() as u64) < body.total_len {
            body.truncated = true;
        }
        body.data = BodyData::Memory(buf.into());
    }
}

/// Does the request or response body of `ex` contain `needle` (ASCII
/// case-insensitive)? What a filter's `body:` term asks; bodies kept in
/// files are read, bounded, first.
pub fn bodies_contain(ex: &mut Exchange, needle: &[u8]) -> bool {
    load_file_body(&mut ex.request.body);
    if body_contains(&ex.request.body, needle) {
        return true;
    }
    ex.response.as_mut().is_some_and(|resp| {
        load_file_body(&mut resp.body);
        body_contains(&resp.body, needle)
    })
}

fn body_contains(body: &CapturedBody, needle: &[u8]) -> bool {
    let BodyData::Memory(b) = &body.data else {
        return false;
    };
    if needle.is_empty() {
        return true;
    }
    b.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The result of carrying out one effect.
// One lives at a time, on the stack, for the length of one effect: boxing
// the message would cost an allocation per effect for nothing.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Msg(Msg),
    Quit,
    Nothing,
}

/// What one call to [`Session::pump`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pumped {
    /// The user asked to quit.
    pub quit: bool,
    /// The state changed: redraw.
    pub dirty: bool,
    /// Effects are still queued (a long body search): come back soon.
    pub busy: bool,
}

/// The inspector's engine: state, queues and channels.
pub struct Session<S: Source> {
    /// The state being shown.
    pub app: App,
    source: S,
    events: broadcast::Receiver<CaptureEvent>,
    events_open: bool,
    status: watch::Receiver<ConnectionStatus>,
    replays: mpsc::Sender<ReplayRequest>,
    banner: Option<watch::Receiver<String>>,
    backlog: Option<watch::Receiver<u64>>,
    dead: Option<watch::Receiver<DeadLetters>>,
    queue: VecDeque<Msg>,
    pending: VecDeque<Effect>,
    /// The agent's status channel closed: the agent is gone.
    agent_gone: bool,
}

impl<S: Source> Session<S> {
    /// A session that starts by loading the list and the current status.
    pub fn new(
        mut app: App,
        source: S,
        events: broadcast::Receiver<CaptureEvent>,
        mut status: watch::Receiver<ConnectionStatus>,
        replays: mpsc::Sender<ReplayRequest>,
    ) -> Self {
        app.status = status.borrow_and_update().clone();
        Session {
            app,
            source,
            events,
            events_open: true,
            status,
            replays,
            banner: None,
            backlog: None,
            dead: None,
            queue: VecDeque::new(),
            pending: VecDeque::from([Effect::Reload]),
            agent_gone: false,
        }
    }

    /// Follows the agent's standing notice (see [`super::Inputs::notice`]).
    pub fn with_banner(mut self, banner: Option<watch::Receiver<String>>) -> Self {
        if let Some(rx) = banner.as_ref() {
            self.queue.push_back(Msg::Banner(rx.borrow().clone()));
        }
        self.banner = banner;
        self
    }

    /// Follows the relay's held backlog and dead letters for this tunnel
    /// (see [`crate::forward::Forwarder::backlog`] and
    /// [`crate::forward::Forwarder::dead_letters`]).
    pub fn with_held(
        mut self,
        backlog: Option<watch::Receiver<u64>>,
        dead: Option<watch::Receiver<DeadLetters>>,
    ) -> Self {
        if let Some(mut rx) = backlog {
            let left = *rx.borrow_and_update();
            self.queue.push_back(Msg::Tick(std::time::Instant::now()));
            self.queue.push_back(Msg::Backlog(left));
            self.backlog = Some(rx);
        }
        if let Some(mut rx) = dead {
            let d = rx.borrow_and_update().clone();
            if d != DeadLetters::default() {
                self.queue.push_back(Msg::DeadLetters(d));
            }
            self.dead = Some(rx);
        }
        self
    }

    /// Queues a message (terminal input, ticks).
    pub fn push(&mut self, msg: Msg) {
        self.queue.push_back(msg);
    }

    /// Takes everything waiting on the capture and status channels, without
    /// blocking. A lagged receiver becomes [`Msg::Lagged`] (and a reload).
    pub fn poll_channels(&mut self) {
        let mut stamped = false;
        while self.events_open {
            match self.events.try_recv() {
                Ok(ev) => {
                    // Rows in progress start their timer at the app's clock.
                    if !stamped && matches!(ev, CaptureEvent::Started(_)) {
                        self.queue.push_back(Msg::Tick(std::time::Instant::now()));
                        stamped = true;
                    }
                    self.queue.push_back(Msg::Captured(ev));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => self.queue.push_back(Msg::Lagged(n)),
                // The recorder is gone (agent shutting down): keep browsing.
                Err(TryRecvError::Closed) => self.events_open = false,
            }
        }
        match self.status.has_changed() {
            Ok(true) => {
                let s = self.status.borrow_and_update().clone();
                self.queue.push_back(Msg::Status(s));
            }
            Ok(false) => {}
            // The agent has stopped (shutdown signal, or refused): the UI ends
            // too, and `listen` reports why on the restored terminal.
            Err(_) => self.agent_gone = true,
        }
        if let Some(rx) = self.backlog.as_mut() {
            match rx.has_changed() {
                Ok(true) => {
                    let left = *rx.borrow_and_update();
                    // The rate is measured on the app's clock.
                    self.queue.push_back(Msg::Tick(std::time::Instant::now()));
                    self.queue.push_back(Msg::Backlog(left));
                }
                Ok(false) => {}
                Err(_) => self.backlog = None,
            }
        }
        if let Some(rx) = self.dead.as_mut() {
            match rx.has_changed() {
                Ok(true) => {
                    let d = rx.borrow_and_update().clone();
                    self.queue.push_back(Msg::DeadLetters(d));
                }
                Ok(false) => {}
                Err(_) => self.dead = None,
            }
        }
        if let Some(rx) = self.banner.as_mut() {
            match rx.has_changed() {
                Ok(true) => {
                    let text = rx.borrow_and_update().clone();
                    self.queue.push_back(Msg::Banner(text));
                }
                Ok(false) => {}
                Err(_) => self.banner = None,
            }
        }
    }

    /// Applies queued messages and carries out the effects they produce
    /// until both queues are empty, except that a body-search step hands
    /// control back (with `busy`) so input and drawing are not starved.
    pub fn pump(&mut self) -> Pumped {
        let mut out = Pumped::default();
        if self.agent_gone {
            out.quit = true;
            return out;
        }
        loop {
            if let Some(msg) = self.queue.pop_front() {
                self.pending.extend(update(&mut self.app, msg));
                out.dirty = true;
                continue;
            }
            let Some(effect) = self.pending.pop_front() else {
                break;
            };
            let slow = matches!(effect, Effect::SearchBodies { .. });
            match self.execute(effect) {
                Outcome::Quit => {
                    out.quit = true;
                    return out;
                }
                Outcome::Msg(m) => self.queue.push_back(m),
                Outcome::Nothing => {}
            }
            if slow {
                while let Some(msg) = self.queue.pop_front() {
                    self.pending.extend(update(&mut self.app, msg));
                    out.dirty = true;
                }
                break;
            }
        }
        out.busy = !self.pending.is_empty() || !self.queue.is_empty();
        out
    }

    fn execute(&mut self, effect: Effect) -> Outcome {
        match effect {
            Effect::Quit => Outcome::Quit,
            Effect::Reload => Outcome::Msg(match self.source.list(MAX_ROWS) {
                Ok(list) => Msg::Reloaded(list),
                Err(e) => Msg::StoreError(format!("could not read the capture store: {e}")),
            }),
            Effect::PollStore { after } => match self.source.max_id() {
                Ok(max) if max > after => match self.source.list_after(after, POLL_CHUNK) {
                    Ok(list) => Outcome::Msg(Msg::Polled(list)),
                    Err(e) => Outcome::Msg(Msg::StoreError(format!(
                        "could not read the capture store: {e}"
                    ))),
                },
                Ok(_) => Outcome::Nothing,
                // A busy store is asked again at the next poll.
                Err(_) => Outcome::Nothing,
            },
            Effect::LoadDetail(id) => Outcome::Msg(match self.source.get(id) {
                Ok(Some(mut ex)) => {
                    load_file_body(&mut ex.request.body);
                    if let Some(resp) = ex.response.as_mut() {
                        load_file_body(&mut resp.body);
                    }
                    Msg::DetailLoaded(Box::new(ex))
                }
                Ok(None) => Msg::DetailFailed {
                    id,
                    error: "no longer in the store (retention limit?)".into(),
                },
                Err(error) => Msg::DetailFailed { id, error },
            }),
            Effect::Replay(req) => {
                let id = req.id;
                match self.replays.try_send(req) {
                    Ok(()) => Outcome::Nothing,
                    Err(TrySendError::Full(_)) => Outcome::Msg(Msg::ReplayFailed {
                        id,
                        error: "too many replays queued; try again".into(),
                    }),
                    Err(TrySendError::Closed(_)) => Outcome::Msg(Msg::ReplayFailed {
                        id,
                        error: "the agent is not accepting replays".into(),
                    }),
                }
            }
            Effect::SearchBodies { needle, mut ids } => {
                let rest = ids.split_off(ids.len().min(SEARCH_CHUNK));
                let mut matched = HashSet::new();
                let n = needle.as_bytes();
                for id in ids {
                    // Unreadable or deleted exchanges simply do not match.
                    if let Ok(Some(mut ex)) = self.source.get(id) {
                        if bodies_contain(&mut ex, n) {
                            matched.insert(id);
                        }
                    }
                }
                Outcome::Msg(Msg::BodySearched {
                    needle,
                    matched,
                    rest,
                })
            }
        }
    }
}
