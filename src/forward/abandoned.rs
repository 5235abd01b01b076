//! Calls to the app that outlive their stream: when the relay resets a
//! stream (the sender hung up, the relay's deadline passed, the link
//! dropped), the app may already be working on the request. [`CallGuard`]
//! lets such a call finish in the background, within the exchange's own
//! deadline and at most [`MAX_ABANDONED_CALLS`] at once, and records what
//! the app answered.

use http_body_util::BodyExt;

use super::held::ERR_ANSWER_UNDELIVERED;
use super::record::{Answer, Recording};
use super::{describe_client_error, Forwarder, ERR_ABANDONED_AT_EXIT};
use crate::capture::{self, Outcome};
use crate::tunnel::BoxError;

/// Most calls left to finish in the background at once (as many as the link
/// carries streams): a sender that starts and drops requests to a slow app
/// cannot pile up connections to it. Past this, a dropped call is cut off.
pub const MAX_ABANDONED_CALLS: usize = crate::tunnel::h2::MAX_CONCURRENT_STREAMS as usize;

/// Finishes a call to the app whose forwarding future was dropped before
/// the app answered. Cutting the call off would leave the app's work
/// unrecorded, and a held redelivery of the same event could not tell that
/// the app already has it.
pub(super) struct CallGuard {
    pub(super) call: Option<super::pool::Call>,
    pub(super) deadline: tokio::time::Instant,
    /// Set when capture is on (only then is a dropped call finished).
    pub(super) fwd: Option<Forwarder>,
    pub(super) armed: Option<Recording>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let (Some(call), Some(fwd), Some(recording)) =
            (self.call.take(), self.fwd.take(), self.armed.take())
        else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let deadline = self.deadline;
        let abandon = fwd.inner.abandon.clone();
        let permit = fwd.inner.abandoned.clone().try_acquire_owned().ok();
        handle.spawn(async move {
            const RESET: &str =
                "cancelled: the stream was reset (sender hung up, relay timeout or lost link)";
            let (outcome, answer, error) = match &permit {
                None => {
                    drop(call);
                    let why = format!(
                        "{RESET} while {MAX_ABANDONED_CALLS} earlier calls were still finishing"
                    );
                    (Outcome::Cancelled, None, why)
                }
                Some(_) if abandon.is_cancelled() => {
                    drop(call);
                    (
                        Outcome::Cancelled,
                        None,
                        format!("{RESET}; {ERR_ABANDONED_AT_EXIT}"),
                    )
                }
                Some(_) => match finish_unless_abandoned(call, deadline, &abandon).await {
                    None => (
                        Outcome::Cancelled,
                        None,
                        format!("{RESET}; {ERR_ABANDONED_AT_EXIT}"),
                    ),
                    Some(Ok(Ok(resp))) => {
                        let (parts, body) = resp.into_parts();
                        let body = body.map_err(BoxError::from).boxed_unsync();
                        let (mut body, done) = capture::tee(body, &fwd.inner.config.body_limits);
                        // Nobody else reads it; reading it completes the capture.
                        let drained = async { while let Some(Ok(_)) = body.frame().await {} };
                        let _ = tokio::time::timeout_at(deadline, drained).await;
                        drop(body);
                        let answer = Answer {
                            status: parts.status.as_u16(),
                            headers: capture::Headers::from_map(&parts.headers),
                            body: done,
                        };
                        let why = ERR_ANSWER_UNDELIVERED.to_string();
                        (Outcome::Undelivered, Some(answer), why)
                    }
                    Some(Ok(Err(e))) => {
                        let reason = describe_client_error(&e, fwd.target());
                        let why =
                            format!("{RESET}, then {}", reason.trim_start_matches("whtunnel: "));
                        (Outcome::Cancelled, None, why)
                    }
                    Some(Err(_)) => {
                        let why = format!("{RESET}, and the app did not answer in time");
                        (Outcome::Cancelled, None, why)
                    }
                },
            };
            recording.finish(outcome, answer, Some(error), None).await;
            drop(permit);
        });
    }
}

/// The call's result by `deadline`, or `None` once the agent gives up on
/// the exchanges in flight.
async fn finish_unless_abandoned(
    call: super::pool::Call,
    deadline: tokio::time::Instant,
    abandon: &tokio_util::sync::CancellationToken,
) -> Option<
    Result<
        Result<http::Response<super::pool::PooledBody>, super::pool::CallError>,
        tokio::time::error::Elapsed,
    >,
> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, call) => Some(r),
        () = abandon.cancelled() => None,
    }
}
