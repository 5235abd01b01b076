//! End-to-end tests of the tunnel core: a real relay, agent and local app on
//! loopback, port 0.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};

#[tokio::test]
async fn round_trip_preserves_request_and_response() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let agent = start_agent(&relay.base, AgentOptions::new("rt", &app)).await;
    assert_eq!(agent.public_url, format!("{}/t/rt", relay.base));

    // Bytes that are not UTF-8 and would not survive a text round trip.
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let (status, headers, resp_body) = send(
        Method::POST,
        &format!("{}/t/rt/hooks/stripe?key=abc&x=%2F1", relay.base),
        &[
            ("content-type", "application/json"),
            ("x-signature", "t=1,v1=deadbeef"),
            ("x-dup", "first"),
            ("x-dup", "second"),
            ("connection", "keep-alive, x-hop-only"),
            ("x-hop-only", "drop me"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-test-status", "201"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        resp_body.as_ref(),
        body.as_slice(),
        "response body unchanged"
    );
    assert_eq!(headers["x-app"], "yes");
    let multi: Vec<_> = headers.get_all("x-multi").iter().collect();
    assert_eq!(
        multi,
        ["one", "two"],
        "duplicate response headers kept in order"
    );

    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.uri, "/hooks/stripe?key=abc&x=%2F1");
    assert_eq!(s.body.as_ref(), body.as_slice(), "request body byte-exact");
    assert_eq!(s.headers["content-type"], "application/json");
    assert_eq!(s.headers["x-signature"], "t=1,v1=deadbeef");
    let dups: Vec<_> = s.headers.get_all("x-dup").iter().collect();
    assert_eq!(dups, ["first", "second"]);
    for hop in [
        "connection",
        "x-hop-only",
        "keep-alive",
        "transfer-encoding",
    ] {
        assert!(!s.headers.contains_key(hop), "{hop} must not be forwarded");
    }
    assert_eq!(s.headers["content-length"], body.len().to_string());
    // The relay is the edge: a sender's own X-Forwarded-For is dropped.
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(s.headers["x-forwarded-proto"], "http");
    assert_eq!(s.headers["x-forwarded-host"], relay.addr.to_string());
    assert_eq!(s.headers["host"], relay.addr.to_string(), "Host preserved");
    for meta in whtunnel::tunnel::protocol::META_HEADERS {
        assert!(!s.headers.contains_key(meta), "{meta} reached the app");
    }

    for method in [
        Method::GET,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ] {
        let (status, _, _) = send(
            method.clone(),
            &format!("{}/t/rt/m", relay.base),
            &[("x-test-status", "202")],
            if method == Method::GET || method == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from_static(b"{}")
            },
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{method}");
        assert_eq!(app.seen().last().unwrap().method, method);
    }
    relay.stop().await;
}

#[tokio::test]
async fn host_header_can_be_rewritten() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let mut opts = AgentOptions::new("hh", &app);
    opts.host_header = "rewrite".parse().unwrap();
    let _agent = start_agent(&relay.base, opts).await;
    send(
        Method::GET,
        &format!("{}/t/hh/", relay.base),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(app.seen()[0].headers["host"], app.addr.to_string());
    assert_eq!(
        app.seen()[0].headers["x-forwarded-host"],
        relay.addr.to_string()
    );
}

#[tokio::test]
async fn target_base_path_is_prefixed() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let mut opts = AgentOptions::new("base", &app);
    opts.target = format!("http://{}/api/v1", app.addr);
    let _agent = start_agent(&relay.base, opts).await;
    send(
        Method::POST,
        &format!("{}/t/base/a/b?x=1", relay.base),
        &[],
        "{}",
    )
    .await;
    assert_eq!(app.seen()[0].uri, "/api/v1/a/b?x=1");
}

#[tokio::test]
async fn concurrent_slow_requests_do_not_block_each_other() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("par", &app)).await;
    let url = format!("{}/t/par/slow", relay.base);
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                send(
                    Method::POST,
                    &url,
                    &[("x-test-delay-ms", "1000")],
                    format!("req {i}"),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(b"req "));
    }
    let elapsed = started.elapsed();
    assert_eq!(app.seen().len(), 16);
    // Serialised, this takes 16 s; multiplexed, about 1 s.
    assert!(
        elapsed < Duration::from_secs(3),
        "16 x 1 s took {elapsed:?}"
    );
}

#[tokio::test]
async fn errors_the_sender_sees() {
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.response_timeout = Duration::from_millis(800);
    config.max_body = 1000;
    let relay = start_relay(config).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("err", &app)).await;

    // Unknown tunnel: 404, and the same text whatever the name.
    let (s1, _, b1) = send(
        Method::POST,
        &format!("{}/t/nobody/x", relay.base),
        &[],
        "{}",
    )
    .await;
    let (s2, _, b2) = send(
        Method::POST,
        &format!("{}/t/Not%2FValid/x", relay.base),
        &[],
        "{}",
    )
    .await;
    assert_eq!(s1, StatusCode::NOT_FOUND);
    assert_eq!(s2, StatusCode::NOT_FOUND);
    assert_eq!(b1, b2);
    assert!(std::str::from_utf8(&b1)
        .unwrap()
        .contains("no agent is connected"));

    // Slow app: 504 with a reason.
    let (s, _, b) = send(
        Method::POST,
        &format!("{}/t/err/slow", relay.base),
        &[("x-test-delay-ms", "3000")],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        std::str::from_utf8(&b).unwrap().contains("did not answer"),
        "{b:?}"
    );

    // Body over the limit by one byte: 413, not forwarded.
    let before = app.seen().len();
    let (s, _, b) = send(
        Method::POST,
        &format!("{}/t/err/big", relay.base),
        &[],
        vec![b'x'; 1001],
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(std::str::from_utf8(&b).unwrap().contains("limit"));
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/err/ok", relay.base),
        &[],
        vec![b'x'; 1000],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "exactly at the limit passes");
    assert_eq!(
        app.seen().len(),
        before + 1,
        "the oversized body was not forwarded"
    );
    assert!(app.seen().iter().all(|r| r.body_len != 1001));

    // App down: 502 with a reason; the agent survives it.
    drop(app);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, h, b) = send(
        Method::POST,
        &format!("{}/t/err/down", relay.base),
        &[],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(h["whtunnel-error"], "app-unreachable");
    let text = std::str::from_utf8(&b).unwrap();
    assert!(
        text.contains("could not connect to the app") && text.contains("running"),
        "{text}"
    );
    let app = App::start().await;
    let _ = app; // a new app on another port; the agent still answers:
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/err/down", relay.base),
        &[],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    use futures_util::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.max_body = 64 * 1024;
    let relay = start_relay(config).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("chunk", &app)).await;

    // No Content-Length: the relay only finds out while streaming.
    let chunks =
        (0..20).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'a'; 8192]))));
    let body = StreamBody::new(stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::post(format!("{}/t/chunk/x", relay.base))
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Whatever reached the app was cut short, never a complete 160 KiB body.
    assert!(app.seen().iter().all(|s| s.body_len < 160 * 1024));
}

#[tokio::test]
async fn eight_mib_body_arrives_byte_exact() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let _agent = start_agent(&relay.base, AgentOptions::new("big", &app)).await;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (status, _, echoed) = send(
        Method::POST,
        &format!("{}/t/big/upload", relay.base),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = app.seen();
    assert_eq!(seen[0].body_len, body.len() as u64);
    assert_eq!(seen[0].body_sha256, sha256(&body));
    assert_eq!(
        sha256(&echoed),
        sha256(&body),
        "8 MiB response byte-exact too"
    );
}

#[tokio::test]
async fn the_app_answer_to_a_sender_that_hung_up_is_still_recorded() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let mut events = rec.subscribe();
    let mut opts = AgentOptions::new("hangup", &app);
    opts.recorder = Some(rec.clone());
    let _agent = start_agent(&relay.base, opts).await;

    // The sender hangs up once the app has its request; the app answers
    // 800 ms later.
    let url = format!("{}/t/hangup/slow", relay.base);
    let sender =
        tokio::spawn(
            async move { send(Method::POST, &url, &[("x-test-delay-ms", "800")], "{}").await },
        );
    wait_for_seen(&app, 1, Duration::from_secs(5)).await;
    sender.abort();
    assert!(
        sender.await.unwrap_err().is_cancelled(),
        "the sender hung up first"
    );

    let summary = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(whtunnel::capture::CaptureEvent::Stored(s)) = events.recv().await {
                if s.path == "/slow" {
                    return s;
                }
            }
        }
    })
    .await
    .expect("the exchange is recorded");
    assert_eq!(app.seen().len(), 1);
    assert_eq!(summary.status, Some(200), "the app's own answer");
    assert!(summary.duration_ms >= 800.0, "{}", summary.duration_ms);
    assert_eq!(
        summary.error.as_deref(),
        Some(whtunnel::forward::ERR_ANSWER_UNDELIVERED)
    );
    assert_eq!(
        summary.outcome,
        Some(whtunnel::capture::Outcome::Undelivered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_that_hang_up_cannot_pile_up_calls_to_a_slow_app() {
    use whtunnel::forward::MAX_ABANDONED_CALLS;
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.limits.max_conns_per_ip = 0;
    config.limits.max_inflight_per_ip = 0;
    config.limits.rate_limit = 0.0;
    let relay = start_relay(config).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let mut events = rec.subscribe();
    let mut opts = AgentOptions::new("pile", &app);
    opts.recorder = Some(rec.clone());
    let _agent = start_agent(&relay.base, opts).await;
    let url = format!("{}/t/pile/slow", relay.base);

    // Senders that give up once the app has their requests, which it holds:
    // first as many as the link carries at once, then a few more while those
    // calls still run.
    let mut sent = 0;
    for n in [MAX_ABANDONED_CALLS, 20] {
        let senders: Vec<_> = (0..n)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    send(Method::POST, &url, &[("x-test-hold", "1")], "{}").await
                })
            })
            .collect();
        sent += n;
        wait_for_seen(&app, sent, Duration::from_secs(10)).await;
        for s in &senders {
            s.abort();
        }
        for s in senders {
            assert!(
                s.await.unwrap_err().is_cancelled(),
                "the sender hung up first"
            );
        }
    }

    // The calls over the bound are cut off at once; the others finish when
    // the app answers.
    let mut counts = (0, 0);
    count_abandoned(&mut events, &mut counts, 20).await;
    app.release();
    count_abandoned(&mut events, &mut counts, sent).await;
    let (finished, cut_off) = counts;
    assert_eq!((finished, cut_off), (MAX_ABANDONED_CALLS, 20));
}

/// Counts stored exchanges into (finished after the sender was gone, cut
/// off) until there are `want` in all.
async fn count_abandoned(
    events: &mut tokio::sync::broadcast::Receiver<whtunnel::capture::CaptureEvent>,
    counts: &mut (usize, usize),
    want: usize,
) {
    let counted = tokio::time::timeout(Duration::from_secs(15), async {
        while counts.0 + counts.1 < want {
            if let Ok(whtunnel::capture::CaptureEvent::Stored(s)) = events.recv().await {
                match s.error.as_deref() {
                    Some(whtunnel::forward::ERR_ANSWER_UNDELIVERED) => counts.0 += 1,
                    Some(e) if e.contains("still finishing") => counts.1 += 1,
                    other => panic!("unexpected record: {other:?}"),
                }
            }
        }
    })
    .await;
    assert!(counted.is_ok(), "only {counts:?} of {want} recorded");
}

#[tokio::test]
async fn each_way_an_exchange_ends_is_recorded_as_its_outcome() {
    use whtunnel::capture::{CaptureEvent, Outcome};
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let mut events = rec.subscribe();
    let mut config = relay_config("127.0.0.1:0");
    config.response_timeout = Duration::from_millis(800);
    let relay = start_relay(config).await;
    let mut opts = AgentOptions::new("ends", &app);
    opts.recorder = Some(rec.clone());
    opts.data_dir = Some(dir.path().to_path_buf());
    let _agent = start_agent(&relay.base, opts).await;
    let url = |p: &str| format!("{}/t/ends/{p}", relay.base);

    send(Method::POST, &url("ok"), &[], "{}").await;
    send(
        Method::POST,
        &url("slow"),
        &[("x-test-delay-ms", "3000")],
        "{}",
    )
    .await;
    drop(app);
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(Method::POST, &url("down"), &[], "{}").await;

    let mut outcomes = std::collections::HashMap::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while outcomes.len() < 3 {
            if let Ok(CaptureEvent::Stored(s)) = events.recv().await {
                outcomes.insert(s.path.clone(), s.outcome);
            }
        }
    })
    .await
    .expect("three exchanges recorded");
    assert_eq!(outcomes["/ok"], Some(Outcome::Answered));
    assert_eq!(outcomes["/slow"], Some(Outcome::AppTimeout));
    assert_eq!(outcomes["/down"], Some(Outcome::AppUnreachable));
}

/// HTTP/1.1 allows an empty Host; such a webhook is forwarded like any
/// other (it has no host to pass on), not refused, by a relay with
/// `--domain` (host routing) or without.
#[tokio::test]
async fn an_empty_host_header_is_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for domain in [None, Some("hooks.example.com")] {
        let app = App::start().await;
        let mut config = relay_config("127.0.0.1:0");
        config.domain = domain.map(str::to_string);
        let relay = start_relay(config).await;
        let _agent = start_agent(&relay.base, AgentOptions::new("nohost", &app)).await;
        let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        tcp.write_all(
            b"POST /t/nohost/hook HTTP/1.1\r\nHost:\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{domain:?}: {answer}");
        assert_eq!(app.seen()[0].uri, "/hook", "{domain:?}");
    }
}

/// The capture keeps the request headers as the relay received them: the
/// sender's Host first, every other header with its duplicates (a name's
/// values together, in the order they came), the hop-by-hop ones HTTP/2
/// cannot carry at the end, and nothing of the tunnel's own; the response
/// headers as the app sent them.
#[tokio::test]
async fn the_capture_keeps_the_headers_the_relay_received() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let mut events = rec.subscribe();
    let mut opts = AgentOptions::new("hdrs", &app);
    opts.recorder = Some(rec.clone());
    let _agent = start_agent(&relay.base, opts).await;

    let (status, _, _) = send(
        Method::POST,
        &format!("{}/t/hdrs/in", relay.base),
        &[
            ("content-type", "application/json"),
            ("x-dup", "first"),
            ("x-signature", "t=1,v1=ab"),
            ("x-dup", "second"),
            ("connection", "keep-alive, x-hop-only"),
            ("x-hop-only", "kept for the capture"),
            ("keep-alive", "timeout=5"),
        ],
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(whtunnel::capture::CaptureEvent::Stored(s)) = events.recv().await {
                return s.id;
            }
        }
    })
    .await
    .expect("the exchange is recorded");
    let reader = whtunnel::capture::Store::open_reader(dir.path()).unwrap();
    let ex = reader.get(id).unwrap().unwrap();
    let got: Vec<(String, String)> = ex
        .request
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
    assert_eq!(got[0], pair("host", &relay.addr.to_string()), "{got:?}");
    let dups: Vec<_> = got.iter().filter(|(n, _)| n == "x-dup").collect();
    assert_eq!(dups, [&pair("x-dup", "first"), &pair("x-dup", "second")]);
    assert!(got.contains(&pair("x-signature", "t=1,v1=ab")), "{got:?}");
    assert!(got.contains(&pair("content-type", "application/json")));
    let mut hops = got[got.len() - 3..].to_vec();
    hops.sort();
    assert_eq!(
        hops,
        [
            pair("connection", "keep-alive, x-hop-only"),
            pair("keep-alive", "timeout=5"),
            pair("x-hop-only", "kept for the capture"),
        ],
        "{got:?}"
    );
    for (name, _) in &got {
        assert!(
            !name.starts_with("whtunnel-") && !name.starts_with("x-forwarded-"),
            "{name} is the tunnel's, not the sender's: {got:?}"
        );
    }
    let resp = ex.response.unwrap();
    let multi: Vec<_> = resp
        .headers
        .iter()
        .filter(|(n, _)| *n == "x-multi")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(multi, [&b"one"[..], &b"two"[..]]);
    assert_eq!(resp.headers.get("x-app"), Some(&b"yes"[..]));
    relay.stop().await;
}
