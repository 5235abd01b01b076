//! The terminal inspector (STUB): a live list of exchanges, details, filter,
//! replay and edit-then-replay.

use tokio::sync::{broadcast, mpsc, watch};

use crate::agent::ConnectionStatus;
use crate::capture::{CaptureEvent, ReplayRequest, Store};

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
}

/// Runs the inspector on the current terminal until the user quits.
/// Blocking: call it from a dedicated thread.
pub fn run(_inputs: Inputs) -> anyhow::Result<()> {
    todo!()
}
