//! The binary as a user runs it: `whtunnel listen` with its embedded relay,
//! `requests list/show`, `replay`, refusals, and the standalone relay.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::process::{whtunnel, Process, Signal, Spawn};
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

/// `whtunnel listen <target> --no-tui` with its embedded relay on port 0.
async fn start_listen(target: &str, data_dir: &Path, extra: &[&str]) -> Process {
    Spawn::listen(target, data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .start()
        .await
}

#[tokio::test]
async fn listen_alone_forwards_records_and_replays() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut listen = start_listen(&app.addr.port().to_string(), dir.path(), &[]).await;
    assert!(
        listen.public_url.starts_with("http://127.0.0.1:"),
        "{}",
        listen.public_url
    );
    let name = listen.public_url.rsplit('/').next().unwrap().to_string();
    assert_eq!(name.len(), 26, "generated names carry 128 bits");
    // The embedded relay runs on a thread of its own, apart from the agent's.
    // A thread the relay has just started (a blocking-pool one) carries the
    // relay thread's name until it names itself: read again until it has.
    let relay_threads = |t: &[String]| t.iter().filter(|n| *n == "whtunnel-relay").count();
    let mut threads = listen.thread_names();
    for _ in 0..50 {
        if relay_threads(&threads) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        threads = listen.thread_names();
    }
    assert_eq!(relay_threads(&threads), 1, "{threads:?}");

    let json = br#"{"id":"evt_1","type":"payment.succeeded","data":{"amount":100}}"#;
    let (status, _, _) = send(
        Method::POST,
        &format!("{}/hooks/pay?key=abc", listen.public_url),
        &[("content-type", "application/json"), ("x-signature", "sig")],
        Bytes::from_static(json),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let line = listen.next_line().await;
    assert!(
        line.contains("POST") && line.contains("/hooks/pay?key=abc") && line.contains("200"),
        "{line}"
    );
    assert!(line.contains("payment.succeeded"), "{line}");

    let binary: Vec<u8> = vec![0, 159, 146, 150, 255, 1, 2];
    let (status, _, _) = send(
        Method::PUT,
        &format!("{}/bin", listen.public_url),
        &[("content-type", "application/octet-stream")],
        binary.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let line = listen.next_line().await;
    assert!(line.contains("PUT") && line.contains("/bin"), "{line}");

    // The contract JSON, newest first.
    let (code, out, err) = whtunnel(&["requests", "list", "--json", "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["method"], "PUT");
    assert_eq!(list[1]["method"], "POST");
    assert_eq!(list[1]["path"], "/hooks/pay?key=abc");
    assert_eq!(list[1]["status"], 200);
    assert_eq!(list[1]["event"], "payment.succeeded");
    assert_eq!(list[1]["replay_of"], Value::Null);
    assert!(list[1]["received_at"].as_str().unwrap().contains('T'));
    let post_id = list[1]["id"].as_i64().unwrap();
    let put_id = list[0]["id"].as_i64().unwrap();

    let (code, out, _) = whtunnel(&[
        "requests",
        "show",
        &post_id.to_string(),
        "--json",
        "--data-dir",
        d,
    ])
    .await;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["request"]["body"].as_str().unwrap().as_bytes(), json);
    assert_eq!(shown["request"]["body_base64"], Value::Null);
    let headers = shown["request"]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-signature" && h[1] == "sig"),
        "{headers:?}"
    );
    assert!(headers.iter().any(|h| h[0] == "host"), "{headers:?}");
    assert_eq!(shown["response"]["status"], 200);
    assert_eq!(shown["error"], Value::Null);

    let (_, out, _) = whtunnel(&[
        "requests",
        "show",
        &put_id.to_string(),
        "--json",
        "--data-dir",
        d,
    ])
    .await;
    let shown: Value = serde_json::from_str(&out).unwrap();
    use base64::Engine;
    let b64 = shown["request"]["body_base64"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        binary
    );
    assert_eq!(shown["request"]["body"], Value::Null);

    // Replay delivers identical bytes to the app and is recorded as a replay.
    let (code, out, err) = whtunnel(&["replay", &post_id.to_string(), "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("200"), "{out}");
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].body.as_ref(), json);
    assert_eq!(seen[2].uri, "/hooks/pay?key=abc");
    assert_eq!(seen[2].method, Method::POST);
    assert_eq!(seen[2].headers["x-signature"], "sig");

    // Everything is still there after the agent exits.
    let status = listen.stop().await;
    assert!(status.success(), "{status:?}");
    let (_, out, _) = whtunnel(&["requests", "list", "--json", "--data-dir", d]).await;
    let list: Value = serde_json::from_str(&out).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["replay_of"], post_id);

    // The next run keeps the same name, so a pasted URL keeps working.
    let listen = start_listen(&app.addr.port().to_string(), dir.path(), &[]).await;
    assert!(
        listen.public_url.ends_with(&format!("/t/{name}")),
        "{}",
        listen.public_url
    );
    listen.stop().await;
}

#[tokio::test]
async fn wrong_token_exits_non_zero_with_one_clear_line() {
    let relay = start_relay(relay_config("127.0.0.1:0")).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = tokio::time::timeout(
        Duration::from_secs(20),
        whtunnel(&[
            "listen",
            "3999",
            "--no-tui",
            "--relay",
            &relay.base,
            "--token",
            "wrong",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
    )
    .await
    .expect("a refused agent exits");
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("token refused"), "{stderr}");
    assert!(
        !stderr.contains("wrong"),
        "the token itself is never printed: {stderr}"
    );
}

#[tokio::test]
async fn bad_arguments_get_one_line_errors() {
    let (code, _, err) = whtunnel(&["listen", "http://x:1/?q", "--no-tui"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("invalid target"), "{err}");
    let (code, _, err) = whtunnel(&[
        "listen", "3000", "--relay", "ftp://x", "--token", "t", "--no-tui",
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("invalid relay URL"), "{err}");
    let (code, _, err) = whtunnel(&[
        "listen",
        "3000",
        "--relay",
        "http://127.0.0.1:9",
        "--no-tui",
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("needs a token"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = whtunnel(&[
        "requests",
        "show",
        "42",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no exchange #42"), "{err}");
}

#[tokio::test]
async fn standalone_relay_serves_agents_and_stops_on_sigterm() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Spawn::relay(dir.path())
        .args(["--listen", "127.0.0.1:0", "--token", "s3cret"])
        .start()
        .await;
    let addr = relay.addr();
    let listen_dir = tempfile::tempdir().unwrap();
    let listen = Spawn::listen(&app.addr.to_string(), listen_dir.path())
        .args(["--name", "shop", "--token", "s3cret"])
        .env("WHTUNNEL_RELAY", format!("http://{addr}"))
        .start()
        .await;
    assert_eq!(
        listen.first_line,
        format!("Forwarding http://{addr}/t/shop -> http://{}", app.addr)
    );
    let (s, _, _) = send(Method::POST, &format!("http://{addr}/t/shop/x"), &[], "{}").await;
    assert_eq!(s, StatusCode::OK);

    relay.signal(Signal::Term);
    let status = relay.wait().await;
    assert!(status.success(), "relay exits 0 on SIGTERM: {status:?}");
}

#[tokio::test]
async fn retention_flag_keeps_only_the_newest_exchanges() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut listen = start_listen(
        &app.addr.to_string(),
        dir.path(),
        &["--keep-exchanges", "3"],
    )
    .await;
    for i in 0..5 {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/n/{i}", listen.public_url),
            &[],
            "{}",
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        listen.next_line().await;
    }
    let (_, out, _) = whtunnel(&[
        "requests",
        "list",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let list: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/n/4", "/n/3", "/n/2"]);
    listen.stop().await;
}

#[tokio::test]
async fn usage_errors_are_one_line() {
    let (code, out, err) = whtunnel(&["listen", "--bogus", "3000"]).await;
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--bogus") && err.contains("--help"), "{err}");
    let (code, _, err) = whtunnel(&["relay", "--max-body", "lots"]).await;
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a size"), "{err}");
}

#[tokio::test]
async fn a_second_listen_on_the_same_data_dir_is_refused() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = app.addr.port().to_string();
    let first = start_listen(&port, dir.path(), &[]).await;
    let dir_arg = dir.path().to_str().unwrap();
    let (code, out, stderr) = tokio::time::timeout(
        Duration::from_secs(15),
        whtunnel(&[
            "listen",
            &port,
            "--no-tui",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_arg,
        ]),
    )
    .await
    .expect("the second listen exits at once");
    assert_eq!(code, 1);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already using"), "{stderr}");
    assert!(out.is_empty(), "it must not start forwarding");
    // The lock goes with the process: after the first stops, a new one starts.
    assert!(first.stop().await.success());
    let again = start_listen(&port, dir.path(), &[]).await;
    assert!(again.stop().await.success());
}

#[tokio::test]
async fn a_call_still_finishing_is_recorded_before_listen_exits() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = start_listen(&app.addr.to_string(), dir.path(), &[]).await;
    // The sender hangs up while the app works on its request (1.5 s)...
    let url = format!("{}/slow", listen.public_url);
    let sender = tokio::spawn(async move {
        send(Method::POST, &url, &[("x-test-delay-ms", "1500")], "{}").await
    });
    wait_for_seen(&app, 1, Duration::from_secs(5)).await;
    sender.abort();
    assert!(sender.await.unwrap_err().is_cancelled());
    // ...and the user stops whtunnel before the app has answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(listen.stop().await.success());

    let (code, out, err) = whtunnel(&[
        "requests",
        "list",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["path"], "/slow");
    assert_eq!(
        rows[0]["status"], 200,
        "the app's answer was recorded: {out}"
    );
}

/// A store in `dir` holding `n` exchanges, oldest first: `/n/{i}`, status
/// 500 for every fifth, and a body naming the order only for every third.
fn seed_store(dir: &Path, n: u32) {
    use whtunnel::capture::{
        CapturedBody, Exchange, RecordedRequest, RecordedResponse, Store, StoreConfig,
    };
    let mut store = Store::open(&StoreConfig::new(dir.to_path_buf())).unwrap();
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    for i in 0..n {
        let body = if i % 3 == 0 {
            format!(r#"{{"order":"ord_{i}","needle":"Kiwi"}}"#)
        } else {
            format!(r#"{{"order":"ord_{i}"}}"#)
        };
        let ex = Exchange {
            received_at: t0 + chrono::Duration::seconds(i64::from(i)),
            target: "http://localhost:3000".into(),
            request: RecordedRequest {
                method: "POST".into(),
                path: format!("/n/{i}"),
                body: CapturedBody::from_bytes(body),
                ..Default::default()
            },
            response: Some(RecordedResponse {
                status: if i % 5 == 0 { 500 } else { 200 },
                ..Default::default()
            }),
            ..Default::default()
        };
        store.insert(&ex).unwrap();
    }
}

async fn list_paths(args: &[&str]) -> Vec<String> {
    let (code, out, err) = whtunnel(args).await;
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn requests_list_takes_limit_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    seed_store(dir.path(), 40);
    let base = ["requests", "list", "--json", "--data-dir", d];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();

    assert_eq!(list_paths(&base).await.len(), 40);
    assert_eq!(
        list_paths(&with(&["--limit", "3"])).await,
        ["/n/39", "/n/38", "/n/37"]
    );
    // The inspector's syntax: a status class, then two terms at once.
    assert_eq!(
        list_paths(&with(&["--filter", "5xx", "--limit", "2"])).await,
        ["/n/35", "/n/30"]
    );
    assert_eq!(
        list_paths(&with(&["--filter", "500 /n/1"])).await,
        ["/n/15", "/n/10"]
    );
    assert_eq!(list_paths(&with(&["--filter", "#7"])).await, ["/n/6"]);
    // `body:` searches the stored bodies, case-insensitively, newest first.
    assert_eq!(
        list_paths(&with(&["--filter", "body:kiwi", "--limit", "3"])).await,
        ["/n/39", "/n/36", "/n/33"]
    );
    assert_eq!(
        list_paths(&with(&["--filter", "body:kiwi 5xx"])).await,
        ["/n/30", "/n/15", "/n/0"]
    );

    // The table honours them too.
    let (code, out, err) = whtunnel(&[
        "requests",
        "list",
        "--limit",
        "2",
        "--filter",
        "2xx",
        "--data-dir",
        d,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/n/39") && out.contains("/n/38"), "{out}");
    assert!(!out.contains("/n/37"), "{out}");
    let (code, out, _) = whtunnel(&[
        "requests",
        "list",
        "--filter",
        "nothing-like-this",
        "--data-dir",
        d,
    ])
    .await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "no exchange matches the filter");

    // Bad values: one clear line each.
    for (args, says) in [
        (&["--limit", "0"][..], "--limit"),
        (&["--limit", "five"][..], "--limit"),
        (&["--filter", "sig:maybe"][..], "sig:maybe"),
    ] {
        let (code, out, err) = whtunnel(&with(args)).await;
        assert_ne!(code, 0, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
