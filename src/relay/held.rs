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
}

impl Default for Caps {
    /// 10,000 events, 1 GiB, 72 hours.
    fn default() -> Self {
        Caps {
            max_events: 10_000,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(72 * 3600),
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

/// Per-tunnel facts kept in memory so the request path does not query SQLite.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelState {
    /// Offline policy the agent asked for.
    pub policy: OfflinePolicy,
    /// Events stored and not yet delivered.
    pub pending: u64,
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
        let mut tunnels = HashMap::new();
        {
            let mut stmt = conn.prepare(
                "SELECT t.name, t.policy, COUNT(e.seq), COALESCE(SUM(LENGTH(e.body)), 0)
                 FROM tunnels t LEFT JOIN events e ON e.tunnel = t.name GROUP BY t.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (name, policy, pending, bytes) = row?;
                tunnels.insert(
                    name,
                    TunnelState {
                        policy: policy.parse().unwrap_or_default(),
                        pending: pending as u64,
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
            caps,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
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
        if st.pending == 0 && connected {
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
        if st.bytes + len > self.caps.max_bytes {
            return Err(HeldError::Full("byte cap"));
        }
        st.bytes += len;
        Ok(())
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
        if st.bytes + len > self.caps.max_bytes {
            return Err(HeldError::Full("byte cap"));
        }
        st.storing += 1;
        st.bytes += len;
        Ok(())
    }

    /// Gives back a reservation whose event was not stored.
    pub fn cancel(&self, name: &str, len: u64) {
        if let Some(st) = self.map().get_mut(name) {
            st.storing = st.storing.saturating_sub(1);
            st.bytes = st.bytes.saturating_sub(len);
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
                ev.meta.encode(),
                ev.body.as_ref(),
            ],
        )?;
        let mut map = self.map();
        let st = map.entry(ev.tunnel.clone()).or_default();
        st.storing = st.storing.saturating_sub(1);
        st.pending += 1;
        Ok(())
    }

    /// The oldest held event for `name`.
    pub fn next(&self, name: &str) -> Result<Option<HeldEvent>, HeldError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT seq, attempts, event_id, method, path, headers, meta, body
                 FROM events WHERE tunnel = ?1 ORDER BY seq LIMIT 1",
                params![name],
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
                    meta: RequestMeta::decode(meta.as_bytes()).unwrap_or_default(),
                    body: Bytes::from(body),
                },
            },
        ))
    }

    /// Counts a delivery attempt.
    pub fn attempted(&self, seq: i64) -> Result<(), HeldError> {
        self.conn().execute(
            "UPDATE events SET attempts = attempts + 1 WHERE seq = ?1",
            params![seq],
        )?;
        Ok(())
    }

    /// Removes a delivered (acknowledged) event.
    pub fn remove(&self, ev: &HeldEvent) -> Result<(), HeldError> {
        let n = self
            .conn()
            .execute("DELETE FROM events WHERE seq = ?1", params![ev.seq])?;
        if n > 0 {
            if let Some(st) = self.map().get_mut(&ev.event.tunnel) {
                st.pending = st.pending.saturating_sub(1);
                st.bytes = st.bytes.saturating_sub(ev.event.body.len() as u64);
            }
        }
        Ok(())
    }

    /// Deletes events older than the age cap, and forgets tunnels no agent
    /// has held for that long (so abandoned names stop collecting events);
    /// returns how many events were deleted, per tunnel.
    pub fn expire(&self) -> Result<Vec<(String, u64, u64)>, HeldError> {
        let cutoff = now_ms() - self.caps.max_age.as_millis() as i64;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT tunnel, COUNT(*), SUM(LENGTH(body)) FROM events
             WHERE received_at_ms < ?1 GROUP BY tunnel",
        )?;
        let expired: Vec<(String, u64, u64)> = stmt
            .query_map(params![cutoff], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
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
        for (name, n, bytes) in &expired {
            if let Some(st) = map.get_mut(name) {
                st.pending = st.pending.saturating_sub(*n);
                st.bytes = st.bytes.saturating_sub(*bytes);
            }
        }
        Ok(expired)
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
    format!("ev_{}", data_encoding::BASE32_DNSSEC.encode(&bytes))
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
        // Stored: now new traffic queues behind it, up to the cap.
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
