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
    /// A tmux server for one test (`tag`: tests in this binary run at once).
    fn new(tag: &str, log: std::path::PathBuf) -> Tmux {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success());
        assert!(
            matches!(ok, Ok(true)),
            "tmux is required for this test: apt-get install tmux"
        );
        Tmux {
            socket: format!("whtunnel-test-{}-{tag}", std::process::id()),
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

    /// Keeps `screen` as `<name>.txt` in `$WHTUNNEL_SCREENS_DIR`, when set:
    /// the screens a release note shows come from this run.
    fn save(&self, name: &str, screen: &str) {
        if let Some(dir) = std::env::var_os("WHTUNNEL_SCREENS_DIR") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.txt")), screen).unwrap();
        }
    }

    /// Starts `cmd` in a `w`×`h` window; its exit status goes to `status`.
    fn start(&self, cmd: &str, (w, h): (u16, u16), status: &std::path::Path) {
        let cmd = format!("{cmd}; echo $? > {}", status.display());
        let (w, h) = (w.to_string(), h.to_string());
        self.run(&["new-session", "-d", "-s", "ui", "-x", &w, "-y", &h, &cmd]);
        self.run(&["set-option", "-t", "ui", "remain-on-exit", "on"]);
    }

    /// Quits with `q` and checks the process exited 0.
    async fn quit(&self, status: &std::path::Path) {
        self.keys(&["q"]);
        self.wait_for("the process to exit", |_| {
            std::fs::read_to_string(status).is_ok_and(|s| s.ends_with('\n'))
        })
        .await;
        let code = std::fs::read_to_string(status).unwrap();
        assert_eq!(code.trim(), "0", "exit status");
    }

    /// The public URL from the connected header.
    async fn public_url(&self) -> String {
        let screen = self
            .wait_for("the connected header", |s| {
                s.contains("connected") && s.contains("/t/")
            })
            .await;
        screen
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:") && w.contains("/t/"))
            .expect("public URL in the header")
            .to_string()
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
    let tmux = Tmux::new("basic", dir.path().join("whtunnel.log"));
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

/// The secret in the test's `whtunnel.toml`.
const STRIPE_SECRET: &str = "whsec_tmux_signature_column";

/// A `Stripe-Signature` for `body` made now by the official `stripe`
/// library (`tests/oracles/oracle.py`), or by whtunnel's own signer when
/// the oracles are skipped (`WHTUNNEL_SKIP_ORACLES=1`).
fn stripe_signature(body: &str) -> String {
    let now = std::time::SystemTime::now();
    let Some(py) = common::oracle::python() else {
        use whtunnel::verify::{self, Provider, RequestView, Rule};
        let rule = Rule::for_provider(Provider::Stripe).with_secret(STRIPE_SECRET);
        let view = RequestView::new("POST", "http://unused/", &[], body.as_bytes());
        let signed = verify::sign(&rule, &view, now).unwrap();
        return signed
            .headers
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("stripe-signature"))
            .unwrap()
            .1;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let ts = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/oracle.py");
    let out = Command::new(py)
        .arg(script)
        .args(["sign", "stripe", STRIPE_SECRET])
        .arg(&file)
        .args([ts.to_string(), "evt_1".into()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    headers["Stripe-Signature"].as_str().unwrap().to_string()
}

/// The screen line that contains `what`.
fn line_with<'a>(screen: &'a str, what: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(what))
}

/// Issue #13's signature column for real: `whtunnel listen` with a
/// `whtunnel.toml` secret, one webhook signed by Stripe's own library and
/// one whose body was changed after signing (its event type carrying an
/// OSC title sequence). ✓ and ✗ land on the right rows, narrow and wide,
/// the details give the reason, and the sequence never reaches the
/// terminal. On the way: a slow request's running timer and the editor's
/// search (issue #12).
#[tokio::test(flavor = "multi_thread")]
async fn signature_column_slow_request_and_editor_search_in_a_real_terminal() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("whtunnel.toml");
    write_file(
        &config,
        &format!(
            "[[webhook]]\npath = \"/webhooks/stripe\"\nprovider = \"stripe\"\nsecret = \"{STRIPE_SECRET}\"\n"
        ),
    );
    let data = dir.path().join("data");
    let tmux = Tmux::new("sig", data.join("whtunnel.log"));
    let status_file = dir.path().join("exit-status");
    let cmd = format!(
        "{} listen {} --config {} --listen 127.0.0.1:0 --data-dir {}",
        bin(),
        app.addr.port(),
        config.display(),
        data.display()
    );
    tmux.start(&cmd, (100, 30), &status_file);
    let url = tmux.public_url().await;

    let good = r#"{"id":"evt_good","object":"event","type":"invoice.paid","amount":4200}"#;
    let sig = stripe_signature(good);
    let json = ("content-type", "application/json");
    let (s, _, _) = send(
        Method::POST,
        &format!("{url}/webhooks/stripe"),
        &[json, ("stripe-signature", &sig)],
        good,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Changed after signing; the event type tries to retitle the pane.
    let bad = r#"{"id":"evt_bad","object":"event","type":"charge.refunded\u001b]0;PWNED\u0007","amount":1}"#;
    let (s, _, _) = send(
        Method::POST,
        &format!("{url}/webhooks/stripe"),
        &[json, ("stripe-signature", &sig)],
        bad,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let screen = tmux
        .wait_for("both verdicts in the list", |s| {
            line_with(s, "invoice.paid").is_some_and(|l| l.contains('✓'))
                && line_with(s, "charge.refunded").is_some_and(|l| l.contains('✗'))
        })
        .await;
    assert!(!line_with(&screen, "invoice.paid").unwrap().contains('✗'));
    assert!(!line_with(&screen, "charge.refunded").unwrap().contains('✓'));
    let title = tmux.run(&["display-message", "-p", "-t", "ui", "#{pane_title}"]);
    assert!(
        !title.contains("PWNED"),
        "the sender retitled the pane: {title}"
    );
    assert!(
        !screen.contains('\u{1b}') && !screen.contains('\u{7}'),
        "{screen:?}"
    );
    tmux.save("signature-column-100x30", &screen);

    // The newest row, the bad one, is selected: its details say why.
    tmux.keys(&["Enter"]);
    let screen = tmux
        .wait_for("the failure's reason in the details", |s| {
            s.contains("invalid") && s.contains("signature mismatch")
        })
        .await;
    tmux.save("signature-failure-details-100x30", &screen);
    tmux.keys(&["Escape"]);

    // A request the app holds: a row at once, with a running timer.
    let slow_url = format!("{url}/slow-report");
    let slow =
        tokio::spawn(
            async move { send(Method::POST, &slow_url, &[("x-test-hold", "1")], "{}").await },
        );
    let screen = tmux
        .wait_for("the request in flight with its timer past 2 s", |s| {
            s.contains("1 in flight")
                && line_with(s, "/slow-report").is_some_and(|l| {
                    l.split_whitespace().any(|w| {
                        w.ends_with('s') && w[..w.len() - 1].parse::<f64>().is_ok_and(|t| t >= 2.0)
                    })
                })
        })
        .await;
    tmux.save("slow-request-in-flight-100x30", &screen);
    app.release();
    let (s, _, _) = slow.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    tmux.wait_for("the slow request answered", |s| {
        !s.contains("in flight") && line_with(s, "/slow-report").is_some_and(|l| l.contains("200"))
    })
    .await;

    // Wide: the provider next to the glyph.
    tmux.run(&["resize-window", "-t", "ui", "-x", "160", "-y", "30"]);
    let screen = tmux
        .wait_for("the wide signature column", |s| {
            line_with(s, "invoice.paid").is_some_and(|l| l.contains("✓ stripe"))
                && line_with(s, "charge.refunded").is_some_and(|l| l.contains("✗ stripe"))
        })
        .await;
    tmux.save("signature-column-160x30", &screen);

    // The editor's search on the good webhook (two rows down from the
    // newest, the slow one): found, highlighted, closed with Esc alone.
    tmux.keys(&["g"]);
    tmux.keys(&["j"]);
    tmux.keys(&["j"]);
    tmux.wait_for("the good webhook selected", |s| {
        line_with(s, "invoice.paid").is_some()
    })
    .await;
    tmux.keys(&["e"]);
    tmux.wait_for("the editor", |s| s.contains("Edit #1, then replay"))
        .await;
    tmux.keys(&["C-f"]);
    tmux.keys(&["-l", "amount"]);
    let screen = tmux
        .wait_for("the search prompt with its match", |s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("Find: amount") && l.contains("1 of 1"))
        })
        .await;
    tmux.save("editor-search-160x30", &screen);
    let colored = tmux.run(&["capture-pane", "-p", "-e", "-t", "ui"]);
    // A yellow background (SGR 43, which tmux writes as 48;5;3) appears
    // only on search matches.
    assert!(
        colored.contains("48;5;3mmount") || colored.contains("43mmount"),
        "the match is not highlighted:\n{colored:?}"
    );
    tmux.keys(&["Escape"]);
    tmux.wait_for("the search closed, the editor still open", |s| {
        s.contains("Edit #1, then replay") && s.contains("Ctrl-F find")
    })
    .await;
    tmux.keys(&["Escape"]);
    tmux.wait_for("back in the list", |s| s.contains("METHOD"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tmux.quit(&status_file).await;
}

/// Makes `name` a tunnel `relay` knows, whose agent is away: what is sent
/// to it next is held.
async fn known_offline(relay: &RelayHandle, name: &str, app: &App) {
    drop(start_agent(&relay.base, AgentOptions::new(name, app)).await);
    // Until the agent's link is gone, requests still go live.
    let started = Instant::now();
    loop {
        let probe = format!("{}/t/{name}/probe", relay.base);
        let (s, _, _) = send(Method::POST, &probe, &[], "").await;
        if s == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "agent never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue #11's backlog in the inspector: events held by a relay while the
/// agent was away drain with the count left, the rate and the time to go
/// on the status line, then "all delivered".
#[tokio::test(flavor = "multi_thread")]
async fn the_held_backlog_drains_on_the_status_line_in_a_real_terminal() {
    const HELD: usize = 150;
    let app = App::start().await;
    let relay_dir = tempfile::tempdir().unwrap();
    let mut config = relay_config("127.0.0.1:0");
    config.data_dir = Some(relay_dir.path().to_path_buf());
    let relay = start_relay(config).await;
    known_offline(&relay, "backlog", &app).await;
    for n in 0..HELD {
        let (s, _, _) = send(
            Method::POST,
            &format!("{}/t/backlog/held/{n}", relay.base),
            &[
                ("x-test-delay-ms", "40"),
                ("content-type", "application/json"),
            ],
            format!(r#"{{"type":"order.paid","n":{n}}}"#),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }

    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::new("backlog", dir.path().join("whtunnel.log"));
    let status_file = dir.path().join("exit-status");
    let cmd = format!(
        "{} listen {} --relay {} --token {} --name backlog --hold-concurrency 2 --data-dir {}",
        bin(),
        app.addr.port(),
        relay.base,
        TOKEN,
        dir.path().display()
    );
    tmux.start(&cmd, (100, 30), &status_file);
    let screen = tmux
        .wait_for("the backlog draining with its rate", |s| {
            s.lines().nth(1).is_some_and(|l| {
                l.contains("● connected · held: ") && l.contains(" left, ") && l.contains("/s, ~")
            })
        })
        .await;
    tmux.save("backlog-draining-100x30", &screen);
    let left = |s: &str| -> Option<u64> {
        let l = s.lines().nth(1)?;
        l.split("held: ").nth(1)?.split(' ').next()?.parse().ok()
    };
    let first = left(&screen).unwrap();
    assert!(first > 0 && first < HELD as u64, "{screen}");
    tmux.wait_for("all delivered", |s| {
        s.contains("held events: all delivered") && !s.contains("left")
    })
    .await;
    let delivered = app
        .seen()
        .iter()
        .filter(|s| s.uri.starts_with("/held/"))
        .count();
    assert_eq!(delivered, HELD);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tmux.quit(&status_file).await;
    relay.stop().await;
}

/// Issue #11's dead letters in the inspector: a held event the app never
/// answers in time is dead-lettered by the relay, and the inspector says
/// so under the status line and marks the rows that delivered it.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_lettered_event_is_marked_in_a_real_terminal() {
    let app = App::start().await;
    let relay_dir = tempfile::tempdir().unwrap();
    let mut config = relay_config("127.0.0.1:0");
    config.data_dir = Some(relay_dir.path().to_path_buf());
    // Two timeouts of 1 s and the event is dead-lettered.
    config.response_timeout = Duration::from_secs(1);
    config.hold_delivery.max_failures = 2;
    config.hold_delivery.retry_min = Duration::from_millis(50);
    let relay = start_relay(config).await;
    known_offline(&relay, "poison", &app).await;
    let (s, h, _) = send(
        Method::POST,
        &format!("{}/t/poison/slow-handler", relay.base),
        &[
            ("x-test-delay-ms", "3000"),
            ("content-type", "application/json"),
        ],
        r#"{"type":"invoice.stuck"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let event_id = h["whtunnel-event-id"].to_str().unwrap().to_string();
    let (s, _, _) = send(
        Method::POST,
        &format!("{}/t/poison/fine", relay.base),
        &[("content-type", "application/json")],
        r#"{"type":"invoice.fine"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::new("dead", dir.path().join("whtunnel.log"));
    let status_file = dir.path().join("exit-status");
    let cmd = format!(
        "{} listen {} --relay {} --token {} --name poison --data-dir {}",
        bin(),
        app.addr.port(),
        relay.base,
        TOKEN,
        dir.path().display()
    );
    tmux.start(&cmd, (100, 30), &status_file);
    tmux.wait_for("the dead letter under the status line", |s| {
        s.lines().nth(2).is_some_and(|l| {
            l.contains("☠ 1 held event dead-lettered on the relay: whtunnel held list")
        })
    })
    .await;
    let held = relay.held.clone().unwrap();
    let listed = held.list("poison", 10).unwrap();
    assert!(
        listed.iter().any(|e| e.event_id == event_id && e.dead),
        "{listed:?}"
    );
    // Both failed deliveries of it are marked, the good event is not.
    let screen = tmux
        .wait_for("the rows that delivered it marked", |s| {
            s.lines()
                .filter(|l| l.contains("/slow-handler") && l.starts_with('☠'))
                .count()
                == 2
        })
        .await;
    let fine = line_with(&screen, "/fine").expect("the good event delivered");
    assert!(!fine.contains('☠'), "{screen}");
    tmux.save("dead-letter-100x30", &screen);
    tmux.quit(&status_file).await;
    relay.stop().await;
}
