//! The held-event drain: a backlog is delivered several at a time while
//! live traffic goes live again, a poison event is dead-lettered instead
//! of blocking the rest, and holding is bounded relay-wide without letting
//! idle connections starve other tenants.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use whtunnel::relay::{HeldStore, RelayConfig};

fn held_relay_config(dir: &std::path::Path) -> RelayConfig {
    let mut config = relay_config("127.0.0.1:0");
    config.data_dir = Some(dir.to_path_buf());
    config
}

/// Makes `name` a known tunnel whose agent is away.
async fn known_offline(relay: &RelayHandle, name: &str, app: &App) {
    drop(start_agent(&relay.base, AgentOptions::new(name, app)).await);
    let held = relay.held.clone().unwrap();
    // The session ends when the agent's link closes: wait for it.
    let started = Instant::now();
    loop {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/{name}/probe", relay.base),
            &[],
            "",
        )
        .await;
        if s == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "agent never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The probe is held too: drop it so counts start at zero.
    let probe = held.list(name, 10).unwrap().pop().unwrap();
    assert!(held.drop_event(name, &probe.event_id).unwrap());
}

async fn hold_events(relay: &RelayHandle, name: &str, n: u32, headers: &[(&str, &str)]) {
    for i in 0..n {
        let (s, _, b) = send(
            Method::POST,
            &format!("{}/t/{name}/e?n={i}", relay.base),
            headers,
            format!(r#"{{"n":{i}}}"#),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    }
}

/// Waits until `name` has nothing pending; returns how long that took.
async fn wait_drained(held: &HeldStore, name: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while held.state(name).unwrap().pending > 0 {
        assert!(
            started.elapsed() < within,
            "{} events still held after {within:?}: {:?}",
            held.state(name).unwrap().pending,
            held.list(name, 5).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_backlog_drains_several_at_a_time() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(dir.path())).await;
    known_offline(&relay, "backlog", &app).await;
    // One at a time this takes at least 150 x 40 ms = 6 s.
    hold_events(&relay, "backlog", 150, &[("x-test-delay-ms", "40")]).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("backlog", &app)).await;
    let took = wait_drained(
        relay.held.as_ref().unwrap(),
        "backlog",
        Duration::from_secs(20),
    )
    .await;
    assert!(took < Duration::from_secs(3), "drained in {took:?}");
    assert_eq!(app.seen().len(), 150);
    // Dispatched in arrival order: the first sixteen reached the app first.
    let first: Vec<u32> = app.seen()[..16]
        .iter()
        .map(|s| s.uri.trim_start_matches("/e?n=").parse().unwrap())
        .collect();
    assert!(first.iter().all(|n| *n < 32), "{first:?}");
}

#[tokio::test]
async fn live_traffic_gets_the_apps_answer_while_the_backlog_drains() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(dir.path())).await;
    known_offline(&relay, "busy", &app).await;
    // 48 events of 300 ms each, 16 at a time: about a second of backlog.
    hold_events(&relay, "busy", 48, &[("x-test-delay-ms", "300")]).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("busy", &app)).await;
    let (s, h, _) = send(
        Method::POST,
        &format!("{}/t/busy/live", relay.base),
        &[("x-test-status", "201")],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "the app's own answer");
    assert_eq!(h["x-app"], "yes");
    let held = relay.held.clone().unwrap();
    assert!(
        held.state("busy").unwrap().pending > 0,
        "the backlog was still draining"
    );
    wait_drained(&held, "busy", Duration::from_secs(20)).await;
    assert_eq!(app.seen().len(), 49);
}

/// An app that breaks off every request to `/poison` (closes the
/// connection without answering) and answers everything else 200.
async fn poison_app() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let _ = req.into_body().collect().await;
                            s.lock().unwrap().push(path.clone());
                            if path == "/poison" {
                                return Err("broken handler");
                            }
                            Ok::<_, &str>(http::Response::new(Full::new(Bytes::from("ok"))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.hold_delivery.max_failures = 3;
    config.hold_delivery.retry_min = Duration::from_millis(50);
    config.hold_delivery.retry_max = Duration::from_secs(2);
    // Strict order, the worst case: everything waits behind the first event.
    config.hold_delivery.order = whtunnel::relay::HoldOrder::Strict;
    let relay = start_relay(config).await;
    let placeholder = App::start().await;
    known_offline(&relay, "poison", &placeholder).await;
    let (addr, seen) = poison_app().await;
    let url = |p: &str| format!("{}/t/poison{p}", relay.base);
    let (s, _, _) = send(Method::POST, &url("/ok0"), &[], "0").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, h, _) = send(Method::POST, &url("/poison"), &[], "p").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let poison_id = h["whtunnel-event-id"].to_str().unwrap().to_string();
    for i in 1..6 {
        let (s, _, _) = send(Method::POST, &url(&format!("/ok{i}")), &[], "x").await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let mut opts = AgentOptions::new("poison", &placeholder);
    opts.target = addr.to_string();
    opts.agent_id = Some("poison-agent".into());
    let agent = start_agent(&relay.base, opts).await;
    let held = relay.held.clone().unwrap();
    wait_drained(&held, "poison", Duration::from_secs(15)).await;
    let st = held.state("poison").unwrap();
    assert_eq!((st.pending, st.dead), (0, 1));
    // The agent is told, so the inspector can mark it.
    let mut dead = agent.dead_letters.clone();
    let told = tokio::time::timeout(
        Duration::from_secs(5),
        dead.wait_for(|d| d.ids.contains(&poison_id)),
    )
    .await
    .is_ok();
    assert!(told, "the agent never heard: {:?}", *dead.borrow());
    assert_eq!(dead.borrow().count, 1);
    // A new link starts from the relay's own count.
    drop(agent);
    let mut opts = AgentOptions::new("poison", &placeholder);
    opts.target = addr.to_string();
    opts.agent_id = Some("poison-agent".into());
    let again = start_agent(&relay.base, opts).await;
    let mut dead = again.dead_letters.clone();
    let counted = tokio::time::timeout(Duration::from_secs(5), dead.wait_for(|d| d.count == 1))
        .await
        .is_ok();
    assert!(counted, "count at connect: {:?}", *dead.borrow());
    let paths = seen.lock().unwrap().clone();
    let oks: Vec<_> = paths.iter().filter(|p| p.starts_with("/ok")).collect();
    assert_eq!(
        oks,
        ["/ok0", "/ok1", "/ok2", "/ok3", "/ok4", "/ok5"],
        "{paths:?}"
    );
    let list = held.list("poison", 10).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].event_id, poison_id);
    assert!(list[0].dead);
    assert!(list[0].attempts >= 3, "{:?}", list[0]);
    assert!(
        list[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("broke the connection off"),
        "{:?}",
        list[0]
    );
    // Dropped through the held API: the agent hears the list is empty.
    let req = http::Request::builder()
        .method(Method::DELETE)
        .uri(format!("{}/_whtunnel/held/poison/{poison_id}", relay.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cleared = tokio::time::timeout(Duration::from_secs(5), dead.wait_for(|d| d.count == 0))
        .await
        .is_ok();
    assert!(cleared, "after the drop: {:?}", *dead.borrow());
}

#[tokio::test]
async fn idle_connections_announcing_large_bodies_do_not_block_holding_for_others() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(held_relay_config(dir.path())).await;
    known_offline(&relay, "victim", &app).await;
    known_offline(&relay, "other", &app).await;
    // Eleven connections announce ten 25 MiB bodies and one of 6 MiB (the
    // relay's whole 256 MiB in-memory budget) and send nothing.
    let mut idle = Vec::new();
    for i in 0..11 {
        let len = if i < 10 { 25 << 20 } else { 6 << 20 };
        let mut c = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let head = format!("POST /t/victim/x HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        idle.push(c);
    }
    let held = relay.held.clone().unwrap();
    let started = Instant::now();
    while held.state("victim").unwrap().storing < 11 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not all admitted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another tenant's 17-byte webhook is still held.
    let (s, _, b) = send(
        Method::POST,
        &format!("{}/t/other/x", relay.base),
        &[],
        "{\"type\":\"ping\"}\n",
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    drop(idle);
}

#[tokio::test]
async fn a_full_disk_and_the_relay_wide_cap_answer_503_across_tunnels() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.hold_caps.max_total_bytes = 100 * 1024;
    let relay = start_relay(config).await;
    known_offline(&relay, "one", &app).await;
    known_offline(&relay, "two", &app).await;
    let held = relay.held.clone().unwrap();

    // Relay-wide cap: the second tunnel's event would pass 100 KiB in all.
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/one/x", relay.base),
        &[],
        vec![b'a'; 60 * 1024],
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, h, b) = send(
        Method::POST,
        &format!("{}/t/two/x", relay.base),
        &[],
        vec![b'b'; 60 * 1024],
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    assert_eq!(
        String::from_utf8_lossy(&b).trim(),
        "whtunnel: the relay's held-event storage is full; retry later"
    );
    assert_eq!(held.state("two").unwrap().pending, 0);
    assert_eq!(held.total_bytes(), 60 * 1024);
    // A small one still fits.
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/two/x", relay.base),
        &[],
        vec![b'c'; 1024],
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // Disk full (simulated with SQLite's page cap, which fails inserts with
    // SQLITE_FULL as a full disk does): both tunnels get 503, nothing is
    // counted, and both recover once there is room.
    held.simulate_disk_limit(Some(1)).unwrap();
    for name in ["one", "two"] {
        let (s, h, _) = send(
            Method::POST,
            &format!("{}/t/{name}/x", relay.base),
            &[],
            vec![b'd'; 8 * 1024],
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(h.contains_key("retry-after"));
    }
    assert_eq!(held.state("one").unwrap().pending, 1);
    assert_eq!(held.state("two").unwrap().pending, 1);
    assert_eq!(held.total_bytes(), 61 * 1024);
    held.simulate_disk_limit(None).unwrap();
    for name in ["one", "two"] {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/{name}/x", relay.base),
            &[],
            vec![b'e'; 8 * 1024],
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}");
        assert_eq!(held.state(name).unwrap().pending, 2);
    }
}

/// The drain benchmark of `docs/benchmarks.md`: a backlog of
/// `WHTUNNEL_DRAIN_EVENTS` (1000) events, an app taking
/// `WHTUNNEL_DRAIN_APP_MS` (40) ms each. Run with
/// `cargo test --release --test held_drain drain_benchmark -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: run it by hand"]
async fn drain_benchmark() {
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("WHTUNNEL_DRAIN_EVENTS", 1000);
    let ms = env("WHTUNNEL_DRAIN_APP_MS", 40).to_string();
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.limits.rate_limit = 0.0;
    if std::env::var("WHTUNNEL_DRAIN_STRICT").is_ok() {
        config.hold_delivery.order = whtunnel::relay::HoldOrder::Strict;
    }
    let relay = start_relay(config).await;
    known_offline(&relay, "bench", &app).await;
    hold_events(&relay, "bench", n, &[("x-test-delay-ms", &ms)]).await;
    let started = Instant::now();
    let _agent = start_agent(&relay.base, AgentOptions::new("bench", &app)).await;
    wait_drained(
        relay.held.as_ref().unwrap(),
        "bench",
        Duration::from_secs(3600),
    )
    .await;
    let took = started.elapsed();
    println!(
        "drain: {n} events, app {ms} ms: {:.2} s ({:.0} events/s)",
        took.as_secs_f64(),
        f64::from(n) / took.as_secs_f64()
    );
    assert_eq!(app.seen().len(), n as usize);
}

#[tokio::test]
async fn the_held_api_lists_retries_and_drops_only_the_tokens_own_tunnel() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = held_relay_config(dir.path());
    config.tokens = whtunnel::relay::Tokens::new([TOKEN, "other-token"]);
    let relay = start_relay(config).await;
    known_offline(&relay, "mine", &app).await;
    hold_events(&relay, "mine", 3, &[]).await;
    let held = relay.held.clone().unwrap();
    // The first one has been failing: dead-lettered.
    let first = held.next("mine").unwrap().unwrap();
    assert!(held
        .failed(&first, "the app broke \u{1b}[2J off", true, 1)
        .unwrap());

    let api = |method: Method, path: &str, token: &str| {
        let url = format!("{}/_whtunnel/held/{path}", relay.base);
        let auth = format!("Bearer {token}");
        async move {
            let req = http::Request::builder()
                .method(method)
                .uri(url)
                .header("authorization", auth)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = client().request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    let (s, body) = api(Method::GET, "mine", TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["pending"].as_u64(), v["dead"].as_u64()),
        (Some(2), Some(1))
    );
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["dead"], true);
    assert_eq!(events[0]["last_error"], "the app broke \u{1b}[2J off");
    assert_eq!(events[1]["path"], "/e?n=1");

    // The same through `whtunnel held list`: escaped, one row per event.
    let cli = |args: &[&str], token: &str| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(args)
            .args(["--relay", &relay.base, "--name", "mine"])
            .env("WHTUNNEL_TOKEN", token)
            .env_remove("WHTUNNEL_RELAY");
        async move { cmd.output().await.unwrap() }
    };
    let out = cli(&["held", "list"], TOKEN).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("2 held, 1 dead-lettered\n"), "{stdout}");
    assert!(stdout.contains("the app broke \\x1b[2J off"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no raw escape reaches the terminal"
    );
    assert!(stdout.contains("POST /e?n=1"), "{stdout}");
    let out = cli(&["held", "list", "--json"], TOKEN).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    let out = cli(&["held", "list"], "other-token").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");

    // Another accepted token, or none, sees nothing of it.
    let (s, _) = api(Method::GET, "mine", "other-token").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api(Method::GET, "mine", "wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let id = first.event.event_id.clone();
    let (s, _) = api(Method::DELETE, &format!("mine/{id}"), "other-token").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, body) = api(Method::POST, &format!("mine/{id}/retry"), TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let st = held.state("mine").unwrap();
    assert_eq!((st.pending, st.dead), (3, 0));
    let (s, _) = api(Method::POST, &format!("mine/{id}/retry"), TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer dead-lettered");
    let (s, _) = api(Method::DELETE, &format!("mine/{id}"), TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(held.state("mine").unwrap().pending, 2);
    let (s, _) = api(Method::DELETE, &format!("mine/{id}"), TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
