//! Token handling at the command line: `whtunnel relay user add|revoke`,
//! tokens read from files rather than argv, and the warnings for weak
//! tokens and tokens sent in clear.

use std::path::Path;

use anyhow::{Context, Result};

use super::args::UserCommand;
use crate::agent::RelayUrl;
use crate::relay::UsersFile;

/// Shortest `--token` not warned about: 22 base64 characters carry 132
/// bits, 32 hex characters 128. Shorter tokens can be guessed.
pub(crate) const MIN_TOKEN_CHARS: usize = 22;

/// Runs `whtunnel relay user ...`. The new token goes to stdout, once,
/// and nowhere else.
pub(crate) fn user_command(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            user,
            names,
            max_tunnels,
            users_file,
        } => {
            let mut file = UsersFile::load(&users_file, true)?;
            let token = file.add(&user, &names, Some(max_tunnels))?;
            file.save(&users_file)?;
            println!("{token}");
            eprintln!(
                "user '{user}' added to {} (names: {}); the token above is shown only once: \
                 give it to the user, who passes it with --token-file or WHTUNNEL_TOKEN",
                users_file.display(),
                names.join(", ")
            );
        }
        UserCommand::Revoke { user, users_file } => {
            let mut file = UsersFile::load(&users_file, false)?;
            file.revoke(&user)?;
            file.save(&users_file)?;
            eprintln!(
                "user '{user}' revoked in {}; a running relay cuts its agents off within a second",
                users_file.display()
            );
        }
    }
    Ok(())
}

/// The token from `--token` / `WHTUNNEL_TOKEN`, or the first line of
/// `--token-file`.
pub(crate) fn token_from(token: Option<String>, file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        let t = text.lines().next().unwrap_or("").trim().to_string();
        if t.is_empty() {
            anyhow::bail!("token file {} is empty", path.display());
        }
        return Ok(Some(t));
    }
    Ok(token.filter(|t| !t.is_empty()))
}

/// A loud warning for a token short enough to guess, if it is.
pub(crate) fn weak_token_warning(token: &str) -> Option<String> {
    (token.chars().count() < MIN_TOKEN_CHARS).then(|| {
        format!(
            "WARNING: a relay token of {} characters can be guessed; use at least {MIN_TOKEN_CHARS} \
             random characters (e.g. `openssl rand -base64 32`), or a --users-file \
             (`whtunnel relay user add`)",
            token.chars().count()
        )
    })
}

/// A warning when the token would travel unencrypted to a relay off this
/// machine.
pub(crate) fn cleartext_warning(url: &RelayUrl) -> Option<String> {
    if url.is_tls() {
        return None;
    }
    let host = url.host();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "warning: the relay URL is plain http:// to {host}: the token travels in clear and \
             anyone on the path can read it and your webhooks; use https://"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings() {
        assert!(weak_token_warning("x").is_some());
        assert!(weak_token_warning(&"a".repeat(21)).is_some());
        assert!(weak_token_warning(&"a".repeat(22)).is_none());
        for url in ["http://relay.example.com", "ws://10.0.0.1:8787"] {
            let w = cleartext_warning(&url.parse().unwrap()).unwrap();
            assert!(w.contains("in clear"), "{w}");
        }
        for url in [
            "https://relay.example.com",
            "http://127.0.0.1:8787",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(cleartext_warning(&url.parse().unwrap()).is_none(), "{url}");
        }
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret-token \nignored\n").unwrap();
        assert_eq!(
            token_from(Some("x".into()), Some(&p)).unwrap().as_deref(),
            Some("s3cret-token")
        );
        assert_eq!(
            token_from(Some("x".into()), None).unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(token_from(Some(String::new()), None).unwrap(), None);
        std::fs::write(&p, "\n").unwrap();
        assert!(token_from(None, Some(&p)).is_err());
    }
}
