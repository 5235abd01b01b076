//! The agent's link to the relay: refusals, takeover, reconnects after a
//! relay restart, dead-peer detection, draining on shutdown, streaming in
//! bounded memory, and protocol headers an app cannot forge.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::Proxy;
use common::*;
use http::{Method, StatusCode};
use tokio::net::TcpStream;
use whtunnel::agent::ConnectionStatus;
use whtunnel::tunnel::protocol::PROTOCOL_VERSION;

#[tokio::test]
async fn wrong_token_is_refused_and_nothing_routes() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let mut opts = AgentOptions::new("tok", &app);
    opts.token = "wrong".into();
    let mut agent = start_agent(&relay.base, opts).await;
    assert!(
        agent.public_url.starts_with("refused:"),
        "{}",
        agent.public_url
    );
    assert!(
        agent.public_url.contains("token refused"),
        "{}",
        agent.public_url
    );
    let result = tokio::time::timeout(Duration::from_secs(5), &mut agent.task)
        .await
        .expect("a refused agent stops by itself")
        .unwrap();
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("401") && err.contains("token refused"),
        "{err}"
    );
    let (s, _, _) = send(Method::POST, &format!("{}/t/tok/x", relay.base), &[], "{}").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn a_held_name_is_refused_unless_taken_over() {
    let app1 = App::start().await;
    let app2 = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let _first = start_agent(&relay.base, AgentOptions::new("dup", &app1)).await;
    let second = start_agent(&relay.base, AgentOptions::new("dup", &app2)).await;
    assert!(second.public_url.contains("409"), "{}", second.public_url);
    assert!(
        second.public_url.contains("--takeover"),
        "{}",
        second.public_url
    );
    send(Method::POST, &format!("{}/t/dup/x", relay.base), &[], "{}").await;
    assert_eq!((app1.seen().len(), app2.seen().len()), (1, 0));

    // Takeover moves the tunnel to the new agent.
    let mut opts = AgentOptions::new("dup", &app2);
    opts.takeover = true;
    let third = start_agent(&relay.base, opts).await;
    assert!(third.public_url.ends_with("/t/dup"), "{}", third.public_url);
    send(Method::POST, &format!("{}/t/dup/x", relay.base), &[], "{}").await;
    assert_eq!((app1.seen().len(), app2.seen().len()), (1, 1));
}

#[tokio::test]
async fn protocol_mismatch_gets_a_clear_refusal() {
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let ours = format!("protocol {PROTOCOL_VERSION}");
    // "1": an agent from before the compact request metadata.
    for theirs in ["99", "1"] {
        let (status, _, body) = send(
            Method::GET,
            &format!("{}/_whtunnel/agent", relay.base),
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("whtunnel-protocol", theirs),
                ("whtunnel-name", "x"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(&ours)
                && text.contains(&format!("sent {theirs};"))
                && text.contains("run the same whtunnel version on both ends")
                && !text.trim_end().contains('\n'),
            "{text}"
        );
    }
    // A bad token is refused before any upgrade.
    let (status, _, _) = send(
        Method::GET,
        &format!("{}/_whtunnel/agent", relay.base),
        &[
            ("authorization", "Bearer nope"),
            ("whtunnel-protocol", &PROTOCOL_VERSION.to_string()),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Polls until a request through the tunnel gets an answer from the app.
async fn wait_until_forwarding(url: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let client = client();
        let req = http::Request::post(url)
            .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        if let Ok(resp) = client.request(req).await {
            if resp.headers().contains_key("x-app") {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn agent_reconnects_after_relay_restart() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let addr = relay.addr;
    let agent = start_agent(&relay.base, AgentOptions::new("again", &app)).await;
    let url = format!("{}/t/again/x", relay.base);
    assert!(wait_until_forwarding(&url, Duration::from_secs(1))
        .await
        .is_some());

    relay.stop().await;
    let mut status = agent.status.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| matches!(s, ConnectionStatus::Reconnecting { .. })),
    )
    .await
    .expect("the agent notices the relay is gone")
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Same address again (the port was chosen by the OS the first time).
    let relay = start_relay(relay_config(&addr.to_string())).await;
    let took = wait_until_forwarding(&url, Duration::from_secs(10))
        .await
        .expect("traffic flows again after the relay restart");
    eprintln!("first forwarded request {took:?} after the relay was back");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_detected_within_15_seconds() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    // Probes sent to a link that is dying must not wait 30 s for an answer.
    config.response_timeout = Duration::from_secs(1);
    let relay = start_relay(config).await;
    let proxy = Proxy::start(relay.addr).await;
    let agent = start_agent(&proxy.url(), AgentOptions::new("quiet", &app)).await;
    let url = format!("{}/t/quiet/x", relay.base);
    assert!(wait_until_forwarding(&url, Duration::from_secs(1))
        .await
        .is_some());

    proxy.black_hole();
    let started = Instant::now();
    let mut status = agent.status.clone();
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| matches!(s, ConnectionStatus::Reconnecting { .. })),
    )
    .await
    .expect("the agent notices the silent relay within 15 s")
    .unwrap();
    let agent_took = started.elapsed();
    // The relay drops the tunnel too: its URL answers 404 again.
    loop {
        let (s, _, _) = send(Method::POST, &url, &[], "{}").await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "relay still routes to a dead agent"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "agent noticed after {agent_took:?}, relay after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn relay_shutdown_drains_in_flight_exchanges() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("drain", &app)).await;
    let url = format!("{}/t/drain/x", relay.base);
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                send(Method::POST, &url, &[("x-test-delay-ms", "1200")], "{}").await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    relay.stop.cancel();
    for t in in_flight {
        let (s, _, _) = t.await.unwrap();
        assert_eq!(
            s,
            StatusCode::OK,
            "in-flight exchange finished during shutdown"
        );
    }
    tokio::time::timeout(Duration::from_secs(5), relay.task)
        .await
        .expect("relay exits after draining")
        .unwrap()
        .unwrap();
    assert!(stopped_at.elapsed() >= Duration::from_millis(700));
    // And it no longer accepts.
    assert!(TcpStream::connect(relay.addr).await.is_err());
}

#[tokio::test]
async fn a_100_mib_body_streams_in_bounded_memory() {
    use futures_util::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.max_body = 200 << 20;
    let relay = start_relay(config).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("huge", &app)).await;

    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 100 << 20;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let mut expected = sha2::Sha256::default();
    for _ in 0..TOTAL / CHUNK {
        sha2::Digest::update(&mut expected, &chunk);
    }
    let expected: [u8; 32] = sha2::Digest::finalize(expected).into();

    let baseline = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let c = chunk.clone();
    let frames = stream::iter(
        (0..TOTAL / CHUNK).map(move |_| Ok::<_, std::io::Error>(Frame::data(c.clone()))),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::post(format!("{}/t/huge/upload", relay.base))
        .header("content-length", TOTAL.to_string())
        .body(StreamBody::new(frames))
        .unwrap();
    let started = Instant::now();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let took = started.elapsed();
    sampler.abort();
    let seen = app.seen();
    assert_eq!(seen[0].body_len, TOTAL as u64);
    assert_eq!(seen[0].body_sha256, expected, "100 MiB arrived byte-exact");
    let growth_mib = (peak.load(std::sync::atomic::Ordering::Relaxed) - baseline) as f64 / 1024.0;
    eprintln!("100 MiB through the tunnel in {took:?}; RSS growth {growth_mib:.1} MiB (relay + agent + app + sender in one process)");
    // The test app keeps the first 16 MiB it receives; everything else
    // (relay, agent, sender) must stay bounded by windows and buffers.
    assert!(growth_mib < 16.0 + 32.0, "RSS grew {growth_mib:.1} MiB");
}

#[tokio::test]
async fn the_same_agent_replaces_its_own_stale_session() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let proxy = Proxy::start(relay.addr).await;
    let mut opts = AgentOptions::new("mine", &app);
    opts.agent_id = Some("agent-1".into());
    let _old = start_agent(&proxy.url(), opts).await;
    // The old link goes silent; the relay has not noticed yet.
    proxy.black_hole();

    // Another agent is refused...
    let mut other = AgentOptions::new("mine", &app);
    other.agent_id = Some("agent-2".into());
    let refused = start_agent(&relay.base, other).await;
    assert!(refused.public_url.contains("409"), "{}", refused.public_url);
    // ...but the same agent, back after a blip, takes its name back at once.
    let mut again = AgentOptions::new("mine", &app);
    again.agent_id = Some("agent-1".into());
    let back = start_agent(&relay.base, again).await;
    assert_eq!(back.public_url, format!("{}/t/mine", relay.base));
    let (s, _, _) = send(Method::POST, &format!("{}/t/mine/x", relay.base), &[], "{}").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn an_app_cannot_forge_protocol_headers() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("forge", &app)).await;
    let (s, h, _) = send(
        Method::POST,
        &format!("{}/t/forge/x", relay.base),
        &[("x-test-respond-header", "whtunnel-ack=1")],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!h.contains_key("whtunnel-ack"), "{h:?}");
    assert_eq!(h["x-app"], "yes");
}
