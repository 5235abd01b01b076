#![allow(clippy::unwrap_used)]
//! Independent oracles: the providers' official libraries (PyPI `stripe`,
//! `standardwebhooks`, `svix`, `slack-sdk`; npm `@octokit/webhooks-methods`)
//! sign requests that whtunnel must judge `valid`, tampered and stale ones
//! it must judge `invalid` with the right reason, and they verify
//! whtunnel's re-signed replays of an edited body and of an event signed
//! ten minutes ago.
//!
//! Needs `bash tests/oracles/setup.sh` (CI runs it). Without it these tests
//! fail with that instruction, unless `WHTUNNEL_SKIP_ORACLES=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use whtunnel::verify::{self, Provider, Reason, RequestView, Rule, Verdict};

type Headers = Vec<(String, Vec<u8>)>;

const URL: &str = "https://relay.example/t/demo/webhooks";
const BODY: &str = r#"{"id":"evt_1","type":"invoice.paid","amount":100}"#;
const EDITED: &str = r#"{"id":"evt_1","type":"invoice.paid","amount":250}"#;

struct Oracles {
    dir: PathBuf,
    scratch: tempfile::TempDir,
}

/// The installed oracles, or `None` when skipping is asked for.
fn oracles() -> Option<Oracles> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("oracles");
    let ready = dir.join("venv/bin/python").is_file()
        && dir.join("node_modules/@octokit/webhooks-methods").is_dir();
    if !ready {
        if std::env::var("WHTUNNEL_SKIP_ORACLES").as_deref() == Ok("1") {
            eprintln!("oracles skipped (WHTUNNEL_SKIP_ORACLES=1)");
            return None;
        }
        panic!(
            "the oracle libraries are not installed in {}: run `bash tests/oracles/setup.sh` \
             (needs python3-venv and npm), or set WHTUNNEL_SKIP_ORACLES=1 to skip these tests",
            dir.display()
        );
    }
    // Beside node_modules, so node resolves the library. Tests run at once:
    // each writes its own copy and renames it into place, so none reads a
    // half-written script.
    let fresh = dir.join(format!("octokit.mjs.{}", rand_name()));
    std::fs::copy(root.join("tests/oracles/octokit.mjs"), &fresh).unwrap();
    std::fs::rename(&fresh, dir.join("octokit.mjs")).unwrap();
    Some(Oracles {
        dir,
        scratch: tempfile::tempdir().unwrap(),
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl Oracles {
    fn body_file(&self, body: &str) -> PathBuf {
        let path = self.scratch.path().join(format!("body-{}", rand_name()));
        std::fs::write(&path, body).unwrap();
        path
    }

    fn python(&self, args: &[&str]) -> (bool, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/oracle.py");
        let out = Command::new(self.dir.join("venv/bin/python"))
            .arg(script)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "oracle.py {args:?} crashed: {stderr}"
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        (out.status.success(), stdout.trim().to_string())
    }

    fn node(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("node")
            .current_dir(&self.dir)
            .arg("octokit.mjs")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "octokit.mjs {args:?} crashed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        (out.status.success(), stdout.trim().to_string())
    }

    /// Headers the official library writes for `body` signed at `ts`.
    fn official_sign(&self, lib: &str, secret: &str, body: &str, ts: u64) -> Headers {
        if lib == "github" {
            let (ok, sig) = self.node(&["sign", secret, self.body_file(body).to_str().unwrap()]);
            assert!(ok, "{sig}");
            return vec![
                ("X-GitHub-Event".into(), b"issues".to_vec()),
                ("X-Hub-Signature-256".into(), sig.into_bytes()),
            ];
        }
        let file = self.body_file(body);
        let (ok, out) = self.python(&[
            "sign",
            lib,
            secret,
            file.to_str().unwrap(),
            &ts.to_string(),
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        ]);
        assert!(ok, "{out}");
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&out).unwrap();
        map.into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().as_bytes().to_vec()))
            .collect()
    }

    /// Whether the official library accepts `headers` for `body` now.
    fn official_verify(
        &self,
        lib: &str,
        secret: &str,
        body: &str,
        headers: &Headers,
    ) -> (bool, String) {
        let file = self.body_file(body);
        if lib == "github" {
            let sig = header(headers, "X-Hub-Signature-256").unwrap_or_default();
            return self.node(&["verify", secret, file.to_str().unwrap(), &sig]);
        }
        let map: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.clone()).unwrap().into()))
            .collect();
        let json = serde_json::Value::Object(map).to_string();
        self.python(&["verify", lib, secret, file.to_str().unwrap(), &json])
    }
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn header(h: &Headers, name: &str) -> Option<String> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

fn judge(rule: &Rule, headers: &Headers, body: &str, now: SystemTime) -> verify::Check {
    let req = RequestView::new("POST", URL, headers, body.as_bytes());
    verify::check(rule, &req, now).unwrap()
}

/// whtunnel's re-signing of a recorded request (`headers`) over `body`.
fn resign(rule: &Rule, headers: &Headers, body: &str, now: SystemTime) -> Headers {
    let req = RequestView::new("POST", URL, headers, body.as_bytes());
    let mut out = headers.clone();
    for (n, v) in verify::sign(rule, &req, now).unwrap().headers {
        out.retain(|(name, _)| !name.eq_ignore_ascii_case(&n));
        out.push((n, v.into_bytes()));
    }
    out
}

/// The whole round for one official library.
fn round(lib: &str, provider: Provider, secret: &str, timestamped: bool) {
    let Some(o) = oracles() else { return };
    let now = SystemTime::now();
    let rule = Rule::for_provider(provider).with_secret(secret);

    // 1. The official library's signature is valid to whtunnel, and the
    //    sender is recognised from the headers alone.
    let signed = o.official_sign(lib, secret, BODY, unix(now));
    let c = judge(&rule, &signed, BODY, now);
    assert_eq!(c.verdict, Verdict::Valid, "{lib}: {:?}", c.reason);
    let req = RequestView::new("POST", URL, &signed, BODY.as_bytes());
    assert_eq!(
        verify::recognise(&req).map(|r| r.provider),
        Some(provider),
        "{lib}"
    );

    // 2. A tampered body: invalid, signature mismatch.
    let c = judge(&rule, &signed, EDITED, now);
    assert_eq!(c.verdict, Verdict::Invalid, "{lib}");
    assert!(
        matches!(c.reason, Some(Reason::SignatureMismatch { .. })),
        "{lib}: {:?}",
        c.reason
    );

    // 3. A wrong secret: the official signature does not verify either.
    let other = Rule::for_provider(provider).with_secret("whsec_d3Jvbmcgc2VjcmV0");
    let c = judge(&other, &signed, BODY, now);
    assert!(
        matches!(c.reason, Some(Reason::SignatureMismatch { .. })),
        "{lib}: {:?}",
        c.reason
    );

    // 4. whtunnel re-signs an edited body; the official verifier accepts it
    //    and rejects the recorded signature over the edited bytes.
    let (ok, why) = o.official_verify(lib, secret, EDITED, &signed);
    assert!(
        !ok,
        "{lib}: the official verifier must reject an edited body: {why}"
    );
    let edited = resign(&rule, &signed, EDITED, now);
    let (ok, why) = o.official_verify(lib, secret, EDITED, &edited);
    assert!(
        ok,
        "{lib}: official verifier rejected whtunnel's re-signed edit: {why}"
    );

    // 5. whtunnel's signature with a wrong secret is refused by the official verifier.
    let forged = resign(
        &Rule::for_provider(provider).with_secret("whsec_b3RoZXI="),
        &signed,
        BODY,
        now,
    );
    let (ok, _) = o.official_verify(lib, secret, BODY, &forged);
    assert!(!ok, "{lib}: the official verifier accepted a wrong secret");

    if !timestamped {
        return;
    }
    // 6. An event the official library signed ten minutes ago: invalid to
    //    whtunnel (outside tolerance, in the past, by about 5 minutes past
    //    the 5-minute window) and to the official verifier; whtunnel's
    //    re-signed replay of it is accepted, with the same event id.
    let ten_ago = now - Duration::from_secs(600);
    let stale = o.official_sign(lib, secret, BODY, unix(ten_ago));
    let c = judge(&rule, &stale, BODY, now);
    assert_eq!(c.verdict, Verdict::Invalid, "{lib}");
    match c.reason {
        Some(Reason::TimestampOutsideTolerance {
            age_secs,
            tolerance,
        }) => {
            assert!((600..=602).contains(&age_secs), "{lib}: {age_secs}");
            assert_eq!(tolerance, Duration::from_secs(300), "{lib}");
        }
        other => panic!("{lib}: expected a stale timestamp, got {other:?}"),
    }
    let (ok, _) = o.official_verify(lib, secret, BODY, &stale);
    assert!(
        !ok,
        "{lib}: the official verifier accepted a 10-minute-old event"
    );
    let replay = resign(&rule, &stale, BODY, now);
    let (ok, why) = o.official_verify(lib, secret, BODY, &replay);
    assert!(
        ok,
        "{lib}: official verifier rejected whtunnel's re-signed replay: {why}"
    );
    for id in ["svix-id", "webhook-id"] {
        assert_eq!(
            header(&replay, id),
            header(&stale, id),
            "{lib}: same event id"
        );
    }
}

#[test]
fn stripe_official_library() {
    round(
        "stripe",
        Provider::Stripe,
        "whsec_test_stripe_secret_used_verbatim",
        true,
    );
}

#[test]
fn standard_webhooks_official_library() {
    round(
        "standardwebhooks",
        Provider::StandardWebhooks,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        true,
    );
}

#[test]
fn svix_official_library() {
    round(
        "svix",
        Provider::Svix,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        true,
    );
}

#[test]
fn slack_official_library() {
    round(
        "slack",
        Provider::Slack,
        "8f742231b10e8888abcd99yyyzzz85a5",
        true,
    );
}

#[test]
fn github_official_library() {
    round(
        "github",
        Provider::Github,
        "It's a Secret to Everybody",
        false,
    );
}

/// Twilio signs the URL and, for a JSON body, puts the body's SHA-256 in
/// it as `bodySHA256` (twilio-python's RequestValidator): whtunnel judges
/// the official signature valid, and a body that does not match the hash
/// in the signed URL invalid, as the official validator does.
#[test]
fn twilio_json_body_hash_official_library() {
    let Some(o) = oracles() else { return };
    let token = "twilio_auth_token_0123456789abcd";
    let url = "https://relay.example/t/abc/sms/status?tenant=1";
    let (ok, out) = o.python(&[
        "twilio-sign",
        token,
        o.body_file(BODY).to_str().unwrap(),
        url,
    ]);
    assert!(ok, "{out}");
    let signed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let signed_url = signed["url"].as_str().unwrap();
    let sig = signed["X-Twilio-Signature"].as_str().unwrap();
    assert!(signed_url.contains("bodySHA256="), "{signed_url}");
    let headers: Headers = vec![
        ("Content-Type".into(), b"application/json".to_vec()),
        ("X-Twilio-Signature".into(), sig.as_bytes().to_vec()),
    ];
    let rule = Rule::for_provider(Provider::Twilio).with_secret(token);
    let now = SystemTime::now();
    let judge_body = |body: &str| {
        let req = RequestView::new("POST", signed_url, &headers, body.as_bytes());
        verify::check(&rule, &req, now).unwrap()
    };
    let c = judge_body(BODY);
    assert_eq!(c.verdict, Verdict::Valid, "{:?}", c.reason);
    let (ok, why) = o.python(&[
        "twilio-verify",
        token,
        o.body_file(BODY).to_str().unwrap(),
        signed_url,
        sig,
    ]);
    assert!(ok, "{why}");

    // Another body under the same signed URL: both refuse it.
    let c = judge_body(EDITED);
    assert_eq!(c.verdict, Verdict::Invalid);
    assert!(
        matches!(c.reason, Some(Reason::BodyHashMismatch { .. })),
        "{:?}",
        c.reason
    );
    let (ok, _) = o.python(&[
        "twilio-verify",
        token,
        o.body_file(EDITED).to_str().unwrap(),
        signed_url,
        sig,
    ]);
    assert!(!ok, "the official validator accepts the edited body");

    // Re-signed by whtunnel (a replay or fixture with the edited body):
    // the new hash in the URL and a signature over that URL satisfy the
    // official validator.
    let req = RequestView::new("POST", signed_url, &headers, EDITED.as_bytes());
    let fresh = verify::sign(&rule, &req, now).unwrap();
    let (param, _) = fresh.query.clone().expect("a new bodySHA256");
    assert_eq!(param, "bodySHA256");
    let resigned_url = fresh.apply_query(signed_url);
    assert_ne!(resigned_url, signed_url);
    assert!(resigned_url.starts_with(url), "{resigned_url}");
    let resig = &fresh
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("X-Twilio-Signature"))
        .unwrap()
        .1;
    let (ok, why) = o.python(&[
        "twilio-verify",
        token,
        o.body_file(EDITED).to_str().unwrap(),
        &resigned_url,
        resig,
    ]);
    assert!(ok, "official validator on the re-signed edit: {why}");

    // A wrong token: a signature mismatch, not a body problem.
    let wrong = Rule::for_provider(Provider::Twilio).with_secret("another_token");
    let req = RequestView::new("POST", signed_url, &headers, BODY.as_bytes());
    let c = verify::check(&wrong, &req, now).unwrap();
    assert!(
        matches!(c.reason, Some(Reason::SignatureMismatch { .. })),
        "{:?}",
        c.reason
    );
}
