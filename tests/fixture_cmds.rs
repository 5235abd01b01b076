#![allow(clippy::unwrap_used)]
//! Webhooks as fixtures, end to end with real processes: webhooks captured
//! through `whtunnel listen` become fixture files (`fixtures save`, saved
//! twice byte-identical), `whtunnel test` passes against the same app, and
//! fails, naming the fixture in its output and its JUnit report, once the
//! app breaks one event type. Also: `trigger --list` covers every event the
//! provider documents name.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::process::{whtunnel, Spawn};
use whtunnel::verify::{self, Provider, RequestView, Rule};

const SECRET: &str = "whsec_roundtrip_secret";

/// An app that checks Stripe signatures (whtunnel's own verifier; the
/// official libraries are in fixture_oracles.rs) and answers 500 for the
/// event types in `failing`.
struct TypeApp {
    addr: SocketAddr,
    failing: Arc<Mutex<HashSet<String>>>,
}

async fn type_app() -> TypeApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failing = Arc::new(Mutex::new(HashSet::new()));
    let f = failing.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(answer(req, &f).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TypeApp { addr, failing }
}

async fn answer(req: Request<Incoming>, failing: &Mutex<HashSet<String>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let view = RequestView::new("POST", "http://app/", &headers, &body);
    let rule = Rule::for_provider(Provider::Stripe).with_secret(SECRET);
    let verdict = verify::check(&rule, &view, SystemTime::now())
        .unwrap()
        .verdict;
    let kind = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_string();
    let status = if verdict != verify::Verdict::Valid {
        400
    } else if failing.lock().unwrap().contains(&kind) {
        500
    } else {
        200
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"received\":{}}}",
            status == 200
        ))))
        .unwrap()
}

/// A Stripe event as Stripe would send it, signed now.
fn stripe_request(kind: &str, n: u32) -> (Vec<(String, String)>, String) {
    let body = format!(
        r#"{{"id":"evt_{n}","object":"event","created":1724140800,"type":"{kind}","data":{{"object":{{"amount":{n}00}}}}}}"#
    );
    let headers = vec![("Content-Type".to_string(), b"application/json".to_vec())];
    let view = RequestView::new("POST", "http://x/", &headers, body.as_bytes());
    let rule = Rule::for_provider(Provider::Stripe).with_secret(SECRET);
    let mut out: Vec<(String, String)> = vec![("Content-Type".into(), "application/json".into())];
    out.extend(
        verify::sign(&rule, &view, SystemTime::now())
            .unwrap()
            .headers,
    );
    out.push((
        "Authorization".into(),
        "Bearer sk_live_must_not_leak".into(),
    ));
    (out, body)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test]
async fn captured_webhooks_become_fixtures_that_test_the_app() {
    let app = type_app().await;
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let app_url = format!("http://{}", app.addr);
    let mut listen = Spawn::listen(&app_url, data.path())
        .args(["--listen", "127.0.0.1:0"])
        .start()
        .await;

    let kinds = ["invoice.paid", "charge.succeeded", "customer.created"];
    let client = common::client();
    for (i, kind) in kinds.iter().enumerate() {
        let (headers, body) = stripe_request(kind, i as u32 + 1);
        let mut req = Request::post(format!("{}/webhooks/stripe", listen.public_url));
        for (n, v) in &headers {
            req = req.header(n, v);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // One log line per stored exchange: it is in the store now.
        let line = listen.next_line().await;
        assert!(line.contains("200"), "{line}");
    }

    let d = data.path().to_str().unwrap();
    let (code, out, err) = whtunnel(&["requests", "list", "--json", "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3);

    // Saved twice: byte-identical files with stable names.
    let one = work.path().join("fixtures");
    let two = work.path().join("again");
    for dir in [&one, &two] {
        let mut args = vec!["fixtures", "save"];
        args.extend(ids.iter().map(String::as_str));
        args.extend(["--dir", dir.to_str().unwrap(), "--data-dir", d]);
        let (code, out, err) = whtunnel(&args).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&one)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = {
        let mut v: Vec<String> = kinds
            .iter()
            .zip(&ids)
            .map(|(k, id)| format!("stripe-{k}-{id}.json"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names, expected);
    for name in &names {
        assert_eq!(
            read(&one.join(name)).as_bytes(),
            read(&two.join(name)).as_bytes(),
            "{name}"
        );
        let text = read(&one.join(name));
        assert!(text.contains("\"stripe-signature: <re-sign>\""), "{text}");
        assert!(
            text.contains("<redacted>") && !text.contains("sk_live"),
            "{text}"
        );
        assert!(!text.to_ascii_lowercase().contains("x-forwarded"), "{text}");
        assert!(text.contains("\"status\": 200"), "{text}");
    }
    listen.stop().await;

    // The same app passes; the signatures are fresh (its tolerance is 5 min
    // and it rejects a bad one with 400, which would fail the test).
    let config = work.path().join("whtunnel.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ntarget = \"{app_url}\"\n\n[[webhook]]\npath = \"/webhooks/stripe\"\nprovider = \"stripe\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let junit = work.path().join("report.xml");
    let fx = one.to_str().unwrap();
    let cfg = config.to_str().unwrap();
    let j = junit.to_str().unwrap();
    let (code, out, err) = whtunnel(&["test", fx, "--config", cfg, "--junit", j, "-j", "2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("PASS  stripe-").count(), 3, "{out}");
    assert!(
        out.contains("3 fixtures: 3 passed, 0 failed, 0 errors"),
        "{out}"
    );
    let xml = read(&junit);
    assert!(
        xml.contains("tests=\"3\" failures=\"0\" errors=\"0\""),
        "{xml}"
    );

    // The app breaks one event type: test fails and names it.
    app.failing
        .lock()
        .unwrap()
        .insert("charge.succeeded".into());
    let broken = format!("stripe-charge.succeeded-{}", ids[1]);
    let (code, out, err) = whtunnel(&["test", fx, "--config", cfg, "--junit", j]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("FAIL  {broken}  500 in "))
            && out.contains("expected status 200, got 500"),
        "{out}"
    );
    assert!(
        out.contains("3 fixtures: 2 passed, 1 failed, 0 errors"),
        "{out}"
    );
    assert!(
        err.contains(&format!("1 of 3 fixtures failed: {broken}")),
        "{err}"
    );
    let xml = read(&junit);
    assert!(
        xml.contains("tests=\"3\" failures=\"1\" errors=\"0\""),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("<testcase name=\"{broken}\""))
            && xml.contains("<failure message=\"expected status 200, got 500\""),
        "{xml}"
    );
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");

    // --json for scripts.
    let (code, out, _) = whtunnel(&["test", fx, "--config", cfg, "--json"]).await;
    assert_ne!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], 2);
    assert_eq!(report["ok"], false);
    let failed: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec![broken.as_str()]);
}

#[tokio::test]
async fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"whtunnel_fixture\": 1}").unwrap();
    let (code, out, err) = whtunnel(&["test", bad.to_str().unwrap(), "--to", "127.0.0.1:9"]).await;
    assert_ne!(code, 0);
    assert!(
        out.contains("ERROR bad") && out.contains("not a whtunnel fixture"),
        "{out}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) =
        whtunnel(&["trigger", "stripe", "nope.event", "--to", "127.0.0.1:9"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no sample `nope.event` for stripe"), "{err}");
    let (code, _, err) = whtunnel(&["trigger", "acme", "x", "--to", "127.0.0.1:9"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("catalog: stripe, github"), "{err}");
    // No target anywhere: says how to give one.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = whtunnel(&[
        "trigger",
        "github",
        "ping",
        "--config",
        empty.to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no target: pass --to URL"), "{err}");
}

/// `(document, phrase, provider, event)` rows of the checked-in list.
fn expected_events() -> Vec<(String, String, String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fixture/catalog/provider-events.tsv");
    read(&path)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "{l}");
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}

fn norm(s: &str) -> String {
    s.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Event names read straight from a provider document, where it writes them
/// in a form a program can find.
fn named_in(doc: &str, text: &str) -> Vec<String> {
    let lines = || text.lines().map(str::trim);
    let section = |start: &str, end: &str| -> Vec<String> {
        lines()
            .skip_while(|l| !l.starts_with(start))
            .skip(1)
            .take_while(|l| !l.starts_with(end))
            .filter(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("- ").to_string())
            .collect()
    };
    if doc.starts_with("001") {
        section("Banking Synchronization", "Please find")
            .into_iter()
            .filter(|l| l != "Payment Initiation")
            .collect()
    } else if doc.starts_with("002") {
        section("List of Webhooks", "What")
    } else if doc.starts_with("003") {
        text.split("\"eventname\" \"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().replace(' ', "_"))
            .collect()
    } else if doc.starts_with("004") {
        lines()
            .filter(|l| {
                l.contains('.')
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            })
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    }
}

#[tokio::test]
async fn trigger_list_covers_every_documented_event() {
    let (code, out, err) = whtunnel(&["trigger", "--list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let listed: HashSet<(String, String)> = serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["provider"].as_str().unwrap().into(),
                r["event"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = expected_events();
    for (_, _, provider, event) in &expected {
        assert!(
            listed.contains(&(provider.clone(), event.clone())),
            "{provider} {event} missing from trigger --list"
        );
    }
    for (provider, event) in [
        ("stripe", "payment_intent.succeeded"),
        ("stripe", "charge.succeeded"),
        ("stripe", "checkout.session.completed"),
        ("stripe", "customer.subscription.created"),
        ("stripe", "invoice.paid"),
        ("github", "push"),
        ("github", "pull_request.opened"),
        ("github", "issues.opened"),
        ("github", "ping"),
        ("standard-webhooks", "user.created"),
    ] {
        assert!(
            listed.contains(&(provider.into(), event.into())),
            "{provider} {event}"
        );
    }
    let (code, out, _) = whtunnel(&["trigger", "--list", "klavi"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 10, "{out}");

    // With the provider documents at hand (CI's ../shared), the checked-in
    // list is checked against them: every phrase is in its document, and
    // every event a document names in a findable form is on the list.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/providers");
    if !docs.is_dir() {
        eprintln!(
            "{} not found: checked against the list in the repository only",
            docs.display()
        );
        return;
    }
    let mut docs_seen = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        docs_seen += 1;
        let doc = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = read(&path);
        let rows: Vec<_> = expected.iter().filter(|r| r.0 == doc).collect();
        assert!(
            !rows.is_empty(),
            "{doc} has no events in provider-events.tsv"
        );
        for (_, phrase, _, _) in &rows {
            assert!(
                norm(&text).contains(&norm(phrase)),
                "{doc} does not say `{phrase}`"
            );
        }
        for name in named_in(&doc, &text) {
            assert!(
                rows.iter()
                    .any(|r| norm(&r.1) == norm(&name) || r.3 == name),
                "{doc} names `{name}`, which is not in provider-events.tsv"
            );
        }
    }
    assert_eq!(docs_seen, 5);
}
