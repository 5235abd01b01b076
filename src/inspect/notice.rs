//! The inspector's standing notice (the status line's warning): what the
//! agent knows that the user must not miss — nothing listening on the
//! target, or an embedded relay that had to take another port, so that the
//! public URL is not the one pasted into a provider's dashboard.

use std::net::SocketAddr;

use tokio::sync::{broadcast, watch};

use crate::agent::listener::EmbeddedRelay;
use crate::agent::listener::{probe_app, AppState};
use crate::capture::{CaptureEvent, Outcome};
use crate::forward::Target;
use crate::units::APP_REPROBE_INTERVAL;

/// "app: nothing listening on localhost:3000".
pub fn app_down_line(authority: &str) -> String {
    format!("app: nothing listening on {authority}")
}

/// The embedded relay listens on `addr` because `asked` was taken.
pub fn fallback_line(addr: SocketAddr, asked: SocketAddr) -> String {
    format!(
        "embedded relay on {addr}: {} was taken, the public URL is not the usual one \
         (--listen to pick)",
        asked.port()
    )
}

/// The notice for the current facts, one line each (the inspector gives
/// each its own row): the app's line first (it changes), the relay's after
/// it; empty when all is well.
pub fn compose(app_down: Option<&str>, relay: Option<&str>) -> String {
    let parts: Vec<&str> = [app_down, relay].into_iter().flatten().collect();
    parts.join("\n")
}

/// Follows the app's state and the embedded relay's fallback and keeps a
/// notice for [`super::Inputs::notice`]. The app is taken as down while
/// `app_state` says so (the start-up probe) or an exchange found it
/// unreachable; while down, it is probed again every
/// [`APP_REPROBE_INTERVAL`], and an answered exchange or a probe that
/// connects clears the line. The task ends when the inspector drops the
/// receiver. Needs a Tokio runtime.
pub fn follow(
    mut app_state: watch::Receiver<AppState>,
    events: Option<broadcast::Receiver<CaptureEvent>>,
    target: Target,
    relay: Option<EmbeddedRelay>,
) -> watch::Receiver<String> {
    let relay_line = relay.and_then(|r| r.fallback_from.map(|asked| fallback_line(r.addr, asked)));
    let down_line = app_down_line(target.authority());
    let mut down = matches!(
        *app_state.borrow_and_update(),
        AppState::NotListening { .. }
    );
    let text = move |down: bool| compose(down.then_some(down_line.as_str()), relay_line.as_deref());
    let (tx, rx) = watch::channel(text(down));
    tokio::spawn(async move {
        let mut events = events;
        let mut state_open = true;
        let mut reprobe = tokio::time::interval(APP_REPROBE_INTERVAL);
        reprobe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                changed = app_state.changed(), if state_open => match changed {
                    Ok(()) => {
                        down = matches!(
                            *app_state.borrow_and_update(),
                            AppState::NotListening { .. }
                        );
                    }
                    Err(_) => state_open = false,
                },
                ev = recv(&mut events) => match ev {
                    Some(CaptureEvent::Stored(s)) => match s.outcome {
                        Some(o) if o.app_answered() => down = false,
                        Some(Outcome::AppUnreachable) => down = true,
                        _ => continue,
                    },
                    Some(_) => continue,
                    None => events = None,
                },
                _ = reprobe.tick(), if down => {
                    down = !matches!(probe_app(&target).await, AppState::Listening);
                }
            }
            tx.send_if_modified(|t| {
                let new = text(down);
                let changed = *t != new;
                *t = new;
                changed
            });
        }
    });
    rx
}

/// The next capture event; `None` once the channel is closed (or absent:
/// then it never resolves). A lagging receiver skips ahead.
async fn recv(events: &mut Option<broadcast::Receiver<CaptureEvent>>) -> Option<CaptureEvent> {
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(ev) => return Some(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
