//! `whtunnel replay` signs afresh: an event signed ten minutes ago, which
//! Stripe's official library rejects as stale, is accepted once replayed
//! (edited with `--set` too), and rejected again with `--as-is`. The judge
//! is `stripe.Webhook.construct_event` in `tests/oracles/verify_app.py`,
//! not whtunnel's own verifier.
//!
//! Needs `bash tests/oracles/setup.sh` (./test.sh runs it), unless
//! `WHTUNNEL_SKIP_ORACLES=1`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::oracle::{python, start_app, STRIPE_SECRET};
use common::process::{whtunnel, Spawn};
use http::{Method, StatusCode};
use whtunnel::verify::{self, Provider, RequestView, Rule};

const BODY: &str = r#"{"id":"evt_replay_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","amount":100}}}"#;

/// The `Stripe-Signature` value for `body` signed at `at`.
fn stripe_signature(body: &str, at: SystemTime) -> String {
    let rule = Rule::for_provider(Provider::Stripe).with_secret(STRIPE_SECRET);
    let view = RequestView::new("POST", "http://unused/", &[], body.as_bytes());
    verify::sign(&rule, &view, at)
        .unwrap()
        .headers
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("stripe-signature"))
        .unwrap()
        .1
}

#[tokio::test]
async fn a_stale_event_replayed_is_signed_afresh_and_the_official_library_accepts_it() {
    let Some(py) = python() else { return };
    let app = start_app(&py);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("whtunnel.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhook]]\npath = \"/webhooks/stripe\"\nprovider = \"stripe\"\nsecret = \"{STRIPE_SECRET}\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let config_s = config.to_str().unwrap();
    let data_s = data.to_str().unwrap();
    let listen = Spawn::listen(&app.url, &data)
        .args(["--config", config_s, "--listen", "127.0.0.1:0"])
        .start()
        .await;

    // Signed ten minutes ago: past Stripe's 5-minute tolerance.
    let stale = SystemTime::now() - Duration::from_secs(600);
    let sig = stripe_signature(BODY, stale);
    let (status, _, _) = common::send(
        Method::POST,
        &format!("{}/webhooks/stripe", listen.public_url),
        &[
            ("stripe-signature", &sig),
            ("content-type", "application/json"),
        ],
        BODY,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the library rejects it");

    // Wait until it is recorded.
    let mut listed = String::new();
    for _ in 0..100 {
        let (_, out, _) = whtunnel(&["requests", "list", "--json", "--data-dir", data_s]).await;
        listed = out;
        if listed.contains("/webhooks/stripe") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = rows[0]["id"].as_i64().unwrap().to_string();
    assert_eq!(rows[0]["signature"], "invalid", "{rows}");

    // Replayed with an edit: signed afresh, accepted by the official library.
    let (code, out, err) = whtunnel(&[
        "replay",
        &id,
        "--set",
        "data.object.amount=5000",
        "--config",
        config_s,
        "--data-dir",
        data_s,
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": 200 OK"), "{out}{err}");
    assert!(err.contains("signed afresh for stripe"), "{err}");

    // As recorded: the stale signature, rejected again.
    let (code, out, err) = whtunnel(&[
        "replay",
        &id,
        "--as-is",
        "--config",
        config_s,
        "--data-dir",
        data_s,
    ])
    .await;
    assert_eq!(code, 0, "any HTTP answer exits 0: {out}{err}");
    assert!(out.contains(": 400 Bad Request"), "{out}{err}");
    drop(listen);
}
