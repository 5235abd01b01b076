//! Running the relay as a service: `whtunnel relay --config FILE` (every
//! flag from TOML, flags win, a bad file is one line naming file, line and
//! key) and `--log-format json` (every stderr line one JSON object).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// A relay process started with exactly `args` (no flags added), its
/// stderr read line by line.
struct RelayProc {
    child: Child,
    lines: Lines<BufReader<ChildStderr>>,
    /// Every stderr line read so far.
    seen: Vec<String>,
}

impl RelayProc {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> RelayProc {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env_remove("WHTUNNEL_TOKEN")
            .env_remove("WHTUNNEL_DATA_DIR")
            .env_remove("WHTUNNEL_LOG_FORMAT")
            .env_remove("WHTUNNEL_LOG")
            .env_remove("TOKIO_WORKER_THREADS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        RelayProc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one for which `pick` gives a value.
    async fn until<T>(&mut self, pick: impl Fn(&str) -> Option<T>) -> T {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("stderr ended; so far: {:?}", self.seen));
                let picked = pick(&line);
                self.seen.push(line);
                if let Some(v) = picked {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no such line within 15 s; so far: {:?}", self.seen))
    }

    /// SIGTERM, then every remaining line and the exit status.
    async fn terminate(mut self) -> (Vec<String>, std::process::ExitStatus) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let rest = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.seen.push(line);
            }
            self.child.wait().await.unwrap()
        })
        .await
        .expect("the relay exits within 15 s of SIGTERM");
        (self.seen, rest)
    }
}

/// The address in a line that contains `prefix` followed by an address.
fn addr_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split(|c: char| c.is_whitespace() || c == '"' || c == ')')
        .next()?
        .parse()
        .ok()
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn config_text(data_dir: &Path) -> String {
    format!(
        "# whtunnel relay settings\n\
         listen = \"127.0.0.1:0\"\n\
         token = [\"{TOKEN}\"]\n\
         data-dir = \"{}\"\n\
         max-body = \"1KiB\"\n\
         hold-max-events = 5\n\
         admin-listen = \"127.0.0.1:0\"\n",
        data_dir.display()
    )
}

async fn post(url: &str, len: usize) -> StatusCode {
    send(Method::POST, url, &[], "y".repeat(len)).await.0
}

#[tokio::test]
async fn a_relay_runs_from_its_config_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(&dir.path().join("data")));
    let mut relay = RelayProc::spawn(&["relay", "--config", &config], &[]);
    let addr = relay
        .until(|l| addr_after(l, "whtunnel relay listening on "))
        .await;
    let admin = relay
        .until(|l| addr_after(l, "admin endpoint on http://"))
        .await;
    let app = App::start().await;
    // The token came from the file.
    let agent = start_agent(&format!("http://{addr}"), AgentOptions::new("filed", &app)).await;
    assert!(
        agent.public_url.ends_with("/t/filed"),
        "{}",
        agent.public_url
    );
    // max-body came from the file.
    assert_eq!(
        post(&format!("{}/a", agent.public_url), 512).await,
        StatusCode::OK
    );
    assert_eq!(
        post(&format!("{}/b", agent.public_url), 2048).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // admin-listen came from the file.
    let (s, _, body) = send(Method::GET, &format!("http://{admin}/healthz"), &[], "").await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    // data-dir came from the file: the relay keeps its held store there.
    assert!(dir.path().join("data").exists());
    drop(agent);
    let (_, status) = relay.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn flags_win_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(&dir.path().join("data")));
    let mut relay = RelayProc::spawn(&["relay", "--config", &config, "--max-body", "4KiB"], &[]);
    let addr = relay
        .until(|l| addr_after(l, "whtunnel relay listening on "))
        .await;
    let app = App::start().await;
    let agent = start_agent(
        &format!("http://{addr}"),
        AgentOptions::new("flagged", &app),
    )
    .await;
    assert_eq!(
        post(&format!("{}/a", agent.public_url), 2048).await,
        StatusCode::OK
    );
    assert_eq!(
        post(&format!("{}/b", agent.public_url), 5000).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    drop(agent);
    let (_, status) = relay.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// The value of `metric` in the relay's `/metrics` at `admin`.
async fn gauge(admin: SocketAddr, metric: &str) -> String {
    let (status, _, body) = send(Method::GET, &format!("http://{admin}/metrics"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let prefix = format!("{metric} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {metric} in {text}"))
        .to_string()
}

#[tokio::test]
async fn the_relay_runs_on_one_worker_thread_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let config = write_config(dir.path(), "threads = 2\n");
    let base = [
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--data-dir",
        data,
    ];
    let env = ("TOKIO_WORKER_THREADS", "4");
    // (flags added, environment, the worker threads wanted)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (&[], &[], "1"),
        (&["--threads", "3"], &[], "3"),
        (&["--config", &config], &[], "2"),
        // The environment tokio reads still works, and the flag wins over it.
        (&[], &[env], "4"),
        (&["--threads", "3"], &[env], "3"),
    ];
    for (extra, env, want) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let mut relay = RelayProc::spawn(&args, env);
        let admin = relay
            .until(|l| addr_after(l, "admin endpoint on http://"))
            .await;
        assert_eq!(
            gauge(admin, "whtunnel_worker_threads").await,
            want,
            "{extra:?} {env:?}"
        );
        let (_, status) = relay.terminate().await;
        assert!(status.success(), "{status:?}");
    }
    let (code, _, stderr) = process::whtunnel(&["relay", "--threads", "0"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");
}

#[tokio::test]
async fn a_bad_config_file_is_one_line_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "listen = \"127.0.0.1:0\"\n\nmax-body = \"lots\"\n",
            ":3: max-body: ",
        ),
        (
            "# x\nhold_max_age = \"1h\"\n",
            ":2: hold_max_age: unknown key",
        ),
        ("offline = \"sometimes\"\n", ":1: offline: "),
        ("listen = \"127.0.0.1:0\"\nlisten = \"x\"\n", ":2: "),
    ];
    for (text, want) in cases {
        let config = write_config(dir.path(), text);
        let (code, _, stderr) = process::whtunnel(&["relay", "--config", &config]).await;
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {config}{want}")),
            "{text:?}: {stderr}"
        );
    }
    let (code, _, stderr) =
        process::whtunnel(&["relay", "--config", "/nonexistent/relay.toml"]).await;
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: /nonexistent/relay.toml: cannot read it: "),
        "{stderr}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_stderr_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut relay = RelayProc::spawn(
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("WHTUNNEL_LOG_FORMAT", "json")],
    );
    // No --token: the relay says where its generated one is, as JSON too.
    let token_line = relay
        .until(|l| l.contains("No --token given").then(|| l.to_string()))
        .await;
    let token_path = data.join("relay-token");
    let addr = relay
        .until(|l| addr_after(l, "whtunnel relay listening on "))
        .await;
    let app = App::start().await;
    let mut opts = AgentOptions::new("jsonlog", &app);
    opts.token = std::fs::read_to_string(&token_path)
        .unwrap_or_else(|e| panic!("{token_line}: {} {e}", token_path.display()))
        .trim()
        .to_string();
    let agent = start_agent(&format!("http://{addr}"), opts).await;
    assert_eq!(
        post(&format!("{}/a", agent.public_url), 10).await,
        StatusCode::OK
    );
    drop(agent);
    relay
        .until(|l| l.contains("agent disconnected").then_some(()))
        .await;
    let (lines, status) = relay.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(lines.len() >= 5, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("agent connected")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("whtunnel relay stopped")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_fatal_error_is_a_json_line_too() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args([
            "relay",
            "--log-format",
            "json",
            "--token",
            // Long enough not to be warned about: the one line is the error.
            "a-strong-enough-relay-token-0123456789",
            "--listen",
            &addr,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("WHTUNNEL_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["level"], "ERROR", "{stderr}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("cannot listen on {addr}")),
        "{message}"
    );
}

/// A relay without `--token` makes its own and says where, and warns about
/// a data directory others can read: in JSON mode both are JSON lines.
#[tokio::test]
async fn the_token_note_and_an_open_data_dir_warning_are_json_lines_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args(["relay", "--log-format", "json", "--listen", &addr])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("WHTUNNEL_LOG")
        .env_remove("WHTUNNEL_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let messages: Vec<String> = stderr
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{stderr}"));
            v["message"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("open to other users")),
        "{stderr}"
    );
    assert!(
        messages.iter().any(|m| m.contains("No --token given")),
        "{stderr}"
    );
}

/// Text logs to a pipe or a file (systemd's journal, `2> relay.log`) carry
/// no terminal colour codes.
#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut relay = RelayProc::spawn(
        &[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let addr = relay
        .until(|l| addr_after(l, "whtunnel relay listening on "))
        .await;
    let app = App::start().await;
    let mut opts = AgentOptions::new("plainlog", &app);
    opts.token = std::fs::read_to_string(data.join("relay-token"))
        .unwrap()
        .trim()
        .to_string();
    let agent = start_agent(&format!("http://{addr}"), opts).await;
    let line = relay
        .until(|l| l.contains("agent connected").then(|| l.to_string()))
        .await;
    assert!(!line.contains('\u{1b}'), "{line:?}");
    drop(agent);
    let (lines, _) = relay.terminate().await;
    for l in &lines {
        assert!(!l.contains('\u{1b}'), "{l:?}");
    }
}

/// A relay accepts on the runtime that runs it, whichever runtime bound it:
/// `whtunnel listen` binds its embedded relay on the agent's runtime and
/// runs it on a thread of its own. Here the binding runtime is never driven
/// again, so a listener still registered with it would never see a
/// connection.
#[test]
fn a_relay_accepts_on_the_runtime_that_runs_it_not_the_one_that_bound_it() {
    use std::io::{Read, Write};
    let binder = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let relay = binder
        .block_on(whtunnel::relay::Relay::bind(relay_config("127.0.0.1:0")))
        .unwrap();
    let addr = relay.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let runner = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(relay.run(stopped.cancelled_owned()))
    });
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /t/nobody/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    stop.cancel();
    runner.join().unwrap().unwrap();
    drop(binder);
    read.unwrap_or_else(|e| panic!("no answer from a relay run on another runtime: {e}"));
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "an unknown tunnel's answer, got {answer:?}"
    );
}
