//! The inspector's event loop and terminal lifecycle: raw mode and alternate
//! screen on entry; restored on quit, on error, on panic (hook) and on Ctrl-C
//! (a key in raw mode, handled by `update`). The loop feeds terminal input to
//! the [`Session`] (which also drains capture events and connection-state
//! changes and carries out effects) and redraws when the state changed.
//!
//! The loop is a plain blocking thread (as `run` documents): it waits on the
//! terminal with a short timeout and drains the broadcast and watch channels
//! with non-blocking calls in between, so no async runtime is needed here and
//! the recorder is never slowed down by the UI (a slow UI lags and reloads).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Offset;
use crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste, Event};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::render::draw;
use super::session::{Session, Source};
use super::state::{App, Msg};
use super::theme::Theme;
use super::Inputs;

/// Longest wait for terminal input before checking the channels again; this
/// bounds how late a new exchange appears.
const POLL: Duration = Duration::from_millis(50);
/// How often time-dependent parts (countdowns, notice expiry) are refreshed.
const TICK: Duration = Duration::from_millis(250);

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

/// Holds the terminal in raw mode on the alternate screen with our panic
/// hook installed; dropping it (quit, error, or unwinding) restores the
/// terminal and the previous hook.
struct TerminalGuard {
    prev_hook: Arc<PanicHook>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        // Nothing to undo yet if this fails (e.g. stdin is not a terminal).
        enable_raw_mode().context("the inspector needs a terminal (use --no-tui)")?;
        let prev_hook: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let hook = prev_hook.clone();
        // Restore first so the panic message lands on a sane screen.
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            hook(info);
        }));
        // From here on every early return drops the guard, which restores.
        let guard = TerminalGuard { prev_hook };
        crossterm::execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)?;
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

/// Runs the inspector until the user quits. See [`super::run`].
pub fn run(inputs: Inputs) -> anyhow::Result<()> {
    let Inputs {
        store,
        events,
        status,
        replays,
        public_url,
        target,
        notice,
        backlog,
        dead_letters,
    } = inputs;
    // UTC, as the log line, `requests list` and the JSON: one clock to
    // compare across them (README, "Times are UTC everywhere").
    let tz = chrono::Utc.fix();
    let app = App::new(public_url, target, Theme::from_env(), tz);
    run_session(
        Session::new(app, store, events, status, replays)
            .with_banner(notice)
            .with_held(backlog, dead_letters),
    )
}

/// Runs an already-built session on the current terminal until the user
/// quits: the same as [`super::run`] for any [`Source`], e.g. a fake store in
/// a demo or a smoke test. Blocking.
pub fn run_session<S: Source>(mut session: Session<S>) -> anyhow::Result<()> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let size = terminal.size()?;
    session.push(Msg::Resize(size.width, size.height));
    let mut last_tick = Instant::now();

    loop {
        let pumped = session.pump();
        if pumped.quit {
            return Ok(());
        }
        if pumped.dirty {
            terminal.draw(|f| draw(f, &session.app))?;
        }
        // While a body search is under way, only peek at the terminal.
        let wait = if pumped.busy { Duration::ZERO } else { POLL };
        if event::poll(wait)? {
            loop {
                match event::read()? {
                    Event::Key(k) => session.push(Msg::Key(k)),
                    Event::Resize(w, h) => session.push(Msg::Resize(w, h)),
                    Event::Paste(s) => session.push(Msg::Paste(s)),
                    _ => {}
                }
                if !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        session.poll_channels();
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            session.push(Msg::Tick(last_tick));
        }
    }
}
