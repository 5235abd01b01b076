//! Owned tunnel names: a name belongs to the first user who held it, for
//! as long as that user keeps using it (see [`NameOwners::expire`]). Another
//! user can neither claim it, take it over nor receive its held events.
//!
//! [`NameOwners`] is a trait, and the relay calls nothing else, so that the
//! one-relay store here ([`SqliteOwners`], in the data dir's `held.db`
//! beside the held events) can be swapped for a store several relays share
//! (a NATS KV bucket for `--cluster`, [`crate::cluster::owners`]) without
//! touching the relay's code. The trait is async because that store asks
//! NATS; the SQLite store runs its queries on the blocking pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

/// Names one user of a users file may own unless `--max-names-per-user`
/// says otherwise.
pub const DEFAULT_MAX_NAMES: u64 = 20;

/// A name no agent held for this long is forgotten, with its held events.
pub const DEFAULT_NAME_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a claim is refused. Each reads as one line the agent prints.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// Another user owns the name.
    #[error("tunnel name '{name}' belongs to another user; pick another --name")]
    Owned {
        /// The name.
        name: String,
    },
    /// The user owns as many names as allowed.
    #[error("user '{user}' already owns {max} tunnel names (the relay's --max-names-per-user); reuse one of them, or ask the relay's operator")]
    TooManyNames {
        /// The user.
        user: String,
        /// The cap.
        max: u64,
    },
    /// The store failed.
    #[error("the relay could not record the tunnel name's owner: {0}")]
    Store(String),
}

/// What a successful claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The user already owned the name.
    Kept,
    /// The name was free and is the user's now: whatever is still held for
    /// it is a previous owner's, never this user's, and is to be dropped
    /// before the agent is taken.
    New,
}

/// The store failed.
#[derive(Debug, thiserror::Error)]
#[error("owned-names store: {0}")]
pub struct OwnersError(pub String);

/// Says whether a name is held by an agent right now (on this relay).
pub type InUse<'a> = &'a (dyn Fn(&str) -> bool + Sync);

impl From<rusqlite::Error> for OwnersError {
    fn from(e: rusqlite::Error) -> Self {
        OwnersError(e.to_string())
    }
}

/// Who owns which tunnel names. See the module comment for why this is a
/// trait: a cluster backs it with a shared store.
#[async_trait::async_trait]
pub trait NameOwners: Send + Sync {
    /// Claims `name` for `user`, or confirms they own it (and marks it
    /// used now). A new claim is refused when `user` already owns
    /// `max_names` names (0: no cap).
    async fn claim(&self, name: &str, user: &str, max_names: u64) -> Result<Claimed, Refused>;

    /// Undoes a [`Claimed::New`] claim whose agent was not taken: `name`
    /// is free again if `user` still owns it.
    async fn release(&self, name: &str, user: &str) -> Result<(), OwnersError>;

    /// The user owning `name`, if any.
    async fn owner(&self, name: &str) -> Result<Option<String>, OwnersError>;

    /// Marks `name` as used now (its agent connected or left).
    async fn touch(&self, name: &str) -> Result<(), OwnersError>;

    /// Forgets names unused for `unused_for`, except those `in_use` says
    /// are held right now; returns the names forgotten.
    async fn expire(
        &self,
        unused_for: Duration,
        in_use: InUse<'_>,
    ) -> Result<Vec<String>, OwnersError>;
}

/// Milliseconds since the Unix epoch, this machine's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Owned names in SQLite, durable across restarts.
pub struct SqliteOwners {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS owners (
    name TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    claimed_ms INTEGER NOT NULL,
    used_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS owners_by_user ON owners(user);
";

impl SqliteOwners {
    /// Opens the owners table in `dir/held.db` (created if needed).
    pub fn open(dir: &Path) -> Result<Self, OwnersError> {
        std::fs::create_dir_all(dir).map_err(|e| OwnersError(e.to_string()))?;
        let conn = Connection::open(dir.join("held.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteOwners {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, OwnersError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| OwnersError(e.to_string()))?
            .map_err(OwnersError::from)
    }
}

fn sqlite_claim(
    conn: &mut Connection,
    name: &str,
    user: &str,
    max_names: u64,
) -> Result<Claimed, Refused> {
    let store = |e: rusqlite::Error| Refused::Store(e.to_string());
    // IMMEDIATE: the write lock from the start, so the check and the
    // insert are one step and a concurrent writer (the held store, on
    // the same file) makes this wait instead of fail.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(store)?;
    let owner: Option<String> = tx
        .query_row(
            "SELECT user FROM owners WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
        .map_err(store)?;
    let now = now_ms();
    let claimed = match owner {
        Some(o) if o == user => {
            tx.execute(
                "UPDATE owners SET used_ms = ?2 WHERE name = ?1",
                params![name, now],
            )
            .map_err(store)?;
            Claimed::Kept
        }
        Some(_) => {
            return Err(Refused::Owned {
                name: name.to_string(),
            })
        }
        None => {
            let owned: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM owners WHERE user = ?1",
                    params![user],
                    |r| r.get(0),
                )
                .map_err(store)?;
            if max_names > 0 && owned as u64 >= max_names {
                return Err(Refused::TooManyNames {
                    user: user.to_string(),
                    max: max_names,
                });
            }
            tx.execute(
                "INSERT INTO owners(name, user, claimed_ms, used_ms) VALUES (?1, ?2, ?3, ?3)",
                params![name, user, now],
            )
            .map_err(store)?;
            Claimed::New
        }
    };
    tx.commit().map_err(store)?;
    Ok(claimed)
}

#[async_trait::async_trait]
impl NameOwners for SqliteOwners {
    async fn claim(&self, name: &str, user: &str, max_names: u64) -> Result<Claimed, Refused> {
        let (conn, name, user) = (self.conn.clone(), name.to_string(), user.to_string());
        tokio::task::spawn_blocking(move || sqlite_claim(&mut conn.lock(), &name, &user, max_names))
            .await
            .unwrap_or_else(|e| Err(Refused::Store(e.to_string())))
    }

    async fn release(&self, name: &str, user: &str) -> Result<(), OwnersError> {
        let (name, user) = (name.to_string(), user.to_string());
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM owners WHERE name = ?1 AND user = ?2",
                params![name, user],
            )
            .map(drop)
        })
        .await
    }

    async fn owner(&self, name: &str) -> Result<Option<String>, OwnersError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT user FROM owners WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    async fn touch(&self, name: &str) -> Result<(), OwnersError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE owners SET used_ms = ?2 WHERE name = ?1",
                params![name, now_ms()],
            )
            .map(drop)
        })
        .await
    }

    async fn expire(
        &self,
        unused_for: Duration,
        in_use: InUse<'_>,
    ) -> Result<Vec<String>, OwnersError> {
        let cutoff = now_ms() - unused_for.as_millis() as i64;
        let stale: Vec<String> = self
            .with_conn(move |conn| {
                conn.prepare("SELECT name FROM owners WHERE used_ms < ?1")?
                    .query_map(params![cutoff], |r| r.get(0))?
                    .collect::<Result<_, _>>()
            })
            .await?;
        let stale: Vec<String> = stale.into_iter().filter(|n| !in_use(n)).collect();
        // `used_ms < cutoff` again: a name used since the query stays.
        self.with_conn(move |conn| {
            let mut gone = Vec::new();
            for name in stale {
                let deleted = conn.execute(
                    "DELETE FROM owners WHERE name = ?1 AND used_ms < ?2",
                    params![name, cutoff],
                )?;
                if deleted > 0 {
                    gone.push(name);
                }
            }
            Ok(gone)
        })
        .await
    }
}

/// Owned names in memory, for a relay without a data dir (the embedded
/// one): nothing to keep across restarts there.
#[derive(Default)]
pub struct MemoryOwners {
    names: Mutex<HashMap<String, (String, i64)>>,
}

#[async_trait::async_trait]
impl NameOwners for MemoryOwners {
    async fn claim(&self, name: &str, user: &str, max_names: u64) -> Result<Claimed, Refused> {
        let mut names = self.names.lock();
        match names.get_mut(name) {
            Some((o, used)) if o == user => {
                *used = now_ms();
                Ok(Claimed::Kept)
            }
            Some(_) => Err(Refused::Owned {
                name: name.to_string(),
            }),
            None => {
                let owned = names.values().filter(|(o, _)| o == user).count() as u64;
                if max_names > 0 && owned >= max_names {
                    return Err(Refused::TooManyNames {
                        user: user.to_string(),
                        max: max_names,
                    });
                }
                names.insert(name.to_string(), (user.to_string(), now_ms()));
                Ok(Claimed::New)
            }
        }
    }

    async fn release(&self, name: &str, user: &str) -> Result<(), OwnersError> {
        let mut names = self.names.lock();
        if names.get(name).is_some_and(|(o, _)| o == user) {
            names.remove(name);
        }
        Ok(())
    }

    async fn owner(&self, name: &str) -> Result<Option<String>, OwnersError> {
        Ok(self.names.lock().get(name).map(|(o, _)| o.clone()))
    }

    async fn touch(&self, name: &str) -> Result<(), OwnersError> {
        if let Some((_, used)) = self.names.lock().get_mut(name) {
            *used = now_ms();
        }
        Ok(())
    }

    async fn expire(
        &self,
        unused_for: Duration,
        in_use: InUse<'_>,
    ) -> Result<Vec<String>, OwnersError> {
        let cutoff = now_ms() - unused_for.as_millis() as i64;
        let mut names = self.names.lock();
        let gone: Vec<String> = names
            .iter()
            .filter(|(n, (_, used))| *used < cutoff && !in_use(n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            names.remove(n);
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour every store shares.
    async fn exercise(o: &dyn NameOwners) {
        assert_eq!(o.claim("a-1", "alice", 2).await, Ok(Claimed::New));
        assert_eq!(o.claim("a-1", "alice", 2).await, Ok(Claimed::Kept));
        assert_eq!(
            o.claim("a-1", "bob", 2).await,
            Err(Refused::Owned { name: "a-1".into() })
        );
        o.claim("a-2", "alice", 2).await.unwrap();
        assert!(matches!(
            o.claim("a-3", "alice", 2).await,
            Err(Refused::TooManyNames { max: 2, .. })
        ));
        o.claim("a-3", "alice", 0).await.unwrap();
        assert_eq!(o.owner("a-1").await.unwrap().as_deref(), Some("alice"));
        assert_eq!(o.owner("zz").await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(400)).await;
        o.touch("a-2").await.unwrap();
        let mut gone = o
            .expire(Duration::from_millis(200), &|n| n == "a-3")
            .await
            .unwrap();
        gone.sort();
        assert_eq!(gone, vec!["a-1".to_string()]);
        // Free again: a new owner's claim, which drops what was held.
        assert_eq!(o.claim("a-1", "bob", 2).await, Ok(Claimed::New));
        // Released (its agent was not taken): free once more, and only by
        // its owner.
        o.release("a-1", "alice").await.unwrap();
        assert_eq!(o.owner("a-1").await.unwrap().as_deref(), Some("bob"));
        o.release("a-1", "bob").await.unwrap();
        assert_eq!(o.owner("a-1").await.unwrap(), None);
        assert_eq!(o.claim("a-1", "alice", 0).await, Ok(Claimed::New));
    }

    #[tokio::test]
    async fn memory_owners() {
        exercise(&MemoryOwners::default()).await;
    }

    #[tokio::test]
    async fn sqlite_owners_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&SqliteOwners::open(dir.path()).unwrap()).await;
        let again = SqliteOwners::open(dir.path()).unwrap();
        assert_eq!(again.owner("a-1").await.unwrap().as_deref(), Some("alice"));
    }
}
