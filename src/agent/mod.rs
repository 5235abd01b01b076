//! The agent: holds one tunnel on a relay and serves the relay's requests by
//! forwarding them to the local app.
//!
//! [`run`] connects, serves until the link drops, and reconnects with
//! exponential back-off and full jitter, for as long as it runs. Only a
//! refusal (bad token, name held, protocol mismatch) ends it early, because
//! retrying would not change the answer.

pub mod connect;
pub mod listener;
pub mod status;

use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use connect::{AgentConfig, ConnectError, RelayUrl};
pub use listener::{AppState, Capture, ListenConfig, ListenError, Listener, RelayChoice};
pub use status::ConnectionStatus;

use crate::forward::Forwarder;
use crate::tunnel::protocol::{Control, LinkMeta, HDR_CONTROL, HDR_DEAD, HDR_EVENT_ID};
use crate::tunnel::{h2, WsIo};

/// Back-off before the first reconnect attempt is at most this...
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// ...and never more than this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A link that lived this long counts as healthy: the next drop starts the
/// back-off from the beginning again.
const HEALTHY_LINK: Duration = Duration::from_secs(5);
/// How long in-flight exchanges may finish when the agent is asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The relay refused the agent; retrying would not help.
    #[error("{0}")]
    Refused(String),
    /// `listen`'s embedded relay stopped while the agent still served it:
    /// no sender could reach the tunnel any more.
    #[error("the embedded relay stopped: {0}; start whtunnel listen again")]
    EmbeddedRelayStopped(String),
}

/// Exponential delays (from `backon`), each with full jitter applied after
/// the cap: uniformly random in `[0, delay]`, so agents that lost the same
/// relay do not return in step.
struct Backoff {
    delays: backon::ExponentialBackoff,
    since: Instant,
}

/// For this long into an outage (a relay restart, a deploy)...
const SHORT_OUTAGE: Duration = Duration::from_secs(10);
/// ...no wait is longer than this, so the agent is back within about half
/// a second of the relay even when an attempt lands just before the
/// restarted relay listens (docs/benchmarks.md, "reconnect"). Still
/// jittered: agents that lost the same relay return spread over that half
/// second, not in step.
const SHORT_OUTAGE_MAX: Duration = Duration::from_millis(500);

impl Backoff {
    fn new() -> Self {
        use backon::BackoffBuilder;
        Backoff {
            // Growth 1.5 rather than 2: a relay restart takes seconds, and
            // retries stay frequent through it (the cap is still reached
            // after about a minute of outage).
            delays: backon::ExponentialBuilder::default()
                .with_factor(1.5)
                .with_min_delay(BACKOFF_MIN)
                .with_max_delay(BACKOFF_MAX)
                .without_max_times()
                .build(),
            since: Instant::now(),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let mut cap = self.delays.next().unwrap_or(BACKOFF_MAX);
        if self.since.elapsed() < SHORT_OUTAGE {
            cap = cap.min(SHORT_OUTAGE_MAX);
        }
        cap.mul_f64(rand::random::<f64>())
    }
}

/// Runs the agent until `shutdown` is cancelled (returns `Ok`) or the relay
/// refuses it (returns the refusal). Publishes its state on `status`.
pub async fn run(
    config: AgentConfig,
    forwarder: Forwarder,
    status: watch::Sender<ConnectionStatus>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut backoff = Backoff::new();
    status.send_replace(ConnectionStatus::Connecting);
    let relays: Vec<RelayUrl> = std::iter::once(config.relay.clone())
        .chain(config.more_relays.iter().cloned())
        .collect();
    // The relay to try next, and how many failed in a row since the last
    // wait: with several relays, one that cannot be reached is followed by
    // the next at once; the back-off applies once all of them failed.
    let mut next = 0usize;
    let mut failed_in_turn = 0usize;
    loop {
        let relay = &relays[next % relays.len()];
        let attempt = tokio::select! {
            r = connect::connect_to(&config, relay) => r,
            () = shutdown.cancelled() => return Ok(()),
        };
        let last_error = match attempt {
            Ok(link) => {
                failed_in_turn = 0;
                let since = Instant::now();
                let ready = ConnectionStatus::Connected {
                    public_url: link.public_url.clone(),
                    held: link.held,
                };
                let dead = link.dead;
                let reason = serve(
                    link.ws,
                    forwarder.clone(),
                    &shutdown,
                    &status,
                    (ready, dead, link.meta),
                )
                .await;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if since.elapsed() >= HEALTHY_LINK {
                    backoff = Backoff::new();
                }
                reason
            }
            Err(ConnectError::Refused(reason)) => {
                status.send_replace(ConnectionStatus::Refused {
                    reason: reason.clone(),
                });
                return Err(AgentError::Refused(reason));
            }
            Err(e) => {
                next += 1;
                failed_in_turn += 1;
                if failed_in_turn < relays.len() {
                    continue;
                }
                failed_in_turn = 0;
                e.to_string()
            }
        };
        let delay = backoff.next_delay();
        status.send_replace(ConnectionStatus::Reconnecting {
            retry_at: Instant::now() + delay,
            last_error,
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Serves the relay's requests over one link until it ends. Returns why.
async fn serve(
    ws: connect::WsStream,
    forwarder: Forwarder,
    shutdown: &CancellationToken,
    status: &watch::Sender<ConnectionStatus>,
    (ready, dead, link): (ConnectionStatus, u64, LinkMeta),
) -> String {
    let status = status.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let forwarder = forwarder.clone();
        let headers = req.headers();
        let control = headers.get(HDR_CONTROL).and_then(Control::from_header);
        match control {
            // The relay says the tunnel is routable: only now is it "connected".
            Some(Control::Ready) => {
                if let ConnectionStatus::Connected { held, .. } = &ready {
                    forwarder.reset_backlog(*held);
                }
                forwarder.reset_dead_letters(dead);
                status.send_replace(ready.clone());
            }
            Some(c @ (Control::DeadLetter | Control::DeadLetterCleared)) => {
                let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
                let count = text(HDR_DEAD).and_then(|v| v.parse().ok());
                if let (Some(id), Some(count)) = (text(HDR_EVENT_ID), count) {
                    if c == Control::DeadLetter {
                        forwarder.dead_lettered(id.to_string(), count);
                    } else {
                        forwarder.dead_letter_cleared(id, count);
                    }
                }
            }
            None => {}
        }
        let control = control.is_some();
        // Borrowed scheme text: no allocation per request.
        let link = link.clone();
        // Boxed: hyper moves the stream's future into a task of its own, and
        // the forwarding future is large; moved as a pointer, it is copied
        // once instead of at every move.
        Box::pin(async move {
            if control {
                return Ok(http::Response::new(crate::tunnel::Body::default()));
            }
            Ok::<_, std::convert::Infallible>(forwarder.handle(req, &link).await)
        })
    });
    let conn = h2::server_builder().serve_connection(TokioIo::new(WsIo::new(ws)), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => match result {
            Ok(()) => "the relay closed the connection".to_string(),
            Err(e) => format!("connection to the relay lost: {e}"),
        },
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, conn).await;
            "stopped".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_starts_small() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first <= BACKOFF_MIN, "{first:?}");
        for _ in 0..20 {
            assert!(
                b.next_delay() <= SHORT_OUTAGE_MAX,
                "short outages retry often"
            );
        }
        // Later in a long outage the schedule opens up to the cap.
        b.since = Instant::now() - SHORT_OUTAGE;
        let mut max_seen = Duration::ZERO;
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX, "{d:?}");
            max_seen = max_seen.max(d);
            distinct.insert(d.as_millis());
        }
        // Reached the cap region and is really random, not a fixed ladder.
        assert!(max_seen > BACKOFF_MAX / 2, "{max_seen:?}");
        assert!(distinct.len() > 50, "{}", distinct.len());
    }
}
