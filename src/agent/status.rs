//! The agent's connection state, published on a `watch` channel for the
//! inspector and the log printer. Plain data: readers never touch transport.

use std::time::Instant;

/// Where the agent's link to the relay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// First connection attempt under way.
    Connecting,
    /// The tunnel is up at `public_url`.
    Connected {
        /// The public URL of the tunnel.
        public_url: String,
        /// Events the relay held while the agent was away, now being
        /// delivered (0 when none).
        held: u64,
    },
    /// The link dropped; the next attempt is at `retry_at`.
    Reconnecting {
        /// When the next attempt starts.
        retry_at: Instant,
        /// Why the last attempt or link failed.
        last_error: String,
    },
    /// The relay refused the agent (bad token, name taken); it will not retry.
    Refused {
        /// The relay's reason.
        reason: String,
    },
}
