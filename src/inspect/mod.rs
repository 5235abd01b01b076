//! The terminal inspector: a live list of exchanges, details, filter, replay
//! and edit-then-replay.
//!
//! One-way data flow (as in gitui/oha): the event loop in [`terminal`] turns
//! terminal input into [`Msg`]s for the [`Session`], which also drains capture
//! events and connection changes; [`update`] applies each message to the
//! plain-data [`App`] and returns [`Effect`]s (store reads, replays, quit)
//! that the session carries out against a [`Source`] (the [`Store`]); [`draw`]
//! renders the `App` onto any ratatui backend. Only `terminal` touches the
//! real terminal, so everything else is tested with `TestBackend` and a fake
//! store.
//!
//! Keys (the contract's, plus a few): `↑/↓` `j/k` move (scroll in details),
//! `PgUp/PgDn`, `g/G` first/last, `Enter` details, `n/p` next/previous in
//! details, `Tab` request/response in details (side by side from 140
//! columns, then `Tab` selects one), `R` the selected half's raw bytes,
//! `Esc`/`←`/`Backspace` back, `r` replay, `e` edit then replay
//! (`Ctrl-S`/`F2` send, `Ctrl-F` find, `Esc` cancel), `/` filter (`Enter` apply, `Esc`
//! cancel; `Esc` in the list clears it), `?` help, `q`/`Ctrl-C` quit.
//! Filter terms: `5xx`, `404`, `err`, `#12`, `body:text`, `sig:invalid`,
//! `provider:stripe`, or text matched against method, path, event type,
//! provider and error.

use tokio::sync::{broadcast, mpsc, watch};

use crate::agent::ConnectionStatus;
use crate::capture::{CaptureEvent, ReplayRequest, Store};

pub mod body;
pub mod detail;
pub mod edit;
pub mod notice;
pub mod render;
pub mod session;
pub mod state;
pub mod terminal;
pub mod text;
pub mod theme;
pub mod webhook;

#[cfg(test)]
mod tests;

pub use render::draw;
pub use session::{Session, Source};
pub use state::{update, App, Effect, Msg};
pub use theme::Theme;

/// Everything the inspector reads from and writes to.
pub struct Inputs {
    /// A read connection to the capture store.
    pub store: Store,
    /// Exchanges as they are recorded.
    pub events: broadcast::Receiver<CaptureEvent>,
    /// The agent's connection state.
    pub status: watch::Receiver<ConnectionStatus>,
    /// Where replay requests go.
    pub replays: mpsc::Sender<ReplayRequest>,
    /// Shown in the header: the tunnel's public URL.
    pub public_url: String,
    /// Shown in the header: where requests are forwarded.
    pub target: String,
    /// A standing notice from the agent, shown below the status line, one
    /// row per line (e.g. "app: nothing listening on localhost:3000", or
    /// that the embedded relay moved to another port; see [`notice`]); ""
    /// for none. `None`: not followed.
    pub notice: Option<watch::Receiver<String>>,
    /// The relay's held backlog for this tunnel, counting down as it is
    /// delivered (`None`: not followed).
    pub backlog: Option<watch::Receiver<u64>>,
    /// The relay's dead letters for this tunnel (`None`: not followed).
    pub dead_letters: Option<watch::Receiver<crate::forward::DeadLetters>>,
}

/// Runs the inspector on the current terminal until the user quits.
/// Blocking: call it from a dedicated thread.
pub fn run(inputs: Inputs) -> anyhow::Result<()> {
    terminal::run(inputs)
}
