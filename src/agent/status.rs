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

/// What the log and the inspector say when `held` events wait at connect.
pub fn held_notice(held: u64) -> String {
    let s = if held == 1 { "" } else { "s" };
    format!("{held} event{s} held while you were offline — delivering")
}

#[cfg(test)]
mod tests {
    use super::held_notice;

    #[test]
    fn the_held_notice_counts_in_english() {
        assert_eq!(
            held_notice(1),
            "1 event held while you were offline — delivering"
        );
        assert_eq!(
            held_notice(3),
            "3 events held while you were offline — delivering"
        );
    }
}
