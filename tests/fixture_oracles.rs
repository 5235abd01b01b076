#![allow(clippy::unwrap_used)]
//! `send`, `test` and `trigger` against a local app that verifies with the
//! providers' official libraries (`tests/oracles/verify_app.py`: PyPI
//! `stripe`, `standardwebhooks`, and FinAegis's HMAC preset as its SDK
//! checks it): every request whtunnel signs from the config is accepted,
//! and the same request with a wrong or missing secret is refused, so the
//! app really checks.
//!
//! Needs `bash tests/oracles/setup.sh` (CI runs it). Without it these tests
//! fail with that instruction, unless `WHTUNNEL_SKIP_ORACLES=1`.

mod common;

use std::path::{Path, PathBuf};

use common::oracle::{python, start_app, FINAEGIS_SECRET, STANDARD_SECRET, STRIPE_SECRET};
use common::process::whtunnel;

fn write_config(dir: &Path, stripe: &str, standard: &str, finaegis: &str) -> PathBuf {
    let path = dir.join("whtunnel.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[webhook]]
path = "/webhooks/stripe"
provider = "stripe"
secret = "{stripe}"

[[webhook]]
path = "/webhooks/standard"
provider = "standard-webhooks"
secret = "{standard}"

[[webhook]]
path = "/webhooks/finaegis"
provider = "finaegis"
secret = "{finaegis}"
"#
        ),
    )
    .unwrap();
    path
}

const EVENTS: [(&str, &str); 3] = [
    ("stripe", "payment_intent.succeeded"),
    ("standard-webhooks", "invoice.paid"),
    ("finaegis", "transfer.completed"),
];

#[tokio::test]
async fn official_libraries_accept_trigger_send_and_test() {
    let Some(py) = python() else { return };
    let app = start_app(&py);
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), STRIPE_SECRET, STANDARD_SECRET, FINAEGIS_SECRET);
    let good = good.to_str().unwrap();
    let saved = dir.path().join("saved");
    let saved_s = saved.to_str().unwrap();

    // trigger, with a --set edit, saving what it sent.
    for (provider, event) in EVENTS {
        let (code, out, err) = whtunnel(&[
            "trigger",
            provider,
            event,
            "--to",
            &app.url,
            "--config",
            good,
            "--save",
            saved_s,
            "--set",
            "data.note=\"edited\"",
        ])
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains(&format!("{provider} {event}: 200 in ")),
            "{out}"
        );
        assert!(out.contains(&format!("signed as {provider}")), "{out}");
    }

    // send: the saved files again, signed afresh (new timestamps).
    let (code, out, err) = whtunnel(&["send", saved_s, "--to", &app.url, "--config", good]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(": 200 in ").count(), 3, "{out}");

    // test: with an assertion on what the app answered.
    for (provider, event) in EVENTS {
        let file = saved.join(format!("{provider}-{event}.json"));
        let mut f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        f["expect"] = serde_json::json!({"status": 200, "json": {"received": true, "type": event}});
        std::fs::write(&file, serde_json::to_string_pretty(&f).unwrap()).unwrap();
    }
    let (code, out, err) = whtunnel(&[
        "test", saved_s, "--to", &app.url, "--config", good, "-j", "3",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3 fixtures: 3 passed, 0 failed, 0 errors"),
        "{out}"
    );

    // The app really checks: a wrong secret is refused by each library.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        bad_dir.path(),
        "whsec_wrong",
        "whsec_d3JvbmctYnV0LWJhc2U2NA==",
        "wrong",
    );
    let (code, out, _) = whtunnel(&[
        "test",
        saved_s,
        "--to",
        &app.url,
        "--config",
        bad.to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(out.contains("3 fixtures: 0 passed, 3 failed"), "{out}");
    assert_eq!(
        out.matches("expected status 200, got 400").count(),
        3,
        "{out}"
    );

    // No secret configured: sent unsigned, and it says so.
    let none = bad_dir.path().join("none.toml");
    std::fs::write(&none, "").unwrap();
    let (code, out, err) = whtunnel(&[
        "trigger",
        "stripe",
        "invoice.paid",
        "--to",
        &app.url,
        "--config",
        none.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("400 in"), "{out}");
    assert!(
        out.contains("UNSIGNED: no secret to sign with for stripe"),
        "{out}"
    );
}
