//! End-to-end tests of the relay's abuse limits (`relay::limits`): per-IP
//! connection cap, per-tunnel rate limit, unknown-tunnel rate limit, header
//! and body deadlines. Real relay, agent and app on loopback; the limits are
//! configured small so each test stays quick and bounded.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse_support;
mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use abuse_support::exchange;
use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn connect_from(relay: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(from), 0)).unwrap();
    socket.connect(relay).await.unwrap()
}

/// Reads until EOF or `limit`; returns the bytes and whether EOF came.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

const GET: &[u8] = b"GET /t/lim/x HTTP/1.1\r\nHost: relay\r\n\r\n";

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_once() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.limits.max_conns_per_ip = 4;
    let relay = start_relay(config).await;
    // The agent's link comes from 127.0.0.1 too, but holds its slot only
    // until the websocket upgrade: from then on hyper no longer serves it.
    let _agent = start_agent(&relay.base, AgentOptions::new("lim", &app)).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(relay.addr, "127.0.0.1").await);
    }
    // Fifth connection from 127.0.0.1: accepted, then closed with no answer.
    let mut over = connect_from(relay.addr, "127.0.0.1").await;
    let _ = over.write_all(GET).await;
    let started = Instant::now();
    let (bytes, closed) = read_until_close(&mut over, Duration::from_secs(5)).await;
    assert!(closed && bytes.is_empty(), "got {bytes:?}, closed={closed}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Another source address is not affected.
    let out = exchange(
        relay.addr,
        ip("127.0.0.2"),
        GET,
        Duration::from_millis(200),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.statuses(), [200]);

    // A freed slot is usable again.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..50 {
        let out = exchange(
            relay.addr,
            ip("127.0.0.1"),
            GET,
            Duration::from_millis(100),
            Duration::from_secs(5),
        )
        .await;
        if out.statuses() == [200] {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot freed by a closed connection is reused");
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test]
async fn a_tunnel_over_its_rate_gets_429_with_retry_after() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.limits.rate_limit = 2.0;
    config.limits.rate_burst = 5;
    let relay = start_relay(config).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("lim", &app)).await;
    let url = format!("{}/t/lim/x", relay.base);

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let (s, h, body) = send(Method::POST, &url, &[], "x").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            retry_after = Some(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap());
            assert!(String::from_utf8_lossy(&body).contains("over its limit"));
        }
        statuses.push(s.as_u16());
    }
    // Burst of 5 passes; at 2/s hardly any token comes back in the time
    // eight local requests take.
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert!((5..=6).contains(&passed), "{statuses:?}");
    assert!(statuses[..5].iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(statuses[7], 429, "{statuses:?}");
    assert_eq!(retry_after, Some(1));
    assert_eq!(
        app.seen().len(),
        passed,
        "refused requests never reach the app"
    );

    // After waiting as told, the tunnel takes requests again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _, _) = send(Method::POST, &url, &[], "x").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn unknown_tunnel_misses_are_identical_then_rate_limited_per_ip() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await; // default 30/min
    let _agent = start_agent(&relay.base, AgentOptions::new("lim", &app)).await;

    let mut bodies = std::collections::HashSet::new();
    for i in 0..30 {
        // Well-formed names nobody holds and malformed ones read the same.
        let path = match i % 3 {
            0 => format!("/t/nobody-{i}/x"),
            1 => format!("/t/BAD%2f{i}/x"),
            _ => format!("/t/{}", "a".repeat(64)),
        };
        let raw = format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n");
        let out = exchange(
            relay.addr,
            ip("127.0.0.1"),
            raw.as_bytes(),
            Duration::from_millis(50),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(out.statuses(), [404], "miss {i}");
        let r = &out.responses[0];
        let mut headers: Vec<_> = r.headers.iter().filter(|(n, _)| n != "date").collect();
        headers.sort();
        bodies.insert(format!("{headers:?} {:?}", r.body));
    }
    assert_eq!(bodies.len(), 1, "every miss is identical: {bodies:?}");

    let raw = b"GET /t/nobody/x HTTP/1.1\r\nHost: relay\r\n\r\n";
    let out = exchange(
        relay.addr,
        ip("127.0.0.1"),
        raw,
        Duration::from_millis(50),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.statuses(), [429]);
    let retry: u64 = out.responses[0]
        .headers
        .iter()
        .find(|(n, _)| n == "retry-after")
        .map(|(_, v)| v.parse().unwrap())
        .expect("Retry-After");
    assert!(
        (1..=2).contains(&retry),
        "one miss comes back every 2 s: {retry}"
    );

    // Another address still gets the plain 404, and the limited address
    // gets 429 for the tunnel it knows too: a prober over its limit cannot
    // tell names that exist from names that do not (issue 15).
    let out = exchange(
        relay.addr,
        ip("127.0.0.2"),
        raw,
        Duration::from_millis(50),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.statuses(), [404]);
    let out = exchange(
        relay.addr,
        ip("127.0.0.1"),
        GET,
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.statuses(), [429]);
    let out = exchange(
        relay.addr,
        ip("127.0.0.2"),
        GET,
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(out.statuses(), [200]);
}

#[tokio::test]
async fn slow_or_silent_heads_are_closed_at_the_header_deadline() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.limits.header_read_timeout = Duration::from_secs(1);
    let relay = start_relay(config).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("lim", &app)).await;

    // (what is sent, what it shows): a silent connection (hyper-util has
    // no deadline there; `FirstBytesDeadline` adds it), a slow prefix of
    // the HTTP/2 preface, a head that stops halfway, one byte a second.
    for (label, first) in [
        ("silent", &b""[..]),
        ("h2-preface-prefix", &b"PRI * HTTP/2.0\r\n"[..]),
        ("half-head", &b"GET /t/lim/x HTTP/1.1\r\nHost: re"[..]),
    ] {
        let mut s = connect_from(relay.addr, "127.0.0.1").await;
        s.write_all(first).await.unwrap();
        let started = Instant::now();
        let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(closed, "{label}: still open after 5 s");
        assert!(bytes.is_empty(), "{label}: hyper closes without an answer");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{label}: closed after {took:?}"
        );
    }

    // A byte every 300 ms keeps the socket busy but not the deadline.
    let mut s = connect_from(relay.addr, "127.0.0.1").await;
    let started = Instant::now();
    let mut closed = false;
    for &b in GET.iter().take(20) {
        if s.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a one-byte-at-a-time head was not cut");
    assert!(started.elapsed() < Duration::from_secs(3));

    // An idle keep-alive connection is closed by the same deadline.
    let mut s = connect_from(relay.addr, "127.0.0.1").await;
    s.write_all(GET).await.unwrap();
    let (bytes, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed && bytes.starts_with(b"HTTP/1.1 200"));
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn a_trickling_body_gets_408_and_never_reaches_the_app_whole() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.limits.min_body_rate = 1000;
    config.limits.body_rate_grace = Duration::from_millis(500);
    config.limits.body_rate_window = Duration::from_millis(500);
    let relay = start_relay(config).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("lim", &app)).await;

    let mut s = connect_from(relay.addr, "127.0.0.1").await;
    s.write_all(b"POST /t/lim/x HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    // 10 bytes every 100 ms = 100 B/s, a tenth of the minimum.
    let started = Instant::now();
    let mut answer = Vec::new();
    for _ in 0..50 {
        if s.write_all(&[b'x'; 10]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let (rest, _) = read_until_close(&mut s, Duration::from_millis(500)).await;
    answer.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("slower than 1000 bytes per second"), "{text}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    // The app may have seen the head, but never a whole body.
    assert!(app.seen().iter().all(|s| s.body_len < 1000));

    // A steady sender of the same body passes.
    let (status, _, body) = send(
        Method::POST,
        &format!("{}/t/lim/x", relay.base),
        &[],
        vec![b'y'; 1000],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 1000);
}

#[tokio::test]
async fn a_fast_sender_to_a_slow_reading_app_is_not_cut_off() {
    // The app takes 3 s before reading anything, so HTTP/2 flow control
    // stops the relay from reading the sender. That time is the app's, not
    // the sender's: the body-rate limit (here 1000 B/s after 0.5 s) must
    // not fire.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    const BODY: usize = 16 << 20;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        // Head plus chunked or sized body: read until the body is all there.
        while got.len() < BODY {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    });
    let mut config = relay_config("127.0.0.1:0");
    config.max_body = 64 << 20;
    config.limits.min_body_rate = 1000;
    config.limits.body_rate_grace = Duration::from_millis(500);
    config.limits.body_rate_window = Duration::from_millis(500);
    let relay = start_relay(config).await;
    let opts = AgentOptions {
        name: "slowapp".into(),
        token: TOKEN.into(),
        target: app_addr.to_string(),
        host_header: whtunnel::forward::HostHeader::Preserve,
        recorder: None,
        data_dir: None,
        ca: None,
        agent_id: None,
        takeover: false,
    };
    let _agent = start_agent(&relay.base, opts).await;

    let mut s = connect_from(relay.addr, "127.0.0.1").await;
    let head =
        format!("POST /t/slowapp/x HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Length: {BODY}\r\n\r\n");
    let started = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'z'; BODY]).await.unwrap();
    let blocked = started.elapsed();
    let (answer, _) = read_until_close(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer);
    // The test only means something if the sender really was held back.
    assert!(
        blocked >= Duration::from_secs(2),
        "sender was not blocked: {blocked:?}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
