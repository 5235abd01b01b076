//! Issue #12's list behaviour: rows in progress with a running timer that
//! the finished exchange replaces, the "N new ↑" marker, replay results in
//! the footer, rows other processes added (store polls), the `#` column,
//! cut texts ending in `…`, the target's port kept at 80 columns, and
//! sanitised control characters. Each at 80×24 and 160×40.

use std::time::Duration;

use crossterm::event::KeyCode;

use super::fixtures::*;
use super::render::{connected, render, screen, text};
use crate::capture::{CaptureEvent, ExchangeSummary};
use crate::inspect::state::{update, App, Effect, Level, Msg, RowKey};
use crate::inspect::Theme;

fn list_app(w: u16, h: u16) -> App {
    let mut app = app_with(Theme::COLOR, w, h);
    connected(&mut app);
    feed(&mut app, mixed());
    app
}

/// A `Started` summary: id 0, no status, `duration_ms` is the budget.
fn started(live: u64, path: &str, secs: i64) -> ExchangeSummary {
    let mut s = summary(0, "POST", path, None);
    s.received_at = at(secs);
    s.outcome = None;
    s.duration_ms = 30_000.0;
    s.request_size = 0;
    s.live = live;
    s
}

fn stored_as(mut s: ExchangeSummary, id: i64, status: u16, ms: f64) -> ExchangeSummary {
    s.id = id;
    s.status = Some(status);
    s.duration_ms = ms;
    s
}

#[test]
fn a_request_in_progress_is_a_row_with_a_timer_until_its_answer_replaces_it() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = list_app(w, h);
        let t0 = app.now;
        let s = started(1, "/hooks/slow-app", 60);
        update(&mut app, Msg::Captured(CaptureEvent::Started(s.clone())));
        assert_eq!(app.rows[0].key, RowKey::Live(1));
        assert_eq!(app.selected, Some(RowKey::Live(1)), "followed");
        update(&mut app, Msg::Tick(t0 + Duration::from_millis(3400)));
        let screen_in_progress = screen(&app);
        let row = screen_in_progress
            .lines()
            .find(|l| l.contains("/hooks/slow-app"))
            .unwrap()
            .to_string();
        assert!(row.contains("3.40s"), "running timer: {row}");
        assert!(row.contains('…') && row.contains('⋯'), "{row}");
        assert!(screen_in_progress.contains("⋯ 1 in flight"));
        assert!(
            screen_in_progress.contains("err 1"),
            "not counted as failed"
        );
        insta::assert_snapshot!(format!("in_progress_{w}x{h}"), screen_in_progress);

        let rows_before = app.rows.len();
        let mut done = stored_as(s, 7, 200, 8012.0);
        done.event = Some("charge.succeeded".into());
        update(&mut app, Msg::Captured(CaptureEvent::Stored(done)));
        assert_eq!(app.rows.len(), rows_before, "replaced, not added");
        assert_eq!(app.rows[0].key, RowKey::Stored(7));
        assert_eq!(app.selected, Some(RowKey::Stored(7)));
        let s = screen(&app);
        let row = s.lines().find(|l| l.contains("/hooks/slow-app")).unwrap();
        assert!(row.contains("#7") && row.contains("200") && row.contains("8.01s"));
        assert!(!s.contains("in flight"));
    }
}

#[test]
fn a_row_in_progress_that_never_finishes_is_dropped_after_its_deadline() {
    let mut app = list_app(80, 24);
    let t0 = app.now;
    update(
        &mut app,
        Msg::Captured(CaptureEvent::Started(started(3, "/lost", 60))),
    );
    update(&mut app, Msg::Tick(t0 + Duration::from_secs(35)));
    assert_eq!(app.rows[0].key, RowKey::Live(3), "kept within its deadline");
    update(&mut app, Msg::Tick(t0 + Duration::from_secs(41)));
    assert!(app.rows.iter().all(|r| !r.in_progress()));
    assert_eq!(app.unfinished, 1);
    let s = screen(&app);
    assert!(s.contains("! 1 never finished"), "{s}");
    assert!(s.contains("never finished (dropped"), "{s}");
}

#[test]
fn not_stored_replaces_its_row_in_progress_and_stored_after_a_poll_is_not_doubled() {
    let mut app = list_app(80, 24);
    update(
        &mut app,
        Msg::Captured(CaptureEvent::Started(started(1, "/a", 60))),
    );
    update(
        &mut app,
        Msg::Captured(CaptureEvent::Started(started(2, "/b", 61))),
    );
    let n = app.rows.len();
    update(
        &mut app,
        Msg::Captured(CaptureEvent::NotStored {
            summary: stored_as(started(1, "/a", 60), 0, 200, 5.0),
            reason: "queue full".into(),
        }),
    );
    assert_eq!(app.rows.len(), n);
    // The store poll saw #8 before its event arrived.
    let b = stored_as(started(2, "/b", 61), 8, 200, 5.0);
    let mut polled = b.clone();
    polled.live = 0;
    update(&mut app, Msg::Polled(vec![polled]));
    update(&mut app, Msg::Captured(CaptureEvent::Stored(b)));
    assert_eq!(app.rows.len(), n, "one row for #8");
    assert_eq!(
        app.rows
            .iter()
            .filter(|r| r.key == RowKey::Stored(8))
            .count(),
        1
    );
    assert!(app.rows.iter().all(|r| !r.in_progress()));
}

#[test]
fn new_rows_above_the_view_show_a_marker_until_the_user_goes_to_the_top() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = list_app(w, h);
        update(&mut app, key(KeyCode::Down));
        update(&mut app, key(KeyCode::Down));
        let selected = app.selected;
        let mut more = Vec::new();
        for id in 7..10 {
            let mut s = summary(id, "POST", "/hooks/new", Some(200));
            s.event = Some(format!("evt.{id}"));
            more.push(s);
        }
        feed(&mut app, more);
        assert_eq!(app.selected, selected, "the selection stays put");
        assert_eq!(app.new_above, 3);
        let s = screen(&app);
        assert!(s.contains("3 new ↑"), "{s}");
        insta::assert_snapshot!(format!("new_rows_marker_{w}x{h}"), s);
        update(&mut app, ch('g'));
        assert_eq!(app.new_above, 0);
        assert!(!screen(&app).contains("new ↑"));
    }
}

#[test]
fn a_replays_result_is_reported_in_the_footer_and_its_row_selected() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = list_app(w, h);
        // Move off the top, to #4, and replay it.
        update(&mut app, key(KeyCode::Down));
        update(&mut app, key(KeyCode::Down));
        let fx = update(&mut app, ch('r'));
        assert!(
            matches!(&fx[..], [Effect::Replay(r)] if r.id == 4),
            "{fx:?}"
        );
        let mut st = started(5, "/hooks/stripe", 80);
        st.replay_of = Some(4);
        update(&mut app, Msg::Captured(CaptureEvent::Started(st.clone())));
        assert!(screen(&app).contains("replay of #4 running"));
        let done = stored_as(st, 7, 500, 23.0);
        update(&mut app, Msg::Captured(CaptureEvent::Stored(done)));
        let n = app.notice.clone().unwrap();
        assert_eq!(
            n.text,
            "replay of #4 → #7: 500 Internal Server Error in 23ms"
        );
        assert_eq!(n.level, Level::Warn);
        assert_eq!(app.selected, Some(RowKey::Stored(7)), "its row selected");
        let s = screen(&app);
        assert!(s.contains("replay of #4 → #7: 500"), "{s}");
        insta::assert_snapshot!(format!("replay_result_{w}x{h}"), s);
        assert!(app.awaited_replays.is_empty());
    }
}

#[test]
fn the_store_is_polled_and_rows_from_other_processes_appear() {
    let mut app = list_app(80, 24);
    assert_eq!(app.max_id, 6);
    let t0 = app.now;
    let fx = update(&mut app, Msg::Tick(t0 + Duration::from_millis(10)));
    assert_eq!(fx, vec![Effect::PollStore { after: 6 }]);
    let fx = update(&mut app, Msg::Tick(t0 + Duration::from_millis(300)));
    assert!(fx.is_empty(), "not more often than every 500 ms");
    let fx = update(&mut app, Msg::Tick(t0 + Duration::from_millis(600)));
    assert_eq!(fx, vec![Effect::PollStore { after: 6 }]);
    // A `whtunnel replay 2` from another terminal.
    let mut other = summary(7, "POST", "/hooks/github?key=abc", Some(200));
    other.replay_of = Some(2);
    update(&mut app, Msg::Polled(vec![other.clone()]));
    assert_eq!(app.rows[0].key, RowKey::Stored(7));
    assert_eq!(app.max_id, 7);
    update(&mut app, Msg::Polled(vec![other]));
    assert_eq!(app.rows.len(), 7, "a row polled twice is kept once");
    let fx = update(&mut app, Msg::Tick(t0 + Duration::from_millis(1200)));
    assert_eq!(fx, vec![Effect::PollStore { after: 7 }]);
}

#[test]
fn ids_cut_texts_port_and_odd_characters_at_80x24_and_160x40() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = app_with(Theme::COLOR, w, h);
        app.public_url = "https://hooks.example-company.com/t/3q0v8k6d1m4h2c5t7n9b0a1s2e".into();
        app.target = "http://localhost:3000".into();
        let mut a = summary(
            41,
            "POST",
            "/webhooks/stripe/with/a/very/long/path?x=1",
            Some(200),
        );
        a.event = Some("charge.succeeded.with.a.long.suffix".into());
        let mut b = summary(
            42,
            "POST",
            "/p\u{1b}]0;PWNED\u{7}\u{1b}[2K\r\u{2028}x",
            Some(200),
        );
        b.event = Some("payment.ok\u{1b}[32mALL GOOD\u{85}\u{7f}\u{2029}".into());
        feed(&mut app, vec![a, b]);
        let buf = render(&app);
        let s = text(&buf);
        insta::assert_snapshot!(format!("ids_cuts_sanitised_{w}x{h}"), s);
        let title = s.lines().next().unwrap();
        assert!(title.contains(":3000"), "port kept: {title}");
        assert!(s.contains("#41") && s.contains("#42"), "{s}");
        if w == 80 {
            assert!(title.contains('…'), "{title}");
            let row = s.lines().find(|l| l.contains("#41")).unwrap();
            assert!(row.trim_end().ends_with('…'), "{row}");
        }
        for cell in buf.content() {
            assert!(
                !cell.symbol().chars().any(crate::inspect::text::is_unsafe),
                "unsafe character drawn: {:?}",
                cell.symbol()
            );
        }
        assert!(s.contains("␛]0;PWNED␇"), "visible, not executed: {s}");
    }
}

#[test]
fn the_detail_view_puts_the_outcome_first() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = list_app(w, h);
        let mut ex = exchange(6, "application/json", &vec![b'x'; 4096]);
        ex.response.as_mut().unwrap().status = 502;
        ex.error = Some("whtunnel: could not connect to the app at http://localhost:3000".into());
        update(&mut app, Msg::DetailLoaded(Box::new(ex)));
        update(&mut app, key(KeyCode::Enter));
        let s = screen(&app);
        let outcome = s.lines().nth(4).unwrap_or_default();
        assert!(
            outcome.contains("502 Bad Gateway"),
            "line 2 of the details: {s}"
        );
        assert!(outcome.contains("15ms"), "{outcome}");
        insta::assert_snapshot!(format!("detail_outcome_first_{w}x{h}"), s);
    }
}
