//! Issue #11 in the inspector: the relay's held backlog draining (count
//! left, rate, time to go, "all delivered") and the events it dead-lettered
//! (a line under the status, a mark on the rows that delivered them, the
//! details' title), at 80×24 and 160×40; and the session following the
//! agent's watches.

use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};

use super::fixtures::*;
use super::render::{connected, screen};
use crate::agent::ConnectionStatus;
use crate::capture::{CaptureEvent, Exchange, ExchangeId, ExchangeSummary};
use crate::inspect::session::{Session, Source};
use crossterm::event::KeyCode;

use crate::inspect::state::{update, App, DeadLetters, Drain, Effect, Level, Msg};
use crate::inspect::Theme;

/// Held deliveries: exchanges that carried the relay's event ids `evt_<id>`.
fn held_rows() -> Vec<ExchangeSummary> {
    let mut v = mixed();
    for s in v.iter_mut().take(4) {
        s.relay_event_id = Some(format!("evt_{}", s.id));
    }
    // The poison event: the app broke off, every time.
    v[1].status = None;
    v[1].error = Some("the app broke the connection off".into());
    v
}

fn held_app(w: u16, h: u16) -> App {
    let mut app = app_with(Theme::COLOR, w, h);
    connected(&mut app);
    feed(&mut app, held_rows());
    app
}

/// The backlog at `left` after `secs` seconds on the app's clock.
fn backlog(app: &mut App, start: Instant, secs: f64, left: u64) {
    update(app, Msg::Tick(start + Duration::from_secs_f64(secs)));
    update(app, Msg::Backlog(left));
}

#[test]
fn the_rate_is_measured_over_a_second_and_a_new_backlog_starts_afresh() {
    let t0 = Instant::now();
    let mut d = Drain::default();
    assert!(!d.update(1000, t0));
    assert_eq!(d.text().unwrap(), "held: 1000 left — delivering");
    // Within the window: the count moves, the rate is not guessed.
    d.update(900, t0 + Duration::from_millis(300));
    assert_eq!(d.rate, None);
    d.update(736, t0 + Duration::from_secs(1));
    assert_eq!(d.rate, Some(264.0));
    assert_eq!(d.text().unwrap(), "held: 736 left, 264/s, ~3s");
    // Nothing delivered for a while: stalled, said so.
    d.update(736, t0 + Duration::from_secs(3));
    assert_eq!(d.rate, Some(0.0));
    assert!(d.text().unwrap().contains("stalled"), "{:?}", d.text());
    // A reconnect announces a bigger backlog: a new measurement.
    d.update(5000, t0 + Duration::from_secs(4));
    assert_eq!((d.left, d.rate), (5000, None));
    assert!(d.update(0, t0 + Duration::from_secs(9)), "emptied");
    assert_eq!(d.text(), None);
    assert!(!d.update(0, t0 + Duration::from_secs(10)), "already empty");
}

#[test]
fn the_backlog_draining_is_shown_on_the_status_line() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = held_app(w, h);
        // The agent reconnected to 1,000 held events.
        update(
            &mut app,
            Msg::Status(ConnectionStatus::Connected {
                public_url: "https://relay.example/t/demo".into(),
                held: 1000,
            }),
        );
        let t0 = Instant::now();
        backlog(&mut app, t0, 0.0, 1000);
        let s = screen(&app);
        assert!(s.contains("held: 1000 left — delivering"), "{s}");
        backlog(&mut app, t0, 1.0, 736);
        let s = screen(&app);
        let status = s.lines().nth(1).unwrap();
        assert!(
            status.contains("● connected · held: 736 left, 264/s, ~3s"),
            "{status}"
        );
        insta::assert_snapshot!(format!("backlog_draining_{w}x{h}"), s);
        backlog(&mut app, t0, 4.0, 0);
        let s = screen(&app);
        assert!(!s.contains("left"), "{s}");
        assert!(s.lines().nth(1).unwrap().contains("● connected"), "{s}");
        let n = app.notice.as_ref().unwrap();
        assert_eq!(
            (n.text.as_str(), n.level),
            ("held events: all delivered", Level::Info)
        );
        assert!(s.contains("held events: all delivered"), "{s}");
    }
}

#[test]
fn dead_letters_are_counted_under_the_status_and_their_rows_marked() {
    for (w, h) in [(80, 24), (160, 40)] {
        let mut app = held_app(w, h);
        let before = screen(&app);
        assert!(!before.contains('☠'), "{before}");
        let mut dead = DeadLetters::default();
        dead.add("evt_2".into(), 1);
        update(&mut app, Msg::DeadLetters(dead.clone()));
        let s = screen(&app);
        assert!(
            s.lines()
                .nth(2)
                .unwrap()
                .contains("☠ 1 held event dead-lettered on the relay"),
            "{s}"
        );
        assert!(s.contains("whtunnel held list"), "{s}");
        // Only the row that delivered evt_2 is marked.
        let marked: Vec<&str> = s.lines().skip(4).filter(|l| l.contains('☠')).collect();
        assert_eq!(marked.len(), 1, "{s}");
        assert!(marked[0].contains("#2"), "{s}");
        let n = app.notice.as_ref().unwrap();
        assert_eq!(n.level, Level::Error);
        assert!(n.text.contains("evt_2"), "{}", n.text);
        insta::assert_snapshot!(format!("dead_letter_{w}x{h}"), s);

        // A second one, reported by count only (e.g. at connect).
        dead.count = 2;
        update(&mut app, Msg::DeadLetters(dead.clone()));
        let s = screen(&app);
        assert!(s.contains("☠ 2 held events dead-lettered"), "{s}");
        // Both retried or dropped (`whtunnel held`): nothing is marked.
        dead.ids.clear();
        dead.count = 0;
        update(&mut app, Msg::DeadLetters(dead));
        let s = screen(&app);
        assert!(!s.contains('☠'), "{s}");
    }
}

#[test]
fn the_details_of_a_dead_lettered_delivery_say_so() {
    let mut app = held_app(100, 30);
    let mut dead = DeadLetters::default();
    dead.add("evt_2".into(), 1);
    update(&mut app, Msg::DeadLetters(dead));
    // Newest first: #6 is selected, #2 is four rows down.
    for _ in 0..4 {
        update(&mut app, ch('j'));
    }
    let fx = update(&mut app, key(KeyCode::Enter));
    assert_eq!(fx, vec![Effect::LoadDetail(2)]);
    let mut ex = exchange(2, "application/json", b"{}");
    ex.relay_event_id = Some("evt_2".into());
    update(&mut app, Msg::DetailLoaded(Box::new(ex)));
    let s = screen(&app);
    let title = s.lines().find(|l| l.contains(" #2 ")).unwrap_or_default();
    assert!(title.contains("☠ dead-lettered on the relay"), "{s}");
}

/// A store with nothing in it: the session test is about the watches.
struct Empty;

impl Source for Empty {
    fn list(&self, _: usize) -> Result<Vec<ExchangeSummary>, String> {
        Ok(vec![])
    }
    fn get(&self, _: ExchangeId) -> Result<Option<Exchange>, String> {
        Ok(None)
    }
    fn max_id(&self) -> Result<ExchangeId, String> {
        Ok(0)
    }
    fn list_after(&self, _: ExchangeId, _: usize) -> Result<Vec<ExchangeSummary>, String> {
        Ok(vec![])
    }
}

#[test]
fn the_session_follows_the_agents_backlog_and_dead_letters() {
    let (_etx, erx) = broadcast::channel::<CaptureEvent>(8);
    let (_stx, srx) = watch::channel(ConnectionStatus::Connected {
        public_url: "https://relay.example/t/demo".into(),
        held: 3,
    });
    let (rtx, _rrx) = mpsc::channel(1);
    let (btx, brx) = watch::channel(3u64);
    let (dtx, drx) = watch::channel(DeadLetters::default());
    let mut session = Session::new(app(), Empty, erx, srx, rtx).with_held(Some(brx), Some(drx));
    session.pump();
    assert_eq!(session.app.drain.as_ref().map(|d| d.left), Some(3));
    btx.send_replace(2);
    dtx.send_modify(|d| d.add("evt_9".into(), 1));
    session.poll_channels();
    session.pump();
    assert_eq!(session.app.drain.as_ref().map(|d| d.left), Some(2));
    assert_eq!(session.app.dead.count, 1);
    assert!(session.app.dead.ids.contains(&"evt_9".to_string()));
    btx.send_replace(0);
    session.poll_channels();
    session.pump();
    assert_eq!(session.app.drain.as_ref().map(|d| d.left), Some(0));
    assert!(screen(&session.app).contains("held events: all delivered"));
}
