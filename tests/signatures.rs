//! Signatures wired into the agent (issue #13): every recorded exchange
//! gets its sender and signature verdict, judged on the bytes as captured,
//! through a real relay and agent; `requests show --json` shows them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::process::whtunnel;
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;
use whtunnel::capture::{BodyDigest, CaptureEvent};
use whtunnel::verify::{self, Provider, RequestView, Rule, Rules};

/// A case: what it is, its headers, its body.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

const SECRET: &str = "whsec_signatures_test";
const BODY: &str = r#"{"id":"evt_42","object":"event","type":"invoice.paid","amount":100}"#;

/// BLAKE3 of `b` in lower-case hex, by the BLAKE3 team's own crate.
fn hex_blake3(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// The `Stripe-Signature` value for `body` signed at `at`.
fn stripe_signature(body: &str, at: SystemTime) -> String {
    let rule = Rule::for_provider(Provider::Stripe).with_secret(SECRET);
    let view = RequestView::new("POST", "http://unused/", &[], body.as_bytes());
    let headers = verify::sign(&rule, &view, at).unwrap().headers;
    headers
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("stripe-signature"))
        .unwrap()
        .1
}

#[tokio::test]
async fn every_exchange_gets_its_verdict_from_the_bytes_as_captured() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    // `timeout = "10s"`: Stripe publishes no timeout, the rule gives one.
    let mut rule = Rule::for_provider(Provider::Stripe).with_secret(SECRET);
    rule.timeout = Some(Duration::from_secs(10));
    rec.set_webhook_rules(Rules::new([("/webhooks/stripe".to_string(), rule)]));
    let mut events = rec.subscribe();
    let mut opts = AgentOptions::new("sigs", &app);
    opts.recorder = Some(rec.clone());
    let agent = start_agent(&relay.base, opts).await;
    let url = format!("{}/webhooks/stripe", agent.public_url);

    let now = SystemTime::now();
    let fresh = stripe_signature(BODY, now);
    let stale = stripe_signature(BODY, now - Duration::from_secs(600));
    let tampered = BODY.replace("100", "999");
    let json = ("content-type", "application/json");
    let cases: [Case; 4] = [
        ("valid", vec![json, ("stripe-signature", &fresh)], BODY),
        (
            "tampered",
            vec![json, ("stripe-signature", &fresh)],
            &tampered,
        ),
        ("stale", vec![json, ("stripe-signature", &stale)], BODY),
        ("unsigned", vec![json], BODY),
    ];
    let mut ids = Vec::new();
    for (what, headers, body) in &cases {
        let (status, _, _) = send(Method::POST, &url, headers, body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{what}");
        // One at a time, so the ids follow the cases.
        let id = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await.unwrap() {
                    CaptureEvent::Stored(s) => return s.id,
                    CaptureEvent::NotStored { reason, .. } => panic!("not stored: {reason}"),
                    CaptureEvent::Started(_) => {}
                }
            }
        })
        .await
        .expect("stored within 10 s");
        ids.push(id);
    }
    // The app got the bytes unchanged, the tampered ones included.
    let seen = app.seen();
    assert_eq!(seen[1].body.as_ref(), tampered.as_bytes());

    let data_dir = dir.path().to_str().unwrap();
    let show = |id: i64| async move {
        let (code, out, err) = whtunnel(&[
            "requests",
            "show",
            &id.to_string(),
            "--json",
            "--data-dir",
            data_dir,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let expect = [
        ("valid", None),
        ("invalid", Some("signature mismatch")),
        (
            "invalid",
            Some("timestamp outside tolerance: 10m old, 5m past the 5m tolerance"),
        ),
        ("unsigned", Some("Stripe-Signature")),
    ];
    for ((id, (verdict, reason)), (what, ..)) in ids.iter().zip(expect).zip(&cases) {
        let v = show(*id).await;
        let sig = &v["signature"];
        assert_eq!(sig["provider"], "stripe", "{what}: {v}");
        assert_eq!(sig["verdict"], verdict, "{what}: {sig}");
        match reason {
            None => assert!(sig["reason"].is_null(), "{what}: {sig}"),
            Some(r) => assert!(sig["reason"].as_str().unwrap().contains(r), "{what}: {sig}"),
        }
        assert_eq!(v["provider"], "stripe", "{what}");
        assert_eq!(v["event"], "invoice.paid", "{what}");
    }
    // The body-hash proof: the relay's BLAKE3 of what it received is the
    // hash of what was sent, and the app got those very bytes.
    for (id, (what, _, body)) in ids.iter().zip(&cases) {
        let v = show(*id).await;
        let req = &v["request"];
        assert_eq!(
            req["relay_body_digest"],
            format!("blake3:{}", hex_blake3(body.as_bytes())),
            "{what}: {req}"
        );
        assert_eq!(req["body_intact"], true, "{what}");
        // The rule's sender timeout is stored with the exchange.
        assert_eq!(v["sender_timeout_ms"], 10_000, "{what}");
    }
    // Secrets never reach the store's output.
    let (_, list, _) = whtunnel(&["requests", "list", "--json", "--data-dir", data_dir]).await;
    assert!(!list.contains(SECRET));
    let rows: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
    assert_eq!(rows[0]["signature"], "unsigned");

    drop(agent);
    rec.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_recognised_sender_without_a_rule_is_unchecked_and_a_stranger_stays_null() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let mut events = rec.subscribe();
    let mut opts = AgentOptions::new("recog", &app);
    opts.recorder = Some(rec.clone());
    let agent = start_agent(&relay.base, opts).await;
    let gh = r#"{"action":"opened","number":1}"#;
    let reqs: [(Vec<(&str, &str)>, &str); 2] = [
        (
            vec![
                ("x-github-event", "pull_request"),
                ("x-github-delivery", "d-1"),
                ("x-hub-signature-256", "sha256=00"),
            ],
            gh,
        ),
        (vec![], r#"{"type":"thing.happened"}"#),
    ];
    let mut got = Vec::new();
    for (headers, body) in reqs {
        let url = format!("{}/hooks", agent.public_url);
        send(Method::POST, &url, &headers, body.to_string()).await;
        let summary = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let CaptureEvent::Stored(s) = events.recv().await.unwrap() {
                    return s;
                }
            }
        })
        .await
        .unwrap();
        got.push(summary);
    }
    assert_eq!(got[0].provider.as_deref(), Some("github"));
    assert_eq!(got[0].signature, Some(verify::Verdict::Unchecked));
    assert_eq!(got[0].delivery_id.as_deref(), Some("d-1"));
    assert_eq!(got[0].event.as_deref(), Some("pull_request.opened"));
    // No rule: the provider's own timeout (GitHub gives up after 10 s).
    assert_eq!(got[0].sender_timeout_ms, Some(10_000));
    // Unknown sender: no provider, no verdict, today's event detection.
    assert_eq!(got[1].provider, None);
    assert_eq!(got[1].signature, None);
    assert_eq!(got[1].sender_timeout_ms, None);
    assert_eq!(got[1].event.as_deref(), Some("thing.happened"));
    drop(agent);
    rec.close().await;
    relay.stop().await;
}

/// `whtunnel listen` with only a `whtunnel.toml`: the target, the routes and
/// the webhook rules all come from the file.
#[tokio::test]
async fn listen_takes_target_routes_and_rules_from_whtunnel_toml() {
    let default_app = App::start().await;
    let api_app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("whtunnel.toml");
    write_file(
        &config,
        &format!(
            "[listen]\ntarget = {}\n\n[[route]]\npath = \"/api/\"\ntarget = \"{}\"\n\n\
             [[webhook]]\npath = \"/webhooks/stripe\"\nprovider = \"stripe\"\nsecret_env = \"SIG_TEST_SECRET\"\n",
            default_app.addr.port(),
            api_app.addr,
        ),
    );
    let data = dir.path().join("data");
    let mut listen = common::process::Spawn::listen_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &data,
    )
    .env("SIG_TEST_SECRET", SECRET)
    .start()
    .await;
    let base = listen.public_url.clone();
    let sig = stripe_signature(BODY, SystemTime::now());
    let (s1, _, _) = send(Method::POST, &format!("{base}/api/orders"), &[], "a").await;
    let (s2, _, _) = send(Method::POST, &format!("{base}/other"), &[], "b").await;
    let (s3, _, _) = send(
        Method::POST,
        &format!("{base}/webhooks/stripe"),
        &[
            ("stripe-signature", &sig),
            ("content-type", "application/json"),
        ],
        BODY,
    )
    .await;
    assert_eq!(
        (s1, s2, s3),
        (StatusCode::OK, StatusCode::OK, StatusCode::OK)
    );
    // The longest matching [[route]] took /api/, the default the rest.
    let api: Vec<String> = api_app.seen().iter().map(|s| s.uri.clone()).collect();
    let default: Vec<String> = default_app.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(api, ["/api/orders"]);
    assert_eq!(default, ["/other", "/webhooks/stripe"]);
    // One log line per exchange: all three recorded once these are printed.
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(listen.next_line().await);
    }
    let stripe_line = lines
        .iter()
        .find(|l| l.contains("/webhooks/stripe"))
        .unwrap();
    assert!(stripe_line.contains("\u{2713} stripe"), "{stripe_line}");
    listen.stop().await;
    let (code, out, err) = whtunnel(&[
        "requests",
        "list",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let stripe = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/webhooks/stripe")
        .unwrap();
    assert_eq!(stripe["signature"], "valid", "{stripe}");
}

#[tokio::test]
async fn listen_config_errors_are_one_line_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let bad = dir.path().join("bad.toml");
    write_file(
        &bad,
        "[listen]\ntarget = 3000\n\n[[webhook]]\npath = \"/w\"\nprovider = \"nope\"\n",
    );
    let (code, _, err) = whtunnel(&[
        "listen",
        "--config",
        bad.to_str().unwrap(),
        "--no-tui",
        "--data-dir",
        data,
    ])
    .await;
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml:6"), "{err}");
    assert!(err.contains("webhook.provider"), "{err}");

    // Neither TARGET nor [listen] target: says how to give one.
    let empty = dir.path().join("empty.toml");
    write_file(&empty, "[listen]\nname = \"x\"\n");
    let (code, _, err) = whtunnel(&[
        "listen",
        "--config",
        empty.to_str().unwrap(),
        "--no-tui",
        "--data-dir",
        data,
    ])
    .await;
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no target"), "{err}");
}

/// The body-hash proof on bodies that stream (over the relay's read-first
/// size, with and without a declared length) and on a body-less request.
#[tokio::test]
async fn streamed_bodies_carry_the_relay_hash_and_a_bodiless_request_none() {
    let app = App::start().await;
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    let mut events = rec.subscribe();
    let mut opts = AgentOptions::new("proof", &app);
    opts.recorder = Some(rec.clone());
    let agent = start_agent(&relay.base, opts).await;
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let url = format!("{}/big", agent.public_url);
    let (status, _, _) = send(Method::POST, &url, &[], big.clone()).await;
    assert_eq!(status, StatusCode::OK);
    // Chunked: no declared length.
    let chunks = futures_util::stream::iter(
        big.chunks(64 * 1024)
            .map(|c| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                    bytes::Bytes::copy_from_slice(c),
                ))
            })
            .collect::<Vec<_>>(),
    );
    let req = http::Request::post(&url)
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
    let (status, _, _) = send(
        Method::GET,
        &format!("{}/nothing", agent.public_url),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut stored = Vec::new();
    while stored.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        if let CaptureEvent::Stored(s) = ev.expect("stored within 10 s").unwrap() {
            stored.push(s.id);
        }
    }
    let store = whtunnel::capture::Store::open_reader(dir.path()).unwrap();
    let want: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&big).into()
    };
    let relay_want = BodyDigest::Blake3(*blake3::hash(&big).as_bytes());
    // Ids follow the order of storing, not of sending: the GET's record
    // may commit before the second POST's, so tell them apart by method.
    let (posts, gets): (Vec<_>, Vec<_>) = stored
        .iter()
        .map(|id| store.get(*id).unwrap().unwrap())
        .partition(|ex| ex.request.method == "POST");
    assert_eq!((posts.len(), gets.len()), (2, 1));
    for ex in &posts {
        let id = ex.id.unwrap_or_default();
        assert_eq!(ex.request.body.total_len, big.len() as u64, "#{id}");
        assert_eq!(ex.body_proof.relay, Some(relay_want), "#{id}");
        assert_eq!(whtunnel::capture::body_intact(ex), Some(true), "#{id}");
    }
    let get = &gets[0];
    assert_eq!(get.request.method, "GET");
    assert_eq!(
        get.body_proof,
        Default::default(),
        "no body, nothing to prove"
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen[..2] {
        assert_eq!(s.body_len, big.len() as u64, "the app got every byte");
        assert_eq!(s.body_sha256, want);
    }
    drop(agent);
    rec.close().await;
    relay.stop().await;
}

/// Something between relay and app changed the body: the agent, given the
/// relay's hash of other bytes than it passes on, records the body as
/// changed and the signature reason says so. The relay end is played by
/// a bare HTTP/2 client on the agent's tunnel server (only the relay could
/// otherwise produce the trailer).
#[tokio::test]
async fn a_body_changed_between_relay_and_app_is_proven_and_named_in_the_reason() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use whtunnel::tunnel::protocol::{LinkMeta, RequestMeta, TRAILER_BODY_BLAKE3};

    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rec = recorder(dir.path());
    rec.set_webhook_rules(Rules::new([(
        "/webhooks/stripe".to_string(),
        Rule::for_provider(Provider::Stripe).with_secret(SECRET),
    )]));
    let mut events = rec.subscribe();
    let fwd = whtunnel::forward::Forwarder::new(whtunnel::forward::ForwarderConfig {
        target: format!("http://{}", app.addr).parse().unwrap(),
        routes: Vec::new(),
        webhooks: Default::default(),
        host_header: whtunnel::forward::HostHeader::Preserve,
        recorder: Some(rec.clone()),
        body_limits: whtunnel::capture::BodyLimits::new(dir.path().join("spill")),
    });
    let (relay_io, agent_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let fwd = fwd.clone();
            let link = LinkMeta {
                proto: "https".into(),
                timeout_ms: 5_000,
            };
            async move { Ok::<_, std::convert::Infallible>(fwd.handle(req, &link).await) }
        });
        let _ = whtunnel::tunnel::h2::server_builder()
            .serve_connection(TokioIo::new(agent_io), svc)
            .await;
    });
    let (mut link, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(relay_io))
            .await
            .unwrap();
    tokio::spawn(conn);

    let signature = stripe_signature(BODY, SystemTime::now());
    let changed = BODY.replace("100", "999");
    let meta = RequestMeta {
        proto: "https".into(),
        received_at_ms: chrono::Utc::now().timestamp_millis(),
        timeout_ms: 5_000,
        ..Default::default()
    };
    // (relay saw, app gets): changed on the way, and untouched; with a
    // Content-Length (the agent leaves the proof to the store, which keeps
    // the body whole) and without one (the agent hashes as it passes).
    let cases = [(BODY, changed.as_str()), (BODY, BODY)];
    for (sized, (relay_saw, sent)) in [true, false]
        .into_iter()
        .flat_map(|sized| cases.map(|c| (sized, c)))
    {
        let mut trailer = http::HeaderMap::new();
        trailer.insert(
            TRAILER_BODY_BLAKE3,
            hex_blake3(relay_saw.as_bytes()).parse().unwrap(),
        );
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(
                sent.to_string(),
            ))),
            Ok(http_body::Frame::trailers(trailer)),
        ]);
        let mut req = http::Request::post("http://tunnel/webhooks/stripe")
            .header("content-type", "application/json")
            .header("stripe-signature", &signature)
            .body(http_body_util::StreamBody::new(frames))
            .unwrap();
        if sized {
            req.headers_mut()
                .insert("content-length", sent.len().to_string().parse().unwrap());
        }
        let announced = LinkMeta {
            proto: "https".into(),
            timeout_ms: 5_000,
        };
        meta.write_headers(&announced, req.headers_mut()).unwrap();
        let resp = link.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        if let CaptureEvent::Stored(s) = ev.expect("stored within 10 s").unwrap() {
            got.push(s.id);
        }
    }
    got.sort();
    let store = whtunnel::capture::Store::open_reader(dir.path()).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("capture.db")).unwrap();
    for (pair, left_to_store) in [(&got[..2], true), (&got[2..], false)] {
        let changed_ex = store.get(pair[0]).unwrap().unwrap();
        assert_eq!(whtunnel::capture::body_intact(&changed_ex), Some(false));
        let sig = changed_ex.webhook.signature.unwrap();
        assert_eq!(sig.verdict, verify::Verdict::Invalid);
        let reason = sig.reason.unwrap();
        assert!(
            reason.contains("differs from the bytes the relay received"),
            "{reason}"
        );
        let same = store.get(pair[1]).unwrap().unwrap();
        assert_eq!(whtunnel::capture::body_intact(&same), Some(true));
        assert_eq!(
            same.webhook.signature.unwrap().verdict,
            verify::Verdict::Valid
        );
        // Where the proof was made: from the stored copy when read (the
        // column stays empty), or by the agent as the bytes passed.
        for id in pair {
            let column: Option<bool> = db
                .query_row(
                    "SELECT body_intact FROM exchanges WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(column.is_none(), left_to_store, "#{id}");
        }
    }
    // The trailer is the tunnel's: the app never sees it, and got the
    // bytes as sent.
    let seen = app.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].body.as_ref(), changed.as_bytes());
    assert_eq!(seen[2].body.as_ref(), changed.as_bytes());
    assert!(seen.iter().all(|s| s
        .headers
        .keys()
        .all(|n| !n.as_str().starts_with("whtunnel"))));
    rec.close().await;
}
