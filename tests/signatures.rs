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
use whtunnel::capture::CaptureEvent;
use whtunnel::verify::{self, Provider, RequestView, Rule, Rules};

/// A case: what it is, its headers, its body.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

const SECRET: &str = "whsec_signatures_test";
const BODY: &str = r#"{"id":"evt_42","object":"event","type":"invoice.paid","amount":100}"#;

/// The `Stripe-Signature` value for `body` signed at `at`.
fn stripe_signature(body: &str, at: SystemTime) -> String {
    let rule = Rule::for_provider(Provider::Stripe).with_secret(SECRET);
    let view = RequestView::new("POST", "http://unused/", &[], body.as_bytes());
    let headers = verify::sign(&rule, &view, at).unwrap();
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
    rec.set_webhook_rules(Rules::new([(
        "/webhooks/stripe".to_string(),
        Rule::for_provider(Provider::Stripe).with_secret(SECRET),
    )]));
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
    // Unknown sender: no provider, no verdict, today's event detection.
    assert_eq!(got[1].provider, None);
    assert_eq!(got[1].signature, None);
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
