//! The relay's admin endpoint (`--admin-listen`), on a real relay process:
//! `/metrics` read with an independent Prometheus text parser
//! (`prometheus-parse`) moves with traffic, and `/healthz` turns 503 while
//! the relay drains after SIGTERM.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{Signal, Spawn};
use common::*;
use http::{Method, StatusCode};
use prometheus_parse::{Scrape, Value};

/// `whtunnel relay` with an admin endpoint on a free loopback port; returns
/// the process and the admin address (the line after the start-up line).
async fn relay_with_admin(dir: &std::path::Path) -> (common::process::Process, SocketAddr) {
    let mut relay = Spawn::relay(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            // A port alone: loopback.
            "--admin-listen",
            "0",
        ])
        .start()
        .await;
    let line = relay.next_line().await;
    let addr = line
        .strip_prefix("admin endpoint on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("admin line: {line}"))
        .parse::<SocketAddr>()
        .unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    (relay, addr)
}

/// `GET http://admin/path`: status, content type and body.
async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let (s, h, b) = send(Method::GET, &format!("http://{admin}{path}"), &[], "").await;
    let ct = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (s, ct, String::from_utf8(b.to_vec()).unwrap())
}

/// The scrape, parsed by prometheus-parse; keyed by metric name and its
/// labels (`name{k=v,...}`, sorted), histograms by name alone.
struct Metrics {
    values: HashMap<String, f64>,
    histograms: HashMap<String, Vec<(f64, f64)>>,
}

impl Metrics {
    fn get(&self, key: &str) -> f64 {
        *self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.values.keys()))
    }

    fn histogram_count(&self, name: &str) -> f64 {
        let buckets = &self.histograms[name];
        buckets
            .iter()
            .find(|(le, _)| le.is_infinite())
            .map(|(_, n)| *n)
            .unwrap()
    }
}

async fn scrape(admin: SocketAddr) -> Metrics {
    let (status, content_type, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    // prometheus-parse skips a line it cannot read: every sample line must
    // have become a sample or a histogram bucket.
    let sample_lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let mut read = 0;
    let mut values = HashMap::new();
    let mut histograms = HashMap::new();
    for s in parsed.samples {
        assert!(s.metric.starts_with("whtunnel_"), "{}", s.metric);
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                read += 1;
                values.insert(key, v);
            }
            Value::Histogram(buckets) => {
                read += buckets.len();
                histograms.insert(
                    s.metric,
                    buckets.iter().map(|b| (b.less_than, b.count)).collect(),
                );
            }
            Value::Summary(_) => panic!("no summaries expected"),
        }
    }
    assert_eq!(read, sample_lines, "every sample line parsed:\n{text}");
    Metrics { values, histograms }
}

const REQUESTS_2XX: &str = "whtunnel_requests_total{class=2xx}";
const LATENCY: &str = "whtunnel_request_duration_seconds";
const REQUEST_BYTES: &str = "whtunnel_request_body_bytes_total";
const RESPONSE_BYTES: &str = "whtunnel_response_body_bytes_total";
const AGENTS: &str = "whtunnel_connected_agents";
const HELD: &str = "whtunnel_held_events";
const HELD_BYTES: &str = "whtunnel_held_bytes";

/// Polls until `check` holds for a scrape (the relay notices a departed
/// agent when its link closes, not at once).
async fn eventually(admin: SocketAddr, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let started = Instant::now();
    loop {
        let m = scrape(admin).await;
        if check(&m) {
            return m;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, admin) = relay_with_admin(dir.path()).await;
    let app = App::start().await;

    let before = scrape(admin).await;
    assert_eq!(before.get(REQUESTS_2XX), 0.0);
    assert_eq!(before.get(AGENTS), 0.0);
    assert_eq!(before.histogram_count(LATENCY), 0.0);

    let agent = start_agent(&relay.public_url, AgentOptions::new("metered", &app)).await;
    assert!(
        agent.public_url.ends_with("/t/metered"),
        "{}",
        agent.public_url
    );
    let m = eventually(admin, "connected agents 1", |m| m.get(AGENTS) == 1.0).await;
    let accepted = m.get("whtunnel_agent_upgrades_total{result=accepted}");
    assert!(accepted >= 1.0);

    const N: usize = 7;
    let body = "x".repeat(1000);
    for i in 0..N {
        let (s, _, echoed) = send(
            Method::POST,
            &format!("{}/hook/{i}", agent.public_url),
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(echoed.len(), body.len());
    }
    let after = scrape(admin).await;
    assert_eq!(after.get(REQUESTS_2XX) - before.get(REQUESTS_2XX), N as f64);
    assert_eq!(
        after.histogram_count(LATENCY) - before.histogram_count(LATENCY),
        N as f64
    );
    assert_eq!(after.get(&format!("{LATENCY}_count")), N as f64);
    assert!(after.get(&format!("{LATENCY}_sum")) > 0.0);
    assert_eq!(after.get(REQUEST_BYTES), (N * body.len()) as f64);
    // The app echoes the body.
    assert_eq!(after.get(RESPONSE_BYTES), (N * body.len()) as f64);

    // An app error is a 5xx, a refused token an auth failure.
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/fail", agent.public_url),
        &[("x-test-status", "503")],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let mut wrong = AgentOptions::new("intruder", &app);
    wrong.token = "not-the-token".into();
    let refused = start_agent(&relay.public_url, wrong).await;
    assert!(
        refused.public_url.starts_with("refused"),
        "{}",
        refused.public_url
    );
    let m = scrape(admin).await;
    assert_eq!(m.get("whtunnel_requests_total{class=5xx}"), 1.0);
    assert!(m.get("whtunnel_agent_upgrades_total{result=unauthorized}") >= 1.0);

    // The agent leaves: the gauge goes back to 0, and webhooks for its
    // (known) tunnel are held, which the held gauges show.
    drop(agent);
    eventually(admin, "connected agents back to 0", |m| {
        m.get(AGENTS) == 0.0
    })
    .await;
    const HELD_N: usize = 3;
    for i in 0..HELD_N {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/metered/while-away/{i}", relay.public_url),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let m = scrape(admin).await;
    assert_eq!(m.get(HELD), HELD_N as f64);
    assert_eq!(m.get(HELD_BYTES), (HELD_N * body.len()) as f64);
    assert_eq!(
        m.get(REQUESTS_2XX) - after.get(REQUESTS_2XX),
        HELD_N as f64,
        "202 is a 2xx"
    );

    // The agent is back: the held events are delivered and the gauges
    // fall to 0.
    let agent = start_agent(&relay.public_url, AgentOptions::new("metered", &app)).await;
    let last = eventually(admin, "held events delivered", |m| {
        m.get(HELD) == 0.0 && m.get(HELD_BYTES) == 0.0 && m.get(AGENTS) == 1.0
    })
    .await;
    // No series per tunnel: traffic on several names added none.
    assert_eq!(
        last.values
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        before.values.keys().collect(),
    );
    drop(agent);
    relay.stop().await;
}

#[tokio::test]
async fn healthz_is_503_while_the_relay_drains_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, admin) = relay_with_admin(dir.path()).await;
    let app = App::start().await;
    let agent = start_agent(&relay.public_url, AgentOptions::new("slow", &app)).await;
    assert_eq!(
        admin_get(admin, "/healthz").await,
        (
            StatusCode::OK,
            "text/plain; charset=utf-8".into(),
            "ok\n".into()
        )
    );
    assert_eq!(admin_get(admin, "/nope").await.0, StatusCode::NOT_FOUND);

    // A slow request in flight: the app holds it until released.
    let url = format!("{}/slow", agent.public_url);
    let in_flight =
        tokio::spawn(async move { send(Method::POST, &url, &[("x-test-hold", "1")], "{}").await });
    wait_for_seen(&app, 1, Duration::from_secs(10)).await;

    relay.signal(Signal::Term);
    let started = Instant::now();
    let body = loop {
        let (s, _, body) = admin_get(admin, "/healthz").await;
        if s != StatusCode::OK {
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "/healthz still 200 five seconds after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body, "draining\n");
    // Still draining, still 503, while the request is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        admin_get(admin, "/healthz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request is still in flight"
    );

    app.release();
    let (s, _, _) = in_flight.await.unwrap();
    assert_eq!(s, StatusCode::OK, "the in-flight request finishes");
    drop(agent);
    let status = relay.wait().await;
    assert!(status.success(), "relay exits 0: {status:?}");
    // And the admin endpoint is gone with it.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}
