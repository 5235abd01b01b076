//! SQLite-backed capture store: owns `capture.db` (WAL mode), the schema and
//! its migrations, body files under `bodies/`, retention, and orphan cleanup.
//!
//! Layout (users may open `capture.db` with `sqlite3`):
//! - `exchanges`: one small row per exchange (everything a list row needs,
//!   plus body lengths and file names). `list()` reads only this table, so
//!   listing never touches header or body bytes.
//! - `payloads`: headers (JSON) and inline bodies (raw BLOBs) keyed by
//!   exchange id, read only by `get()`.
//! - Bodies larger than [`INLINE_BODY_MAX`] live in `bodies/<name>` files. A
//!   file is written completely *before* the transaction that references it
//!   commits, so a crash leaves at worst an unreferenced file, which the next
//!   writer `open()` deletes.
//!
//! Durability relies on SQLite transactions only (WAL, `synchronous=NORMAL`):
//! a `kill -9` at any moment loses at most the uncommitted batch and the
//! database opens without repair. Like the WAL under `synchronous=NORMAL`,
//! body files are not synced one by one (an fsync per body held the single
//! writer to fewer 256 KiB bodies a second than one sender delivers): they
//! survive a crash of whtunnel and the kernel writes them out within
//! seconds; a power loss in that window can leave a recent body file short
//! or empty, never a database that will not open.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::model::{
    BodyData, CapturedBody, Exchange, ExchangeId, ExchangeSummary, Header, RecordedRequest,
    RecordedResponse,
};

/// Bodies up to this many kept bytes are stored inline in SQLite; larger ones
/// go to files under `bodies/` so the database stays small and fast. (Inline,
/// a 256 KiB body is 64 overflow pages written to the WAL and again by the
/// checkpoint; as a file it is one `write`.)
pub const INLINE_BODY_MAX: usize = 64 * 1024;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "capture.db";

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many
/// have been applied. Append only: never edit a shipped entry.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE exchanges (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at      TEXT    NOT NULL,  -- RFC 3339 UTC, fixed width: sorts as text
        method           TEXT    NOT NULL,
        path             TEXT    NOT NULL,
        target           TEXT    NOT NULL,
        remote_addr      TEXT,
        status           INTEGER,
        duration_ms      REAL    NOT NULL,
        error            TEXT,
        event            TEXT,
        replay_of        INTEGER,
        relay_event_id   TEXT,
        has_response     INTEGER NOT NULL,
        req_body_len     INTEGER NOT NULL,  -- bytes that streamed through
        req_body_kept    INTEGER NOT NULL,  -- bytes stored
        req_truncated    INTEGER NOT NULL,
        req_body_file    TEXT,              -- name under bodies/, when spilled
        resp_body_len    INTEGER NOT NULL,
        resp_body_kept   INTEGER NOT NULL,
        resp_truncated   INTEGER NOT NULL,
        resp_body_file   TEXT,
        body_bytes       INTEGER NOT NULL   -- req_body_kept + resp_body_kept, for retention
    );
    CREATE INDEX exchanges_received_at ON exchanges(received_at, id);
    CREATE INDEX exchanges_relay_event ON exchanges(relay_event_id)
        WHERE relay_event_id IS NOT NULL;
    CREATE TABLE payloads (
        exchange_id   INTEGER PRIMARY KEY REFERENCES exchanges(id) ON DELETE CASCADE,
        req_headers   TEXT NOT NULL,   -- JSON [[name, value], ...]; non-UTF-8 values as {"base64": ..}
        resp_headers  TEXT,
        req_body      BLOB,            -- raw bytes when inline
        resp_body     BLOB
    );
    "#,
];

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
    /// Count and body bytes of the stored exchanges as of our last commit,
    /// so that retention does not scan the table on every batch.
    totals: Option<Totals>,
    /// Body files retention freed, emptied, oldest first, waiting to be
    /// reused by new bodies (see [`FREE_POOL_MAX`]). Only the primary writer
    /// keeps one.
    free: std::cell::RefCell<std::collections::VecDeque<PathBuf>>,
    /// Opened with [`Store::open`] (the agent's store): it alone enforces
    /// retention and pools freed files.
    primary: bool,
}

/// How many body files retention keeps for reuse instead of deleting them
/// (as many as one batch may need: a batch writes its files before its
/// commit frees old ones). Creating and deleting a file per body at the
/// rate bodies arrive makes ext4 scan past every recently freed inode on
/// each create; at a few thousand 256 KiB bodies a second that was most of
/// the writer thread's time. A pooled file is truncated as it enters the
/// pool: it keeps its inode, never a previous body's bytes, and holds no
/// disk space. Reused oldest first; deleted when the store closes and when
/// the next writer opens.
const FREE_POOL_MAX: usize = 256;

/// Directory (next to `bodies/`) for freed body files awaiting reuse.
const FREE_DIR: &str = "bodies-free";

/// What retention needs to know, cached between commits.
#[derive(Debug, Clone, Copy)]
struct Totals {
    count: u64,
    bytes: u64,
    /// `PRAGMA data_version` when the totals were right: it changes when
    /// another connection (a `whtunnel replay`) commits, which makes them stale.
    data_version: i64,
}

/// Storage decided for one body before its row is written.
#[derive(Debug, Default)]
struct PreparedBody {
    inline: Option<Bytes>,
    file: Option<String>,
    kept: u64,
    total_len: u64,
    truncated: bool,
}

/// Both bodies of one exchange, prepared (files already in `bodies/`).
#[derive(Debug, Default)]
struct Prepared {
    req: PreparedBody,
    resp: PreparedBody,
}

impl Prepared {
    fn files(&self) -> impl Iterator<Item = &String> {
        self.req.file.iter().chain(self.resp.file.iter())
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist; an existing
/// directory's mode is left alone (it is the user's).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Opens `path` for writing, creating it with mode 0600 (bodies and the
/// database may hold secrets: signatures, tokens, personal data).
fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Fixed-width RFC 3339 text so that text order is time order in SQL.
fn fmt_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.fZ").map(|n| n.and_utc()))
        .unwrap_or_default()
}

/// Headers as JSON text: readable in `sqlite3`, and still exact because a value
/// that is not UTF-8 is kept as `{"base64": ...}` instead of being re-encoded.
fn headers_to_json(h: &[Header]) -> String {
    use base64::Engine;
    // Serialized straight from the borrowed headers: building a
    // `serde_json::Value` first cost an allocation per name and value on the
    // writer thread.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Value<'a> {
        Text(&'a str),
        Bytes { base64: String },
    }
    let pairs: Vec<(&str, Value)> = h
        .iter()
        .map(|(n, v)| {
            let v = match std::str::from_utf8(v) {
                Ok(s) => Value::Text(s),
                Err(_) => Value::Bytes {
                    base64: base64::engine::general_purpose::STANDARD.encode(v),
                },
            };
            (n.as_str(), v)
        })
        .collect();
    serde_json::to_string(&pairs).expect("strings always serialize")
}

fn headers_from_json(s: &str) -> Vec<Header> {
    use base64::Engine;
    let Ok(serde_json::Value::Array(arr)) = serde_json::from_str::<serde_json::Value>(s) else {
        return Vec::new();
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

/// Unique file name for a spilled body; the id is not known before insert.
fn new_body_file_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{:x}-{:x}.body",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
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

/// Copies `src` to `dst` through `tmp` (renamed into place), so `dst` never
/// exists half-written.
fn copy_into_place(src: &Path, tmp: &Path, dst: &Path) -> Result<(), StoreError> {
    let mut out = create_private_file(tmp)?;
    std::io::copy(&mut fs::File::open(src)?, &mut out)?;
    drop(out);
    fs::rename(tmp, dst)?;
    Ok(())
}

/// Whether another name (a replay's hard link) shares this file's contents:
/// such a file must never be overwritten in place.
fn is_shared(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).map_or(true, |m| m.nlink() > 1)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        true
    }
}

/// Reads a captured body's bytes, wherever they are (memory or a file written
/// by the tee or the store).
pub fn read_body(body: &CapturedBody) -> Result<Bytes, StoreError> {
    Ok(match &body.data {
        BodyData::Empty => Bytes::new(),
        BodyData::Memory(b) => b.clone(),
        BodyData::File(p) => Bytes::from(fs::read(p)?),
    })
}

impl Drop for Store {
    /// Deletes the pooled files: they belong to no exchange.
    fn drop(&mut self) {
        for path in self.free.get_mut().drain(..) {
            let _ = fs::remove_file(path);
        }
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
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Self {
            conn,
            dir,
            bodies_dir,
            config: config.clone(),
            read_only,
            totals: None,
            free: Default::default(),
            primary: false,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let supported = MIGRATIONS.len() as i64;
        let current = self.schema_version()?;
        if current > supported {
            return Err(StoreError::TooNew {
                found: current,
                supported,
            });
        }
        if current == supported {
            return Ok(());
        }
        // IMMEDIATE: two processes opening a fresh dir at once must not both
        // run the migrations; the second re-reads the version under the lock.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        while v < supported {
            tx.execute_batch(MIGRATIONS[v as usize])?;
            v += 1;
        }
        tx.pragma_update(None, "user_version", v)?;
        tx.commit()?;
        Ok(())
    }

    /// The schema version recorded in the database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// The newest schema version this build knows.
    pub fn latest_schema_version() -> i64 {
        MIGRATIONS.len() as i64
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

    /// Deletes body files no row refers to, and leftovers in the spill dir.
    fn clean_orphans(&self) -> Result<(), StoreError> {
        let mut referenced = HashSet::new();
        let mut stmt = self.conn.prepare(
            "SELECT req_body_file FROM exchanges WHERE req_body_file IS NOT NULL
             UNION ALL SELECT resp_body_file FROM exchanges WHERE resp_body_file IS NOT NULL",
        )?;
        for name in stmt.query_map([], |r| r.get::<_, String>(0))? {
            referenced.insert(name?);
        }
        for entry in fs::read_dir(&self.bodies_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
        let free = self.dir.join(FREE_DIR);
        if free.is_dir() {
            for entry in fs::read_dir(&free)? {
                let _ = fs::remove_file(entry?.path());
            }
        }
        let spill = self.spill_dir();
        if spill.is_dir() {
            for entry in fs::read_dir(&spill)? {
                let _ = fs::remove_file(entry?.path());
            }
        }
        Ok(())
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

    /// Decides where each body goes; writes or adopts files under `bodies/`.
    fn prepare(&self, ex: &Exchange) -> Result<Prepared, StoreError> {
        let req = self.prepare_body(&ex.request.body)?;
        let resp = match &ex.response {
            Some(r) => match self.prepare_body(&r.body) {
                Ok(p) => p,
                Err(e) => {
                    if let Some(f) = &req.file {
                        let _ = fs::remove_file(self.bodies_dir.join(f));
                    }
                    return Err(e);
                }
            },
            None => PreparedBody::default(),
        };
        Ok(Prepared { req, resp })
    }

    /// Writes a body file straight to its final name (until its row commits
    /// no one refers to it, and a crash leaves an orphan that `open()`
    /// deletes), reusing a pooled file when there is one.
    fn write_body_file(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let mut f = None;
        while f.is_none() {
            let Some(old) = self.free.borrow_mut().pop_front() else {
                break;
            };
            // A replay may have linked the file just before it was pooled:
            // then it is still that replay's body.
            if is_shared(&old) {
                let _ = fs::remove_file(&old);
                continue;
            }
            if fs::rename(&old, path).is_ok() {
                // Emptied when it was pooled; truncating here, right before
                // the write, would also make ext4 flush the new data on
                // close (its replace-by-truncate heuristic).
                f = fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| m.len() == 0) || f.set_len(0).is_ok());
            }
        }
        let mut f = match f {
            Some(f) => f,
            None => create_private_file(path)?,
        };
        let written = f.write_all(data);
        if let Err(e) = written {
            let _ = fs::remove_file(path);
            return Err(e.into());
        }
        Ok(())
    }

    /// Retires the file of a deleted exchange: emptied into the pool of files
    /// to reuse, or deleted (pool full, shared with a replay, not the primary
    /// writer).
    fn retire_body_file(&self, name: &str) {
        let path = self.bodies_dir.join(name);
        let mut free = self.free.borrow_mut();
        if self.primary && free.len() < FREE_POOL_MAX && !is_shared(&path) {
            let dst = self.dir.join(FREE_DIR).join(name);
            // Emptied as it enters the pool: no exchange's bytes wait there,
            // and a reused file can never show them.
            let emptied = fs::rename(&path, &dst).is_ok()
                && fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&dst)
                    .is_ok();
            if emptied {
                free.push_back(dst);
                return;
            }
            let _ = fs::remove_file(&dst);
        }
        let _ = fs::remove_file(path);
    }

    fn prepare_body(&self, body: &CapturedBody) -> Result<PreparedBody, StoreError> {
        let mut p = PreparedBody {
            total_len: body.total_len,
            truncated: body.truncated,
            ..Default::default()
        };
        match &body.data {
            BodyData::Empty => {}
            BodyData::Memory(b) if b.len() <= INLINE_BODY_MAX => {
                p.kept = b.len() as u64;
                p.inline = Some(b.clone());
            }
            BodyData::Memory(b) => {
                let name = new_body_file_name();
                self.write_body_file(&self.bodies_dir.join(&name), b)?;
                p.kept = b.len() as u64;
                p.file = Some(name);
            }
            // A file already in bodies/ belongs to another exchange (a replay
            // reusing the original body): share it through a hard link, never
            // move it away from its row.
            BodyData::File(src) if src.parent() == Some(self.bodies_dir.as_path()) => {
                let name = new_body_file_name();
                let dst = self.bodies_dir.join(&name);
                if fs::hard_link(src, &dst).is_err() {
                    copy_into_place(src, &self.bodies_dir.join(format!("{name}.tmp")), &dst)?;
                }
                p.kept = fs::metadata(&dst)?.len();
                p.file = Some(name);
            }
            // Any other file (the tee's spill) is adopted: moved into bodies/.
            BodyData::File(src) => {
                let name = new_body_file_name();
                let dst = self.bodies_dir.join(&name);
                let len = fs::metadata(src)?.len();
                if fs::rename(src, &dst).is_err() {
                    // Different filesystem: copy then rename into place.
                    copy_into_place(src, &self.bodies_dir.join(format!("{name}.tmp")), &dst)?;
                    let _ = fs::remove_file(src);
                }
                p.kept = len;
                p.file = Some(name);
            }
        }
        Ok(p)
    }

    /// One transaction: the rows, then retention. Adds to `removed` the files
    /// of the rows it deleted, once the transaction has committed.
    fn write_rows(
        &mut self,
        exs: &[Exchange],
        prepared: &[Result<Prepared, StoreError>],
        removed: &mut Vec<String>,
    ) -> Result<Vec<ExchangeId>, StoreError> {
        // A failed transaction leaves the cache alone: it is only replaced
        // after a commit.
        let tx = self.conn.transaction()?;
        let mut ids = Vec::with_capacity(exs.len());
        let mut added_bytes = 0u64;
        {
            let mut ins_ex = tx.prepare_cached(
                "INSERT INTO exchanges (received_at, method, path, target, remote_addr, status,
                    duration_ms, error, event, replay_of, relay_event_id, has_response,
                    req_body_len, req_body_kept, req_truncated, req_body_file,
                    resp_body_len, resp_body_kept, resp_truncated, resp_body_file, body_bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21)",
            )?;
            let mut ins_payload = tx.prepare_cached(
                "INSERT INTO payloads (exchange_id, req_headers, resp_headers, req_body, resp_body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (ex, prep) in exs.iter().zip(prepared) {
                let prep = prep
                    .as_ref()
                    .map_err(|e| StoreError::Failed(e.to_string()))?;
                let (q, s) = (&prep.req, &prep.resp);
                ins_ex.execute(params![
                    fmt_time(&ex.received_at),
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
                ])?;
                added_bytes += q.kept + s.kept;
                let id = tx.last_insert_rowid();
                ins_payload.execute(params![
                    id,
                    headers_to_json(&ex.request.headers),
                    ex.response.as_ref().map(|r| headers_to_json(&r.headers)),
                    q.inline.as_deref(),
                    s.inline.as_deref(),
                ])?;
                ids.push(id);
            }
        }
        // Our inserts hold the write lock, so no other connection can commit
        // from here on: data_version now says whether the cache is still true.
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let before = match self.totals {
            Some(t) if t.data_version == version => Totals {
                count: t.count + exs.len() as u64,
                bytes: t.bytes + added_bytes,
                data_version: version,
            },
            _ => {
                let (count, bytes): (i64, i64) = tx.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(body_bytes), 0) FROM exchanges",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Totals {
                    count: count as u64,
                    bytes: bytes as u64,
                    data_version: version,
                }
            }
        };
        // Files of deleted rows are handed out only after the commit: a
        // rolled-back deletion leaves its rows, and their files, in place.
        let mut freed = Vec::new();
        let after = if self.primary {
            Self::enforce_retention(&tx, &self.config, before, &mut freed)?
        } else {
            before
        };
        tx.commit()?;
        self.totals = Some(after);
        removed.append(&mut freed);
        Ok(ids)
    }

    /// Deletes the oldest exchanges until both limits hold; returns the
    /// totals after the deletions.
    fn enforce_retention(
        tx: &rusqlite::Transaction<'_>,
        config: &StoreConfig,
        totals: Totals,
        removed: &mut Vec<String>,
    ) -> Result<Totals, StoreError> {
        let (mut count, mut bytes) = (totals.count, totals.bytes);
        if count <= config.max_exchanges && bytes <= config.max_bytes {
            return Ok(totals);
        }
        // Once over the count limit, go 1 % under it: deleting a hundred of
        // the oldest rows at once touches the same few pages as deleting one,
        // where trimming a row or two on every commit rewrites them each time.
        // (The byte limit stays exact: one large body is already many pages.)
        let max_count = if count > config.max_exchanges {
            config.max_exchanges - config.max_exchanges / 100
        } else {
            config.max_exchanges
        };
        let max_bytes = config.max_bytes;
        let mut victims = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, body_bytes, req_body_file, resp_body_file FROM exchanges
                 ORDER BY received_at, id",
            )?;
            let mut rows = stmt.query([])?;
            while count > max_count || bytes > max_bytes {
                let Some(row) = rows.next()? else { break };
                let id: i64 = row.get(0)?;
                let b: i64 = row.get(1)?;
                if let Some(f) = row.get::<_, Option<String>>(2)? {
                    removed.push(f);
                }
                if let Some(f) = row.get::<_, Option<String>>(3)? {
                    removed.push(f);
                }
                victims.push(id);
                count -= 1;
                bytes = bytes.saturating_sub(b as u64);
            }
        }
        let mut del_p = tx.prepare_cached("DELETE FROM payloads WHERE exchange_id = ?1")?;
        let mut del_e = tx.prepare_cached("DELETE FROM exchanges WHERE id = ?1")?;
        for id in victims {
            del_p.execute([id])?;
            del_e.execute([id])?;
        }
        Ok(Totals {
            count,
            bytes,
            ..totals
        })
    }

    const SUMMARY_COLS: &'static str = "id, received_at, method, path, status, duration_ms, \
        event, replay_of, req_body_len, resp_body_len, error";

    fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<ExchangeSummary> {
        Ok(ExchangeSummary {
            id: r.get(0)?,
            received_at: parse_time(&r.get::<_, String>(1)?),
            method: r.get(2)?,
            path: r.get(3)?,
            status: r.get(4)?,
            duration_ms: r.get(5)?,
            event: r.get(6)?,
            replay_of: r.get(7)?,
            request_size: r.get::<_, i64>(8)? as u64,
            response_size: r.get::<_, i64>(9)? as u64,
            error: r.get(10)?,
        })
    }

    /// Lists exchanges, newest first (by received time, then id). Reads only
    /// the small `exchanges` table: never headers or bodies.
    pub fn list(&self, q: &ListQuery) -> Result<Vec<ExchangeSummary>, StoreError> {
        let limit = q.limit.map_or(-1, |l| l as i64);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM exchanges ORDER BY received_at DESC, id DESC LIMIT ?1",
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

    /// Number of stored exchanges.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM exchanges", [], |r| r.get(0))?;
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

    fn body_from(
        &self,
        inline: Option<Vec<u8>>,
        file: Option<String>,
        total_len: i64,
        truncated: bool,
    ) -> CapturedBody {
        let data = match (inline, file) {
            (_, Some(f)) => BodyData::File(self.bodies_dir.join(f)),
            (Some(b), None) if !b.is_empty() => BodyData::Memory(Bytes::from(b)),
            _ => BodyData::Empty,
        };
        CapturedBody {
            data,
            total_len: total_len as u64,
            truncated,
        }
    }

    /// Loads one exchange with headers and bodies. Small bodies come back as
    /// [`BodyData::Memory`]; spilled ones as [`BodyData::File`] pointing into
    /// `bodies/` (read them with [`read_body`]; retention may delete the file
    /// later, so treat a missing file as "no longer available").
    pub fn get(&self, id: ExchangeId) -> Result<Option<Exchange>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.id, e.received_at, e.method, e.path, e.target, e.remote_addr, e.status,
                    e.duration_ms, e.error, e.event, e.replay_of, e.relay_event_id, e.has_response,
                    e.req_body_len, e.req_truncated, e.req_body_file,
                    e.resp_body_len, e.resp_truncated, e.resp_body_file,
                    p.req_headers, p.resp_headers, p.req_body, p.resp_body
             FROM exchanges e LEFT JOIN payloads p ON p.exchange_id = e.id
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
                    received_at: parse_time(&r.get::<_, String>(1)?),
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
                    error: r.get(8)?,
                    event: r.get(9)?,
                    replay_of: r.get(10)?,
                    relay_event_id: r.get(11)?,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The stored header format is what `sqlite3` users and older
    /// versions read: `[[name, value], ...]`, `{"base64": ..}` for bytes that
    /// are not UTF-8.
    #[test]
    fn headers_are_stored_in_the_documented_json_shape() {
        let headers: Vec<Header> = vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("x-quote".into(), br#"a "b" \ c"#.to_vec()),
            ("x-raw".into(), vec![0xff, 0x00, 0x41]),
        ];
        let json = headers_to_json(&headers);
        assert_eq!(
            json,
            r#"[["content-type","application/json"],["x-quote","a \"b\" \\ c"],["x-raw",{"base64":"/wBB"}]]"#
        );
        assert_eq!(headers_from_json(&json), headers);
        assert_eq!(headers_to_json(&[]), "[]");
    }

    /// A representative exchange with a body of `req` bytes.
    pub(crate) fn sample(req: &[u8]) -> Exchange {
        Exchange {
            id: None,
            received_at: Utc::now(),
            target: "http://localhost:3000".into(),
            remote_addr: Some("203.0.113.7:5555".into()),
            request: RecordedRequest {
                method: "POST".into(),
                path: "/hooks?key=0123".into(),
                headers: vec![
                    ("Content-Type".into(), b"application/json".to_vec()),
                    ("X-Dup".into(), b"one".to_vec()),
                    ("Host".into(), b"example.test".to_vec()),
                    ("X-Dup".into(), b"two".to_vec()),
                ],
                body: CapturedBody::from_bytes(req.to_vec()),
            },
            response: Some(RecordedResponse {
                status: 200,
                headers: vec![("content-type".into(), b"text/plain".to_vec())],
                body: CapturedBody::from_bytes(&b"ok"[..]),
            }),
            duration_ms: 12.5,
            error: None,
            event: None,
            replay_of: None,
            relay_event_id: None,
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(&StoreConfig::new(dir.to_path_buf())).unwrap()
    }

    #[test]
    fn round_trip_binary_and_utf8_bodies_and_headers() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let mut ex = sample(&binary);
        ex.received_at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::microseconds(123_456);
        ex.request
            .headers
            .push(("X-Raw".into(), vec![0xff, 0x00, b'a', 0x80]));
        ex.replay_of = Some(41);
        ex.relay_event_id = Some("evt-1".into());
        ex.error = Some("boom".into());
        ex.event = Some("consent.created".into());
        let id = s.insert(&ex).unwrap();
        let got = s.get(id).unwrap().unwrap();
        let mut want = ex.clone();
        want.id = Some(id);
        assert_eq!(got, want);
        assert_eq!(read_body(&got.request.body).unwrap(), &binary[..]);

        // UTF-8 (with multi-byte characters and a trailing newline) exact too.
        let text = "{\"type\":\"ünïcödé ✓\"}\n".as_bytes();
        let id2 = s.insert(&sample(text)).unwrap();
        let got2 = s.get(id2).unwrap().unwrap();
        assert_eq!(read_body(&got2.request.body).unwrap(), text);
        let names: Vec<_> = got2.request.headers.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(names, ["Content-Type", "X-Dup", "Host", "X-Dup"]);
        assert_eq!(got2.request.headers[1].1, b"one");
        assert_eq!(got2.request.headers[3].1, b"two");
        assert!(s.get(9999).unwrap().is_none());
    }

    #[test]
    fn exchange_without_response_and_empty_body() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        let mut ex = sample(b"");
        ex.response = None;
        ex.error = Some("connection refused".into());
        let id = s.insert(&ex).unwrap();
        let got = s.get(id).unwrap().unwrap();
        assert!(got.response.is_none());
        assert_eq!(got.request.body, CapturedBody::default());
        let row = &s.list(&ListQuery::default()).unwrap()[0];
        assert_eq!(row.status, None);
        assert_eq!(row.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn large_bodies_go_to_files_and_tee_files_are_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        let big: Vec<u8> = (0..INLINE_BODY_MAX as u32 + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        let id = s.insert(&sample(&big)).unwrap();
        let got = s.get(id).unwrap().unwrap();
        let BodyData::File(p) = &got.request.body.data else {
            panic!("expected a file body, got {:?}", got.request.body.data);
        };
        assert!(p.starts_with(s.bodies_dir()));
        assert_eq!(fs::read(p).unwrap(), big);

        // A spilled tee file is moved (not copied) into bodies/.
        fs::create_dir_all(s.spill_dir()).unwrap();
        let spilled = s.spill_dir().join("x.spill");
        fs::write(&spilled, &big).unwrap();
        let mut ex = sample(b"");
        ex.request.body = CapturedBody {
            data: BodyData::File(spilled.clone()),
            total_len: big.len() as u64 + 100,
            truncated: true,
        };
        let id = s.insert(&ex).unwrap();
        assert!(!spilled.exists());
        let got = s.get(id).unwrap().unwrap();
        assert_eq!(read_body(&got.request.body).unwrap(), &big[..]);
        assert_eq!(got.request.body.total_len, big.len() as u64 + 100);
        assert!(got.request.body.truncated);
        assert_eq!(
            s.total_body_bytes().unwrap(),
            2 * big.len() as u64 + 2 * 2 // + the two "ok" responses
        );
    }

    #[test]
    fn list_is_newest_first_and_never_reads_payloads() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        let t0 = Utc::now();
        // Stored out of order: listing follows received time, not id.
        for (i, secs) in [(0, 10), (1, 30), (2, 20)] {
            let mut ex = sample(format!("body {i}").as_bytes());
            ex.received_at = t0 + chrono::Duration::seconds(secs);
            ex.request.path = format!("/{i}");
            s.insert(&ex).unwrap();
        }
        // Proof that list() does not touch headers or bodies: drop them.
        s.conn.execute_batch("DROP TABLE payloads").unwrap();
        let rows = s.list(&ListQuery::default()).unwrap();
        let paths: Vec<_> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/1", "/2", "/0"]);
        assert_eq!(rows[0].request_size, 6);
        assert_eq!(rows[0].response_size, 2);
        assert_eq!(rows[0].status, Some(200));
        let two = s.list(&ListQuery { limit: Some(2) }).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].path, "/1");
    }

    #[test]
    fn retention_by_count() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
        cfg.max_exchanges = 5;
        let mut s = Store::open(&cfg).unwrap();
        let mut ids = Vec::new();
        for i in 0..12 {
            ids.push(s.insert(&sample(format!("{i}").as_bytes())).unwrap());
        }
        assert_eq!(s.count().unwrap(), 5);
        let kept: Vec<_> = s
            .list(&ListQuery::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let mut want = ids[7..].to_vec();
        want.reverse();
        assert_eq!(kept, want);
        assert!(s.get(ids[0]).unwrap().is_none());
        // Payload rows go with their exchange.
        let payloads: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM payloads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(payloads, 5);
    }

    #[test]
    fn retention_counts_what_another_writer_added() {
        // The writer caches its totals between batches; a second writer (what
        // `whtunnel replay` opens) and a manual delete must not fool it.
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
        cfg.max_exchanges = 4;
        let mut s = Store::open(&cfg).unwrap();
        let mut other = Store::open_secondary(&cfg).unwrap();
        for i in 0..3 {
            s.insert(&sample(format!("{i}").as_bytes())).unwrap();
        }
        for i in 0..3 {
            other.insert(&sample(format!("o{i}").as_bytes())).unwrap();
        }
        // A secondary writer leaves retention to the primary.
        assert_eq!(other.count().unwrap(), 6);
        s.insert(&sample(b"x")).unwrap();
        assert_eq!(s.count().unwrap(), 4, "the cache missed the other writer");
        other.conn.execute_batch("DELETE FROM exchanges").unwrap();
        for i in 0..4 {
            s.insert(&sample(format!("y{i}").as_bytes())).unwrap();
        }
        assert_eq!(s.count().unwrap(), 4, "the cache missed the delete");
        assert_eq!(s.totals.unwrap().count, 4);
        assert_eq!(s.totals.unwrap().bytes, s.total_body_bytes().unwrap());
    }

    #[test]
    fn retention_by_bytes_removes_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
        let body = vec![7u8; INLINE_BODY_MAX + 1]; // spilled to a file each
        cfg.max_bytes = 3 * (body.len() as u64 + 2) + 10; // room for three
        let mut s = Store::open(&cfg).unwrap();
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(s.insert(&sample(&body)).unwrap());
        }
        assert_eq!(s.count().unwrap(), 3);
        assert!(s.total_body_bytes().unwrap() <= cfg.max_bytes);
        let files = fs::read_dir(s.bodies_dir()).unwrap().count();
        assert_eq!(files, 3, "files of deleted exchanges must be removed");
        for id in &ids[3..] {
            let ex = s.get(*id).unwrap().unwrap();
            assert_eq!(read_body(&ex.request.body).unwrap().len(), body.len());
        }
        assert!(s.get(ids[2]).unwrap().is_none());
    }

    #[test]
    fn a_body_shared_with_a_replay_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
        let big = INLINE_BODY_MAX + 100;
        cfg.max_bytes = 3 * (big as u64 + 2) + 10; // room for three
        let mut s = Store::open(&cfg).unwrap();
        let original = vec![b'o'; big];
        let first = s.insert(&sample(&original)).unwrap();
        // A replay stores the original's body file again: a hard link.
        let mut replay = s.get(first).unwrap().unwrap();
        replay.id = None;
        replay.replay_of = Some(first);
        // Newest of all, so retention keeps it to the end.
        replay.received_at = Utc::now() + chrono::Duration::hours(1);
        let replay_id = s.insert(&replay).unwrap();
        // Evict the original, then write enough new bodies to reuse every
        // freed file.
        for i in 0..6u8 {
            s.insert(&sample(&vec![i; big])).unwrap();
            let ex = s.get(replay_id).unwrap().expect("the replay is kept");
            assert_eq!(
                read_body(&ex.request.body).unwrap(),
                original,
                "after {i} more bodies"
            );
        }
        assert!(s.get(first).unwrap().is_none(), "the original was evicted");
    }

    #[cfg(unix)]
    #[test]
    fn freed_body_files_are_reused_and_cut_to_length() {
        use std::os::unix::fs::MetadataExt;
        let inodes = |dir: &Path| -> HashSet<u64> {
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().ino())
                .collect()
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
        let big = INLINE_BODY_MAX + 500;
        cfg.max_bytes = 2 * (big as u64 + 2) + 10; // room for two
        let mut s = Store::open(&cfg).unwrap();
        let free_dir = tmp.path().join(FREE_DIR);
        // Two large bodies, then smaller ones that evict and reuse them.
        s.insert(&sample(&vec![1u8; big])).unwrap();
        s.insert(&sample(&vec![2u8; big])).unwrap();
        let mut ids = Vec::new();
        let mut reused = 0;
        for i in 3..9u8 {
            let pooled = inodes(&free_dir);
            let body = vec![i; INLINE_BODY_MAX + 1 + i as usize];
            ids.push((s.insert(&sample(&body)).unwrap(), body));
            reused += inodes(s.bodies_dir()).intersection(&pooled).count();
            assert!(fs::read_dir(&free_dir).unwrap().count() <= FREE_POOL_MAX);
        }
        assert!(reused >= 4, "freed files were not reused ({reused})");
        // Every reused file was longer than its new body: cut to length.
        for (id, body) in &ids[ids.len() - 2..] {
            let ex = s.get(*id).unwrap().unwrap();
            assert_eq!(&read_body(&ex.request.body).unwrap()[..], &body[..]);
        }
        assert_eq!(fs::read_dir(s.bodies_dir()).unwrap().count(), 2);
        // Pooled files belong to no exchange: gone when the store closes.
        assert!(!inodes(&free_dir).is_empty());
        drop(s);
        assert_eq!(fs::read_dir(&free_dir).unwrap().count(), 0);
        let s = Store::open(&cfg).unwrap();
        assert_eq!(s.count().unwrap(), 2);
    }

    #[test]
    fn a_secondary_writer_leaves_retention_to_the_agent() {
        // `whtunnel replay` opens the store with the default limits; an agent
        // may keep more. The replay must not trim the agent's store.
        let tmp = tempfile::tempdir().unwrap();
        let mut agent_cfg = StoreConfig::new(tmp.path().to_path_buf());
        agent_cfg.max_exchanges = 50;
        let mut agent = Store::open(&agent_cfg).unwrap();
        for i in 0..20 {
            agent.insert(&sample(format!("{i}").as_bytes())).unwrap();
        }
        let mut replay_cfg = StoreConfig::new(tmp.path().to_path_buf());
        replay_cfg.max_exchanges = 10;
        let mut replay = Store::open_secondary(&replay_cfg).unwrap();
        replay.insert(&sample(b"replayed")).unwrap();
        assert_eq!(replay.count().unwrap(), 21);
        assert_eq!(fs::read_dir(tmp.path().join(FREE_DIR)).unwrap().count(), 0);
        // The agent's own limit still holds on its next commit.
        for i in 0..40 {
            agent.insert(&sample(format!("a{i}").as_bytes())).unwrap();
        }
        assert!(agent.count().unwrap() <= 50);
    }

    #[cfg(unix)]
    #[test]
    fn wal_mode_and_private_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/data");
        let mut s = open(&dir);
        s.insert(&sample(b"x")).unwrap();
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "synchronous=NORMAL");
        let m = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m(&dir.join(DB_FILE)), 0o600);
        assert_eq!(m(&dir.join("capture.db-wal")), 0o600);
        assert_eq!(m(&dir.join("capture.db-shm")), 0o600);
        assert_eq!(m(&dir), 0o700);
        assert_eq!(m(&dir.join("bodies")), 0o700);
        // Body files too.
        s.insert(&sample(&vec![1u8; INLINE_BODY_MAX + 1])).unwrap();
        for e in fs::read_dir(s.bodies_dir()).unwrap() {
            assert_eq!(m(&e.unwrap().path()), 0o600);
        }
    }

    #[test]
    fn migrations_are_versioned_and_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let id = {
            let mut s = open(tmp.path());
            assert_eq!(s.schema_version().unwrap(), Store::latest_schema_version());
            s.insert(&sample(b"keep me")).unwrap()
        };
        // Reopen: no migration re-run (would fail on CREATE TABLE), data kept.
        let s = open(tmp.path());
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert!(s.get(id).unwrap().is_some());
        // A newer schema is refused with a clear error instead of misread.
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        let err = Store::open(&StoreConfig::new(tmp.path().to_path_buf()))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn reader_sees_writer_and_refuses_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = open(tmp.path());
        let mut r = Store::open_reader(tmp.path()).unwrap();
        assert!(r.list(&ListQuery::default()).unwrap().is_empty());
        let mut ex = sample(b"{}");
        ex.relay_event_id = Some("held-42".into());
        let id = w.insert(&ex).unwrap();
        let found = r.find_by_relay_event("held-42").unwrap().unwrap();
        assert_eq!(found.id, id);
        assert!(r.find_by_relay_event("nope").unwrap().is_none());
        assert_eq!(
            r.get(id).unwrap().unwrap().relay_event_id.as_deref(),
            Some("held-42")
        );
        assert!(matches!(r.insert(&ex), Err(StoreError::ReadOnly)));
        // The partial index is there for dedup lookups.
        let plan: String = r
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM exchanges WHERE relay_event_id = 'x'",
                [],
                |row| row.get(3),
            )
            .unwrap();
        assert!(plan.contains("exchanges_relay_event"), "{plan}");
    }

    #[test]
    fn orphan_files_are_cleaned_on_open_only_by_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let kept = {
            let mut s = open(tmp.path());
            s.insert(&sample(&vec![3u8; INLINE_BODY_MAX + 1])).unwrap()
        };
        let orphan = tmp.path().join("bodies/deadbeef.body");
        let tmp_file = tmp.path().join("bodies/x.body.tmp");
        fs::write(&orphan, b"lost").unwrap();
        fs::write(&tmp_file, b"half").unwrap();
        fs::create_dir_all(tmp.path().join("spill")).unwrap();
        let spill = tmp.path().join("spill/1-1.spill");
        fs::write(&spill, b"partial").unwrap();
        drop(Store::open_reader(tmp.path()).unwrap());
        assert!(orphan.exists(), "readers must not delete files");
        let s = open(tmp.path());
        assert!(!orphan.exists() && !tmp_file.exists() && !spill.exists());
        let ex = s.get(kept).unwrap().unwrap();
        assert_eq!(
            read_body(&ex.request.body).unwrap().len(),
            INLINE_BODY_MAX + 1
        );
    }

    #[test]
    fn batch_with_a_bad_exchange_keeps_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        let mut bad = sample(b"");
        bad.request.body = CapturedBody {
            data: BodyData::File(tmp.path().join("missing.spill")),
            total_len: 10,
            truncated: false,
        };
        let res = s.insert_batch(&[sample(b"a"), bad, sample(b"c")]).unwrap();
        assert!(res[0].is_ok() && res[1].is_err() && res[2].is_ok());
        assert_eq!(s.count().unwrap(), 2);
    }

    /// Helper for the kill -9 test: writes until killed. Run only when
    /// re-invoked by `survives_kill_9`.
    #[test]
    #[ignore]
    fn crash_writer_helper() {
        let Ok(dir) = std::env::var("WHTUNNEL_CRASH_DIR") else {
            return;
        };
        let mut cfg = StoreConfig::new(PathBuf::from(dir));
        cfg.max_exchanges = 300; // retention deletes run too
        let mut s = Store::open(&cfg).unwrap();
        let big = vec![9u8; INLINE_BODY_MAX + 1];
        let mut i = 0u64;
        loop {
            let batch: Vec<Exchange> = (0..20)
                .map(|j| {
                    sample(if (i + j).is_multiple_of(7) {
                        &big
                    } else {
                        b"{\"type\":\"t\"}"
                    })
                })
                .collect();
            s.insert_batch(&batch).unwrap();
            i += 1;
            if i == 5 {
                fs::write(s.dir().join("started"), b"1").unwrap();
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn survives_kill_9() {
        let tmp = tempfile::tempdir().unwrap();
        for round in 0..3 {
            let _ = fs::remove_file(tmp.path().join("started"));
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "capture::store::tests::crash_writer_helper",
                    "--ignored",
                    "--nocapture",
                ])
                .env("WHTUNNEL_CRASH_DIR", tmp.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !tmp.path().join("started").exists() {
                assert!(std::time::Instant::now() < deadline, "helper never started");
                assert!(child.try_wait().unwrap().is_none(), "helper exited early");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(50 + 37 * round));
            child.kill().unwrap(); // SIGKILL on unix
            child.wait().unwrap();

            let s = open(tmp.path());
            assert_eq!(s.integrity_check().unwrap(), "ok");
            let n = s.count().unwrap();
            assert!(n > 0 && n <= 300 + 20, "count {n}");
            // Every referenced file exists; no unreferenced file is left.
            let mut referenced = 0;
            for row in s.list(&ListQuery::default()).unwrap() {
                let ex = s.get(row.id).unwrap().unwrap();
                if let BodyData::File(p) = &ex.request.body.data {
                    assert_eq!(fs::read(p).unwrap().len(), INLINE_BODY_MAX + 1);
                    referenced += 1;
                }
            }
            assert_eq!(fs::read_dir(s.bodies_dir()).unwrap().count(), referenced);
        }
    }

    #[test]
    fn reinserting_a_stored_file_body_shares_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        let big = vec![5u8; INLINE_BODY_MAX + 1];
        let orig = s.insert(&sample(&big)).unwrap();
        // A replay built from the stored exchange reuses its body as is.
        let mut replay = s.get(orig).unwrap().unwrap();
        replay.id = None;
        replay.replay_of = Some(orig);
        let rid = s.insert(&replay).unwrap();
        for id in [orig, rid] {
            let ex = s.get(id).unwrap().unwrap();
            assert_eq!(read_body(&ex.request.body).unwrap(), &big[..], "id {id}");
        }
        // Each row owns its own name: retention of one keeps the other's.
        let mut cfg = StoreConfig::new(tmp.path().to_path_buf());
        cfg.max_exchanges = 1;
        drop(s);
        let mut s = Store::open(&cfg).unwrap();
        s.insert(&sample(b"small")).unwrap();
        assert_eq!(fs::read_dir(s.bodies_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_broken_database_fails_the_whole_batch_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path());
        s.conn
            .busy_timeout(std::time::Duration::from_secs(1))
            .unwrap();
        let blocker = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let big = vec![1u8; INLINE_BODY_MAX + 1];
        let start = std::time::Instant::now();
        let res = s
            .insert_batch(&[sample(b"a"), sample(&big), sample(b"c")])
            .unwrap();
        // One busy wait for the batch (1 s), not one per exchange (4 s); the
        // margin is wide because a loaded CI machine stretches every wait.
        assert!(start.elapsed() < std::time::Duration::from_secs(3));
        assert!(res.iter().all(|r| r.is_err()));
        assert_eq!(
            fs::read_dir(s.bodies_dir()).unwrap().count(),
            0,
            "no orphans left"
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        assert!(s.insert(&sample(b"d")).is_ok());
    }
}
