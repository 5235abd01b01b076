//! The engine without a terminal: real channels, a fake store. Covers the
//! initial load, live events, lag → reload, detail loading (including bodies
//! kept in files), replay hand-off and its failures, body search and quit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;

use crossterm::event::KeyCode;
use tokio::sync::{broadcast, mpsc, watch};

use super::fixtures::*;
use crate::agent::ConnectionStatus;
use crate::capture::{
    BodyData, CaptureEvent, Exchange, ExchangeId, ExchangeSummary, ReplayRequest,
};
use crate::inspect::session::{Pumped, Session, Source, SEARCH_CHUNK};
use crate::inspect::state::{Effect, Level, Msg, View};

#[derive(Default)]
struct FakeStore {
    list: RefCell<Vec<ExchangeSummary>>,
    full: RefCell<HashMap<ExchangeId, Exchange>>,
    list_calls: Cell<usize>,
    get_calls: Cell<usize>,
    max_calls: Cell<usize>,
    fail: Cell<bool>,
}

impl Source for &FakeStore {
    fn list(&self, limit: usize) -> Result<Vec<ExchangeSummary>, String> {
        self.list_calls.set(self.list_calls.get() + 1);
        if self.fail.get() {
            return Err("disk I/O error".into());
        }
        Ok(self.list.borrow().iter().take(limit).cloned().collect())
    }

    fn get(&self, id: ExchangeId) -> Result<Option<Exchange>, String> {
        self.get_calls.set(self.get_calls.get() + 1);
        Ok(self.full.borrow().get(&id).cloned())
    }

    fn max_id(&self) -> Result<ExchangeId, String> {
        self.max_calls.set(self.max_calls.get() + 1);
        Ok(self.list.borrow().iter().map(|s| s.id).max().unwrap_or(0))
    }

    fn list_after(&self, after: ExchangeId, limit: usize) -> Result<Vec<ExchangeSummary>, String> {
        let mut v: Vec<ExchangeSummary> = self
            .list
            .borrow()
            .iter()
            .filter(|s| s.id > after)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.id);
        v.truncate(limit);
        Ok(v)
    }
}

struct Harness<'a> {
    session: Session<&'a FakeStore>,
    events: broadcast::Sender<CaptureEvent>,
    status: watch::Sender<ConnectionStatus>,
    replays: mpsc::Receiver<ReplayRequest>,
}

fn harness(store: &FakeStore, event_cap: usize, replay_cap: usize) -> Harness<'_> {
    let (etx, erx) = broadcast::channel(event_cap);
    let (stx, srx) = watch::channel(ConnectionStatus::Connected {
        public_url: "https://relay.example/t/demo".into(),
        held: 0,
    });
    let (rtx, rrx) = mpsc::channel(replay_cap);
    Harness {
        session: Session::new(app(), store, erx, srx, rtx),
        events: etx,
        status: stx,
        replays: rrx,
    }
}

fn stored_list() -> Vec<ExchangeSummary> {
    let mut v = mixed();
    v.reverse(); // the store lists newest first
    v
}

#[test]
fn starts_by_loading_list_and_status() {
    let store = FakeStore::default();
    *store.list.borrow_mut() = stored_list();
    let mut h = harness(&store, 16, 4);
    assert!(matches!(
        h.session.app.status,
        ConnectionStatus::Connected { .. }
    ));
    let p = h.session.pump();
    assert_eq!(
        p,
        Pumped {
            quit: false,
            dirty: true,
            busy: false
        }
    );
    assert_eq!(store.list_calls.get(), 1);
    assert_eq!(h.session.app.rows.len(), 6);
    assert_eq!(h.session.app.rows[0].summary.id, 6);
    // Nothing new: nothing to redraw.
    h.session.poll_channels();
    assert!(!h.session.pump().dirty);
    h.status
        .send(ConnectionStatus::Refused {
            reason: "bad token".into(),
        })
        .unwrap();
    h.session.poll_channels();
    h.session.pump();
    assert!(matches!(
        h.session.app.status,
        ConnectionStatus::Refused { .. }
    ));
}

#[test]
fn store_failure_becomes_a_notice_not_a_crash() {
    let store = FakeStore::default();
    store.fail.set(true);
    let mut h = harness(&store, 16, 4);
    h.session.pump();
    let n = h.session.app.notice.as_ref().unwrap();
    assert_eq!(n.level, Level::Error);
    assert!(n.text.contains("disk I/O error"));
}

#[test]
fn live_events_then_lag_reloads_from_store() {
    let store = FakeStore::default();
    let mut h = harness(&store, 2, 4);
    h.session.pump();
    assert_eq!(store.list_calls.get(), 1);
    h.events
        .send(CaptureEvent::Stored(summary(1, "POST", "/a", Some(200))))
        .unwrap();
    h.session.poll_channels();
    h.session.pump();
    assert_eq!(h.session.app.rows.len(), 1);
    assert_eq!(store.list_calls.get(), 1);

    // Overflow the 2-slot channel: the receiver lags and must reload.
    *store.list.borrow_mut() = stored_list();
    for s in stored_list().into_iter().rev() {
        h.events.send(CaptureEvent::Stored(s)).unwrap();
    }
    h.session.poll_channels();
    h.session.pump();
    assert_eq!(store.list_calls.get(), 2, "lag triggers a reload");
    assert_eq!(h.session.app.rows.len(), 6);
    let ids: Vec<i64> = h.session.app.rows.iter().map(|r| r.summary.id).collect();
    assert_eq!(ids, vec![6, 5, 4, 3, 2, 1]);
}

#[test]
fn enter_loads_detail_and_reads_file_bodies() {
    let store = FakeStore::default();
    *store.list.borrow_mut() = stored_list();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(JSON_BODY)
        .unwrap();
    let mut ex = exchange(6, "application/json", b"");
    ex.request.body.data = BodyData::File(path);
    ex.request.body.total_len = JSON_BODY.len() as u64;
    store.full.borrow_mut().insert(6, ex);
    let mut h = harness(&store, 16, 4);
    h.session.pump();
    h.session.push(key(KeyCode::Enter));
    h.session.pump();
    assert_eq!(store.get_calls.get(), 1);
    assert_eq!(h.session.app.view, View::Detail);
    let text: Vec<String> = h
        .session
        .app
        .detail
        .as_ref()
        .unwrap()
        .parts
        .as_ref()
        .unwrap()
        .request
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert!(
        text.iter().any(|l| l == "  \"type\": \"invoice.paid\","),
        "{text:?}"
    );
    assert!(text.iter().any(|l| l.contains("JSON")));

    // An id the store no longer has.
    h.session.push(key(KeyCode::Esc));
    h.session.push(ch('j'));
    h.session.push(key(KeyCode::Enter));
    h.session.pump();
    let d = h.session.app.detail.as_ref().unwrap();
    assert_eq!(d.id, 5);
    assert!(d
        .error
        .as_deref()
        .unwrap()
        .contains("no longer in the store"));
}

#[test]
fn replay_is_handed_to_the_agent_and_failures_are_reported() {
    let store = FakeStore::default();
    *store.list.borrow_mut() = stored_list();
    let mut h = harness(&store, 16, 1);
    h.session.pump();
    h.session.push(ch('r'));
    h.session.pump();
    assert_eq!(
        h.replays.try_recv().unwrap(),
        ReplayRequest { id: 6, edit: None }
    );
    // Fill the 1-slot queue, then replay again: full.
    h.session.push(ch('r'));
    h.session.push(ch('r'));
    h.session.pump();
    let n = h.session.app.notice.as_ref().unwrap();
    assert_eq!(n.level, Level::Error);
    assert!(n.text.contains("too many replays queued"), "{}", n.text);
    // Agent gone: closed.
    h.replays.close();
    while h.replays.try_recv().is_ok() {}
    h.session.push(ch('r'));
    h.session.pump();
    assert!(h
        .session
        .app
        .notice
        .as_ref()
        .unwrap()
        .text
        .contains("not accepting replays"));
}

#[test]
fn quit_stops_the_pump() {
    let store = FakeStore::default();
    let mut h = harness(&store, 16, 4);
    h.session.push(ch('q'));
    assert!(h.session.pump().quit);
}

#[test]
fn the_ui_ends_when_the_agent_is_gone() {
    let store = FakeStore::default();
    let mut h = harness(&store, 16, 4);
    h.session.poll_channels();
    assert!(!h.session.pump().quit);
    drop(h.status);
    h.session.poll_channels();
    assert!(h.session.pump().quit, "status sender dropped: quit");
}

#[test]
fn body_filter_searches_the_store_in_steps() {
    let store = FakeStore::default();
    let n = SEARCH_CHUNK as i64 + 20;
    let list: Vec<ExchangeSummary> = (1..=n)
        .rev()
        .map(|i| summary(i, "POST", "/hooks", Some(200)))
        .collect();
    *store.list.borrow_mut() = list;
    for i in 1..=n {
        let body: &[u8] = if i % 50 == 0 {
            b"{\"customer\":\"ACME Corp\"}"
        } else {
            b"{}"
        };
        store
            .full
            .borrow_mut()
            .insert(i, exchange(i, "application/json", body));
    }
    // The response body is searched too.
    let mut ex = exchange(7, "application/json", b"{}");
    ex.response.as_mut().unwrap().body = body(b"acme says hi");
    store.full.borrow_mut().insert(7, ex);

    let mut h = harness(&store, 16, 4);
    h.session.pump();
    h.session.push(ch('/'));
    for c in "body:acme".chars() {
        h.session.push(ch(c));
    }
    h.session.push(key(KeyCode::Enter));
    let p = h.session.pump();
    assert!(p.busy, "first step done, more to search");
    assert_eq!(store.get_calls.get(), SEARCH_CHUNK);
    assert!(h.session.app.body_search.as_ref().unwrap().running);
    let p = h.session.pump();
    assert!(!p.busy);
    assert!(!h.session.app.body_search.as_ref().unwrap().running);
    let ids: Vec<i64> = h
        .session
        .app
        .visible
        .iter()
        .map(|&i| h.session.app.rows[i].summary.id)
        .collect();
    assert_eq!(ids, vec![100, 50, 7]);

    // A new arrival is searched on its own.
    let mut ex = exchange(n + 1, "application/json", b"\"acme\"");
    ex.id = Some(n + 1);
    store.full.borrow_mut().insert(n + 1, ex);
    h.events
        .send(CaptureEvent::Stored(summary(
            n + 1,
            "POST",
            "/hooks",
            Some(200),
        )))
        .unwrap();
    h.session.poll_channels();
    h.session.pump();
    assert_eq!(h.session.app.visible.len(), 4);
    let first = h.session.app.visible[0];
    assert_eq!(h.session.app.rows[first].summary.id, n + 1);
}

#[test]
fn stale_body_search_results_are_ignored() {
    let mut app = app();
    feed(&mut app, mixed());
    let fx = crate::inspect::update(
        &mut app,
        Msg::BodySearched {
            needle: "nope".into(),
            matched: [1].into_iter().collect(),
            rest: vec![2, 3],
        },
    );
    assert!(fx.is_empty());
    assert!(app.body_search.is_none());
    assert_eq!(app.visible.len(), 6);
    // Applying a filter without a body term starts no search.
    crate::inspect::update(&mut app, ch('/'));
    let fx = type_str(&mut app, "stripe");
    assert!(fx.is_empty());
    let fx = crate::inspect::update(&mut app, key(KeyCode::Enter));
    assert!(!fx.iter().any(|e| matches!(e, Effect::SearchBodies { .. })));
}
