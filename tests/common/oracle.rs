//! The signature oracles as a local app: `tests/oracles/verify_app.py`
//! verifies webhooks with the providers' official libraries (from the venv
//! `tests/oracles/setup.sh` makes) and answers 200 or 400 with the
//! library's reason.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The Stripe secret the app checks with.
pub const STRIPE_SECRET: &str = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc";
/// The Standard Webhooks secret the app checks with.
pub const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The FinAegis secret the app checks with.
pub const FINAEGIS_SECRET: &str = "fa_whsec_0123456789abcdef";

/// The venv's python, or `None` when skipping is asked for; panics with
/// the setup command otherwise.
pub fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let py = target.join("oracles/venv/bin/python");
    if py.is_file() {
        return Some(py);
    }
    if std::env::var("WHTUNNEL_SKIP_ORACLES").as_deref() == Ok("1") {
        eprintln!("oracles skipped (WHTUNNEL_SKIP_ORACLES=1)");
        return None;
    }
    panic!(
        "the oracle libraries are not installed in {}: run `bash tests/oracles/setup.sh` \
         (needs python3-venv and npm), or set WHTUNNEL_SKIP_ORACLES=1 to skip these tests",
        py.display()
    );
}

/// The Python app, killed when dropped.
pub struct VerifyApp {
    child: Child,
    /// Where it listens.
    pub url: String,
}

impl Drop for VerifyApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_app(py: &Path) -> VerifyApp {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/verify_app.py");
    let mut child = Command::new(py)
        .arg(script)
        .args([STRIPE_SECRET, STANDARD_SECRET, FINAEGIS_SECRET])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line is printed once the socket listens (or the process
    // dies and the read ends).
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .unwrap_or_else(|| panic!("verify_app.py did not start: {line:?}"))
        .parse()
        .unwrap();
    VerifyApp {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}
