//! The standing notice: what [`notice::follow`] says as the app comes and
//! goes, and how the status line shows it (80×24 and 160×40).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::fixtures::*;
use super::render::{connected, screen};
use crate::agent::listener::{AppState, EmbeddedRelay};
use crate::capture::{CaptureEvent, Outcome};
use crate::forward::Target;
use crate::inspect::notice;
use crate::inspect::state::{update, Msg};
use crate::inspect::Theme;

const APP_DOWN: &str = "app: nothing listening on localhost:3000";

fn relay_moved() -> String {
    let addr: SocketAddr = "127.0.0.1:41234".parse().unwrap();
    let asked: SocketAddr = "127.0.0.1:8787".parse().unwrap();
    notice::fallback_line(addr, asked)
}

#[test]
fn lines_say_what_and_how_to_fix() {
    assert_eq!(
        relay_moved(),
        "embedded relay on 127.0.0.1:41234: 8787 was taken, the public URL is not the usual \
         one (--listen to pick)"
    );
    assert_eq!(notice::app_down_line("localhost:3000"), APP_DOWN);
    assert_eq!(notice::compose(None, None), "");
    assert_eq!(
        notice::compose(Some("a"), Some("b")),
        "a\nb",
        "both facts at once"
    );
}

/// The first lines of the screen with `banner` as the agent's notice.
fn top(w: u16, h: u16, banner: &str) -> String {
    let mut app = app_with(Theme::COLOR, w, h);
    connected(&mut app);
    feed(&mut app, mixed());
    update(&mut app, Msg::Banner(banner.to_string()));
    screen(&app).lines().take(6).collect::<Vec<_>>().join("\n")
}

#[test]
fn status_line_shows_the_notice_80x24() {
    let both = notice::compose(Some(APP_DOWN), Some(&relay_moved()));
    let s = top(80, 24, &both);
    assert!(s.contains("app: nothing listening"), "{s}");
    insta::assert_snapshot!(s);
}

#[test]
fn status_line_shows_the_notice_160x40() {
    let both = notice::compose(Some(APP_DOWN), Some(&relay_moved()));
    let s = top(160, 40, &both);
    assert!(s.contains(APP_DOWN), "{s}");
    assert!(s.contains("8787 was taken"), "{s}");
    insta::assert_snapshot!(s);
}

/// A loopback port nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn stored(outcome: Outcome) -> CaptureEvent {
    let mut s = summary(1, "POST", "/", None);
    s.outcome = Some(outcome);
    if outcome == Outcome::Answered {
        s.status = Some(200);
    }
    CaptureEvent::Stored(s)
}

async fn next(rx: &mut watch::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the notice changes within 10 s")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn notice_clears_when_the_app_starts_listening() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    let target: Target = addr.port().to_string().parse().unwrap();
    // The start-up probe said down; the app has started since.
    let (_state_tx, state) = watch::channel(AppState::NotListening {
        why: "connection refused".into(),
    });
    let relay = EmbeddedRelay {
        addr: "127.0.0.1:41234".parse().unwrap(),
        fallback_from: Some("127.0.0.1:8787".parse().unwrap()),
    };
    let mut rx = notice::follow(state, None, target.clone(), Some(relay));
    let first = rx.borrow_and_update().clone();
    assert_eq!(
        first,
        notice::compose(
            Some(&notice::app_down_line(target.authority())),
            Some(&relay_moved())
        )
    );
    // The re-probe connects: only the relay's line stays.
    assert_eq!(next(&mut rx).await, relay_moved());
    drop(app);
}

#[tokio::test]
async fn notice_follows_exchanges_that_find_the_app_down_or_up() {
    let addr = closed_port().await;
    let target: Target = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    let (_state_tx, state) = watch::channel(AppState::Listening);
    let (events_tx, events) = broadcast::channel(8);
    let mut rx = notice::follow(state, Some(events), target.clone(), None);
    assert_eq!(
        *rx.borrow_and_update(),
        "",
        "nothing to say while the app is up"
    );

    events_tx.send(stored(Outcome::AppUnreachable)).unwrap();
    assert_eq!(
        next(&mut rx).await,
        notice::app_down_line(target.authority())
    );
    events_tx.send(stored(Outcome::Answered)).unwrap();
    assert_eq!(next(&mut rx).await, "");
}
