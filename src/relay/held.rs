//! Held events: the relay's durable queue for webhooks that arrive while a
//! known tunnel's agent is away. SQLite in WAL mode with `synchronous=FULL`,
//! so a `202 Accepted` is only sent once the event would survive a crash or
//! power loss. Bounded per tunnel by count, bytes and age.
//!
//! This module only stores; deciding when to hold and delivering held events
//! is done by [`super::public`] and [`super::agents`]. Calls block on SQLite:
//! callers run them on the blocking pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, OptionalExtension};

use crate::tunnel::protocol::RequestMeta;

/// Errors from the held-event store.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    /// The tunnel's queue is at one of its caps; the sender should retry later.
    #[error("the tunnel's held-event queue is full ({0}); retry later")]
    Full(&'static str),
    /// The relay-wide cap on held bytes is reached (every tunnel together).
    #[error("the relay's held-event storage is full; retry later")]
    RelayFull,
    /// SQLite failed (disk full, I/O error...).
    #[error("held-event store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be prepared.
    #[error("held-event store: {0}")]
    Io(#[from] std::io::Error),
}

pub use crate::tunnel::protocol::OfflinePolicy;

/// Per-tunnel bounds on held events.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// At most this many events per tunnel.
    pub max_events: u64,
    /// At most this many body bytes per tunnel.
    pub max_bytes: u64,
    /// Events older than this are deleted (and logged).
    pub max_age: Duration,
    /// At most this many body bytes held relay-wide, all tunnels together.
    pub max_total_bytes: u64,
}

impl Default for Caps {
    /// 10,000 events, 1 GiB, 72 hours per tunnel; 4 GiB relay-wide.
    fn default() -> Self {
        Caps {
            max_events: 10_000,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(72 * 3600),
            max_total_bytes: 4 << 30,
        }
    }
}

/// A request to hold.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event id (also sent to the sender in `whtunnel-event-id`).
    pub event_id: String,
    /// The tunnel it is for.
    pub tunnel: String,
    /// HTTP method.
    pub method: String,
    /// Path and query below the tunnel.
    pub path: String,
    /// Forwardable headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The relay's metadata (hop headers, remote address, ...).
    pub meta: RequestMeta,
    /// The complete body.
    pub body: Bytes,
}

/// A held event read back for delivery.
#[derive(Debug, Clone)]
pub struct HeldEvent {
    /// Queue position (arrival order).
    pub seq: i64,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// The event itself.
    pub event: NewEvent,
}

/// One held or dead-lettered event as `whtunnel held list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldSummary {
    /// The event id.
    pub event_id: String,
    /// When the relay received it (ms since the epoch).
    pub received_at_ms: i64,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// HTTP method (sender-controlled text).
    pub method: String,
    /// Path and query below the tunnel (sender-controlled text).
    pub path: String,
    /// Body size in bytes.
    pub body_bytes: u64,
    /// Why the last delivery failed, if one did.
    pub last_error: Option<String>,
    /// Moved to the dead-letter list: no longer delivered until retried.
    pub dead: bool,
}

/// Per-tunnel facts kept in memory so the request path does not query SQLite.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelState {
    /// Offline policy the agent asked for.
    pub policy: OfflinePolicy,
    /// Events stored and not yet delivered (dead letters not included).
    pub pending: u64,
    /// Dead-lettered events: kept, listed, not delivered until retried.
    pub dead: u64,
    /// The connected agent asked for strict order: new traffic queues
    /// behind held events instead of going live.
    pub strict: bool,
    /// Events admitted whose body is still being read or written. They do
    /// not hold back live traffic: a stalled upload must not put a tunnel
    /// in hold mode.
    pub storing: u64,
    /// Body bytes stored or reserved.
    pub bytes: u64,
    /// A delivery task is running for this tunnel.
    pub delivering: bool,
}

/// Where a public request goes, decided atomically with the delivery task
/// so nothing can be queued behind a backlog that is no longer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Forward it live to the agent.
    Live,
    /// Store it: a slot is reserved (see [`HeldStore::add_bytes`]).
    Hold,
    /// The agent is away and asked for 503s instead of holding.
    Reject,
    /// The tunnel's queue is at its event cap.
    Full,
    /// No agent ever held this name.
    Unknown,
}

/// The held-event store.
pub struct HeldStore {
    conn: Mutex<Connection>,
    tunnels: Mutex<HashMap<String, TunnelState>>,
    /// Body bytes stored or reserved, all tunnels together. Changed only
    /// with `tunnels` locked, so a check and its update are one step.
    total_bytes: AtomicU64,
    caps: Caps,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tunnels (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL DEFAULT 'hold',
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    tunnel TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    meta TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_tunnel ON events(tunnel, seq);
CREATE INDEX IF NOT EXISTS events_by_time ON events(received_at_ms);
";

/// Schema 2 (`user_version` 2): dead letters. Stores of schema 1 gain the
/// columns on open; their events are all pending, as before.
const MIGRATE_2: &str = "
ALTER TABLE events ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN last_error TEXT;
ALTER TABLE events ADD COLUMN dead_at_ms INTEGER;
ALTER TABLE tunnels ADD COLUMN owner TEXT;
PRAGMA user_version = 2;
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Headers are stored as JSON `[[name, base64(value)], ...]`: values are
/// bytes, and base64 keeps them exact.
fn encode_headers(h: &[(String, Vec<u8>)]) -> String {
    use base64::Engine;
    let list: Vec<(String, String)> = h
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect();
    serde_json::to_string(&list).expect("header list serialises")
}

fn decode_headers(s: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    let list: Vec<(String, String)> = serde_json::from_str(s).unwrap_or_default();
    list.into_iter()
        .filter_map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .ok()
                .map(|v| (k, v))
        })
        .collect()
}

impl HeldStore {
    /// Opens (creating if needed) `held.db` in `dir`.
    pub fn open(dir: &Path, caps: Caps) -> Result<Self, HeldError> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join("held.db");
        let conn = Connection::open(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // 202 promises durability: every commit reaches the disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < 2 {
            conn.execute_batch(&format!("BEGIN; {MIGRATE_2} COMMIT;"))?;
        }
        let mut tunnels = HashMap::new();
        let mut total = 0u64;
        {
            let mut stmt = conn.prepare(
                "SELECT t.name, t.policy, COUNT(e.seq), COUNT(e.dead_at_ms),
                        COALESCE(SUM(LENGTH(e.body)), 0)
                 FROM tunnels t LEFT JOIN events e ON e.tunnel = t.name GROUP BY t.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (name, policy, count, dead, bytes) = row?;
                total += bytes as u64;
                tunnels.insert(
                    name,
                    TunnelState {
                        policy: policy.parse().unwrap_or_default(),
                        pending: (count - dead) as u64,
                        dead: dead as u64,
                        strict: false,
                        storing: 0,
                        bytes: bytes as u64,
                        delivering: false,
                    },
                );
            }
        }
        Ok(HeldStore {
            conn: Mutex::new(conn),
            tunnels: Mutex::new(tunnels),
            total_bytes: AtomicU64::new(total),
            caps,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    /// Runs `f` without waiting for the disk at commit (`synchronous=NORMAL`
    /// in WAL mode: durable at the next checkpoint). For writes whose loss
    /// in a power cut costs nothing but a redelivery the agent recognises
    /// (deleting a delivered event, counting attempts): an fsync for each
    /// would cap the drain at the disk's sync rate.
    fn relaxed<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HeldError> {
        let conn = self.conn();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = f(&conn);
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(result?)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, TunnelState>> {
        self.tunnels.lock()
    }

    /// Caps the database at `pages` pages, so inserts fail exactly as on a
    /// full disk (SQLITE_FULL). For tests of that path; `None` lifts it.
    #[doc(hidden)]
    pub fn simulate_disk_limit(&self, pages: Option<u64>) -> Result<(), HeldError> {
        let n = pages.map_or(1_073_741_823, |p| p as i64);
        self.conn().pragma_update(None, "max_page_count", n)?;
        Ok(())
    }

    /// Remembers that an agent held `name`, with its offline policy.
    pub fn remember(&self, name: &str, policy: OfflinePolicy) -> Result<(), HeldError> {
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO tunnels(name, policy, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET policy = ?2, last_seen_ms = ?3",
            params![name, policy.as_str(), now],
        )?;
        self.map().entry(name.to_string()).or_default().policy = policy;
        Ok(())
    }

    /// Records which token last held `name` (its SHA-256, hex): only that
    /// token may list or change the tunnel's held events.
    pub fn set_owner(&self, name: &str, token_sha256: &str) -> Result<(), HeldError> {
        self.conn().execute(
            "UPDATE tunnels SET owner = ?2 WHERE name = ?1",
            params![name, token_sha256],
        )?;
        Ok(())
    }

    /// The SHA-256 (hex) of the token that last held `name`.
    pub fn owner(&self, name: &str) -> Result<Option<String>, HeldError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT owner FROM tunnels WHERE name = ?1",
                params![name],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// The tunnel's state, if an agent ever held it.
    pub fn state(&self, name: &str) -> Option<TunnelState> {
        self.map().get(name).copied()
    }

    /// Decides where a request for `name` goes. `connected`: an agent holds
    /// the tunnel now. Live only when nothing is queued, so held events are
    /// delivered before new traffic; otherwise a slot is reserved.
    pub fn admit(&self, name: &str, connected: bool) -> Admit {
        let mut map = self.map();
        let Some(st) = map.get_mut(name) else {
            return if connected {
                Admit::Live
            } else {
                Admit::Unknown
            };
        };
        // Held events drain alongside live traffic, unless the agent asked
        // for strict order: then new traffic queues behind them.
        if connected && (st.pending == 0 || !st.strict) {
            return Admit::Live;
        }
        if st.pending == 0 && st.storing == 0 && st.policy == OfflinePolicy::Reject {
            return Admit::Reject;
        }
        if st.pending + st.storing >= self.caps.max_events {
            return Admit::Full;
        }
        st.storing += 1;
        Admit::Hold
    }

    /// Adds a held body's size to a slot reserved by [`admit`](Self::admit),
    /// or says the byte cap is reached (then [`cancel`](Self::cancel) it).
    pub fn add_bytes(&self, name: &str, len: u64) -> Result<(), HeldError> {
        let mut map = self.map();
        let st = map.entry(name.to_string()).or_default();
        self.charge(st, len)
    }

    /// Counts `len` more bytes for a tunnel (its state, locked) and
    /// relay-wide, or says which cap it would pass.
    fn charge(&self, st: &mut TunnelState, len: u64) -> Result<(), HeldError> {
        if st.bytes + len > self.caps.max_bytes {
            return Err(HeldError::Full("byte cap"));
        }
        let total = self.total_bytes.load(Ordering::Relaxed);
        if total + len > self.caps.max_total_bytes {
            return Err(HeldError::RelayFull);
        }
        st.bytes += len;
        self.total_bytes.store(total + len, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back `len` bytes counted by [`charge`](Self::charge).
    fn uncharge(&self, st: &mut TunnelState, len: u64) {
        let len = len.min(st.bytes);
        st.bytes -= len;
        let total = self.total_bytes.load(Ordering::Relaxed);
        self.total_bytes
            .store(total.saturating_sub(len), Ordering::Relaxed);
    }

    /// Body bytes held relay-wide, all tunnels together.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    /// Events pending delivery and dead-lettered, all tunnels together.
    pub fn event_totals(&self) -> (u64, u64) {
        self.map()
            .values()
            .fold((0, 0), |(p, d), st| (p + st.pending, d + st.dead))
    }

    /// Sets the delivery order the connected agent asked for.
    pub fn set_strict(&self, name: &str, strict: bool) {
        self.map().entry(name.to_string()).or_default().strict = strict;
    }

    /// Marks a delivery task as running; false when one already is.
    pub fn start_delivery(&self, name: &str) -> bool {
        let mut map = self.map();
        let st = map.entry(name.to_string()).or_default();
        !std::mem::replace(&mut st.delivering, true)
    }

    /// Ends the delivery task if nothing stored is left to deliver; false
    /// when events remain and it must go on. (An event still being stored
    /// starts a new task once it is in.)
    pub fn finish_delivery(&self, name: &str) -> bool {
        let mut map = self.map();
        let st = map.entry(name.to_string()).or_default();
        if st.pending == 0 {
            st.delivering = false;
            true
        } else {
            false
        }
    }

    /// Ends the delivery task whatever is left (the agent's link dropped).
    pub fn stop_delivery(&self, name: &str) {
        if let Some(st) = self.map().get_mut(name) {
            st.delivering = false;
        }
    }

    /// Reserves room for one event of `len` body bytes, or says which cap is
    /// reached. A reservation must be followed by [`insert`](Self::insert)
    /// or [`cancel`](Self::cancel).
    pub fn reserve(&self, name: &str, len: u64) -> Result<(), HeldError> {
        let mut map = self.map();
        let st = map.entry(name.to_string()).or_default();
        if st.pending + st.storing >= self.caps.max_events {
            return Err(HeldError::Full("event count cap"));
        }
        self.charge(st, len)?;
        st.storing += 1;
        Ok(())
    }

    /// Gives back a reservation whose event was not stored.
    pub fn cancel(&self, name: &str, len: u64) {
        if let Some(st) = self.map().get_mut(name) {
            st.storing = st.storing.saturating_sub(1);
            self.uncharge(st, len);
        }
    }

    /// Stores a reserved event durably; it is then pending delivery.
    pub fn insert(&self, ev: &NewEvent) -> Result<(), HeldError> {
        self.conn().execute(
            "INSERT INTO events(event_id, tunnel, received_at_ms, method, path, headers, meta, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                ev.event_id,
                ev.tunnel,
                ev.meta.received_at_ms,
                ev.method,
                ev.path,
                encode_headers(&ev.headers),
                ev.meta.to_json(),
                ev.body.as_ref(),
            ],
        )?;
        let mut map = self.map();
        let st = map.entry(ev.tunnel.clone()).or_default();
        st.storing = st.storing.saturating_sub(1);
        st.pending += 1;
        Ok(())
    }

    /// The oldest held event for `name` (dead letters are skipped).
    pub fn next(&self, name: &str) -> Result<Option<HeldEvent>, HeldError> {
        self.next_after(name, 0)
    }

    /// The oldest held event for `name` queued after position `after`
    /// (dead letters are skipped).
    pub fn next_after(&self, name: &str, after: i64) -> Result<Option<HeldEvent>, HeldError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT seq, attempts, event_id, method, path, headers, meta, body
                 FROM events WHERE tunnel = ?1 AND seq > ?2 AND dead_at_ms IS NULL
                 ORDER BY seq LIMIT 1",
                params![name, after],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, Vec<u8>>(7)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.map(
            |(seq, attempts, event_id, method, path, headers, meta, body)| HeldEvent {
                seq,
                attempts,
                event: NewEvent {
                    event_id,
                    tunnel: name.to_string(),
                    method,
                    path,
                    headers: decode_headers(&headers),
                    meta: RequestMeta::from_json(meta.as_bytes()).unwrap_or_default(),
                    body: Bytes::from(body),
                },
            },
        ))
    }

    /// Counts a delivery attempt.
    pub fn attempted(&self, seq: i64) -> Result<(), HeldError> {
        self.relaxed(|c| {
            c.execute(
                "UPDATE events SET attempts = attempts + 1 WHERE seq = ?1",
                params![seq],
            )
        })?;
        Ok(())
    }

    /// Records a failed delivery of event `seq`: its reason, and a strike
    /// when the failure is the event's own (see `docs/protocol.md`). At
    /// `max_failures` strikes it moves to the dead-letter list; true then.
    pub fn failed(
        &self,
        ev: &HeldEvent,
        error: &str,
        strike: bool,
        max_failures: u32,
    ) -> Result<bool, HeldError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE events SET last_error = ?2, failures = failures + ?3 WHERE seq = ?1",
            params![ev.seq, error, i64::from(strike)],
        )?;
        let dead = conn.execute(
            "UPDATE events SET dead_at_ms = ?3
             WHERE seq = ?1 AND failures >= ?2 AND dead_at_ms IS NULL",
            params![ev.seq, max_failures, now_ms()],
        )? > 0;
        drop(conn);
        if dead {
            if let Some(st) = self.map().get_mut(&ev.event.tunnel) {
                st.pending = st.pending.saturating_sub(1);
                st.dead += 1;
            }
        }
        Ok(dead)
    }

    /// The tunnel's held and dead-lettered events, oldest first, at most `limit`.
    pub fn list(&self, name: &str, limit: usize) -> Result<Vec<HeldSummary>, HeldError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT event_id, received_at_ms, attempts, method, path, LENGTH(body),
                    last_error, dead_at_ms IS NOT NULL
             FROM events WHERE tunnel = ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![name, limit as i64], |r| {
                Ok(HeldSummary {
                    event_id: r.get(0)?,
                    received_at_ms: r.get(1)?,
                    attempts: r.get(2)?,
                    method: r.get(3)?,
                    path: r.get(4)?,
                    body_bytes: r.get::<_, i64>(5)? as u64,
                    last_error: r.get(6)?,
                    dead: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Puts dead-lettered event `event_id` of tunnel `name` back in the
    /// queue, at its end, with its strikes cleared. False when the tunnel
    /// has no such dead letter.
    pub fn retry(&self, name: &str, event_id: &str) -> Result<bool, HeldError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // A new position at the end of the queue: delivery reads forward
        // from where it is, so the event must come after it.
        let moved = tx.execute(
            "INSERT INTO events(event_id, tunnel, received_at_ms, method, path, headers, meta, body,
                                attempts, failures, last_error, dead_at_ms)
             SELECT event_id || '~', tunnel, received_at_ms, method, path, headers, meta, body,
                    attempts, 0, last_error, NULL
             FROM events WHERE tunnel = ?1 AND event_id = ?2 AND dead_at_ms IS NOT NULL",
            params![name, event_id],
        )?;
        if moved == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM events WHERE tunnel = ?1 AND event_id = ?2",
            params![name, event_id],
        )?;
        tx.execute(
            "UPDATE events SET event_id = ?2 WHERE tunnel = ?1 AND event_id = ?2 || '~'",
            params![name, event_id],
        )?;
        tx.commit()?;
        drop(conn);
        if let Some(st) = self.map().get_mut(name) {
            st.dead = st.dead.saturating_sub(1);
            st.pending += 1;
        }
        Ok(true)
    }

    /// Deletes event `event_id` of tunnel `name`, held or dead-lettered.
    /// False when the tunnel has no such event.
    pub fn drop_event(&self, name: &str, event_id: &str) -> Result<bool, HeldError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "DELETE FROM events WHERE tunnel = ?1 AND event_id = ?2
                 RETURNING LENGTH(body), dead_at_ms IS NOT NULL",
                params![name, event_id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, bool>(1)?)),
            )
            .optional()?;
        drop(conn);
        let Some((len, dead)) = row else {
            return Ok(false);
        };
        if let Some(st) = self.map().get_mut(name) {
            if dead {
                st.dead = st.dead.saturating_sub(1);
            } else {
                st.pending = st.pending.saturating_sub(1);
            }
            self.uncharge(st, len);
        }
        Ok(true)
    }

    /// Removes a delivered (acknowledged) event.
    pub fn remove(&self, ev: &HeldEvent) -> Result<(), HeldError> {
        let n =
            self.relaxed(|c| c.execute("DELETE FROM events WHERE seq = ?1", params![ev.seq]))?;
        if n > 0 {
            if let Some(st) = self.map().get_mut(&ev.event.tunnel) {
                st.pending = st.pending.saturating_sub(1);
                self.uncharge(st, ev.event.body.len() as u64);
            }
        }
        Ok(())
    }

    /// Forgets tunnel `name` and deletes all its events (its name expired:
    /// whoever claims it next must not receive them). Returns how many
    /// events were deleted.
    pub fn forget(&self, name: &str) -> Result<u64, HeldError> {
        let conn = self.conn();
        let n = conn.execute("DELETE FROM events WHERE tunnel = ?1", params![name])?;
        conn.execute("DELETE FROM tunnels WHERE name = ?1", params![name])?;
        drop(conn);
        let mut map = self.map();
        if let Some(mut st) = map.remove(name) {
            let bytes = st.bytes;
            self.uncharge(&mut st, bytes);
            if st.storing > 0 || st.delivering {
                // Reservations in flight give back their bytes themselves.
                map.insert(
                    name.to_string(),
                    TunnelState {
                        pending: 0,
                        dead: 0,
                        bytes: 0,
                        ..st
                    },
                );
            }
        }
        Ok(n as u64)
    }

    /// Deletes events older than the age cap, and forgets tunnels no agent
    /// has held for that long (so abandoned names stop collecting events);
    /// returns how many events were deleted, per tunnel.
    pub fn expire(&self) -> Result<Vec<(String, u64, u64)>, HeldError> {
        let cutoff = now_ms() - self.caps.max_age.as_millis() as i64;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT tunnel, COUNT(*), SUM(LENGTH(body)), COUNT(dead_at_ms) FROM events
             WHERE received_at_ms < ?1 GROUP BY tunnel",
        )?;
        let expired: Vec<(String, u64, u64, u64)> = stmt
            .query_map(params![cutoff], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        conn.execute(
            "DELETE FROM events WHERE received_at_ms < ?1",
            params![cutoff],
        )?;
        let mut stmt = conn.prepare(
            "DELETE FROM tunnels WHERE last_seen_ms < ?1
             AND name NOT IN (SELECT DISTINCT tunnel FROM events) RETURNING name",
        )?;
        let forgotten: Vec<String> = stmt
            .query_map(params![cutoff], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        drop(conn);
        let mut map = self.map();
        for name in &forgotten {
            if map
                .get(name)
                .is_some_and(|s| s.storing == 0 && !s.delivering)
            {
                map.remove(name);
            }
        }
        for (name, n, bytes, dead) in &expired {
            if let Some(st) = map.get_mut(name) {
                st.pending = st.pending.saturating_sub(n - dead);
                st.dead = st.dead.saturating_sub(*dead);
                self.uncharge(st, *bytes);
            }
        }
        Ok(expired
            .into_iter()
            .map(|(name, n, bytes, _)| (name, n, bytes))
            .collect())
    }
}

/// A fresh event id: `ev_` and 128 bits in base32hex: the time in
/// milliseconds (48 bits), then 80 random bits.
///
/// Time first, so that ids sort by when they were made: the agent indexes
/// every exchange by its event id (to spot redeliveries), and sorted keys
/// append to the index's last page, while random ones would dirty a
/// different page with nearly every insert.
pub fn new_event_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    event_id_from(ms, rand::random())
}

/// [`new_event_id`] from its parts.
fn event_id_from(ms: u64, random: [u8; 10]) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random);
    // base32hex keeps the byte order when compared as text.
    let mut id = String::with_capacity(3 + data_encoding::BASE32_DNSSEC.encode_len(bytes.len()));
    id.push_str("ev_");
    data_encoding::BASE32_DNSSEC.encode_append(&bytes, &mut id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_sort_by_time_and_differ_within_a_millisecond() {
        let t = 1_790_000_000_000u64;
        let a = event_id_from(t, [0xff; 10]);
        let b = event_id_from(t + 1, [0; 10]);
        let c = event_id_from(t + 86_400_000, [7; 10]);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_ne!(event_id_from(t, [1; 10]), event_id_from(t, [2; 10]));
        let id = new_event_id();
        assert_eq!(id.len(), a.len());
        assert!(id.starts_with("ev_") && id[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    fn event(tunnel: &str, n: u32, body: &[u8]) -> NewEvent {
        NewEvent {
            event_id: new_event_id(),
            tunnel: tunnel.into(),
            method: "POST".into(),
            path: format!("/hook/{n}"),
            headers: vec![
                ("x-bin".into(), vec![0xff, 0x00, 0x80]),
                ("x-n".into(), n.to_string().into_bytes()),
            ],
            meta: RequestMeta {
                proto: "http".into(),
                received_at_ms: now_ms(),
                ..Default::default()
            },
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn events_survive_reopen_in_order_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = HeldStore::open(dir.path(), Caps::default()).unwrap();
            store.remember("t", OfflinePolicy::Hold).unwrap();
            for n in 0..5u32 {
                let ev = event("t", n, &[n as u8, 0xfe, 0x00]);
                store.reserve("t", 3).unwrap();
                store.insert(&ev).unwrap();
            }
        }
        let store = HeldStore::open(dir.path(), Caps::default()).unwrap();
        let st = store.state("t").unwrap();
        assert_eq!(
            (st.pending, st.bytes, st.policy),
            (5, 15, OfflinePolicy::Hold)
        );
        for n in 0..5u32 {
            let ev = store.next("t").unwrap().unwrap();
            assert_eq!(ev.event.path, format!("/hook/{n}"));
            assert_eq!(ev.event.body.as_ref(), &[n as u8, 0xfe, 0x00]);
            assert_eq!(
                ev.event.headers[0],
                ("x-bin".to_string(), vec![0xff, 0x00, 0x80])
            );
            store.attempted(ev.seq).unwrap();
            assert_eq!(store.next("t").unwrap().unwrap().attempts, 1);
            store.remove(&ev).unwrap();
        }
        assert!(store.next("t").unwrap().is_none());
        assert_eq!(store.state("t").unwrap().pending, 0);
        assert!(store.state("unknown").is_none());
    }

    #[test]
    fn caps_refuse_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let caps = Caps {
            max_events: 2,
            max_bytes: 10,
            max_age: Duration::from_secs(3600),
            ..Caps::default()
        };
        let store = HeldStore::open(dir.path(), caps).unwrap();
        store.remember("t", OfflinePolicy::Hold).unwrap();
        store.reserve("t", 4).unwrap();
        assert!(matches!(
            store.reserve("t", 7),
            Err(HeldError::Full("byte cap"))
        ));
        store.reserve("t", 6).unwrap();
        assert!(matches!(
            store.reserve("t", 0),
            Err(HeldError::Full("event count cap"))
        ));
        store.cancel("t", 6);
        store.reserve("t", 1).unwrap();
    }

    #[test]
    fn old_events_expire() {
        let dir = tempfile::tempdir().unwrap();
        let caps = Caps {
            max_age: Duration::from_secs(1),
            ..Caps::default()
        };
        let store = HeldStore::open(dir.path(), caps).unwrap();
        store.remember("t", OfflinePolicy::Reject).unwrap();
        let mut ev = event("t", 1, b"x");
        ev.meta.received_at_ms -= 10_000;
        store.reserve("t", 1).unwrap();
        store.insert(&ev).unwrap();
        assert_eq!(store.expire().unwrap(), vec![("t".to_string(), 1, 1)]);
        assert!(store.next("t").unwrap().is_none());
        assert_eq!(store.state("t").unwrap().pending, 0);
        assert_eq!(store.state("t").unwrap().policy, OfflinePolicy::Reject);
    }

    #[test]
    fn admission_keeps_held_events_ahead_of_new_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let caps = Caps {
            max_events: 2,
            ..Caps::default()
        };
        let store = HeldStore::open(dir.path(), caps).unwrap();
        assert_eq!(store.admit("t", false), Admit::Unknown);
        assert_eq!(store.admit("t", true), Admit::Live);
        store.remember("t", OfflinePolicy::Hold).unwrap();
        assert_eq!(store.admit("t", true), Admit::Live);

        // Agent away: held. While its body is still being read, live traffic
        // is not held back (a stalled upload must not pin the tunnel).
        assert_eq!(store.admit("t", false), Admit::Hold);
        assert_eq!(store.admit("t", true), Admit::Live);
        store.insert(&event("t", 1, b"x")).unwrap();
        // Stored: by default the backlog drains alongside live traffic...
        assert_eq!(store.admit("t", true), Admit::Live);
        // ...and in strict order new traffic queues behind it, up to the cap.
        store.set_strict("t", true);
        assert_eq!(store.admit("t", true), Admit::Hold);
        assert_eq!(store.admit("t", true), Admit::Full);
        store.cancel("t", 0);

        assert!(store.start_delivery("t"));
        assert!(!store.start_delivery("t"), "one delivery task per tunnel");
        assert!(!store.finish_delivery("t"), "a stored event is left");
        let held = store.next("t").unwrap().unwrap();
        store.remove(&held).unwrap();
        assert!(store.finish_delivery("t"));
        assert_eq!(store.admit("t", true), Admit::Live);
        assert!(store.start_delivery("t"));
        store.stop_delivery("t");
        assert!(store.start_delivery("t"));

        store.remember("r", OfflinePolicy::Reject).unwrap();
        assert_eq!(store.admit("r", false), Admit::Reject);
        assert_eq!(store.admit("r", true), Admit::Live);
        store.add_bytes("t", 10).unwrap();
        assert!(matches!(
            store.add_bytes("t", 1 << 30),
            Err(HeldError::Full("byte cap"))
        ));
    }

    #[test]
    fn dead_letters_are_kept_listed_retried_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeldStore::open(dir.path(), Caps::default()).unwrap();
        store.remember("t", OfflinePolicy::Hold).unwrap();
        for n in 0..3u32 {
            store.reserve("t", 2).unwrap();
            store.insert(&event("t", n, b"ab")).unwrap();
        }
        let poison = store.next("t").unwrap().unwrap();
        // Failures that are not the event's fault never dead-letter it.
        for _ in 0..5 {
            assert!(!store.failed(&poison, "in progress", false, 2).unwrap());
        }
        assert!(!store.failed(&poison, "refused", true, 2).unwrap());
        assert!(store.failed(&poison, "refused \x1b[31m", true, 2).unwrap());
        let st = store.state("t").unwrap();
        assert_eq!((st.pending, st.dead, st.bytes), (2, 1, 6));
        // Skipped by delivery, still listed.
        assert_eq!(store.next("t").unwrap().unwrap().event.path, "/hook/1");
        let list = store.list("t", 100).unwrap();
        assert_eq!(list.len(), 3);
        assert!(list[0].dead && !list[1].dead);
        assert_eq!(list[0].last_error.as_deref(), Some("refused \x1b[31m"));
        // Reopened: counts come back from disk.
        drop(store);
        let store = HeldStore::open(dir.path(), Caps::default()).unwrap();
        let st = store.state("t").unwrap();
        assert_eq!((st.pending, st.dead, st.bytes), (2, 1, 6));
        // Retried: back at the end of the queue, after the others.
        let id = &poison.event.event_id;
        assert!(store.retry("t", id).unwrap());
        assert!(!store.retry("t", id).unwrap(), "no longer dead");
        assert!(!store.retry("other", id).unwrap(), "another tunnel's");
        let order: Vec<_> = store
            .list("t", 100)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(order, ["/hook/1", "/hook/2", "/hook/0"]);
        assert_eq!(store.state("t").unwrap().pending, 3);
        assert!(!store.drop_event("other", id).unwrap());
        assert!(store.drop_event("t", id).unwrap());
        let st = store.state("t").unwrap();
        assert_eq!((st.pending, st.dead, st.bytes), (2, 0, 4));
        assert_eq!(store.total_bytes(), 4);
    }

    #[test]
    fn a_schema_1_store_opens_and_keeps_its_events() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("held.db")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute("INSERT INTO tunnels VALUES ('old', 'hold', 1, 1)", [])
                .unwrap();
            conn.execute(
                "INSERT INTO events(event_id, tunnel, received_at_ms, method, path, headers, meta, body, attempts)
                 VALUES ('ev_1', 'old', ?1, 'POST', '/x', '[]', '{}', X'0102', 4)",
                params![now_ms()],
            )
            .unwrap();
        }
        let store = HeldStore::open(dir.path(), Caps::default()).unwrap();
        let st = store.state("old").unwrap();
        assert_eq!((st.pending, st.dead, st.bytes), (1, 0, 2));
        let ev = store.next("old").unwrap().unwrap();
        assert_eq!((ev.attempts, ev.event.body.as_ref()), (4, &[1u8, 2][..]));
        drop(store);
        // And opening it again (already migrated) works too.
        HeldStore::open(dir.path(), Caps::default()).unwrap();
    }

    #[test]
    fn the_relay_wide_byte_cap_spans_tunnels() {
        let dir = tempfile::tempdir().unwrap();
        let caps = Caps {
            max_total_bytes: 10,
            ..Caps::default()
        };
        let store = HeldStore::open(dir.path(), caps).unwrap();
        store.reserve("a", 6).unwrap();
        assert!(matches!(store.reserve("b", 5), Err(HeldError::RelayFull)));
        store.reserve("b", 4).unwrap();
        store.cancel("a", 6);
        store.reserve("b", 5).unwrap();
        assert_eq!(store.total_bytes(), 9);
    }

    #[test]
    fn abandoned_tunnels_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let caps = Caps {
            max_age: Duration::from_millis(1),
            ..Caps::default()
        };
        let store = HeldStore::open(dir.path(), caps).unwrap();
        store.remember("gone", OfflinePolicy::Hold).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        store.expire().unwrap();
        assert!(store.state("gone").is_none());
        assert_eq!(store.admit("gone", false), Admit::Unknown);
        let reopened = HeldStore::open(dir.path(), Caps::default()).unwrap();
        assert!(reopened.state("gone").is_none(), "forgotten on disk too");
    }

    #[test]
    fn policy_parses() {
        assert_eq!(
            "hold".parse::<OfflinePolicy>().unwrap(),
            OfflinePolicy::Hold
        );
        assert_eq!(
            "reject".parse::<OfflinePolicy>().unwrap(),
            OfflinePolicy::Reject
        );
        assert!("drop".parse::<OfflinePolicy>().is_err());
    }
}
