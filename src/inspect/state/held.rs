//! The relay's held events as the inspector shows them: the backlog
//! draining after the agent reconnects ([`Drain`]: count left, rate, time
//! to go) and the events the relay dead-lettered ([`DeadLetters`]).

use std::time::{Duration, Instant};

pub use crate::forward::DeadLetters;

/// The rate is measured over at least this long, so one burst of
/// concurrent deliveries does not read as a huge rate.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A held backlog being delivered: what is left and how fast it goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drain {
    /// Held events still to deliver (0: none, or all delivered).
    pub left: u64,
    /// Events delivered per second over the last measured window, once
    /// known.
    pub rate: Option<f64>,
    /// The count and time the current window started at.
    mark: Option<(u64, Instant)>,
}

impl Drain {
    /// The backlog is now `left` at `now`. Returns true when this emptied
    /// a backlog (everything delivered).
    pub fn update(&mut self, left: u64, now: Instant) -> bool {
        let emptied = left == 0 && self.left > 0;
        if left == 0 {
            *self = Drain::default();
            return emptied;
        }
        match self.mark {
            // A new backlog (a reconnect) starts a new measurement.
            Some((before, _)) if left > before => {
                self.mark = Some((left, now));
                self.rate = None;
            }
            Some((before, at)) => {
                let took = now.saturating_duration_since(at);
                if took >= RATE_WINDOW {
                    self.rate = Some((before - left) as f64 / took.as_secs_f64());
                    self.mark = Some((left, now));
                }
            }
            None => self.mark = Some((left, now)),
        }
        self.left = left;
        false
    }

    /// The status-line text while draining: `held: 736 left, 263/s, ~3s`;
    /// `None` when nothing is left.
    pub fn text(&self) -> Option<String> {
        if self.left == 0 {
            return None;
        }
        let mut s = format!("held: {} left", self.left);
        match self.rate {
            Some(r) if r >= 0.5 => {
                let eta = (self.left as f64 / r).ceil();
                s.push_str(&format!(", {r:.0}/s, ~{}", fmt_eta(eta)));
            }
            Some(_) => s.push_str(", stalled (the app is not taking them?)"),
            None => s.push_str(" — delivering"),
        }
        Some(s)
    }
}

/// `~42s`, `~3m`, `~2h`.
fn fmt_eta(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0}s")
    } else if secs < 90.0 * 60.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.0}h", secs / 3600.0)
    }
}

/// The line under the status line about dead letters, if there are any:
/// the app kept failing them, and only the user can retry or drop them.
pub fn dead_letter_text(dead: &DeadLetters) -> Option<String> {
    match dead.count {
        0 => None,
        1 => Some(
            "☠ 1 held event dead-lettered on the relay: whtunnel held list to retry/drop".into(),
        ),
        n => Some(format!(
            "☠ {n} held events dead-lettered on the relay: whtunnel held list to retry/drop"
        )),
    }
}
