//! SQLite-backed capture store: owns `capture.db` (WAL mode), the schema and
//! its migrations, body files under `bodies/`, retention, and orphan cleanup.
//!
//! Layout (users may open `capture.db` with `sqlite3`):
//! - `exchanges`: a view, one row per exchange, over the partition tables
//!   `exchanges_p0` … `exchanges_p15` (see `retention`: the oldest partition
//!   is emptied whole). A row holds first everything a list row needs,
//!   plus body lengths and file names; last the headers (JSON) and inline
//!   bodies (raw BLOBs), read only by `get()`. A summary's columns all come
//!   before them, so SQLite stops decoding a row before the payload and
//!   never follows a large body's overflow pages to list it; and one insert
//!   per exchange keeps recording cheap. A row with a `relay_body_digest`
//!   and no `body_intact` is one the agent left to the store to prove: the
//!   proof is made from the stored bytes when it is shown ([`body_intact`];
//!   `body_hash::Check::Stored`). `partition_state` holds the
//!   partition being filled and the next id (ids are never reused).
//! - Bodies larger than [`INLINE_BODY_MAX`] live in `bodies/<name>` files. A
//!   file is written completely *before* the transaction that references it
//!   commits, so a crash leaves at worst an unreferenced file, which the next
//!   writer `open()` deletes.
//!
//! Durability relies on SQLite transactions only (WAL, `synchronous=NORMAL`):
//! a `kill -9` at any moment loses at most the uncommitted batch and the
//! database opens without repair. Like the WAL under `synchronous=NORMAL`,
//! body files are not synced one by one (waiting for a sync per body, the
//! single writer could not keep up with one sender of large bodies): they
//! survive a crash of whtunnel and the kernel writes them out within
//! seconds; a power loss in that window can leave a recent body file short
//! or empty, never a database that will not open.
//!
//! The open/read/write API lives here; `schema` owns the migrations,
//! `bodies` where body bytes go (inline, files, the pool of freed files),
//! and `retention` the count and byte limits.

mod bodies;
mod retention;
mod schema;
#[cfg(test)]
pub(crate) mod tests;

use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::model::{
    BodyDigest, BodyProof, DigestText, Exchange, ExchangeId, ExchangeSummary, Headers, HeadersRef,
    Outcome, RecordedRequest, RecordedResponse, SignatureCheck, WebhookInfo,
};
use bodies::{create_private_dir, Prepared, FREE_DIR};
use retention::Parts;

pub use bodies::{body_intact, read_body};
pub use retention::{partition_table, PARTITIONS};

/// Bodies up to this many kept bytes are stored inline in SQLite; larger ones
/// go to files under `bodies/` so the database stays small and fast. (Inline,
/// a 256 KiB body is 64 overflow pages written to the WAL and again by the
/// checkpoint; as a file it is one `write`.)
pub const INLINE_BODY_MAX: usize = 64 * 1024;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "capture.db";

/// Reads the `sig_*` columns: a check is there when its scheme and a
/// verdict this build knows are.
fn signature_from(
    scheme: Option<String>,
    verdict: Option<String>,
    reason: Option<String>,
) -> Option<SignatureCheck> {
    Some(SignatureCheck {
        scheme: scheme?,
        verdict: verdict?.parse().ok()?,
        reason,
    })
}

/// Reads the `outcome` column: text this build does not know reads as
/// unknown, so that a newer whtunnel's records still list.
fn outcome_from(text: Option<String>) -> Option<Outcome> {
    text.and_then(|t| t.parse().ok())
}

/// Errors from the capture store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("capture store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A filesystem operation failed.
    #[error("capture store: {0}")]
    Io(#[from] std::io::Error),
    /// The recorder's queue was full; the exchange was forwarded but not stored.
    #[error("capture store: recorder queue full, exchange not stored")]
    QueueFull,
    /// The recorder has stopped; nothing more can be stored.
    #[error("capture store: recorder closed")]
    Closed,
    /// Storing failed inside the recorder (the original error, as text, since
    /// errors are not clonable and one failure may answer several callers).
    #[error("capture store: {0}")]
    Failed(String),
    /// The database was written by a newer whtunnel (unknown schema version).
    #[error("capture store: database schema version {found} is newer than this whtunnel supports ({supported}); upgrade whtunnel")]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// Writing through a reader handle (see [`Store::open_reader`]).
    #[error("capture store: opened read-only")]
    ReadOnly,
}

/// Where the store lives and how much it may keep.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory; the database is `capture.db` inside it.
    pub dir: PathBuf,
    /// Keep at most this many exchanges (oldest deleted first).
    pub max_exchanges: u64,
    /// Keep at most this many body bytes in total (oldest deleted first).
    pub max_bytes: u64,
}

impl StoreConfig {
    /// Most exchanges kept by default.
    pub const DEFAULT_MAX_EXCHANGES: u64 = 10_000;
    /// Most body bytes kept by default.
    pub const DEFAULT_MAX_BYTES: u64 = crate::units::GIB;

    /// Defaults: 10,000 exchanges, 1 GiB.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_exchanges: Self::DEFAULT_MAX_EXCHANGES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// Which exchanges to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// At most this many rows (newest first); `None` for all.
    pub limit: Option<usize>,
}

/// An open capture store.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
    bodies_dir: PathBuf,
    config: StoreConfig,
    read_only: bool,
    /// The partitions as of our last commit, so that retention does not
    /// count the tables on every batch.
    parts: Option<Parts>,
    /// Body files retention freed, emptied, oldest first, waiting to be
    /// reused by new bodies (see [`FREE_POOL_MAX`]). Only the primary writer
    /// keeps one.
    free: std::cell::RefCell<std::collections::VecDeque<PathBuf>>,
    /// Opened with [`Store::open`] (the agent's store): it alone enforces
    /// retention and pools freed files.
    primary: bool,
}

/// A stored `received_us` (microseconds since the Unix epoch, UTC) as a time.
fn time_from_us(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Reads the RFC 3339 text schema 4 and older stored (migration 5 converts it).
fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.fZ").map(|n| n.and_utc()))
        .unwrap_or_default()
}

/// A write transaction begun with `BEGIN IMMEDIATE` (the write lock from
/// the start) and rolled back on drop unless committed. Unlike rusqlite's
/// `Transaction`, which parses its `BEGIN` and `COMMIT` afresh every time,
/// it runs them as cached statements: the writer begins one per batch.
struct WriteTx<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self {
            conn,
            committed: false,
        })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // SQLite may already have rolled back (after a full disk, say): then
        // there is nothing to undo.
        if !self.committed && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!("capture store: rollback failed: {e}");
            }
        }
    }
}

/// Binds each value to the next parameter of `$stmt` (1, 2, …) with its own
/// `ToSql` type, then checks that every parameter was bound: a value added
/// to the list without a column (or the reverse) fails the insert instead
/// of shifting the columns after it.
///
/// `$nulls` has bit `n - 1` set while parameter `n` holds NULL. SQLite
/// keeps a statement's parameters from one execution to the next, and a
/// row's dozen NULL columns are mostly the row before's: a NULL is bound
/// only over a value (each bind is ~100 instructions).
macro_rules! bind_all {
    ($stmt:expr, $nulls:expr; $($value:expr),+ $(,)?) => {{
        let stmt = &mut *$stmt;
        let nulls: &mut u64 = $nulls;
        let mut n = 0usize;
        $(
            n += 1;
            let value = &$value;
            // Past the 64th parameter no bit: always bound.
            let bit = 1u64.checked_shl((n - 1) as u32).unwrap_or(0);
            let null = Nullable::is_null(value);
            if !null || *nulls & bit == 0 {
                // Unknown until the bind succeeds (a failed one may leave
                // either value).
                *nulls &= !bit;
                stmt.raw_bind_parameter(n, value)?;
            }
            if null {
                *nulls |= bit;
            }
        )+
        if n != stmt.parameter_count() {
            return Err(StoreError::Failed(format!(
                "capture store: {n} values for {} columns",
                stmt.parameter_count()
            )));
        }
    }};
}

/// Whether a value [`bind_all!`] binds is SQL NULL, known from its type
/// (its `ToSql` is not run twice to find out).
trait Nullable {
    /// True when the value binds as NULL.
    fn is_null(&self) -> bool;
}

impl<T> Nullable for Option<T> {
    fn is_null(&self) -> bool {
        self.is_none()
    }
}

macro_rules! never_null {
    ($($t:ty),+) => {$(
        impl Nullable for $t {
            fn is_null(&self) -> bool {
                false
            }
        }
    )+};
}
never_null!(i64, f64, bool, String);

/// Headers as JSON text: readable in `sqlite3`, and still exact because a value
/// that is not UTF-8 is kept as `{"base64": ...}` instead of being re-encoded.
fn headers_to_json<'a>(h: impl Into<HeadersRef<'a>>) -> String {
    use base64::Engine;
    // Serialized straight from the borrowed headers, without a
    // `serde_json::Value` or a list of pairs in between: no allocation per
    // header on the writer thread.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Value<'a> {
        Text(&'a str),
        Bytes { base64: String },
    }
    struct Pairs<'a>(HeadersRef<'a>);
    impl serde::Serialize for Pairs<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|(n, v)| {
                let v = match std::str::from_utf8(v) {
                    Ok(s) => Value::Text(s),
                    Err(_) => Value::Bytes {
                        base64: base64::engine::general_purpose::STANDARD.encode(v),
                    },
                };
                (n, v)
            }))
        }
    }
    serde_json::to_string(&Pairs(h.into())).expect("strings always serialize")
}

fn headers_from_json(s: &str) -> Headers {
    use base64::Engine;
    let Ok(serde_json::Value::Array(arr)) = serde_json::from_str::<serde_json::Value>(s) else {
        return Headers::default();
    };
    arr.into_iter()
        .filter_map(|pair| {
            let name = pair.get(0)?.as_str()?.to_owned();
            let value = match pair.get(1)? {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                v => base64::engine::general_purpose::STANDARD
                    .decode(v.get("base64")?.as_str()?)
                    .ok()?,
            };
            Some((name, value))
        })
        .collect()
}

/// True for failures of the database as a whole rather than of one row.
fn is_environmental(e: &StoreError) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | SystemIoFailure
                | ReadOnly
                | CannotOpen
                | OutOfMemory
                | DatabaseCorrupt
                | NotADatabase
        ),
        StoreError::Io(_) => true,
        _ => false,
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the store in `config.dir`.
    ///
    /// This is the writer's open: it also deletes body files no row refers to
    /// (left by a crash between writing a file and committing its row) and
    /// empties the tee's spill directory. Open one writer per data dir.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let mut store = Self::open_inner(config, false)?;
        store.clean_orphans()?;
        store.primary = true;
        Ok(store)
    }

    /// Opens a writer that leaves orphan cleanup and retention to the primary
    /// writer, for short-lived commands (`whtunnel replay`) that may run while
    /// an agent writes to the same data dir: cleaning up could delete a body
    /// file the agent has written but not yet committed, and this command does
    /// not know the agent's `--keep-*` limits (with the defaults it would trim
    /// a store the agent keeps larger). The agent's next commit applies its
    /// own limits.
    pub fn open_secondary(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_inner(config, false)
    }

    /// Opens a second handle on the same data dir for readers (the CLI and the
    /// inspector read while the agent writes; WAL lets them). Creates and
    /// migrates the database if it does not exist yet, but never deletes files
    /// and refuses [`Store::insert`].
    pub fn open_reader(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(&StoreConfig::new(dir.to_path_buf()), true)
    }

    fn open_inner(config: &StoreConfig, read_only: bool) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        create_private_dir(&dir)?;
        let bodies_dir = dir.join("bodies");
        create_private_dir(&bodies_dir)?;
        if !read_only {
            create_private_dir(&dir.join(FREE_DIR))?;
        }
        let db_path = dir.join(DB_FILE);
        if !db_path.exists() {
            // Create the file ourselves so it gets 0600; SQLite gives the -wal
            // and -shm files the database file's permissions.
            let mut o = fs::OpenOptions::new();
            o.write(true).create(true).truncate(false);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            o.open(&db_path)?;
        }
        let conn = Connection::open_with_flags(
            &db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Readers and the writer share the file: wait instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every partition has its own insert and retention statements: with
        // rusqlite's default of 16 cached, the ring evicts and re-prepares them.
        conn.set_prepared_statement_cache_capacity(retention::PARTITIONS * 8);
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!("capture store: journal_mode is {mode}, not WAL");
        }
        // NORMAL is safe against process crashes in WAL mode; only a power
        // loss may drop the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoint every ~16 MiB of WAL instead of 4 MiB: the pages every
        // commit rewrites (the tables' last leaves, page 1) are then copied
        // into the database once per checkpoint instead of four times.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        // Off: schema 5 has no foreign key (a check on every insert and
        // delete), and migration 5 drops a table older schemas declared one
        // on, which must not cascade.
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let mut store = Self {
            conn,
            dir,
            bodies_dir,
            config: config.clone(),
            read_only,
            parts: None,
            free: Default::default(),
            primary: false,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Lets this connection checkpoint the log itself only once it holds
    /// `pages` pages (SQLite's `wal_autocheckpoint`; 4,000 when opened), and
    /// has the log file cut back to `file_limit` bytes whenever it restarts:
    /// the recorder raises the first while [`checkpoint`](super::checkpoint)
    /// does the work on another thread.
    pub fn set_writer_checkpoint(&self, pages: u32, file_limit: u64) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        let _: i64 = self.conn.query_row(
            &format!("PRAGMA journal_size_limit = {file_limit}"),
            [],
            |r| r.get(0),
        )?;
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// Directory where spilled bodies are kept.
    pub fn bodies_dir(&self) -> &Path {
        &self.bodies_dir
    }

    /// Where the tee should spill large bodies while they stream: inside the
    /// data dir so adopting a file is a rename, emptied by the writer's open.
    pub fn spill_dir(&self) -> PathBuf {
        self.dir.join("spill")
    }

    /// Stores one exchange and returns its id.
    pub fn insert(&mut self, ex: &Exchange) -> Result<ExchangeId, StoreError> {
        let mut ids = self.insert_batch(std::slice::from_ref(ex))?;
        ids.pop()
            .ok_or_else(|| StoreError::Failed("no id returned".into()))
            .and_then(|r| r)
    }

    /// Stores several exchanges, in one transaction when possible (what makes
    /// the recorder fast). Returns one result per exchange, in order: if the
    /// batch fails as a whole, each exchange is retried on its own so one bad
    /// exchange cannot lose the others. Retention runs once at the end.
    pub fn insert_batch(
        &mut self,
        exs: &[Exchange],
    ) -> Result<Vec<Result<ExchangeId, StoreError>>, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        // Files first: they must be in place before any row points at them.
        let prepared: Vec<Result<Prepared, StoreError>> =
            exs.iter().map(|ex| self.prepare(ex)).collect();

        let all_ok = prepared.iter().all(|p| p.is_ok());
        let mut results: Vec<Result<ExchangeId, StoreError>> = Vec::with_capacity(exs.len());
        let mut removed = Vec::new();
        let batch = if all_ok {
            self.write_rows(exs, &prepared, &mut removed)
        } else {
            Err(StoreError::Failed("batch has a failed body".into()))
        };
        match batch {
            Ok(ids) => results.extend(ids.into_iter().map(Ok)),
            // The database itself is unusable right now (disk full, locked,
            // I/O error): retrying one by one would only fail slower.
            Err(e) if is_environmental(&e) => {
                for p in prepared.iter().flatten() {
                    for f in p.files() {
                        let _ = fs::remove_file(self.bodies_dir.join(f));
                    }
                }
                let msg = e.to_string();
                results.extend(exs.iter().map(|_| Err(StoreError::Failed(msg.clone()))));
                return Ok(results);
            }
            Err(_) => {
                removed.clear();
                for (ex, prep) in exs.iter().zip(prepared.iter()) {
                    let r = match prep {
                        Err(e) => Err(StoreError::Failed(e.to_string())),
                        Ok(_) => {
                            let one = std::slice::from_ref(ex);
                            let p = std::slice::from_ref(prep);
                            match self.write_rows(one, p, &mut removed) {
                                Ok(mut ids) => Ok(ids.remove(0)),
                                Err(e) => {
                                    if let Ok(p) = prep {
                                        for f in p.files() {
                                            let _ = fs::remove_file(self.bodies_dir.join(f));
                                        }
                                    }
                                    Err(e)
                                }
                            }
                        }
                    };
                    results.push(r);
                }
            }
        }
        // Only after the commit: a crash before this leaves orphans, which
        // the next open deletes; never a row pointing at a missing file.
        for f in removed {
            self.retire_body_file(&f);
        }
        Ok(results)
    }

    /// One transaction: the rows, then retention. Adds to `removed` the files
    /// of the rows it deleted, once the transaction has committed.
    fn write_rows(
        &mut self,
        exs: &[Exchange],
        prepared: &[Result<Prepared, StoreError>],
        removed: &mut Vec<String>,
    ) -> Result<Vec<ExchangeId>, StoreError> {
        // IMMEDIATE: the write lock from the start, so that nobody commits
        // between reading the partitions and writing them.
        let tx = WriteTx::begin(&self.conn)?;
        // The cache is taken: a failed transaction leaves none, and the next
        // one reads the partitions afresh.
        let mut parts = Parts::now(&tx, self.parts.take())?;
        let mut ids = Vec::with_capacity(exs.len());
        // Files of deleted rows are handed out only after the commit: a
        // rolled-back deletion leaves its rows, and their files, in place.
        let mut freed = Vec::new();
        // The partition's INSERT is held across the batch: taken from and
        // given back to rusqlite's cache once per partition, not per row
        // (a lookup, clearing the bindings and a re-insertion: 1.8k of
        // 2.6k instructions a row, docs/benchmarks.md, "Session 15").
        // With it, which of its parameters hold NULL (see `bind_all!`): all
        // of them as it comes from the cache (cleared) or is prepared.
        let mut insert: Option<(usize, rusqlite::CachedStatement<'_>, u64)> = None;
        for (ex, prep) in exs.iter().zip(prepared) {
            let prep = prep
                .as_ref()
                .map_err(|e| StoreError::Failed(e.to_string()))?;
            if self.primary {
                parts.make_room(&tx, &self.config, &mut freed)?;
            }
            let (q, s) = (&prep.req, &prep.resp);
            let (partition, id) = parts.take(q.kept + s.kept);
            let sig = ex.webhook.signature.as_ref();
            let digest = ex.body_proof.relay.as_ref().map(BodyDigest::text);
            let (stmt, nulls) = match &mut insert {
                Some((n, stmt, nulls)) if *n == partition => (stmt, nulls),
                held => {
                    let stmt = tx.prepare_cached(&retention::INSERT[partition])?;
                    let (_, stmt, nulls) = held.insert((partition, stmt, u64::MAX));
                    (stmt, nulls)
                }
            };
            // Bound one by one with their own types, not as a `params!`
            // slice of `dyn ToSql`: each bind then compiles to its one
            // `sqlite3_bind_*` call (35 dynamic dispatches and matches a
            // row otherwise, docs/benchmarks.md "Session 17").
            bind_all!(stmt, nulls;
                id,
                ex.received_at.timestamp_micros(),
                ex.request.method,
                ex.request.path,
                ex.target,
                ex.remote_addr,
                ex.response.as_ref().map(|r| r.status),
                ex.duration_ms,
                ex.error,
                ex.event,
                ex.replay_of,
                ex.relay_event_id,
                ex.response.is_some(),
                q.total_len as i64,
                q.kept as i64,
                q.truncated,
                q.file,
                s.total_len as i64,
                s.kept as i64,
                s.truncated,
                s.file,
                (q.kept + s.kept) as i64,
                ex.outcome.map(Outcome::as_str),
                ex.webhook.provider,
                ex.webhook.delivery_id,
                sig.map(|s| s.scheme.as_str()),
                sig.map(|s| s.verdict.as_str()),
                sig.and_then(|s| s.reason.as_deref()),
                digest.as_ref().map(DigestText::as_str),
                ex.body_proof.intact,
                ex.webhook.sender_timeout_ms.map(|t| t as i64),
                headers_to_json(&ex.request.headers),
                ex.response.as_ref().map(|r| headers_to_json(&r.headers)),
                q.inline.as_deref(),
                s.inline.as_deref(),
            );
            stmt.raw_execute()?;
            ids.push(id);
        }
        drop(insert);
        if self.primary {
            let first_new = ids.first().copied().unwrap_or(i64::MAX);
            parts.enforce(&tx, &self.config, first_new, &mut freed)?;
        }
        parts.save(&tx)?;
        tx.commit()?;
        self.parts = Some(parts);
        removed.append(&mut freed);
        Ok(ids)
    }

    const SUMMARY_COLS: &'static str = "id, received_us, method, path, status, duration_ms, \
        event, replay_of, req_body_len, resp_body_len, error, outcome, provider, sig_verdict, \
        delivery_id, sig_reason, relay_event_id, sender_timeout_ms";

    fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<ExchangeSummary> {
        Ok(ExchangeSummary {
            id: r.get(0)?,
            received_at: time_from_us(r.get(1)?),
            method: r.get(2)?,
            path: r.get(3)?,
            status: r.get(4)?,
            duration_ms: r.get(5)?,
            event: r.get(6)?,
            replay_of: r.get(7)?,
            request_size: r.get::<_, i64>(8)? as u64,
            response_size: r.get::<_, i64>(9)? as u64,
            error: r.get(10)?,
            outcome: outcome_from(r.get(11)?),
            live: 0,
            provider: r.get(12)?,
            signature: r.get::<_, Option<String>>(13)?.and_then(|v| v.parse().ok()),
            delivery_id: r.get(14)?,
            signature_reason: r.get(15)?,
            relay_event_id: r.get(16)?,
            sender_timeout_ms: r.get::<_, Option<i64>>(17)?.map(|t| t as u64),
        })
    }

    /// Lists exchanges, newest first (by received time, then id). Reads only
    /// the summary columns: never headers or bodies.
    pub fn list(&self, q: &ListQuery) -> Result<Vec<ExchangeSummary>, StoreError> {
        let limit = q.limit.map_or(-1, |l| l as i64);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM exchanges ORDER BY received_us DESC, id DESC LIMIT ?1",
            Self::SUMMARY_COLS
        ))?;
        let rows = stmt.query_map([limit], Self::summary_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The summary of one exchange, without headers or bodies.
    pub fn summary(&self, id: ExchangeId) -> Result<Option<ExchangeSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM exchanges WHERE id = ?1",
            Self::SUMMARY_COLS
        ))?;
        Ok(stmt.query_row([id], Self::summary_from_row).optional()?)
    }

    /// The newest exchange recorded for a relay held-event id (dedup: an
    /// event delivered twice by the relay is recognisable).
    pub fn find_by_relay_event(&self, id: &str) -> Result<Option<ExchangeSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM exchanges WHERE relay_event_id = ?1 ORDER BY id DESC LIMIT 1",
            Self::SUMMARY_COLS
        ))?;
        Ok(stmt.query_row([id], Self::summary_from_row).optional()?)
    }

    /// The highest id stored so far (0 when empty): a cheap way for a
    /// reader to notice rows another process added.
    pub fn max_id(&self) -> Result<ExchangeId, StoreError> {
        // Not MAX(id): over the view that visits every row; ORDER BY merges
        // the partitions' rowid order and stops at the first.
        Ok(self.conn.query_row(
            "SELECT COALESCE((SELECT id FROM exchanges ORDER BY id DESC LIMIT 1), 0)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Summaries of exchanges with an id above `after`, lowest id first, at
    /// most `limit`.
    pub fn list_after(
        &self,
        after: ExchangeId,
        limit: usize,
    ) -> Result<Vec<ExchangeSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM exchanges WHERE id > ?1 ORDER BY id LIMIT ?2",
            Self::SUMMARY_COLS
        ))?;
        let rows = stmt.query_map(
            rusqlite::params![after, limit as i64],
            Self::summary_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of stored exchanges.
    pub fn count(&self) -> Result<u64, StoreError> {
        // Per table: SQLite counts a table from its b-tree pages, but a
        // view's rows one by one.
        let n: i64 = self
            .conn
            .prepare_cached(&retention::COUNT_ALL)?
            .query_row([], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Total body bytes kept (inline and files), what `max_bytes` limits.
    pub fn total_body_bytes(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(body_bytes), 0) FROM exchanges",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Loads one exchange with headers and bodies. Small bodies come back as
    /// [`BodyData::Memory`](super::BodyData::Memory); spilled ones as
    /// [`BodyData::File`](super::BodyData::File) pointing into
    /// `bodies/` (read them with [`read_body`]; retention may delete the file
    /// later, so treat a missing file as "no longer available").
    pub fn get(&self, id: ExchangeId) -> Result<Option<Exchange>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.id, e.received_us, e.method, e.path, e.target, e.remote_addr, e.status,
                    e.duration_ms, e.error, e.event, e.replay_of, e.relay_event_id, e.has_response,
                    e.req_body_len, e.req_truncated, e.req_body_file,
                    e.resp_body_len, e.resp_truncated, e.resp_body_file,
                    e.req_headers, e.resp_headers, e.req_body, e.resp_body, e.outcome,
                    e.provider, e.delivery_id, e.sig_scheme, e.sig_verdict, e.sig_reason,
                    e.relay_body_digest, e.body_intact, e.sender_timeout_ms
             FROM exchanges e
             WHERE e.id = ?1",
        )?;
        let ex = stmt
            .query_row([id], |r| {
                let has_response: bool = r.get(12)?;
                let req_body = self.body_from(r.get(21)?, r.get(15)?, r.get(13)?, r.get(14)?);
                let response = if has_response {
                    Some(RecordedResponse {
                        status: r.get::<_, Option<u16>>(6)?.unwrap_or(0),
                        headers: r
                            .get::<_, Option<String>>(20)?
                            .map(|s| headers_from_json(&s))
                            .unwrap_or_default(),
                        body: self.body_from(r.get(22)?, r.get(18)?, r.get(16)?, r.get(17)?),
                    })
                } else {
                    None
                };
                Ok(Exchange {
                    id: Some(r.get(0)?),
                    received_at: time_from_us(r.get(1)?),
                    target: r.get(4)?,
                    remote_addr: r.get(5)?,
                    request: RecordedRequest {
                        method: r.get(2)?,
                        path: r.get(3)?,
                        headers: r
                            .get::<_, Option<String>>(19)?
                            .map(|s| headers_from_json(&s))
                            .unwrap_or_default(),
                        body: req_body,
                    },
                    response,
                    duration_ms: r.get(7)?,
                    outcome: outcome_from(r.get(23)?),
                    error: r.get(8)?,
                    event: r.get(9)?,
                    replay_of: r.get(10)?,
                    relay_event_id: r.get(11)?,
                    live: 0,
                    webhook: WebhookInfo {
                        provider: r.get(24)?,
                        delivery_id: r.get(25)?,
                        signature: signature_from(r.get(26)?, r.get(27)?, r.get(28)?),
                        sender_timeout_ms: r.get::<_, Option<i64>>(31)?.map(|t| t as u64),
                    },
                    body_proof: BodyProof {
                        relay: r
                            .get::<_, Option<String>>(29)?
                            .and_then(|d| BodyDigest::parse(&d)),
                        intact: r.get(30)?,
                    },
                })
            })
            .optional()?;
        Ok(ex)
    }

    /// Runs `PRAGMA integrity_check` and returns its first line (`"ok"` when
    /// the database is sound).
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}
