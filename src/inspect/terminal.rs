//! The inspector's event loop and terminal lifecycle: raw mode and alternate
//! screen on entry; restored on quit, on error, on panic (hook) and on Ctrl-C
//! (a key in raw mode, handled by `update`). The loop multiplexes terminal
//! input, capture events and connection-state changes into `Msg`s, carries out
//! the `Effect`s `update` returns, and redraws.
//!
//! The loop is a plain blocking thread (as `run` documents): it waits on the
//! terminal with a short timeout and drains the broadcast and watch channels
//! with non-blocking calls in between, so no async runtime is needed here and
//! the recorder is never slowed down by the UI (a slow UI lags and reloads).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Offset;
use crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste, Event};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::mpsc::error::TrySendError;

use super::render::draw;
use super::state::{update, App, Effect, Msg, MAX_ROWS};
use super::theme::Theme;
use super::Inputs;
use crate::capture::{BodyData, CapturedBody, ListQuery, ReplayRequest, Store};

/// Longest wait for terminal input before checking the channels again; this
/// bounds how late a new exchange appears.
const POLL: Duration = Duration::from_millis(50);
/// How often time-dependent parts (countdowns, notice expiry) are refreshed.
const TICK: Duration = Duration::from_millis(250);
/// Bodies spilled to files are read up to this much for display and editing.
const FILE_BODY_LIMIT: u64 = 8 << 20;

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Puts the terminal back the way we found it. Idempotent and infallible on
/// purpose: it runs from Drop and from the panic hook.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Owns the terminal while the UI is up; dropping it restores the terminal
/// and the previous panic hook.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<io::Stdout>>,
    prev_hook: Arc<PanicHook>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        let prev_hook: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let hook = prev_hook.clone();
        // Restore first so the panic message lands on a sane screen.
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            hook(info);
        }));
        let guard_hook = prev_hook.clone();
        enable_raw_mode()?;
        // From here on a failure must still restore: build the guard first.
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()));
        let mut guard = match terminal {
            Ok(terminal) => TerminalGuard {
                terminal,
                prev_hook: guard_hook,
            },
            Err(e) => {
                restore_terminal();
                return Err(e.into());
            }
        };
        crossterm::execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)?;
        guard.terminal.clear()?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
        // set_hook panics on a panicking thread; the hook we installed
        // already restored and delegated in that case.
        if !std::thread::panicking() {
            let prev = self.prev_hook.clone();
            let _ = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| prev(info)));
        }
    }
}

/// Reads a body that the store kept in a file into memory (bounded), so that
/// `update` and `render` only ever see in-memory bytes.
fn load_file_body(body: &mut CapturedBody) {
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

/// Carries out one effect; returns the message answering it, if any.
enum Outcome {
    Msg(Msg),
    Quit,
    Nothing,
}

fn execute(
    effect: Effect,
    store: &Store,
    replays: &tokio::sync::mpsc::Sender<ReplayRequest>,
) -> Outcome {
    match effect {
        Effect::Quit => Outcome::Quit,
        Effect::Reload => match store.list(&ListQuery {
            limit: Some(MAX_ROWS),
        }) {
            Ok(list) => Outcome::Msg(Msg::Reloaded(list)),
            Err(e) => Outcome::Msg(Msg::StoreError(e.to_string())),
        },
        Effect::LoadDetail(id) => match store.get(id) {
            Ok(Some(mut ex)) => {
                load_file_body(&mut ex.request.body);
                if let Some(resp) = ex.response.as_mut() {
                    load_file_body(&mut resp.body);
                }
                Outcome::Msg(Msg::DetailLoaded(Box::new(ex)))
            }
            Ok(None) => Outcome::Msg(Msg::DetailFailed {
                id,
                error: "no longer in the store (retention limit?)".into(),
            }),
            Err(e) => Outcome::Msg(Msg::DetailFailed {
                id,
                error: e.to_string(),
            }),
        },
        Effect::Replay(req) => {
            let id = req.id;
            match replays.try_send(req) {
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
    }
}

/// Runs the inspector until the user quits. See [`super::run`].
pub fn run(inputs: Inputs) -> anyhow::Result<()> {
    let Inputs {
        store,
        mut events,
        mut status,
        replays,
        public_url,
        target,
    } = inputs;
    // Decided once: a DST change mid-session shifts the clock column, which
    // is better than rows from before and after disagreeing silently.
    let tz = chrono::Local::now().offset().fix();
    let mut app = App::new(public_url, target, Theme::from_env(), tz);
    app.status = status.borrow_and_update().clone();

    let mut guard = TerminalGuard::enter()?;
    let size = guard.terminal.size()?;
    let mut queue: VecDeque<Msg> = VecDeque::new();
    queue.push_back(Msg::Resize(size.width, size.height));
    let mut pending: VecDeque<Effect> = VecDeque::from([Effect::Reload]);
    let mut events_open = true;
    let mut last_tick = Instant::now();
    let mut dirty = true;

    loop {
        // Apply everything queued, then the effects it produced (which may
        // queue more messages), until both are empty.
        loop {
            if let Some(msg) = queue.pop_front() {
                pending.extend(update(&mut app, msg));
                dirty = true;
            } else if let Some(effect) = pending.pop_front() {
                match execute(effect, &store, &replays) {
                    Outcome::Msg(m) => queue.push_back(m),
                    Outcome::Quit => return Ok(()),
                    Outcome::Nothing => {}
                }
            } else {
                break;
            }
        }
        if dirty {
            guard.terminal.draw(|f| draw(f, &app))?;
            dirty = false;
        }

        if event::poll(POLL)? {
            loop {
                match event::read()? {
                    Event::Key(k) => queue.push_back(Msg::Key(k)),
                    Event::Resize(w, h) => queue.push_back(Msg::Resize(w, h)),
                    Event::Paste(s) => queue.push_back(Msg::Paste(s)),
                    _ => {}
                }
                if !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        while events_open {
            match events.try_recv() {
                Ok(ev) => queue.push_back(Msg::Captured(ev)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => queue.push_back(Msg::Lagged(n)),
                Err(TryRecvError::Closed) => events_open = false,
            }
        }
        if status.has_changed().unwrap_or(false) {
            queue.push_back(Msg::Status(status.borrow_and_update().clone()));
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            queue.push_back(Msg::Tick(last_tick));
        }
    }
}
