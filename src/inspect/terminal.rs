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

/// Runs the inspector until the user quits. See [`super::run`].
pub fn run(inputs: Inputs) -> anyhow::Result<()> {
    let Inputs {
        store,
        events,
        status,
        replays,
        public_url,
        target,
    } = inputs;
    // Decided once: a DST change mid-session shifts the clock column, which
    // is better than rows from before and after disagreeing silently.
    let tz = chrono::Local::now().offset().fix();
    let app = App::new(public_url, target, Theme::from_env(), tz);
    run_session(Session::new(app, store, events, status, replays))
}

/// Runs an already-built session on the current terminal until the user
/// quits: the same as [`super::run`] for any [`Source`], e.g. a fake store in
/// a demo or a smoke test. Blocking.
pub fn run_session<S: Source>(mut session: Session<S>) -> anyhow::Result<()> {
    let mut guard = TerminalGuard::enter()?;
    let size = guard.terminal.size()?;
    session.push(Msg::Resize(size.width, size.height));
    let mut last_tick = Instant::now();

    loop {
        let pumped = session.pump();
        if pumped.quit {
            return Ok(());
        }
        if pumped.dirty {
            guard.terminal.draw(|f| draw(f, &session.app))?;
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
