//! The inspector driven for real: `whtunnel listen` in a tmux pane, keys
//! sent with `send-keys`, the screen read with `capture-pane`: details
//! with tabs, a replay's outcome in the footer, the new-rows marker, and a
//! `whtunnel replay` from another process appearing live.
//! Needs tmux (`apt-get install tmux`; `.ci/run` installs it).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::whtunnel;
use common::*;
use http::{Method, StatusCode};

/// A tmux server of our own, so the test never touches the user's sessions.
struct Tmux {
    socket: String,
    /// The agent's log file, shown when a wait times out.
    log: std::path::PathBuf,
}

impl Tmux {
    fn new(log: std::path::PathBuf) -> Tmux {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success());
        assert!(
            matches!(ok, Ok(true)),
            "tmux is required for this test: apt-get install tmux"
        );
        Tmux {
            socket: format!("whtunnel-test-{}", std::process::id()),
            log,
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "ui"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "ui"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the screen satisfies `pred`; returns it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if started.elapsed() > Duration::from_secs(15) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "timed out waiting for {what}; screen:\n{screen}\nlog (newest first):\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inspector_in_a_real_terminal() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::new(dir.path().join("whtunnel.log"));
    // tmux 3.3 does not always record a dead pane's exit status, so the
    // shell writes it to a file once the process has exited.
    let status_file = dir.path().join("exit-status");
    let cmd = format!(
        "{} listen {} --listen 127.0.0.1:0 --data-dir {}; echo $? > {}",
        bin(),
        app.addr.port(),
        dir.path().display(),
        status_file.display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "ui",
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    tmux.run(&["set-option", "-t", "ui", "remain-on-exit", "on"]);

    let screen = tmux
        .wait_for("the connected header", |s| {
            s.contains("connected") && s.contains("/t/")
        })
        .await;
    let url = screen
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:") && w.contains("/t/"))
        .expect("public URL in the header")
        .to_string();

    let body = Bytes::from_static(br#"{"type":"order.created","id":"ord_1","amount":4200}"#);
    let (s, _, _) = send(
        Method::POST,
        &format!("{url}/orders?x=1"),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    send(Method::GET, &format!("{url}/health"), &[], Bytes::new()).await;
    tmux.wait_for("both exchanges in the list", |s| {
        s.contains("POST")
            && s.contains("/orders?x=1")
            && s.contains("order.created")
            && s.contains("/health")
    })
    .await;

    // Newest first: the GET is selected; move down to the POST and open it.
    tmux.keys(&["j", "Enter"]);
    tmux.wait_for("the detail view with pretty JSON", |s| {
        s.contains("→ 200 OK") && s.contains("REQUEST") && s.contains(r#""type": "order.created""#)
    })
    .await;
    // 100 columns: the response is the other tab.
    tmux.keys(&["Tab"]);
    tmux.wait_for("the response tab", |s| s.contains("RESPONSE 200"))
        .await;
    tmux.keys(&["Tab"]);

    // Replay from the detail view: the app gets the same bytes again.
    tmux.keys(&["r"]);
    let started = Instant::now();
    while app.seen().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replay never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = app.seen();
    assert_eq!(seen[2].body, body);
    assert_eq!(seen[2].uri, "/orders?x=1");
    // Its outcome where the user is looking: the footer.
    tmux.wait_for("the replay's outcome in the footer", |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.contains("replay of #1 → #3: 200 OK in"))
    })
    .await;
    tmux.keys(&["Escape"]);
    tmux.wait_for("the replay linked to its original", |s| s.contains("↻#1"))
        .await;

    // Off the top of the list, new rows are announced rather than hidden.
    tmux.keys(&["g"]);
    tmux.keys(&["j"]);
    for i in 0..3 {
        let (s, _, _) = send(Method::POST, &format!("{url}/burst/{i}"), &[], "{}").await;
        assert_eq!(s, StatusCode::OK);
    }
    tmux.wait_for("the new-rows marker", |s| s.contains("3 new ↑"))
        .await;
    tmux.keys(&["g"]);
    tmux.wait_for("the new rows in view, the marker gone", |s| {
        s.contains("/burst/2") && !s.contains("new ↑")
    })
    .await;

    // A replay run from another process shows up live.
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = whtunnel(&["replay", "1", "--data-dir", d]).await;
    assert_eq!(code, 0, "{err}");
    tmux.wait_for("the other process's replay in the list", |s| {
        s.matches("↻#1").count() == 2
    })
    .await;

    // Filter: only the orders remain.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "orders"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the filtered list", |s| {
        s.contains("filter: orders") && !s.contains("/health")
    })
    .await;

    // Help, then quit: the process exits and the terminal is restored (the
    // alternate screen with the UI is gone).
    tmux.keys(&["?"]);
    tmux.wait_for("the help screen", |s| s.contains("replay"))
        .await;
    // Separate keys: ESC followed at once by `q` can read as Alt-q.
    tmux.keys(&["Escape"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tmux.keys(&["q"]);
    let screen = tmux
        .wait_for("the process to exit", |_| {
            std::fs::read_to_string(&status_file).is_ok_and(|s| s.ends_with('\n'))
        })
        .await;
    assert!(
        !screen.contains("METHOD"),
        "UI left on screen after quit:\n{screen}"
    );
    let status = std::fs::read_to_string(&status_file).unwrap();
    assert_eq!(status.trim(), "0", "exit status");

    let (_, out, _) = whtunnel(&[
        "requests",
        "list",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 7);
    assert_eq!(list[0]["replay_of"], list[6]["id"], "the CLI's replay");
    assert_eq!(
        list[4]["replay_of"], list[6]["id"],
        "the inspector's replay"
    );
}
