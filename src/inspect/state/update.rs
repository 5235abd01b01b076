//! The messages the inspector reacts to ([`Msg`]), what it asks the event
//! loop to do ([`Effect`]), and [`update`], which applies one message.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crossterm::event::KeyEvent;

use super::app::{App, Editor, Level, Row, RowKey, MAX_ROWS, STORE_POLL};
use super::keys::{is_press, on_key};
use crate::agent::ConnectionStatus;
use crate::capture::{CaptureEvent, Exchange, ExchangeId, ExchangeSummary, ReplayRequest};
use crate::inspect::detail::detail_parts;

/// Something that happened.
#[derive(Debug, Clone)]
// A message is moved once per event; boxing the capture event would cost an
// allocation per recorded exchange to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    /// A key press.
    Key(KeyEvent),
    /// Bracketed paste.
    Paste(String),
    /// The terminal was resized to (columns, rows).
    Resize(u16, u16),
    /// The recorder stored (or failed to store) an exchange.
    Captured(CaptureEvent),
    /// Live events were dropped because the inspector fell behind.
    Lagged(u64),
    /// The connection state changed.
    Status(ConnectionStatus),
    /// The list was (re)loaded from the store.
    Reloaded(Vec<ExchangeSummary>),
    /// Rows the store gained that no event announced (another process,
    /// e.g. a `whtunnel replay` in another terminal), lowest id first.
    Polled(Vec<ExchangeSummary>),
    /// The agent's standing notice changed ("" = none).
    Banner(String),
    /// The relay's held backlog for this tunnel is now this long.
    Backlog(u64),
    /// The relay's dead letters for this tunnel changed.
    DeadLetters(super::DeadLetters),
    /// A full exchange was loaded from the store.
    DetailLoaded(Box<Exchange>),
    /// Loading an exchange failed.
    DetailFailed {
        /// The exchange.
        id: ExchangeId,
        /// Why.
        error: String,
    },
    /// A replay request could not be handed to the agent.
    ReplayFailed {
        /// The exchange.
        id: ExchangeId,
        /// Why.
        error: String,
    },
    /// One step of a body search finished.
    BodySearched {
        /// The text searched for.
        needle: String,
        /// Exchanges (of this step) whose bodies contain it.
        matched: HashSet<ExchangeId>,
        /// Exchanges still to search.
        rest: Vec<ExchangeId>,
    },
    /// Reading the store failed.
    StoreError(String),
    /// Time passed.
    Tick(Instant),
}

/// Something the event loop must do for [`update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Load one exchange (`Store::get`) and answer with
    /// [`Msg::DetailLoaded`] or [`Msg::DetailFailed`].
    LoadDetail(ExchangeId),
    /// Send a replay request to the agent.
    Replay(ReplayRequest),
    /// Reload the list (`Store::list`) and answer with [`Msg::Reloaded`].
    Reload,
    /// Ask the store for rows with an id above `after` (cheaply: its
    /// highest id first) and answer with [`Msg::Polled`] if there are any.
    PollStore {
        /// The highest id the inspector has seen.
        after: ExchangeId,
    },
    /// Search the bodies of `ids` (newest first) for `needle`, a step at a
    /// time, answering with [`Msg::BodySearched`].
    SearchBodies {
        /// The text to find (case-insensitive for ASCII).
        needle: String,
        /// Exchanges to search.
        ids: Vec<ExchangeId>,
    },
    /// Leave the inspector.
    Quit,
}

/// Applies one message to the state and returns what the loop must do next.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    match msg {
        Msg::Key(key) if is_press(&key) => on_key(app, key),
        Msg::Key(_) => vec![],
        Msg::Paste(text) => {
            if let Some(d) = app.filter_draft.as_mut() {
                d.push_str(&text.replace(['\r', '\n'], " "));
                app.refilter();
            } else if let Some(Editor::Text { textarea, find, .. }) = app.editor.as_mut() {
                if find.open {
                    find.paste(textarea, &text);
                } else {
                    textarea.insert_str(text.replace("\r\n", "\n"));
                }
            }
            vec![]
        }
        Msg::Resize(w, h) => {
            app.size = (w, h);
            app.ensure_visible();
            app.scroll_detail(0);
            vec![]
        }
        Msg::Captured(CaptureEvent::Started(summary)) => {
            if let Some(orig) = summary
                .replay_of
                .filter(|o| app.awaited_replays.contains(o))
            {
                app.notify(Level::Info, format!("replay of #{orig} running…"));
            }
            app.push_row(Row {
                key: RowKey::Live(summary.live),
                summary,
                not_stored: None,
                since: Some(app.now),
            })
        }
        Msg::Captured(CaptureEvent::Stored(summary)) => {
            app.max_id = app.max_id.max(summary.id);
            let awaited = app.take_awaited(summary.replay_of);
            let (live, key) = (summary.live, RowKey::Stored(summary.id));
            if let Some(orig) = awaited {
                let (level, text) = replay_result(orig, &summary, None);
                app.notify(level, text);
            }
            let fx = app.finish_row(live, Row::stored(summary));
            if awaited.is_some() {
                app.select_key(key);
            }
            fx
        }
        Msg::Captured(CaptureEvent::NotStored { summary, reason }) => {
            app.next_unstored += 1;
            app.not_stored += 1;
            let key = RowKey::NotStored(app.next_unstored);
            match app.take_awaited(summary.replay_of) {
                Some(orig) => {
                    let (level, text) = replay_result(orig, &summary, Some(&reason));
                    app.notify(level, text);
                }
                None => app.notify(
                    Level::Warn,
                    format!("the capture store could not keep up: exchange not stored ({reason})"),
                ),
            }
            let live = summary.live;
            app.finish_row(
                live,
                Row {
                    key,
                    summary,
                    not_stored: Some(reason),
                    since: None,
                },
            )
        }
        Msg::Lagged(n) => {
            app.notify(
                Level::Warn,
                format!("fell behind by {n} live events; reloading from the store"),
            );
            vec![Effect::Reload]
        }
        Msg::Status(s) => {
            app.status = s;
            vec![]
        }
        Msg::Reloaded(list) => {
            // Rows the store does not have: not stored, or still in progress.
            let unstored: Vec<Row> = app
                .rows
                .iter()
                .filter(|r| r.not_stored.is_some() || r.in_progress())
                .cloned()
                .collect();
            if let Some(max) = list.iter().map(|s| s.id).max() {
                app.max_id = app.max_id.max(max);
            }
            let mut rows: Vec<Row> = list.into_iter().take(MAX_ROWS).map(Row::stored).collect();
            for r in unstored {
                let pos = rows
                    .iter()
                    .position(|x| x.summary.received_at < r.summary.received_at)
                    .unwrap_or(rows.len());
                rows.insert(pos, r);
            }
            app.rows = rows.into();
            // Rows missed while lagging were never searched: search again.
            let fx = if app.body_search.is_some() {
                app.start_body_search()
            } else {
                vec![]
            };
            app.refilter();
            fx
        }
        Msg::Polled(list) => {
            let mut fx = Vec::new();
            for summary in list {
                app.max_id = app.max_id.max(summary.id);
                let key = RowKey::Stored(summary.id);
                if !app.rows.iter().any(|r| r.key == key) {
                    if let Some(orig) = app.take_awaited(summary.replay_of) {
                        let (level, text) = replay_result(orig, &summary, None);
                        app.notify(level, text);
                    }
                    fx.extend(app.push_row(Row::stored(summary)));
                }
            }
            fx
        }
        Msg::Banner(text) => {
            app.banner = text;
            // The notice's rows come out of the body's.
            app.ensure_visible();
            vec![]
        }
        Msg::Backlog(left) => {
            let now = app.now;
            if app.drain.get_or_insert_default().update(left, now) {
                app.notify(Level::Info, "held events: all delivered");
            }
            vec![]
        }
        Msg::DeadLetters(dead) => {
            let new: Vec<String> = dead
                .ids
                .iter()
                .filter(|id| !app.dead.ids.contains(id))
                .cloned()
                .collect();
            if let Some(id) = new.last() {
                let id = crate::inspect::text::sanitize(id).into_owned();
                app.notify(
                    Level::Error,
                    format!("held event {id} dead-lettered on the relay: the app kept failing it"),
                );
            }
            app.dead = dead;
            app.ensure_visible();
            vec![]
        }
        Msg::BodySearched {
            needle,
            matched,
            rest,
        } => {
            let Some(b) = app.body_search.as_mut().filter(|b| b.needle == needle) else {
                return vec![]; // a search for a filter no longer applied
            };
            b.matched.extend(matched);
            b.running = !rest.is_empty();
            app.refilter();
            if rest.is_empty() {
                vec![]
            } else {
                vec![Effect::SearchBodies { needle, ids: rest }]
            }
        }
        Msg::DetailLoaded(ex) => {
            let ex: Arc<Exchange> = Arc::from(ex);
            app.cache_insert(ex.clone());
            if let Some(d) = app.detail.as_mut() {
                if Some(d.id) == ex.id {
                    d.parts = Some(detail_parts(&ex, &app.theme, app.tz, d.raw_half()));
                    d.error = None;
                }
            }
            if app.pending_edit.is_some() && app.pending_edit == ex.id {
                app.pending_edit = None;
                app.notice = None;
                app.open_editor(&ex);
            }
            vec![]
        }
        Msg::DetailFailed { id, error } => {
            if let Some(d) = app.detail.as_mut().filter(|d| d.id == id) {
                d.error = Some(error.clone());
            }
            if app.pending_edit == Some(id) {
                app.pending_edit = None;
                app.notify(Level::Error, format!("cannot edit #{id}: {error}"));
            }
            vec![]
        }
        Msg::ReplayFailed { id, error } => {
            app.notify(Level::Error, format!("replay of #{id} failed: {error}"));
            vec![]
        }
        Msg::StoreError(e) => {
            app.notify(Level::Error, e);
            vec![]
        }
        Msg::Tick(now) => {
            app.now = now;
            if app.notice.as_ref().is_some_and(|n| n.expires <= now) {
                app.notice = None;
            }
            let gone = app.expire_live_rows();
            if gone > 0 {
                app.notify(
                    Level::Warn,
                    format!(
                        "{gone} request{} in progress never finished (dropped from the list)",
                        if gone == 1 { "" } else { "s" }
                    ),
                );
            }
            let due = app
                .last_poll
                .is_none_or(|t| now.saturating_duration_since(t) >= STORE_POLL);
            if due {
                app.last_poll = Some(now);
                vec![Effect::PollStore { after: app.max_id }]
            } else {
                vec![]
            }
        }
    }
}

/// The footer line for a replay's result: where it went, its status and
/// duration.
fn replay_result(
    orig: ExchangeId,
    s: &ExchangeSummary,
    not_stored: Option<&str>,
) -> (Level, String) {
    let to = if s.id > 0 {
        format!(" → #{}", s.id)
    } else {
        String::new()
    };
    let dur = crate::units::fmt_duration(s.duration_ms);
    let (level, outcome) = match (s.status, &s.error) {
        (Some(st @ 200..=399), None) => (Level::Info, status_text(st)),
        (Some(st), None) => (Level::Warn, status_text(st)),
        (Some(st), Some(e)) => (Level::Error, format!("{} ({})", status_text(st), e.trim())),
        (None, Some(e)) => (Level::Error, e.trim().to_string()),
        (None, None) => (Level::Error, "no answer".into()),
    };
    let mut text = format!("replay of #{orig}{to}: {outcome} in {dur}");
    if let Some(reason) = not_stored {
        text.push_str(&format!(" (not stored: {reason})"));
    }
    (level, text)
}

fn status_text(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}").trim_end().to_string()
}
