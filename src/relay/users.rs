//! Relay users: who may connect agents, with which tunnel names, and how
//! many at once. Kept in a `--users-file` (TOML) that holds token *hashes*
//! only, edited by `whtunnel relay user add|revoke` and re-read by a running
//! relay within a fraction of a second (see [`UsersWatch`]).
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! salt = "9f2c…"            # 16 random bytes, hex
//! token_sha256 = "4be1…"    # SHA-256(salt ‖ token), hex
//! names = ["alice-*", "shop"]
//! max_tunnels = 5          # optional, default 10
//! ```
//!
//! Why a salted SHA-256 and not argon2: the tokens are 256 random bits made
//! by `user add`, never chosen by people, so no dictionary applies and a
//! brute-force search of the hash is 2^256 work however fast the hash is; a
//! slow hash only protects low-entropy secrets, and would make each agent
//! upgrade cost tens of milliseconds of CPU. The per-user salt keeps equal
//! hashes from showing that two users share a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::Tokens;

/// Tunnels one user may have connected at once unless the file says.
pub const DEFAULT_MAX_TUNNELS: u32 = 10;

/// The name every plain `--token` relay gives its one user.
pub const TOKEN_USER: &str = "token";

/// Errors reading or changing a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("users file {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, one line.
        why: String,
    },
    /// `user add` for a user that exists.
    #[error("user '{0}' already exists; revoke it first to give it a new token")]
    Exists(String),
    /// `user revoke` for a user that does not exist.
    #[error("no user '{0}' in the users file")]
    NoSuchUser(String),
    /// A user or pattern that cannot be used.
    #[error("{0}")]
    BadInput(String),
}

/// One user as stored in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user's name (shown in logs and refusals; never secret).
    pub name: String,
    /// 16 random bytes, hex.
    pub salt: String,
    /// SHA-256(salt bytes ‖ token bytes), hex.
    pub token_sha256: String,
    /// Name patterns: `*` matches any run of characters.
    pub names: Vec<String>,
    /// Tunnels this user may have connected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tunnels: Option<u32>,
}

/// The whole users file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users, in the order they were added.
    #[serde(default, rename = "user")]
    pub users: Vec<UserEntry>,
}

/// True when `name` matches `pattern`, where `*` matches any run
/// (possibly empty) of characters and everything else matches itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    if !name.ends_with(last) {
        return false;
    }
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// `TOKEN_USER` is reserved: names a plain-token relay recorded as its
/// one user's must not pass to a users-file user of that name.
fn valid_user_name(name: &str) -> bool {
    name != TOKEN_USER
        && !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 63
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*'))
}

fn salted(salt: &[u8], token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// A new token: 256 random bits, base64url (43 characters).
pub fn new_token() -> String {
    data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 32]>())
}

impl UsersFile {
    /// Reads and checks a users file. A missing file is an empty one only
    /// when `missing_ok` (for `user add`).
    pub fn load(path: &Path, missing_ok: bool) -> Result<UsersFile, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(UsersFile::default())
            }
            Err(source) => {
                return Err(UsersError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<UsersFile, UsersError> {
        let invalid = |why: String| UsersError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let file: UsersFile = toml::from_str(text).map_err(|e| invalid(e.message().into()))?;
        let mut seen = std::collections::HashSet::new();
        for u in &file.users {
            if !valid_user_name(&u.name) {
                return Err(invalid(format!("invalid user name '{}'", u.name)));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(invalid(format!("user '{}' appears twice", u.name)));
            }
            let salt_ok = data_encoding::HEXLOWER_PERMISSIVE
                .decode(u.salt.as_bytes())
                .is_ok_and(|s| s.len() >= 16);
            let hash_ok = data_encoding::HEXLOWER_PERMISSIVE
                .decode(u.token_sha256.as_bytes())
                .is_ok_and(|h| h.len() == 32);
            if !salt_ok || !hash_ok {
                return Err(invalid(format!(
                    "user '{}': salt must be 16+ bytes and token_sha256 32 bytes, in hex",
                    u.name
                )));
            }
            if let Some(p) = u.names.iter().find(|p| !valid_pattern(p)) {
                return Err(invalid(format!(
                    "user '{}': invalid name pattern '{p}' (a-z, 0-9, '-' and '*')",
                    u.name
                )));
            }
        }
        Ok(file)
    }

    /// Writes the file readable by its owner alone (0600), replacing it
    /// whole so a relay reading it never sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        use std::io::Write;
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = format!(
            "# whtunnel relay users: token hashes only (see `whtunnel relay user add`).\n{}",
            toml::to_string(self).map_err(|e| UsersError::BadInput(e.to_string()))?
        );
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            file_name.as_deref().unwrap_or("users"),
            std::process::id()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Adds `user` with name `patterns`; returns the new token, which
    /// exists nowhere else.
    pub fn add(
        &mut self,
        user: &str,
        patterns: &[String],
        max_tunnels: Option<u32>,
    ) -> Result<String, UsersError> {
        if !valid_user_name(user) {
            return Err(UsersError::BadInput(format!(
                "invalid user name '{user}': use 1-64 characters of A-Z, a-z, 0-9, '-', '_' and '.' ('{TOKEN_USER}' is reserved)"
            )));
        }
        if patterns.is_empty() {
            return Err(UsersError::BadInput(
                "give the user's tunnel names with --names (patterns like alice-*)".into(),
            ));
        }
        if let Some(p) = patterns.iter().find(|p| !valid_pattern(p)) {
            return Err(UsersError::BadInput(format!(
                "invalid name pattern '{p}': use a-z, 0-9, '-' and '*'"
            )));
        }
        if self.users.iter().any(|u| u.name == user) {
            return Err(UsersError::Exists(user.to_string()));
        }
        let token = new_token();
        let salt = rand::random::<[u8; 16]>();
        self.users.push(UserEntry {
            name: user.to_string(),
            salt: data_encoding::HEXLOWER.encode(&salt),
            token_sha256: data_encoding::HEXLOWER.encode(&salted(&salt, &token)),
            names: patterns.to_vec(),
            max_tunnels,
        });
        Ok(token)
    }

    /// Removes `user`.
    pub fn revoke(&mut self, user: &str) -> Result<(), UsersError> {
        let before = self.users.len();
        self.users.retain(|u| u.name != user);
        if self.users.len() == before {
            return Err(UsersError::NoSuchUser(user.to_string()));
        }
        Ok(())
    }
}

/// One user as the relay checks it.
#[derive(Debug)]
struct User {
    name: Arc<str>,
    salt: Vec<u8>,
    hash: [u8; 32],
    patterns: Vec<String>,
    max_tunnels: u32,
}

/// Who an authenticated agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's name.
    pub user: Arc<str>,
    /// The stored hash the token matched: a new token for the same user
    /// (revoke, then add) is another identity, and cuts the old agents off.
    pub key: [u8; 32],
    /// Name patterns; `None`: every name.
    pub patterns: Option<Vec<String>>,
    /// Tunnels this user may have connected at once; `None`: no cap.
    pub max_tunnels: Option<u32>,
}

impl Identity {
    /// True when this user may hold tunnel `name`.
    pub fn may_hold(&self, name: &str) -> bool {
        self.patterns
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| pattern_matches(p, name)))
    }
}

/// Who may connect: plain tokens (one user, every name), or a users file.
#[derive(Clone)]
pub enum Accounts {
    /// Plain `--token` values: one user, [`TOKEN_USER`], who owns every name.
    Tokens(Tokens),
    /// The users of a users file, re-read while the relay runs.
    Users(Arc<UsersWatch>),
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accounts::Tokens(t) => write!(f, "{t:?}"),
            Accounts::Users(w) => write!(f, "Users({})", w.path.display()),
        }
    }
}

impl Accounts {
    /// Who presents `token`, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        match self {
            Accounts::Tokens(t) => t.accepts(token).then(|| Identity {
                user: Arc::from(TOKEN_USER),
                key: [0; 32],
                patterns: None,
                max_tunnels: None,
            }),
            Accounts::Users(w) => w.authenticate(token),
        }
    }

    /// True when `id` is still a valid identity (its user not revoked, its
    /// token unchanged, `name` still among its names).
    pub fn still_valid(&self, id: &Identity, name: &str) -> bool {
        match self {
            Accounts::Tokens(_) => true,
            Accounts::Users(w) => w.users.read().iter().any(|u| {
                u.name == id.user
                    && u.hash == id.key
                    && u.patterns.iter().any(|p| pattern_matches(p, name))
            }),
        }
    }
}

/// A users file as a running relay sees it: loaded at start, re-read when
/// its contents change (checked every [`UsersWatch::POLL`]).
pub struct UsersWatch {
    path: PathBuf,
    users: RwLock<Vec<User>>,
    last_text: parking_lot::Mutex<String>,
    /// [`UsersWatch::fingerprint`] of the users as loaded.
    fingerprint: parking_lot::Mutex<String>,
}

impl std::fmt::Debug for UsersWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UsersWatch({})", self.path.display())
    }
}

/// SHA-256 (hex) of the users, sorted by name, as JSON: two files with
/// the same users have the same fingerprint whatever their comments,
/// layout or order.
fn fingerprint(file: &UsersFile) -> String {
    let mut users: Vec<&UserEntry> = file.users.iter().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let json = serde_json::to_vec(&users).expect("users serialise");
    data_encoding::HEXLOWER.encode(&Sha256::digest(&json))
}

fn compile(file: &UsersFile) -> Vec<User> {
    file.users
        .iter()
        .filter_map(|u| {
            let salt = data_encoding::HEXLOWER_PERMISSIVE
                .decode(u.salt.as_bytes())
                .ok()?;
            let hash: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
                .decode(u.token_sha256.as_bytes())
                .ok()?
                .try_into()
                .ok()?;
            Some(User {
                name: Arc::from(u.name.as_str()),
                salt,
                hash,
                patterns: u.names.clone(),
                max_tunnels: u.max_tunnels.unwrap_or(DEFAULT_MAX_TUNNELS),
            })
        })
        .collect()
}

impl UsersWatch {
    /// How often the file is checked for changes: a revoked user's agents
    /// are cut off within this (plus the sweep).
    pub const POLL: std::time::Duration = std::time::Duration::from_millis(200);

    /// Loads the users file (it must exist and be valid).
    pub fn open(path: &Path) -> Result<UsersWatch, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = UsersFile::parse(path, &text)?;
        Ok(UsersWatch {
            path: path.to_path_buf(),
            users: RwLock::new(compile(&file)),
            last_text: parking_lot::Mutex::new(text),
            fingerprint: parking_lot::Mutex::new(fingerprint(&file)),
        })
    }

    /// Re-reads the file if its contents changed. `Ok(true)` when the users
    /// changed; an invalid file keeps the users as they were.
    pub fn reload(&self) -> Result<bool, UsersError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| UsersError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut last = self.last_text.lock();
        if *last == text {
            return Ok(false);
        }
        let file = UsersFile::parse(&self.path, &text)?;
        *self.users.write() = compile(&file);
        *self.fingerprint.lock() = fingerprint(&file);
        *last = text;
        Ok(true)
    }

    /// Tells users files apart by their users (not their layout): relays
    /// of one cluster compare it to find one whose file differs.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.lock().clone()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.read().len()
    }

    /// True when the file has no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who presents `token`. Every user's hash is computed and compared in
    /// constant time, so the time taken does not tell which one matched.
    fn authenticate(&self, token: &str) -> Option<Identity> {
        if token.is_empty() {
            return None;
        }
        let users = self.users.read();
        let mut found = None;
        for u in users.iter() {
            let ok: bool = salted(&u.salt, token).ct_eq(&u.hash).into();
            if ok && found.is_none() {
                found = Some(Identity {
                    user: u.name.clone(),
                    key: u.hash,
                    patterns: Some(u.patterns.clone()),
                    max_tunnels: Some(u.max_tunnels),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("alice-*", "alice-shop"));
        assert!(pattern_matches("alice-*", "alice-"));
        assert!(!pattern_matches("alice-*", "alic"));
        assert!(!pattern_matches("alice-*", "bob-alice-x"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("shop", "shop"));
        assert!(!pattern_matches("shop", "shop2"));
        assert!(pattern_matches("a-*-z", "a-mid-z"));
        assert!(!pattern_matches("a-*-z", "a-z"));
        assert!(pattern_matches("*-dev", "x-dev"));
        assert!(pattern_matches("a*b*c", "a-b-c"));
        assert!(!pattern_matches("a*b*c", "a-c"));
    }

    #[test]
    fn add_save_load_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut f = UsersFile::load(&path, true).unwrap();
        let token = f.add("alice", &["alice-*".into()], Some(2)).unwrap();
        assert!(token.len() >= 43);
        assert!(matches!(
            f.add("alice", &["x".into()], None),
            Err(UsersError::Exists(_))
        ));
        assert!(matches!(
            f.add(TOKEN_USER, &["x".into()], None),
            Err(UsersError::BadInput(_))
        ));
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "the token itself is never stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let watch = UsersWatch::open(&path).unwrap();
        let id = watch.authenticate(&token).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.max_tunnels, Some(2));
        assert!(id.may_hold("alice-1") && !id.may_hold("bob-1"));
        assert!(watch.authenticate("wrong").is_none());
        assert!(watch.authenticate("").is_none());
        let mut f = UsersFile::load(&path, false).unwrap();
        f.revoke("alice").unwrap();
        assert!(matches!(f.revoke("alice"), Err(UsersError::NoSuchUser(_))));
        f.save(&path).unwrap();
        assert!(watch.reload().unwrap());
        assert!(watch.authenticate(&token).is_none());
        assert!(!watch.reload().unwrap(), "unchanged file: no reload");
    }

    #[test]
    fn the_fingerprint_tells_users_apart_not_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        let mut f = UsersFile::default();
        f.add("alice", &["alice-*".into()], None).unwrap();
        f.add("bob", &["*".into()], Some(3)).unwrap();
        f.save(&a).unwrap();
        let mut reordered = f.clone();
        reordered.users.reverse();
        reordered.save(&b).unwrap();
        let text = std::fs::read_to_string(&b).unwrap();
        std::fs::write(&b, format!("# copied\n\n{text}")).unwrap();
        let (wa, wb) = (UsersWatch::open(&a).unwrap(), UsersWatch::open(&b).unwrap());
        assert_eq!(wa.fingerprint(), wb.fingerprint());
        assert_eq!(wa.fingerprint().len(), 64);
        f.revoke("bob").unwrap();
        f.save(&a).unwrap();
        assert!(wa.reload().unwrap());
        assert_ne!(wa.fingerprint(), wb.fingerprint());
    }

    #[test]
    fn invalid_files_are_refused_with_a_reason() {
        let p = Path::new("u.toml");
        let e = UsersFile::parse(
            p,
            "[[user]]\nname='a b'\nsalt='00'\ntoken_sha256='00'\nnames=[]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid user name"), "{e}");
        let e = UsersFile::parse(p, "[[user]]\nnom='a'").unwrap_err();
        assert!(e.to_string().starts_with("users file u.toml:"), "{e}");
    }
}
