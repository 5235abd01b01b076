#![allow(clippy::unwrap_used)]
//! Held events of a cluster of relays (`relay --cluster`) with the
//! semantics of one relay: the held API (`whtunnel held list|retry|drop`)
//! on any relay for events held anywhere, dead letters, strict order, and
//! a live exchange whose agent drops mid-request. Real `nats-server`,
//! in-process relays and agents, loopback only.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::nats::{self, one_nats, NatsNode};
use common::proxy::Proxy;
use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use whtunnel::relay::RelayConfig;

const OTHER: &str = "other-token";

/// A clustered relay that takes two tokens (two users of one relay).
fn clustered(nats: &[String]) -> RelayConfig {
    let mut config = nats::clustered(nats);
    config.tokens = whtunnel::relay::Tokens::new([TOKEN, OTHER]);
    config
}

/// Makes `name` a known tunnel of the cluster whose agent is away: an
/// agent connects to `relay`, then stops.
async fn known_offline(relay: &RelayHandle, name: &str, app: &App) {
    let agent = start_agent(&relay.base, AgentOptions::new(name, app)).await;
    assert!(
        agent.public_url.starts_with(&relay.base),
        "{}",
        agent.public_url
    );
    agent.stop.cancel();
    let mut agent = agent;
    let _ = tokio::time::timeout(Duration::from_secs(15), &mut agent.task).await;
}

/// Messages in JetStream stream `stream`.
async fn stream_messages(node: &NatsNode, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(node.url()).await.unwrap());
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// One request to relay `base`'s held API: status and body text.
async fn api(base: &str, method: Method, path: &str, token: &str) -> (StatusCode, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{base}/_whtunnel/held/{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// Lists `name` through relay `base` until `done` holds for the listing.
async fn list_until(
    base: &str,
    name: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (s, body) = api(base, Method::GET, name, TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if done(&v) {
            return v;
        }
        assert!(started.elapsed() < within, "listing never matched: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An app that breaks off every request to `/poison...` while `poisoned`
/// (closes the connection without answering) and answers the rest 200.
/// Records `path?query` of each request, with `ok:` before answered ones.
async fn poison_app(
    poisoned: Arc<AtomicBool>,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (s, poisoned) = (s.clone(), poisoned.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (s, poisoned) = (s.clone(), poisoned.clone());
                        async move {
                            let path = req.uri().to_string();
                            let _ = req.into_body().collect().await;
                            if path.starts_with("/poison") && poisoned.load(Ordering::SeqCst) {
                                s.lock().unwrap().push(path);
                                return Err("broken handler");
                            }
                            s.lock().unwrap().push(format!("ok:{path}"));
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

/// A poison event is dead-lettered by the relay delivering it, while the
/// rest are delivered; any relay of the cluster lists, retries and drops
/// the tunnel's events for its own token only, and `whtunnel held list`
/// works against any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_retried_and_dropped_on_any_relay() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let config = || {
        let mut c = clustered(&urls);
        c.hold_delivery.max_failures = 2;
        c.hold_delivery.retry_min = Duration::from_millis(50);
        c.hold_delivery.retry_max = Duration::from_secs(1);
        c
    };
    let a = start_relay(config()).await;
    let b = start_relay(config()).await;
    let c = start_relay(config()).await;
    let placeholder = App::start().await;
    known_offline(&b, "pois", &placeholder).await;

    let mut ids = std::collections::HashMap::new();
    for path in ["/ok0", "/poison?n=1", "/ok1", "/poison?n=2", "/gone"] {
        let (s, h, body) = send(Method::POST, &format!("{}/t/pois{path}", a.base), &[], "x").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{path}: {body:?}");
        ids.insert(path, h["whtunnel-event-id"].to_str().unwrap().to_string());
    }

    // Held (not dead) events: listed by another relay, dropped by a third.
    let v = list_until(&b.base, "pois", Duration::from_secs(5), |v| {
        v["pending"] == 5
    })
    .await;
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 5, "{v}");
    assert_eq!(events[1]["path"], "/poison?n=1");
    assert_eq!(events[1]["event_id"], ids["/poison?n=1"].as_str());
    assert!(events.iter().all(|e| e["dead"] == false), "{v}");
    let gone = &ids["/gone"];
    let (s, body) = api(&c.base, Method::DELETE, &format!("pois/{gone}"), TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = api(&c.base, Method::DELETE, &format!("pois/{gone}"), TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The agent comes back on C with an app that breaks off the poison.
    let poisoned = Arc::new(AtomicBool::new(true));
    let (addr, seen) = poison_app(poisoned.clone()).await;
    let mut opts = AgentOptions::new("pois", &placeholder);
    opts.target = addr.to_string();
    let agent = start_agent(&c.base, opts).await;
    assert!(
        agent.public_url.starts_with(&c.base),
        "{}",
        agent.public_url
    );
    let v = list_until(&a.base, "pois", Duration::from_secs(20), |v| {
        v["pending"] == 0 && v["dead"] == 2
    })
    .await;
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{v}");
    for (e, path) in events.iter().zip(["/poison?n=1", "/poison?n=2"]) {
        assert_eq!(e["dead"], true, "{v}");
        assert_eq!(e["path"], path, "{v}");
        assert_eq!(e["event_id"], ids[path].as_str(), "{v}");
        assert!(e["attempts"].as_u64().unwrap() >= 2, "{v}");
        assert!(
            e["last_error"]
                .as_str()
                .unwrap()
                .contains("broke the connection off"),
            "{v}"
        );
    }
    let got = seen.lock().unwrap().clone();
    assert!(got.contains(&"ok:/ok0".to_string()), "{got:?}");
    assert!(got.contains(&"ok:/ok1".to_string()), "{got:?}");
    assert!(!got.iter().any(|p| p.contains("gone")), "{got:?}");
    // The agent was told, by the relay delivering to it.
    let mut dead = agent.dead_letters.clone();
    let told = tokio::time::timeout(Duration::from_secs(5), dead.wait_for(|d| d.count == 2))
        .await
        .is_ok();
    assert!(told, "the agent never heard: {:?}", *dead.borrow());
    assert!(dead.borrow().ids.contains(&ids["/poison?n=1"]));
    assert_eq!(stream_messages(&node, "whtunnel_held").await, 0);

    // `whtunnel held list` against yet another relay than the holder's.
    let cli = |token: &str| {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(["held", "list", "--relay", &b.base, "--name", "pois"])
            .env("WHTUNNEL_TOKEN", token)
            .env_remove("WHTUNNEL_RELAY");
        async move { cmd.output().await.unwrap() }
    };
    let out = cli(TOKEN).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("0 held, 2 dead-lettered\n"), "{stdout}");
    assert!(stdout.contains("POST /poison?n=2"), "{stdout}");
    let out = cli(OTHER).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");

    // Another accepted token, or none, sees and changes nothing.
    let p1 = ids["/poison?n=1"].clone();
    let p2 = ids["/poison?n=2"].clone();
    let (s, _) = api(&a.base, Method::GET, "pois", OTHER).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api(&a.base, Method::GET, "pois", "wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api(&a.base, Method::POST, &format!("pois/{p1}/retry"), OTHER).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api(&b.base, Method::DELETE, &format!("pois/{p2}"), OTHER).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(stream_messages(&node, "whtunnel_dead").await, 2);

    // The handler is fixed: a retry through A is delivered by C.
    poisoned.store(false, Ordering::SeqCst);
    let (s, body) = api(&a.base, Method::POST, &format!("pois/{p1}/retry"), TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = api(&a.base, Method::POST, &format!("pois/{p1}/retry"), TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer dead-lettered");
    let started = Instant::now();
    while !seen.lock().unwrap().contains(&"ok:/poison?n=1".to_string()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the retried event never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    list_until(&c.base, "pois", Duration::from_secs(5), |v| {
        v["pending"] == 0 && v["dead"] == 1
    })
    .await;
    // Dropped through B: gone everywhere.
    let (s, body) = api(&b.base, Method::DELETE, &format!("pois/{p2}"), TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _) = api(&b.base, Method::DELETE, &format!("pois/{p2}"), TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let v = list_until(&a.base, "pois", Duration::from_secs(5), |v| {
        v["pending"] == 0 && v["dead"] == 0
    })
    .await;
    assert!(v["events"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(stream_messages(&node, "whtunnel_dead").await, 0);
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got.iter().filter(|p| *p == "ok:/poison?n=1").count(),
        1,
        "{got:?}"
    );
    assert!(!got.contains(&"ok:/poison?n=2".to_string()), "{got:?}");
}

/// Strict order across relays: a backlog held through two relays is
/// delivered one at a time in arrival order, and a webhook sent while it
/// drains (through the relay without the agent) queues behind it (202)
/// instead of overtaking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_order_holds_across_relays() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let config = || {
        let mut c = clustered(&urls);
        c.hold_delivery.order = whtunnel::relay::HoldOrder::Strict;
        c
    };
    let a = start_relay(config()).await;
    let b = start_relay(config()).await;
    let app = App::start().await;
    known_offline(&b, "inorder", &app).await;
    let n = 20;
    for i in 0..n {
        let relay = if i % 2 == 0 { &a } else { &b };
        // Early events are slow: in flight together, later ones overtake.
        let delay = if i < 8 { "150" } else { "0" };
        let (s, _, body) = send(
            Method::POST,
            &format!("{}/t/inorder/e?n={i}", relay.base),
            &[("x-test-delay-ms", delay)],
            format!("{i}"),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{i}: {body:?}");
    }
    let _agent = start_agent(&b.base, AgentOptions::new("inorder", &app)).await;
    // New traffic while the backlog drains, through the relay without the
    // agent: it waits its turn.
    let (s, _, body) = send(
        Method::POST,
        &format!("{}/t/inorder/e?n={n}", a.base),
        &[],
        format!("{n}"),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body:?}");
    wait_for_seen(&app, n + 1, Duration::from_secs(20)).await;
    let order: Vec<String> = app.seen().iter().map(|s| s.uri.clone()).collect();
    let want: Vec<String> = (0..=n).map(|i| format!("/e?n={i}")).collect();
    assert_eq!(order, want, "arrival order at the app");
    let started = Instant::now();
    while stream_messages(&node, "whtunnel_held").await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Backlog gone: live again, with the app's own answer.
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/inorder/live", a.base),
        &[("x-test-status", "201")],
        "l",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
}

/// As on one relay: a live webhook whose agent's link drops while the app
/// works on it is held (202, its body was complete) instead of answered
/// 502, and delivered once the agent is back, reaching the app once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_exchange_that_loses_its_agent_is_held() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let a = start_relay(clustered(&urls)).await;
    let b = start_relay(clustered(&urls)).await;
    let app = App::start().await;
    let proxy = Proxy::start(b.addr).await;
    let agent_dir = tempfile::tempdir().unwrap();
    let rec = recorder(agent_dir.path());
    let mut opts = AgentOptions::new("midway", &app);
    opts.recorder = Some(rec.clone());
    opts.data_dir = Some(agent_dir.path().to_path_buf());
    opts.agent_id = Some("midway-agent".into());
    let agent = start_agent(&proxy.url(), opts).await;
    assert!(
        !agent.public_url.starts_with("refused"),
        "{}",
        agent.public_url
    );

    // Sent to A, carried to B; the app holds it; the link drops.
    let url = format!("{}/t/midway/x", a.base);
    let sender =
        tokio::spawn(
            async move { send(Method::POST, &url, &[("x-test-hold", "1")], "once").await },
        );
    wait_for_seen(&app, 1, Duration::from_secs(5)).await;
    proxy.sever();
    let (s, h, body) = sender.await.unwrap();
    assert_eq!(s, StatusCode::ACCEPTED, "{body:?}");
    let event_id = h["whtunnel-event-id"].to_str().unwrap().to_string();

    // The agent is back at once and gets the held copy; it waits for the
    // first call, which the app then answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.release();
    let started = Instant::now();
    while stream_messages(&node, "whtunnel_held").await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the held copy was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.seen().len(), 1, "the app got the event once");
    let first = rec.find_relay_event(&event_id).await.expect("recorded");
    assert_eq!(first.status, Some(200));
    drop(agent);
}

/// Strict order: a held event that fails is retried before anything after
/// it is sent (JetStream keeps a negatively acknowledged message pending,
/// and the consumer allows one pending message).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_strict_order_a_failing_event_is_not_overtaken() {
    let (_dir, node) = one_nats().await;
    let urls = vec![node.url()];
    let mut config = clustered(&urls);
    config.hold_delivery.order = whtunnel::relay::HoldOrder::Strict;
    config.hold_delivery.max_failures = 5;
    config.hold_delivery.retry_min = Duration::from_millis(300);
    let a = start_relay(config).await;
    let placeholder = App::start().await;
    known_offline(&a, "firm", &placeholder).await;
    for path in ["/poison?n=0", "/ok1", "/ok2"] {
        let (s, _, body) = send(Method::POST, &format!("{}/t/firm{path}", a.base), &[], "x").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{path}: {body:?}");
    }
    let poisoned = Arc::new(AtomicBool::new(true));
    let (addr, seen) = poison_app(poisoned.clone()).await;
    let mut opts = AgentOptions::new("firm", &placeholder);
    opts.target = addr.to_string();
    let _agent = start_agent(&a.base, opts).await;
    // Two failed tries (300 ms, then 600 ms apart), then the app is fixed.
    let started = Instant::now();
    while seen.lock().unwrap().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    poisoned.store(false, Ordering::SeqCst);
    while seen.lock().unwrap().len() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "/poison?n=0",
            "/poison?n=0",
            "ok:/poison?n=0",
            "ok:/ok1",
            "ok:/ok2"
        ],
        "nothing overtakes the failing event"
    );
    let started = Instant::now();
    while stream_messages(&node, "whtunnel_held").await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Strict order when JetStream cannot say whether a backlog is waiting
/// (NATS down): a live webhook is not forwarded past events the relay
/// could not see; the sender gets a refusal to retry, and the app nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_strict_order_an_unknown_backlog_is_not_overtaken() {
    let (_dir, mut node) = one_nats().await;
    let urls = vec![node.url()];
    let mut config = clustered(&urls);
    config.hold_delivery.order = whtunnel::relay::HoldOrder::Strict;
    let a = start_relay(config).await;
    let app = App::start().await;
    let _agent = start_agent(&a.base, AgentOptions::new("blind", &app)).await;
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/blind/before", a.base),
        &[],
        "x",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "live while the backlog is known empty");
    node.kill().await;
    let started = Instant::now();
    let (s, headers, body) =
        send(Method::POST, &format!("{}/t/blind/after", a.base), &[], "y").await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "refused, not forwarded: {body:?}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // Within the relay's own bound, not NATS's request timeouts (10 s each),
    // so senders with a 10 s timeout see the 503.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused after {:?}",
        started.elapsed()
    );
    let seen: Vec<String> = app.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        seen,
        ["/before"],
        "the app got nothing past the unknown backlog"
    );
}
