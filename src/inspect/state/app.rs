//! The inspector's plain-data state: [`App`] with its rows, selection,
//! screens, notices and detail cache, and the operations
//! [`update`](fn@super::update) performs on it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::FixedOffset;
use ratatui::text::Line;
use ratatui_textarea::TextArea;

use super::filter::{body_term, matches};
use super::update::Effect;
use crate::agent::ConnectionStatus;
use crate::capture::{BodyData, Exchange, ExchangeId, ExchangeSummary, ReplayRequest};
use crate::inspect::body::is_text;
use crate::inspect::detail::{detail_parts, wrap_line, DetailLayout, DetailParts, Half};
use crate::inspect::edit::{request_to_text, BodyLines};
use crate::inspect::text::sanitize;

/// Headers that carry a webhook signature over the body.
const SIGNATURE_HEADERS: &[&str] = &[
    "stripe-signature",
    "x-hub-signature-256",
    "x-hub-signature",
    "webhook-signature",
    "svix-signature",
    "x-signature",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-square-hmacsha256-signature",
    "paddle-signature",
    "x-twilio-signature",
    "x-zm-signature",
    "twitch-eventsub-message-signature",
    "x-twilio-email-event-webhook-signature",
    "x-signature-ed25519",
];

/// The name of the first header of `headers` that carries a signature.
pub fn signature_header<'a>(headers: impl Into<crate::capture::HeadersRef<'a>>) -> Option<String> {
    headers
        .into()
        .iter()
        .find(|(n, _)| SIGNATURE_HEADERS.iter().any(|s| n.eq_ignore_ascii_case(s)))
        .map(|(n, _)| n.to_string())
}
use crate::inspect::theme::Theme;

/// The list keeps at most this many rows (the store's default retention);
/// older rows are still in the store.
pub const MAX_ROWS: usize = 10_000;
/// Loaded exchanges kept for instant re-opening.
const DETAIL_CACHE: usize = 32;
/// ...and at most about this many body bytes (bodies can be megabytes).
const DETAIL_CACHE_BYTES: u64 = 32 << 20;
/// How long a notice stays in the footer.
const NOTICE_TTL: Duration = Duration::from_secs(6);
/// A row in progress is dropped this long after its exchange's deadline
/// (the response body may still be streaming when the deadline passes).
const LIVE_GRACE: Duration = Duration::from_secs(10);
/// The longest budget a `Started` event is believed (a day).
const MAX_BUDGET_SECS: f64 = 86_400.0;
/// Replays requested from this inspector whose result is awaited.
const MAX_AWAITED_REPLAYS: usize = 32;
/// How often the store is asked whether another process added rows.
pub const STORE_POLL: Duration = Duration::from_millis(500);

/// Screen rows above the list/detail body (title, status, column header) and
/// below it (footer). Must match `render`'s layout so paging matches what is
/// drawn.
pub const CHROME_ROWS: u16 = 4;

/// Most rows the agent's standing notice takes below the status line.
pub const MAX_BANNER_ROWS: usize = 3;

/// Rows available to the list or detail body on a terminal `height` rows tall.
pub fn body_height(height: u16) -> usize {
    usize::from(height.saturating_sub(CHROME_ROWS)).max(1)
}

/// Identifies a list row. Stored exchanges by their store id (stable across
/// reloads); exchanges the store could not keep get a local sequence number,
/// since their summary id is 0; exchanges still in progress their live
/// number (see [`ExchangeSummary::live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// A stored exchange.
    Stored(ExchangeId),
    /// An exchange that was forwarded but not stored.
    NotStored(u64),
    /// An exchange still in progress.
    Live(u64),
}

/// One row of the live list.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Selection key.
    pub key: RowKey,
    /// What the row shows.
    pub summary: ExchangeSummary,
    /// Why the exchange was not stored, for rows the store could not keep.
    pub not_stored: Option<String>,
    /// For rows in progress: when the row appeared (the running timer).
    pub since: Option<Instant>,
}

impl Row {
    /// A row for a stored exchange.
    pub fn stored(summary: ExchangeSummary) -> Self {
        Row {
            key: RowKey::Stored(summary.id),
            summary,
            not_stored: None,
            since: None,
        }
    }

    /// The delivery this row is an attempt of: its provider and the
    /// provider's delivery id. Replays carry the same id but are ours, not
    /// the sender's, so they belong to no delivery.
    pub fn delivery(&self) -> Option<(&str, &str)> {
        let s = &self.summary;
        if s.replay_of.is_some() {
            return None;
        }
        Some((s.provider.as_deref()?, s.delivery_id.as_deref()?))
    }

    /// Whether this exchange delivered a held event the relay has since
    /// dead-lettered.
    pub fn dead_lettered(&self, dead: &super::DeadLetters) -> bool {
        self.summary
            .relay_event_id
            .as_ref()
            .is_some_and(|id| dead.ids.contains(id))
    }

    /// Whether the exchange is still in progress.
    pub fn in_progress(&self) -> bool {
        matches!(self.key, RowKey::Live(_))
    }

    /// When a row in progress is given up on: its exchange's budget (the
    /// summary's `duration_ms` while in progress) plus a grace period.
    pub fn give_up_at(&self) -> Option<Instant> {
        let since = self.since?;
        let budget = self.summary.duration_ms;
        let budget = if budget.is_finite() {
            budget.clamp(0.0, MAX_BUDGET_SECS * 1000.0)
        } else {
            MAX_BUDGET_SECS * 1000.0
        };
        Some(since + Duration::from_secs_f64(budget / 1000.0) + LIVE_GRACE)
    }
}

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The live list.
    List,
    /// Details of one exchange.
    Detail,
    /// The edit-then-replay editor.
    Edit,
}

/// State of the detail screen.
#[derive(Debug, Clone)]
pub struct DetailView {
    /// The exchange shown.
    pub id: ExchangeId,
    /// Display lines, once loaded.
    pub parts: Option<DetailParts>,
    /// Why loading failed, if it did.
    pub error: Option<String>,
    /// First row of the halves shown (after wrapping).
    pub scroll: usize,
    /// The half shown when narrow, and the one `R` shows raw.
    pub half: Half,
    /// The selected half's body is shown as its exact bytes.
    pub raw: bool,
}

impl DetailView {
    /// Which half's body is shown raw, if any.
    pub fn raw_half(&self) -> Option<Half> {
        self.raw.then_some(self.half)
    }
}

/// State of the editor screen.
#[derive(Debug, Clone)]
pub enum Editor {
    /// The request as editable text.
    Text {
        /// Exchange being replayed.
        id: ExchangeId,
        /// The text being edited.
        textarea: Box<TextArea<'static>>,
        /// The last parse error, shown inline.
        error: Option<String>,
        /// A standing warning (e.g. the captured body was truncated).
        warning: Option<String>,
        /// The body as it was captured, by line with each line's own end
        /// (shown without them: a raw `\r` would garble the terminal), so
        /// that only the lines the user changed change.
        body: BodyLines,
        /// The request's signature header, if it has one.
        signed: Option<String>,
        /// The body was pretty-printed for editing (its bytes changed).
        reformatted: bool,
        /// Search in the text (`Ctrl-F`).
        find: super::Find,
        /// Screen to return to.
        back: View,
    },
    /// The request body is not text: it can only be replayed as is.
    Binary {
        /// Exchange being replayed.
        id: ExchangeId,
        /// Body length in bytes.
        len: u64,
        /// Screen to return to.
        back: View,
    },
}

/// Severity of a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Confirmation.
    Info,
    /// Something the user should know (not stored, lagged).
    Warn,
    /// Something failed.
    Error,
}

/// The state of a `body:` filter term, answered by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySearch {
    /// The text searched for (case-insensitive for ASCII).
    pub needle: String,
    /// Stored exchanges whose request or response body contains it.
    pub matched: HashSet<ExchangeId>,
    /// Whether exchanges are still being searched.
    pub running: bool,
}

/// A transient message in the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The text.
    pub text: String,
    /// Its severity.
    pub level: Level,
    /// When it disappears.
    pub expires: Instant,
}

/// Everything the inspector shows. Pure data: mutated only by
/// [`update`](fn@super::update).
#[derive(Debug, Clone)]
pub struct App {
    /// Public URL of the tunnel (replaced by the one in `Connected`).
    pub public_url: String,
    /// Where requests are forwarded.
    pub target: String,
    /// The agent's connection state.
    pub status: ConnectionStatus,
    /// All rows, newest first (a deque: arrivals are pushed at the front).
    pub rows: VecDeque<Row>,
    /// Indices into `rows` matching the active filter, in display order.
    pub visible: Vec<usize>,
    /// The selected row, if any.
    pub selected: Option<RowKey>,
    /// Whether the selection follows new arrivals (it is on the newest row).
    pub follow: bool,
    /// Index in `visible` of the first row drawn.
    pub offset: usize,
    /// The applied filter ("" = none).
    pub filter: String,
    /// The filter being typed, while the prompt is open.
    pub filter_draft: Option<String>,
    /// Current screen.
    pub view: View,
    /// The detail screen's state.
    pub detail: Option<DetailView>,
    /// The editor's state.
    pub editor: Option<Editor>,
    /// An edit waiting for its exchange to load.
    pub pending_edit: Option<ExchangeId>,
    /// Whether the help overlay is shown.
    pub help: bool,
    /// Results of the applied filter's `body:` term, if it has one.
    pub body_search: Option<BodySearch>,
    /// Recently loaded exchanges.
    pub cache: HashMap<ExchangeId, Arc<Exchange>>,
    cache_order: VecDeque<ExchangeId>,
    /// The footer notice, if any.
    pub notice: Option<Notice>,
    /// How many exchanges the store could not keep since start.
    pub not_stored: u64,
    pub(super) next_unstored: u64,
    /// Rows that arrived above the view since the user moved off the top.
    pub new_above: usize,
    /// Rows in progress given up on (their exchange never came back).
    pub unfinished: u64,
    /// Exchanges whose replay this inspector requested and whose result
    /// has not been seen yet (oldest first, bounded).
    pub awaited_replays: VecDeque<ExchangeId>,
    /// The highest store id seen (events, reloads, polls).
    pub max_id: ExchangeId,
    /// When the store was last polled for rows from other processes.
    pub last_poll: Option<Instant>,
    /// A standing notice from the agent (app reachability, relay port
    /// fallback), one line per fact, drawn below the status line; empty for
    /// none.
    pub banner: String,
    /// The relay's held backlog draining; `None` when not followed.
    pub drain: Option<super::Drain>,
    /// The relay's dead letters for this tunnel, as the agent reported them.
    pub dead: super::DeadLetters,
    /// Rows that are a sender's retry of an earlier row: their attempt
    /// number (2 for the first retry), counted over all rows.
    pub attempts: HashMap<RowKey, u32>,
    /// Colours.
    pub theme: Theme,
    /// Offset in which times are shown (UTC; another offset in tests, to
    /// prove the rows follow it).
    pub tz: FixedOffset,
    /// The clock as of the last [`Msg::Tick`](super::Msg::Tick) (for countdowns
    /// and notices).
    pub now: Instant,
    /// Terminal size (columns, rows).
    pub size: (u16, u16),
}

impl App {
    /// An empty inspector. `tz` is the offset times are shown in.
    pub fn new(public_url: String, target: String, theme: Theme, tz: FixedOffset) -> Self {
        App {
            public_url,
            target,
            status: ConnectionStatus::Connecting,
            rows: VecDeque::new(),
            visible: Vec::new(),
            selected: None,
            follow: true,
            offset: 0,
            filter: String::new(),
            filter_draft: None,
            view: View::List,
            detail: None,
            editor: None,
            pending_edit: None,
            help: false,
            body_search: None,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            notice: None,
            not_stored: 0,
            next_unstored: 0,
            new_above: 0,
            unfinished: 0,
            awaited_replays: VecDeque::new(),
            max_id: 0,
            last_poll: None,
            banner: String::new(),
            drain: None,
            dead: super::DeadLetters::default(),
            attempts: HashMap::new(),
            theme,
            tz,
            now: Instant::now(),
            size: (80, 24),
        }
    }

    /// The filter currently narrowing the list (the draft while typing).
    pub fn active_filter(&self) -> &str {
        self.filter_draft.as_deref().unwrap_or(&self.filter)
    }

    /// Position of the selection in `visible`.
    pub fn selected_index(&self) -> Option<usize> {
        let key = self.selected?;
        self.visible.iter().position(|&i| self.rows[i].key == key)
    }

    /// The selected row.
    pub fn selected_row(&self) -> Option<&Row> {
        self.selected_index().map(|i| &self.rows[self.visible[i]])
    }

    /// Counts of all rows by status class: 2xx, 3xx, 4xx, 5xx, failed
    /// without a status.
    pub fn counts(&self) -> [usize; 5] {
        let mut c = [0; 5];
        for r in self.rows.iter().filter(|r| !r.in_progress()) {
            match r.summary.status {
                Some(s @ 200..=599) => c[usize::from(s / 100 - 2)] += 1,
                Some(_) => {}
                None => c[4] += 1,
            }
        }
        c
    }

    pub(super) fn notify(&mut self, level: Level, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            level,
            expires: self.now + NOTICE_TTL,
        });
    }

    /// Whether `row` passes the active filter. While the prompt is open the
    /// `body:` term is ignored (the store is searched only on Enter); once
    /// applied, only exchanges the search found pass.
    pub fn row_matches(&self, row: &Row) -> bool {
        let filter = self.active_filter();
        if !matches(filter, row) {
            return false;
        }
        if self.filter_draft.is_some() || body_term(filter).is_none() {
            return true;
        }
        match (&self.body_search, row.key) {
            (Some(b), RowKey::Stored(id)) => b.matched.contains(&id),
            _ => false,
        }
    }

    /// Starts a body search for the applied filter's `body:` term over all
    /// stored rows, or drops the search when the filter has none.
    pub(super) fn start_body_search(&mut self) -> Vec<Effect> {
        let Some(needle) = body_term(&self.filter).map(str::to_string) else {
            self.body_search = None;
            return vec![];
        };
        let ids: Vec<ExchangeId> = self
            .rows
            .iter()
            .filter_map(|r| match r.key {
                RowKey::Stored(id) => Some(id),
                RowKey::NotStored(_) | RowKey::Live(_) => None,
            })
            .collect();
        self.body_search = Some(BodySearch {
            needle: needle.clone(),
            matched: HashSet::new(),
            running: !ids.is_empty(),
        });
        if ids.is_empty() {
            vec![]
        } else {
            vec![Effect::SearchBodies { needle, ids }]
        }
    }

    /// Recomputes `visible` and repairs the selection and scroll offset.
    ///
    /// Retries are grouped: rows of one delivery (same provider and
    /// delivery id, see [`Row::delivery`]) are shown together, at the place
    /// of the first attempt, each retry right below it in the order they
    /// came (`↳ retry 2`, `↳ retry 3`). Grouped rather than collapsed, so
    /// every attempt keeps its own row, status, duration and selection,
    /// and nothing is hidden behind an extra key. The list stays newest
    /// first between groups; a new retry therefore appears below its first
    /// attempt, not at the top.
    pub(super) fn refilter(&mut self) {
        self.attempts.clear();
        let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
        for r in self.rows.iter().rev() {
            if let Some(d) = r.delivery() {
                let n = seen.entry(d).or_insert(0);
                *n += 1;
                if *n > 1 {
                    self.attempts.insert(r.key, *n);
                }
            }
        }
        let flat: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.row_matches(&self.rows[i]))
            .collect();
        self.visible = if self.attempts.is_empty() {
            flat
        } else {
            // Each group's shown rows, newest first; the oldest is the anchor.
            let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
            for &i in &flat {
                if let Some(d) = self.rows[i].delivery() {
                    groups.entry(d).or_default().push(i);
                }
            }
            let mut visible = Vec::with_capacity(flat.len());
            for &i in &flat {
                match self.rows[i].delivery().and_then(|d| groups.get(&d)) {
                    Some(g) if g.last() == Some(&i) => visible.extend(g.iter().rev()),
                    Some(_) => {}
                    None => visible.push(i),
                }
            }
            visible
        };
        self.fix_selection();
    }

    /// Whether `row`, added as the newest, is a retry of a row already in
    /// the list (and so is not shown at the top).
    fn is_retry(&self, row: &Row) -> bool {
        row.delivery()
            .is_some_and(|d| self.rows.iter().any(|r| r.delivery() == Some(d)))
    }

    /// Puts the selection on the newest row when following (or when the
    /// selected row is gone), and keeps it on screen.
    fn fix_selection(&mut self) {
        if self.follow || self.selected_index().is_none() {
            self.selected = self.visible.first().map(|&i| self.rows[i].key);
            self.follow = true;
        }
        if self.follow {
            self.new_above = 0;
        }
        self.ensure_visible();
    }

    /// Rows in progress.
    pub fn in_progress(&self) -> usize {
        self.rows.iter().filter(|r| r.in_progress()).count()
    }

    pub(super) fn ensure_visible(&mut self) {
        let h = self.body_rows();
        let len = self.visible.len();
        self.offset = self.offset.min(len.saturating_sub(h));
        if let Some(i) = self.selected_index() {
            if i < self.offset {
                self.offset = i;
            } else if i >= self.offset + h {
                self.offset = i + 1 - h;
            }
        }
    }

    pub(super) fn select_index(&mut self, i: usize) {
        if self.visible.is_empty() {
            return;
        }
        let i = i.min(self.visible.len() - 1);
        self.selected = Some(self.rows[self.visible[i]].key);
        self.follow = i == 0;
        if self.follow {
            self.new_above = 0;
        }
        self.ensure_visible();
    }

    pub(super) fn move_by(&mut self, delta: isize) {
        let cur = self.selected_index().unwrap_or(0);
        self.select_index(cur.saturating_add_signed(delta));
    }

    /// Adds (or replaces) a row; returns the body search it needs when a
    /// `body:` filter is applied.
    pub(super) fn push_row(&mut self, row: Row) -> Vec<Effect> {
        let search = match (&self.body_search, row.key) {
            (Some(b), RowKey::Stored(id)) => vec![Effect::SearchBodies {
                needle: b.needle.clone(),
                ids: vec![id],
            }],
            _ => vec![],
        };
        if let Some(pos) = self.rows.iter().position(|r| r.key == row.key) {
            self.rows[pos] = row;
            self.refilter();
            return search;
        }
        if self.is_retry(&row) {
            self.rows.push_front(row);
            self.rows.truncate(MAX_ROWS);
            self.refilter();
            return search;
        }
        // Incremental, not a full refilter: bursts of arrivals must stay
        // cheap with thousands of rows and a filter applied.
        let shown = self.row_matches(&row);
        self.rows.push_front(row);
        for v in &mut self.visible {
            *v += 1;
        }
        if shown {
            self.visible.insert(0, 0);
        }
        if self.rows.len() > MAX_ROWS {
            self.rows.truncate(MAX_ROWS);
            if self.attempts.is_empty() {
                while self.visible.last().is_some_and(|&i| i >= MAX_ROWS) {
                    self.visible.pop();
                }
            } else {
                // A group's first attempt may be gone: number and place anew.
                self.refilter();
            }
        }
        // Keep a user who scrolled away looking at the same rows, and tell
        // them what arrived above.
        if shown && !self.follow {
            self.offset += 1;
            self.new_above += 1;
        }
        self.fix_selection();
        search
    }

    /// Adds the finished (stored or not) form of an exchange: it replaces
    /// the row of the same exchange in progress, where that row is, or is
    /// added as a new row.
    pub(super) fn finish_row(&mut self, live: u64, row: Row) -> Vec<Effect> {
        let live_pos = (live != 0)
            .then(|| self.rows.iter().position(|r| r.key == RowKey::Live(live)))
            .flatten();
        let Some(pos) = live_pos else {
            return self.push_row(row);
        };
        let key = row.key;
        if self.selected == Some(RowKey::Live(live)) {
            self.selected = Some(key);
        }
        if self.rows.iter().any(|r| r.key == key) {
            // Already loaded by a store poll: the row in progress goes.
            self.rows.remove(pos);
            return self.push_row(row);
        }
        let search = match (&self.body_search, key) {
            (Some(b), RowKey::Stored(id)) => vec![Effect::SearchBodies {
                needle: b.needle.clone(),
                ids: vec![id],
            }],
            _ => vec![],
        };
        self.rows[pos] = row;
        self.refilter();
        search
    }

    /// Drops rows in progress whose exchange never came back; returns how
    /// many.
    pub(super) fn expire_live_rows(&mut self) -> usize {
        let now = self.now;
        let before = self.rows.len();
        self.rows
            .retain(|r| !r.in_progress() || r.give_up_at().is_none_or(|t| t > now));
        let gone = before - self.rows.len();
        if gone > 0 {
            self.unfinished += gone as u64;
            self.refilter();
        }
        gone
    }

    /// Remembers that the result of a replay of `id` is awaited.
    pub(super) fn await_replay(&mut self, id: ExchangeId) {
        if self.awaited_replays.len() >= MAX_AWAITED_REPLAYS {
            self.awaited_replays.pop_front();
        }
        self.awaited_replays.push_back(id);
    }

    /// Takes the awaited replay of `orig`, if this inspector asked for one.
    pub(super) fn take_awaited(&mut self, orig: Option<ExchangeId>) -> Option<ExchangeId> {
        let orig = orig?;
        let pos = self.awaited_replays.iter().position(|&o| o == orig)?;
        self.awaited_replays.remove(pos)
    }

    /// Puts the selection on `key` (a replay's result) when the list is
    /// shown, so the user sees it.
    pub(super) fn select_key(&mut self, key: RowKey) {
        if self.view != View::List {
            return;
        }
        if let Some(i) = self.visible.iter().position(|&r| self.rows[r].key == key) {
            self.select_index(i);
        }
    }

    pub(super) fn cache_insert(&mut self, ex: Arc<Exchange>) {
        let Some(id) = ex.id else { return };
        if self.cache.insert(id, ex).is_none() {
            self.cache_order.push_back(id);
        }
        let bytes = |ex: &Exchange| {
            ex.request.body.total_len + ex.response.as_ref().map_or(0, |r| r.body.total_len)
        };
        let mut total: u64 = self.cache.values().map(|e| bytes(e)).sum();
        // Always keep the newest entry, however large: it is being shown.
        while self.cache_order.len() > 1
            && (self.cache_order.len() > DETAIL_CACHE || total > DETAIL_CACHE_BYTES)
        {
            if let Some(old) = self.cache_order.pop_front() {
                if let Some(e) = self.cache.remove(&old) {
                    total -= bytes(&e);
                }
            }
        }
    }

    /// The agent's standing notice as drawn below the status line: one
    /// line per fact, wrapped to the terminal's width, at most
    /// [`MAX_BANNER_ROWS`] rows (the body keeps the rest).
    pub fn banner_lines(&self) -> Vec<Line<'static>> {
        let width = usize::from(self.size.0);
        // Dead letters first: events the user must act on, or lose.
        let dead = super::dead_letter_text(&self.dead)
            .map(|t| Line::styled(format!(" {t}"), self.theme.error()));
        let mut out: Vec<Line<'static>> = dead
            .into_iter()
            .chain(
                self.banner
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| Line::styled(format!(" ! {}", sanitize(l.trim())), self.theme.warn())),
            )
            .flat_map(|line| wrap_line(&line, width))
            .collect();
        out.truncate(MAX_BANNER_ROWS.min(usize::from(self.size.1) / 4));
        out
    }

    /// Rows left for the list or detail body, below the standing notice.
    pub fn body_rows(&self) -> usize {
        let banner = self.banner_lines().len() as u16;
        body_height(self.size.1.saturating_sub(banner))
    }

    fn detail_max_scroll(&self) -> usize {
        let Some(d) = self.detail.as_ref() else {
            return 0;
        };
        let Some(parts) = d.parts.as_ref() else {
            return 0;
        };
        DetailLayout::of(parts, self.size.0, self.body_rows()).max_scroll(parts, d.half)
    }

    /// `Tab` in the details: the other half (shown when narrow, selected
    /// for `R` when wide), from its top.
    pub(super) fn switch_half(&mut self) -> Vec<Effect> {
        let Some(d) = self.detail.as_mut() else {
            return vec![];
        };
        d.half = d.half.other();
        d.scroll = 0;
        self.rebuild_detail()
    }

    /// `R` in the details: the selected half's body as its exact bytes, or
    /// back to the pretty view.
    pub(super) fn toggle_raw(&mut self) -> Vec<Effect> {
        let Some(d) = self.detail.as_mut() else {
            return vec![];
        };
        d.raw = !d.raw;
        self.rebuild_detail()
    }

    /// Rebuilds the open detail's lines for its half and raw setting, from
    /// the cache or, when evicted, by loading the exchange again.
    fn rebuild_detail(&mut self) -> Vec<Effect> {
        let Some(d) = self.detail.as_mut() else {
            return vec![];
        };
        match self.cache.get(&d.id) {
            Some(ex) => {
                d.parts = Some(detail_parts(ex, &self.theme, self.tz, d.raw_half()));
                vec![]
            }
            None => {
                d.parts = None;
                vec![Effect::LoadDetail(d.id)]
            }
        }
    }

    pub(super) fn scroll_detail(&mut self, delta: isize) {
        let max = self.detail_max_scroll();
        if let Some(d) = self.detail.as_mut() {
            d.scroll = d.scroll.saturating_add_signed(delta).min(max);
        }
    }

    /// The id to act on: the open detail's exchange, else the selected row's.
    /// Rows the store could not keep have none.
    pub(super) fn target_id(&mut self) -> Option<ExchangeId> {
        if self.view == View::Detail {
            return self.detail.as_ref().map(|d| d.id);
        }
        match self.selected_row().map(|r| r.key) {
            Some(RowKey::Stored(id)) => Some(id),
            Some(RowKey::NotStored(_)) => {
                self.notify(
                    Level::Warn,
                    "this exchange was not stored: no details, no replay",
                );
                None
            }
            Some(RowKey::Live(_)) => {
                self.notify(
                    Level::Info,
                    "still in progress: details once the app has answered",
                );
                None
            }
            None => None,
        }
    }

    pub(super) fn open_detail(&mut self, id: ExchangeId) -> Vec<Effect> {
        self.view = View::Detail;
        // The half and raw setting stay as the user left them when stepping
        // from one exchange to the next.
        let (half, raw) = self
            .detail
            .as_ref()
            .map_or((Half::Request, false), |d| (d.half, d.raw));
        let parts = self
            .cache
            .get(&id)
            .map(|ex| detail_parts(ex, &self.theme, self.tz, raw.then_some(half)));
        let load = parts.is_none();
        self.detail = Some(DetailView {
            id,
            parts,
            error: None,
            scroll: 0,
            half,
            raw,
        });
        if load {
            vec![Effect::LoadDetail(id)]
        } else {
            vec![]
        }
    }

    /// Shows the next (`delta` 1) or previous (-1) exchange of the list in
    /// the detail view, relative to the one shown (not to the selection,
    /// which may have followed new arrivals meanwhile).
    pub(super) fn step_detail(&mut self, delta: isize) -> Vec<Effect> {
        let Some(cur) = self.detail.as_ref().map(|d| RowKey::Stored(d.id)) else {
            return vec![];
        };
        let Some(i) = self.visible.iter().position(|&r| self.rows[r].key == cur) else {
            return vec![];
        };
        let Some(j) = i
            .checked_add_signed(delta)
            .filter(|&j| j < self.visible.len())
        else {
            return vec![];
        };
        self.select_index(j);
        match self.rows[self.visible[j]].key {
            RowKey::Stored(id) => self.open_detail(id),
            RowKey::NotStored(_) => {
                self.view = View::List;
                self.notify(Level::Warn, "this exchange was not stored: no details");
                vec![]
            }
            RowKey::Live(_) => {
                self.view = View::List;
                self.notify(Level::Info, "still in progress: no details yet");
                vec![]
            }
        }
    }

    pub(super) fn replay(&mut self, id: ExchangeId) -> Vec<Effect> {
        self.notify(Level::Info, format!("replay of #{id} requested"));
        self.await_replay(id);
        vec![Effect::Replay(ReplayRequest { id, edit: None })]
    }

    pub(super) fn start_edit(&mut self, id: ExchangeId) -> Vec<Effect> {
        match self.cache.get(&id).cloned() {
            Some(ex) => {
                self.open_editor(&ex);
                vec![]
            }
            None => {
                self.pending_edit = Some(id);
                self.notify(Level::Info, format!("loading #{id} for editing..."));
                vec![Effect::LoadDetail(id)]
            }
        }
    }

    pub(super) fn open_editor(&mut self, ex: &Exchange) {
        let Some(id) = ex.id else { return };
        let back = if self.view == View::Edit {
            View::List
        } else {
            self.view
        };
        let req = &ex.request;
        let bytes: &[u8] = match &req.body.data {
            BodyData::Empty => b"",
            BodyData::Memory(b) => b,
            BodyData::File(_) => {
                self.editor = Some(Editor::Binary {
                    id,
                    len: req.body.total_len,
                    back,
                });
                self.view = View::Edit;
                return;
            }
        };
        if !is_text(bytes) {
            self.editor = Some(Editor::Binary {
                id,
                len: req.body.total_len,
                back,
            });
            self.view = View::Edit;
            return;
        }
        let body = BodyLines::split(std::str::from_utf8(bytes).unwrap_or_default());
        let text = request_to_text(&req.method, &req.path, &req.headers, &body.lines.join("\n"));
        let mut textarea = TextArea::new(text.split('\n').map(str::to_string).collect());
        textarea.set_cursor_line_style(ratatui::style::Style::new());
        // The default selection colour would break NO_COLOR.
        textarea.set_selection_style(self.theme.selected());
        textarea.set_search_style(self.theme.found());
        let warning = req.body.truncated.then(|| {
            format!(
                "the captured body was truncated: only {} of {} bytes will be sent",
                bytes.len(),
                req.body.total_len
            )
        });
        self.editor = Some(Editor::Text {
            id,
            textarea: Box::new(textarea),
            error: None,
            warning,
            body,
            signed: signature_header(&req.headers),
            reformatted: false,
            find: super::Find::default(),
            back,
        });
        self.view = View::Edit;
    }

    pub(super) fn close_editor(&mut self) {
        let back = match self.editor.take() {
            Some(Editor::Text { back, .. }) | Some(Editor::Binary { back, .. }) => back,
            None => View::List,
        };
        self.view = back;
    }
}
