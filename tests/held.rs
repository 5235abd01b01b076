//! Held events: webhooks for a known tunnel whose agent is away are stored
//! durably (202) and delivered in order when it returns.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::proxy::Proxy;
use common::*;
use http::{Method, StatusCode};
use whtunnel::relay::{Caps, OfflinePolicy};

fn held_relay_config(dir: &std::path::Path) -> whtunnel::relay::RelayConfig {
    let mut config = relay_config("127.0.0.1:0");
    config.data_dir = Some(dir.to_path_buf());
    config
}

/// The body of webhook `i`: JSON with a binary-ish tail, distinct per event.
fn event_body(i: u32) -> Bytes {
    let mut b = format!(r#"{{"type":"payment.settled","seq":{i},"data":"#).into_bytes();
    b.extend_from_slice(&[b'"', 0xc3, 0xa9, b'"', b'}']);
    Bytes::from(b)
}

#[tokio::test]
async fn strict_order_delivers_held_events_in_order_and_queues_new_traffic_behind_them() {
    let app = App::start().await;
    let relay_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(relay_dir.path());
    config.hold_delivery.order = whtunnel::relay::HoldOrder::Strict;
    let relay = start_relay(config).await;
    let url = format!("{}/t/laptop/hooks", relay.base);

    // Never seen: unknown.
    let (s, _, _) = send(Method::POST, &url, &[], "{}").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Known once an agent held it; then the laptop closes.
    let agent = start_agent(&relay.base, AgentOptions::new("laptop", &app)).await;
    drop(agent);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut ids = Vec::new();
    for i in 0..50 {
        let (s, h, b) = send(
            Method::POST,
            &format!("{url}?n={i}"),
            &[
                ("content-type", "application/json"),
                ("x-seq", &i.to_string()),
            ],
            event_body(i),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
        let id = h["whtunnel-event-id"].to_str().unwrap().to_string();
        assert!(id.starts_with("ev_"));
        ids.push(id);
    }
    assert!(app.seen().is_empty());
    assert_eq!(
        relay
            .held
            .as_ref()
            .unwrap()
            .state("laptop")
            .unwrap()
            .pending,
        50
    );

    // The agent comes back (recording, so acks mean "stored").
    let mut opts = AgentOptions::new("laptop", &app);
    opts.recorder = Some(recorder(agent_dir.path()));
    opts.data_dir = Some(agent_dir.path().to_path_buf());
    let agent = start_agent(&relay.base, opts).await;
    assert!(matches!(
        &*agent.status.borrow(),
        whtunnel::agent::ConnectionStatus::Connected { held: 50, .. }
    ));
    // New traffic right away queues behind the backlog.
    let (s, _, _) = send(
        Method::POST,
        &format!("{url}?n=50"),
        &[("x-seq", "50")],
        event_body(50),
    )
    .await;
    assert!(s == StatusCode::ACCEPTED || s == StatusCode::OK, "{s}");

    wait_for_seen(&app, 51, Duration::from_secs(10)).await;
    let seen = app.seen();
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.uri, format!("/hooks?n={i}"), "arrival order");
        assert_eq!(r.body, event_body(i as u32), "byte-exact");
        assert_eq!(r.headers["x-seq"], i.to_string());
        if i < 50 {
            assert_eq!(r.headers["content-type"], "application/json");
        }
    }
    // Acknowledged ones leave the queue.
    let held = relay.held.as_ref().unwrap().clone();
    let started = std::time::Instant::now();
    while held.state("laptop").unwrap().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "queue not drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And they are recorded with their event ids, and with the relay's
    // proof (BLAKE3 of the stored body, hashed at delivery) that the app got
    // the bytes the sender sent.
    let store = whtunnel::capture::Store::open_reader(agent_dir.path()).unwrap();
    for (i, id) in [(0, &ids[0]), (49, &ids[49])] {
        let row = store.find_by_relay_event(id).unwrap();
        let ex = store.get(row.expect("recorded").id).unwrap().unwrap();
        let sent = *blake3::hash(&event_body(i)).as_bytes();
        assert_eq!(
            ex.body_proof.relay,
            Some(whtunnel::capture::BodyDigest::Blake3(sent)),
            "{id}"
        );
        assert_eq!(whtunnel::capture::body_intact(&ex), Some(true), "{id}");
    }
    // Live again: straight through with a 200.
    let (s, _, _) = send(Method::POST, &url, &[], "{}").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn reject_policy_answers_503_with_retry_after() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.offline = OfflinePolicy::Reject;
    let relay = start_relay(config).await;
    drop(start_agent(&relay.base, AgentOptions::new("strict", &app)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, h, b) = send(
        Method::POST,
        &format!("{}/t/strict/x", relay.base),
        &[],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["retry-after"], "30");
    assert!(String::from_utf8_lossy(&b).contains("offline"));
    assert_eq!(
        relay
            .held
            .as_ref()
            .unwrap()
            .state("strict")
            .unwrap()
            .pending,
        0
    );
}

#[tokio::test]
async fn caps_and_a_full_disk_answer_503_and_the_queue_recovers() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.hold_caps = Caps {
        max_events: 3,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        ..Caps::default()
    };
    let relay = start_relay(config).await;
    drop(start_agent(&relay.base, AgentOptions::new("capped", &app)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("{}/t/capped/x", relay.base);
    for i in 0..3 {
        let (s, _, _) = send(Method::POST, &url, &[], event_body(i)).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let (s, h, _) = send(Method::POST, &url, &[], event_body(3)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "event cap");
    assert!(h.contains_key("retry-after"));

    // Byte cap: a body that would pass 1 MiB in total.
    let held = relay.held.clone().unwrap();
    assert_eq!(held.state("capped").unwrap().pending, 3);

    // Disk full: the insert fails, the sender gets 503, nothing is counted.
    let dir2 = tempfile::tempdir().unwrap();
    let relay2 = start_relay(held_relay_config(dir2.path())).await;
    drop(start_agent(&relay2.base, AgentOptions::new("disk", &app)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held2 = relay2.held.clone().unwrap();
    held2.simulate_disk_limit(Some(1)).unwrap();
    let url2 = format!("{}/t/disk/x", relay2.base);
    let (s, h, b) = send(Method::POST, &url2, &[], vec![b'x'; 64 * 1024]).await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(h.contains_key("retry-after"));
    assert_eq!(
        held2.state("disk").unwrap().pending,
        0,
        "a failed insert holds no slot"
    );
    held2.simulate_disk_limit(None).unwrap();
    let (s, _, _) = send(Method::POST, &url2, &[], vec![b'y'; 64 * 1024]).await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "the queue recovers once there is room"
    );
    assert_eq!(held2.state("disk").unwrap().pending, 1);
}

#[tokio::test]
async fn held_events_wait_while_the_app_is_down_and_arrive_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(dir.path())).await;
    // A target port with nothing listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let placeholder = App::start().await;
    let mut opts = AgentOptions::new("appdown", &placeholder);
    opts.target = format!("127.0.0.1:{port}");
    drop(start_agent(&relay.base, opts).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3 {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/appdown/x?n={i}", relay.base),
            &[],
            event_body(i),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let mut opts = AgentOptions::new("appdown", &placeholder);
    opts.target = format!("127.0.0.1:{port}");
    let _agent = start_agent(&relay.base, opts).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = relay.held.clone().unwrap();
    assert_eq!(
        held.state("appdown").unwrap().pending,
        3,
        "nothing dropped while the app is down"
    );

    // The app starts on the target port; the next retry (1 s, then 2 s) delivers.
    let app = App::start_on(port).await;
    wait_for_seen(&app, 3, Duration::from_secs(8)).await;
    // The default drain has several in flight, so arrival order may differ
    // (docs/protocol.md); each event arrives exactly once.
    let mut uris: Vec<_> = app.seen().iter().map(|s| s.uri.clone()).collect();
    uris.sort();
    assert_eq!(uris, ["/x?n=0", "/x?n=1", "/x?n=2"]);
}

#[tokio::test]
async fn a_redelivered_event_that_was_answered_is_not_sent_twice() {
    let app = App::start().await;
    let relay_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(relay_dir.path())).await;
    let addr = relay.addr;
    let rec = recorder(agent_dir.path());
    let agent_opts = |rec: &whtunnel::capture::Recorder| {
        let mut o = AgentOptions::new("dedup", &app);
        o.recorder = Some(rec.clone());
        o.data_dir = Some(agent_dir.path().to_path_buf());
        o
    };
    drop(start_agent(&relay.base, agent_opts(&rec)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, h, _) = send(
        Method::POST,
        &format!("{}/t/dedup/x", relay.base),
        &[],
        event_body(7),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let event_id = h["whtunnel-event-id"].to_str().unwrap().to_string();
    let agent = start_agent(&relay.base, agent_opts(&rec)).await;
    wait_for_seen(&app, 1, Duration::from_secs(5)).await;
    let held = relay.held.clone().unwrap();
    while held.state("dedup").unwrap().pending > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(agent);
    relay.stop().await;

    // As if the ack had been lost in a crash: the same event is queued again.
    {
        let store = whtunnel::relay::HeldStore::open(relay_dir.path(), Caps::default()).unwrap();
        store.reserve("dedup", 10).unwrap();
        store
            .insert(&whtunnel::relay::held::NewEvent {
                event_id: event_id.clone(),
                tunnel: "dedup".into(),
                method: "POST".into(),
                path: "/x".into(),
                headers: vec![],
                meta: Default::default(),
                body: event_body(7),
            })
            .unwrap();
    }
    let relay = start_relay({
        let mut c = held_relay_config(relay_dir.path());
        c.listen = addr;
        c
    })
    .await;
    let held = relay.held.clone().unwrap();
    assert_eq!(held.state("dedup").unwrap().pending, 1);
    let _agent = start_agent(&relay.base, agent_opts(&rec)).await;
    let started = std::time::Instant::now();
    while held.state("dedup").unwrap().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "duplicate never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.seen().len(), 1, "the app got the event once");
}

#[tokio::test]
async fn a_quick_reconnect_while_the_app_is_down_does_not_strand_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(dir.path())).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let placeholder = App::start().await;
    let opts = || {
        let mut o = AgentOptions::new("blip", &placeholder);
        o.target = format!("127.0.0.1:{port}");
        o
    };
    drop(start_agent(&relay.base, opts()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..2 {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/blip/x?n={i}", relay.base),
            &[],
            event_body(i),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    // The agent returns while the app is down: delivery backs off (1 s, 2 s, 4 s...).
    let first = start_agent(&relay.base, opts()).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Now the agent restarts, and the app is up. Nothing else is sent: the
    // new session alone must pick the queue up.
    drop(first);
    let app = App::start_on(port).await;
    let _second = start_agent(&relay.base, opts()).await;
    wait_for_seen(&app, 2, Duration::from_secs(4)).await;
}

#[tokio::test]
async fn a_stalled_upload_does_not_pin_the_tunnel_in_hold_mode() {
    use tokio::io::AsyncWriteExt;
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(dir.path())).await;
    drop(start_agent(&relay.base, AgentOptions::new("stall", &app)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A sender announces 1000 bytes, sends 10, and goes quiet.
    let mut stalled = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    stalled
        .write_all(b"POST /t/stall/x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("stall", &app)).await;
    // Live traffic flows as soon as the agent is back.
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/stall/live", relay.base),
        &[],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.seen().len(), 1);
    drop(stalled);
}

#[tokio::test]
async fn a_held_event_the_app_never_answers_in_time_stops_blocking_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.response_timeout = Duration::from_secs(1);
    let relay = start_relay(config).await;
    let app = App::start().await;
    drop(start_agent(&relay.base, AgentOptions::new("hangs", &app)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The app hangs on the first event (far past the response timeout).
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/hangs/hang", relay.base),
        &[("x-test-delay-ms", "30000")],
        event_body(0),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/hangs/next", relay.base),
        &[],
        event_body(1),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    let _agent = start_agent(&relay.base, AgentOptions::new("hangs", &app)).await;
    // The next event does not wait for the hanging one.
    wait_for_seen(&app, 2, Duration::from_secs(5)).await;
    let uris: Vec<_> = app.seen().iter().map(|s| s.uri.clone()).collect();
    assert!(uris.contains(&"/next".to_string()), "{uris:?}");
    // Three timed-out deliveries (1 s each, retried after 1 s and 2 s),
    // then the agent acknowledges it.
    let tries = whtunnel::forward::HELD_TIMEOUT_ATTEMPTS as usize;
    wait_for_seen(&app, tries + 1, Duration::from_secs(20)).await;
    let uris: Vec<_> = app.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        uris.iter().filter(|u| *u == "/hang").count(),
        tries,
        "{uris:?}"
    );
    let held = relay.held.clone().unwrap();
    let started = std::time::Instant::now();
    while held.state("hangs").unwrap().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "queue not emptied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_link_lost_while_the_app_works_does_not_deliver_the_event_twice() {
    let app = App::start().await;
    let relay_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(relay_dir.path())).await;
    let proxy = Proxy::start(relay.addr).await;
    let rec = recorder(agent_dir.path());
    let mut opts = AgentOptions::new("once", &app);
    opts.recorder = Some(rec.clone());
    opts.data_dir = Some(agent_dir.path().to_path_buf());
    let agent = start_agent(&proxy.url(), opts).await;
    assert!(
        !agent.public_url.starts_with("refused"),
        "{}",
        agent.public_url
    );

    // The app holds this event; the link drops while it works.
    let url = format!("{}/t/once/x", relay.base);
    let sender = tokio::spawn(async move {
        send(Method::POST, &url, &[("x-test-hold", "1")], event_body(1)).await
    });
    wait_for_seen(&app, 1, Duration::from_secs(5)).await;
    proxy.sever();
    // The relay had the whole body, so the sender is told it is held...
    let (s, h, _) = sender.await.unwrap();
    assert_eq!(s, StatusCode::ACCEPTED);
    let event_id = h["whtunnel-event-id"].to_str().unwrap().to_string();

    // ...and delivers it again once the agent is back, which it is at once,
    // while the app still works on the first copy.
    let held = relay.held.clone().unwrap();
    let started = std::time::Instant::now();
    while held.next("once").unwrap().is_none_or(|ev| ev.attempts == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the held copy was never sent again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The redelivery has reached the agent: it must wait for the first copy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.seen().len(), 1, "the redelivery waits");
    app.release();
    while held.state("once").unwrap().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the held copy was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.seen().len(), 1, "the app got the event once");
    // The app's answer to the first copy is what the capture shows.
    let first = rec.find_relay_event(&event_id).await.expect("recorded");
    assert_eq!(first.status, Some(200));
    assert_eq!(
        first.error.as_deref(),
        Some(whtunnel::forward::ERR_ANSWER_UNDELIVERED)
    );
    assert_eq!(first.outcome, Some(whtunnel::capture::Outcome::Undelivered));
}
