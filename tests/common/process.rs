//! The `whtunnel` binary as a child process: one-shot commands, and
//! long-running `listen` and `relay` processes that are started, waited for
//! until they print the line saying they are up, signalled like a user or a
//! crash would, and killed when dropped.

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::bin;

/// How long a process may take to print its start-up line.
const START_UP: Duration = Duration::from_secs(15);
/// How long a process may take to exit once told to, and how long a test
/// waits for its next log line.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs `whtunnel <args>` to the end; returns its exit code (-1 if killed
/// by a signal), stdout and stderr.
pub async fn whtunnel(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The signals tests send to a process.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    /// SIGINT, as Ctrl-C would.
    Int,
    /// SIGTERM, as a service manager would.
    Term,
    /// SIGKILL: a crash, nothing cleaned up.
    Kill,
    /// SIGSTOP: frozen, its sockets open and silent.
    Stop,
    /// SIGCONT: thawed after [`Signal::Stop`].
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// Which `whtunnel` command a [`Spawn`] runs; it decides where the start-up
/// line is printed and what it says.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// "Forwarding <public URL> -> <target>" on stdout.
    Listen,
    /// "whtunnel relay listening on <addr> ..." on stderr.
    Relay,
}

/// A `whtunnel` process to start: [`Spawn::listen`] or [`Spawn::relay`],
/// more arguments, then [`Spawn::start`].
pub struct Spawn {
    kind: Kind,
    cmd: Command,
    /// A file that also gets every line of the watched output.
    tee: Option<PathBuf>,
}

impl Spawn {
    /// `whtunnel listen <target> --no-tui --data-dir <data_dir>`; its log
    /// (stderr) goes to the test's output unless [`Spawn::quiet`].
    pub fn listen(target: &str, data_dir: &Path) -> Spawn {
        Spawn::listen_with(&[target], data_dir)
    }

    /// `whtunnel listen <args> --no-tui --data-dir <data_dir>`: no TARGET
    /// when a config file gives one.
    pub fn listen_with(args: &[&str], data_dir: &Path) -> Spawn {
        let mut cmd = Command::new(bin());
        cmd.arg("listen")
            .args(args)
            .args(["--no-tui", "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Spawn {
            kind: Kind::Listen,
            cmd,
            tee: None,
        }
    }

    /// `whtunnel relay --data-dir <data_dir>`.
    pub fn relay(data_dir: &Path) -> Spawn {
        let mut cmd = Command::new(bin());
        cmd.args(["relay", "--data-dir"])
            .arg(data_dir)
            .stderr(Stdio::piped());
        Spawn {
            kind: Kind::Relay,
            cmd,
            tee: None,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Spawn {
        self.cmd.env(key, value);
        self
    }

    /// Discards a `listen` process's log, for tests whose processes are
    /// killed and restarted so often that it would drown the test output.
    pub fn quiet(mut self) -> Spawn {
        if let Kind::Listen = self.kind {
            self.cmd.stderr(Stdio::null());
        }
        self
    }

    /// Appends a `listen` process's log (stderr) to `path` instead of the
    /// test's output, for evidence after a long run.
    pub fn log_to(mut self, path: &Path) -> Spawn {
        if let Kind::Listen = self.kind {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            self.cmd.stderr(Stdio::from(file));
        }
        self
    }

    /// Also appends every line of the watched output (stdout for `listen`,
    /// stderr for `relay`) to `path`.
    pub fn tee(mut self, path: &Path) -> Spawn {
        self.tee = Some(path.to_path_buf());
        self
    }

    /// Spawns the process and waits for its start-up line.
    pub async fn start(mut self) -> Process {
        let mut child = self.cmd.kill_on_drop(true).spawn().unwrap();
        let output: Box<dyn AsyncRead + Unpin + Send> = match self.kind {
            Kind::Listen => Box::new(child.stdout.take().unwrap()),
            Kind::Relay => Box::new(child.stderr.take().unwrap()),
        };
        let mut tee = self.tee.as_ref().map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
        });
        // Read all the time, so a chatty process never blocks on a full pipe.
        let (tx, mut lines) = mpsc::unbounded_channel();
        let keep = Arc::new(AtomicBool::new(true));
        let keeping = keep.clone();
        tokio::spawn(async move {
            let mut output = BufReader::new(output).lines();
            while let Ok(Some(line)) = output.next_line().await {
                if let Some(file) = &mut tee {
                    let _ = writeln!(file, "{line}");
                }
                if keeping.load(Ordering::Relaxed) && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (first_line, public_url) = tokio::time::timeout(START_UP, async {
            loop {
                let line = lines.recv().await.expect("a start-up line");
                match self.kind {
                    Kind::Listen => {
                        let url = forwarding_url(&line);
                        return (line, url);
                    }
                    Kind::Relay => {
                        // Anything logged before it is not the start-up line.
                        if let Some(url) = relay_url(&line) {
                            return (line, url);
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{:?} prints its start-up line within {START_UP:?}",
                self.kind
            )
        });
        Process {
            child,
            lines,
            keep,
            first_line,
            public_url,
        }
    }
}

/// The public URL in "Forwarding http://127.0.0.1:PORT/t/NAME -> http://...".
fn forwarding_url(line: &str) -> String {
    let rest = line
        .strip_prefix("Forwarding ")
        .unwrap_or_else(|| panic!("{line}"));
    let (url, to) = rest.split_once(" -> ").unwrap_or_else(|| panic!("{line}"));
    assert!(to.starts_with("http://"), "{line}");
    url.to_string()
}

/// `http://` and the address in "whtunnel relay listening on 127.0.0.1:PORT
/// (tunnels at http://127.0.0.1:PORT/t/<name>)".
fn relay_url(line: &str) -> Option<String> {
    let rest = line.strip_prefix("whtunnel relay listening on ")?;
    let addr = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("{line}"));
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| panic!("{line}"));
    Some(format!("http://{addr}"))
}

/// A running `whtunnel` process, killed when dropped.
pub struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Cleared by [`Process::discard_lines`].
    keep: Arc<AtomicBool>,
    /// The line that said the process was up.
    pub first_line: String,
    /// For `listen`, the tunnel's public URL; for `relay`, `http://` and the
    /// address it listens on.
    pub public_url: String,
}

impl Process {
    /// The address a relay listens on.
    pub fn addr(&self) -> SocketAddr {
        self.public_url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not a relay: {}", self.public_url))
    }

    /// The next line after the start-up line (stdout for `listen`, stderr
    /// for `relay`).
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(SETTLE, self.lines.recv())
            .await
            .expect("a log line within 10 s")
            .expect("a line")
    }

    /// From now on, lines after the start-up line are read and dropped
    /// (still [`Spawn::tee`]d) instead of kept for [`Process::next_line`]:
    /// for a process that logs every exchange through a long run.
    pub fn discard_lines(&self) {
        self.keep.store(false, Ordering::Relaxed);
    }

    /// The names of the process's threads (Linux: `/proc/PID/task/*/comm`).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.id().expect("process still running");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/PID/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let pid = self.child.id().expect("process still running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{}", sig.name()), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{} {pid}", sig.name());
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(SETTLE, self.child.wait())
            .await
            .expect("the process exits within 10 s")
            .unwrap()
    }

    /// SIGINT, as Ctrl-C would, then waits for the process to exit.
    pub async fn stop(mut self) -> ExitStatus {
        self.signal(Signal::Int);
        self.wait().await
    }
}
