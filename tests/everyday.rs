//! The everyday loop of `whtunnel listen` with real processes (issue #12):
//! a webhook that arrives while the app is down keeps its body and can be
//! replayed once the app is up; Ctrl-C lets an exchange in flight finish.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use bytes::Bytes;
use common::process::{whtunnel, Process, Spawn};
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

/// `whtunnel listen <target> --no-tui` with its embedded relay on port 0.
async fn start_listen(target: &str, data_dir: &Path) -> Process {
    Spawn::listen(target, data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .start()
        .await
}

/// A loopback port with nothing listening on it (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn list_json(d: &str) -> Vec<Value> {
    let (code, out, err) = whtunnel(&["requests", "list", "--json", "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_webhook_sent_while_the_app_is_down_keeps_its_body_and_replays_exactly() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut listen = start_listen(&port.to_string(), dir.path()).await;

    // 1 MiB that is not one repeated byte, so a shifted or cut copy shows.
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (status, _, _) = send(
        Method::POST,
        &format!("{}/hooks/pay", listen.public_url),
        &[("content-type", "application/octet-stream")],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let line = listen.next_line().await;
    assert!(line.contains("502"), "{line}");

    let list = list_json(d).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_i64().unwrap().to_string();
    let (code, out, err) = whtunnel(&["requests", "show", &id, "--json", "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["request"]["body_size"],
        body.len() as u64,
        "{out:.300}"
    );
    assert_eq!(shown["request"]["truncated"], false, "{out:.300}");

    // The app comes up on the port the tunnel forwards to.
    let app = App::start_on(port).await;
    let (code, out, err) = whtunnel(&["replay", &id, "--data-dir", d]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("200"), "{out}");
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, body.len() as u64);
    assert_eq!(seen[0].body_sha256, sha256(&body));
    listen.stop().await;
}

#[tokio::test]
async fn a_replay_of_a_body_that_was_not_kept_is_refused() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A store that keeps at most 1 KiB of each body... is not a flag; a
    // body cut by the store's limits is simulated by editing the record.
    let mut listen = start_listen(&app.addr.port().to_string(), dir.path()).await;
    let (status, _, _) = send(
        Method::POST,
        &format!("{}/x", listen.public_url),
        &[],
        Bytes::from_static(b"0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    listen.next_line().await;
    listen.stop().await;
    let id = list_json(d).await[0]["id"].as_i64().unwrap();
    let db =
        rusqlite::Connection::open(dir.path().join(whtunnel::capture::store::DB_FILE)).unwrap();
    // `exchanges` is a view: the row is in one of the partitions.
    for n in 0..whtunnel::capture::store::PARTITIONS {
        let t = whtunnel::capture::store::partition_table(n);
        db.execute(
            &format!("UPDATE {t} SET req_truncated = 1 WHERE id = ?1"),
            [id],
        )
        .unwrap();
    }
    drop(db);

    let id = id.to_string();
    let (code, out, err) = whtunnel(&["replay", &id, "--data-dir", d]).await;
    assert_ne!(code, 0, "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not kept") && err.contains("--force"), "{err}");
    assert_eq!(app.seen().len(), 1, "nothing was sent");

    let (code, out, err) = whtunnel(&["replay", &id, "--force", "--data-dir", d]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(app.seen().len(), 2);
}

/// `whtunnel listen` with stdout and stderr both read line by line.
struct Listen {
    child: tokio::process::Child,
    public_url: String,
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

fn lines_of(
    out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use tokio::io::AsyncBufReadExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl Listen {
    async fn start(target: &str, data_dir: &Path) -> Listen {
        Listen::start_on(target, data_dir, "127.0.0.1:0").await
    }

    async fn start_on(target: &str, data_dir: &Path, relay: &str) -> Listen {
        let mut child = tokio::process::Command::new(bin())
            .args(["listen", target, "--no-tui", "--listen", relay])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let first = tokio::time::timeout(WAIT, stdout.recv())
            .await
            .unwrap()
            .unwrap();
        let public_url = first
            .strip_prefix("Forwarding ")
            .and_then(|r| r.split_once(" -> "))
            .unwrap_or_else(|| panic!("{first}"))
            .0
            .to_string();
        Listen {
            child,
            public_url,
            stdout,
            stderr,
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for a stderr line containing `needle`; returns it.
    async fn stderr_line(&mut self, needle: &str) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self.stderr.recv().await.expect("stderr open");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a stderr line with {needle:?}"))
    }

    async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits")
            .unwrap()
            .code()
    }
}

/// Waits until the app has seen `n` requests (bounded).
async fn app_saw(app: &App, n: usize) {
    tokio::time::timeout(WAIT, async {
        while app.seen().len() < n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the app saw the request");
}

#[tokio::test]
async fn ctrl_c_lets_an_exchange_in_flight_finish_and_records_it() {
    for sig in ["-INT", "-TERM"] {
        let app = App::start().await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let mut listen = Listen::start(&app.addr.port().to_string(), dir.path()).await;
        let url = format!("{}/slow", listen.public_url);
        let sender = tokio::spawn(async move {
            send(Method::POST, &url, &[("x-test-hold", "1")], "held body").await
        });
        app_saw(&app, 1).await;

        listen.signal(sig);
        let line = listen.stderr_line("in flight").await;
        assert!(
            line.contains("1 request in flight — waiting (Ctrl-C again to abandon)"),
            "{line}"
        );
        app.release();
        let (status, _, body) = tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{sig}");
        assert_eq!(body, "held body");
        assert_eq!(listen.exit_code().await, Some(0));
        let printed = listen.stdout.recv().await.unwrap_or_default();
        assert!(
            printed.contains("/slow") && printed.contains("200"),
            "{printed}"
        );

        let list = list_json(d).await;
        assert_eq!(list.len(), 1, "{sig}: {list:?}");
        assert_eq!(list[0]["status"], 200);
    }
}

#[tokio::test]
async fn a_second_ctrl_c_abandons_and_records_the_exchange_as_abandoned() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut listen = Listen::start(&app.addr.port().to_string(), dir.path()).await;
    let url = format!("{}/slow", listen.public_url);
    let sender =
        tokio::spawn(async move { send(Method::POST, &url, &[("x-test-hold", "1")], "b").await });
    app_saw(&app, 1).await;
    listen.signal("-INT");
    listen.stderr_line("in flight").await;
    listen.signal("-INT");
    assert_eq!(listen.exit_code().await, Some(0));
    let (status, _, _) = tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    assert!(status.is_server_error(), "{status}");

    let list = list_json(d).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_i64().unwrap().to_string();
    let (_, out, _) = whtunnel(&["requests", "show", &id, "--json", "--data-dir", d]).await;
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .contains("abandoned at exit"),
        "{out:.500}"
    );
}

/// The body of issue #12: an OSC title change, a line erase, a carriage
/// return and colours.
const HOSTILE_TYPE: &str =
    "payment.ok\u{1b}]0;PWNED\u{7}\u{1b}[2K\r\u{1b}[32mALL GOOD\u{1b}[0m\u{2028}\u{9b}";

fn assert_no_controls(what: &str, out: &str) {
    for c in out.chars() {
        assert!(
            c == '\n' || !(c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "{what}: {c:?} reaches the terminal in {out:?}"
        );
    }
}

#[tokio::test]
async fn what_a_sender_writes_never_reaches_the_terminal_raw() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut listen = start_listen(&app.addr.port().to_string(), dir.path()).await;
    let body = serde_json::json!({ "type": HOSTILE_TYPE }).to_string();
    let (status, _, _) = send(
        Method::POST,
        &format!("{}/hooks/%1B%5D0%3BX%07", listen.public_url),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let line = listen.next_line().await;
    assert_no_controls("log line", &line);
    assert!(line.contains("payment.ok\\x1b]0;PWNED\\x07"), "{line}");
    listen.stop().await;

    let (_, out, _) = whtunnel(&["requests", "list", "--data-dir", d]).await;
    assert_no_controls("requests list", &out);
    assert!(out.contains("ALL GOOD"), "{out}");
    let (_, out, _) = whtunnel(&["requests", "show", "1", "--data-dir", d]).await;
    assert_no_controls("requests show", &out);
    assert!(out.contains("\\x1b[32mALL GOOD"), "{out}");
    // JSON stays exact.
    let (_, out, _) = whtunnel(&["requests", "show", "1", "--json", "--data-dir", d]).await;
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["request"]["body"], body.as_str());
    assert_eq!(shown["event"], HOSTILE_TYPE);
}

#[tokio::test]
async fn replay_names_its_target_and_wants_to_for_another_machine() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut listen = start_listen(&app.addr.port().to_string(), dir.path()).await;
    let (status, _, _) = send(
        Method::POST,
        &format!("{}/x", listen.public_url),
        &[
            ("authorization", "Bearer secret-1"),
            ("stripe-signature", "t=1,v1=ab"),
        ],
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    listen.next_line().await;
    listen.stop().await;

    let (code, _, err) = whtunnel(&["replay", "1", "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "replaying #1 to http://localhost:{}",
            app.addr.port()
        )),
        "{err}"
    );

    // A store edited to point elsewhere: refused without --to.
    let db =
        rusqlite::Connection::open(dir.path().join(whtunnel::capture::store::DB_FILE)).unwrap();
    for n in 0..whtunnel::capture::store::PARTITIONS {
        let t = whtunnel::capture::store::partition_table(n);
        db.execute(
            &format!("UPDATE {t} SET target = 'http://203.0.113.9:80' WHERE id = 1"),
            [],
        )
        .unwrap();
    }
    drop(db);
    let (code, _, err) = whtunnel(&["replay", "1", "--data-dir", d]).await;
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not this machine") && err.contains("--to"),
        "{err}"
    );
    assert_eq!(app.seen().len(), 2, "nothing more was sent");

    // HAR exports are private, and --redact hides credentials.
    let har = dir.path().join("out.har");
    let h = har.to_str().unwrap();
    let (code, _, err) = whtunnel(&[
        "requests",
        "export",
        "--har",
        h,
        "--redact",
        "--data-dir",
        d,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&har).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&har).unwrap();
    assert!(
        !text.contains("secret-1") && !text.contains("v1=ab"),
        "{text:.400}"
    );
    let parsed: Value = serde_json::from_str(&text).unwrap();
    let url = parsed["log"]["entries"][0]["request"]["url"]
        .as_str()
        .unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/x"),
        "{url}"
    );
}

#[tokio::test]
async fn listen_refuses_a_mistyped_port() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for typo in ["3000x", ":3000x"] {
        let (code, _, err) = whtunnel(&["listen", typo, "--no-tui", "--data-dir", d]).await;
        assert_ne!(code, 0, "{typo}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("mistyped port"), "{err}");
    }
}

#[tokio::test]
async fn start_up_says_when_the_app_is_down_and_when_the_usual_url_is_taken() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let asked = taken.local_addr().unwrap().to_string();
    let mut listen = Listen::start_on(&port.to_string(), dir.path(), &asked).await;
    let line = listen.stderr_line("is in use").await;
    assert!(
        line.contains(&asked) && line.contains("NOT the usual one") && line.contains("--listen"),
        "{line}"
    );
    assert!(!listen.public_url.contains(&asked), "{}", listen.public_url);
    let line = listen.stderr_line("app:").await;
    assert_eq!(
        line,
        format!("app: nothing listening on localhost:{port} yet")
    );
}
