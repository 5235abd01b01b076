//! The database schema: the [`MIGRATIONS`] list and applying it on open.
//!
//! The list only grows: a store written by any earlier whtunnel must open and
//! read right, so a shipped migration is never edited, only followed by new
//! ones.

use rusqlite::Transaction;

use super::{Store, StoreError};
use crate::tunnel::protocol::Outcome;

/// One step of the schema: SQL, or code where the step needs values that
/// live in Rust (the wire text of an enum).
pub(super) enum Migration {
    /// Plain SQL, run as one batch.
    Sql(&'static str),
    /// A step that binds values.
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many
/// have been applied. Append only: never edit a shipped entry.
pub(super) const MIGRATIONS: &[Migration] = &[
    // 1: initial schema.
    Migration::Sql(
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
    ),
    // 2: how each exchange ended, as an `Outcome` instead of error text.
    Migration::Code(add_outcome),
    // 3: the sender and its signature check.
    Migration::Sql(
        r#"
    ALTER TABLE exchanges ADD COLUMN provider    TEXT;  -- provider id, named or recognised
    ALTER TABLE exchanges ADD COLUMN delivery_id TEXT;  -- the provider's delivery id: retries share it
    ALTER TABLE exchanges ADD COLUMN sig_scheme  TEXT;
    ALTER TABLE exchanges ADD COLUMN sig_verdict TEXT;  -- valid | invalid | unsigned | unchecked
    ALTER TABLE exchanges ADD COLUMN sig_reason  TEXT;
    CREATE INDEX exchanges_delivery ON exchanges(delivery_id) WHERE delivery_id IS NOT NULL;
    "#,
    ),
    // 4: the body-hash proof, and the sender's timeout the exchange was
    // judged by (a rule's override, else the provider's).
    Migration::Sql(
        r#"
    ALTER TABLE exchanges ADD COLUMN relay_body_sha256 TEXT;     -- lower-case hex, from the relay
    ALTER TABLE exchanges ADD COLUMN body_intact       INTEGER;  -- 1: the app got those bytes, 0: changed
    ALTER TABLE exchanges ADD COLUMN sender_timeout_ms INTEGER;
    "#,
    ),
    // 5: integer timestamps and no foreign key (what every insert paid for).
    Migration::Code(integer_time_no_foreign_key),
    // 6: headers and inline bodies move into the exchange row: one insert
    // and one delete per exchange instead of two. Appended after every
    // summary column, so that reading a summary stops before them (and
    // never follows a large body's overflow pages).
    Migration::Sql(
        r#"
    ALTER TABLE exchanges ADD COLUMN req_headers  TEXT;  -- JSON [[name, value], ...]; non-UTF-8 values as {"base64": ..}
    ALTER TABLE exchanges ADD COLUMN resp_headers TEXT;
    ALTER TABLE exchanges ADD COLUMN req_body     BLOB;  -- raw bytes when inline
    ALTER TABLE exchanges ADD COLUMN resp_body    BLOB;
    UPDATE exchanges SET req_headers = p.req_headers, resp_headers = p.resp_headers,
        req_body = p.req_body, resp_body = p.resp_body
        FROM payloads p WHERE p.exchange_id = exchanges.id;
    DROP TABLE payloads;
    "#,
    ),
    // 7: relays hash bodies with BLAKE3 since protocol 3. The column keeps
    // `blake3:<hex>` from now on; bare hex written before is SHA-256
    // (`BodyDigest::parse`). A rename is a schema edit: no row is rewritten.
    Migration::Sql("ALTER TABLE exchanges RENAME COLUMN relay_body_sha256 TO relay_body_digest;"),
    // 8: the exchanges move into `PARTITIONS` tables read through a view
    // `exchanges`, so that retention empties the oldest table whole instead
    // of deleting its rows one by one.
    Migration::Code(partitions),
    // 9: no index on received time. Listing reads the view, which SQLite
    // scans partition by partition and sorts whatever index there is, so
    // the index was only paid for, on every insert.
    Migration::Code(drop_received_index),
];

/// Migration 9: drops each partition's `(received_us, id)` index.
fn drop_received_index(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    for n in 0..super::retention::PARTITIONS {
        let t = super::retention::partition_table(n);
        tx.execute_batch(&format!("DROP INDEX IF EXISTS {t}_received"))?;
    }
    Ok(())
}

/// Columns of a partition table at migration 8, in order: every summary
/// column before the headers and bodies (see the module docs of `store`).
/// Frozen with the migration.
const PARTITION_COLUMNS_V8: &str = "id, received_us, method, path, target, remote_addr, status, \
    duration_ms, error, event, replay_of, relay_event_id, has_response, req_body_len, \
    req_body_kept, req_truncated, req_body_file, resp_body_len, resp_body_kept, resp_truncated, \
    resp_body_file, body_bytes, outcome, provider, delivery_id, sig_scheme, sig_verdict, \
    sig_reason, relay_body_digest, body_intact, sender_timeout_ms, req_headers, resp_headers, \
    req_body, resp_body";

/// Migration 8: `exchanges` becomes a view over [`PARTITIONS`] tables
/// `exchanges_p0` … (a ring: new exchanges go to `partition_state.current`,
/// the one after it is the oldest), ids come from `partition_state.next_id`
/// (global, never reused), and the rows already stored are split across the
/// partitions in storing order, so the first drop after the upgrade takes
/// only the oldest sixteenth.
///
/// The partitions keep the indexes readers use (received time, relay event)
/// and one on rows with body files (so a dropped partition's files are found
/// without a scan); `exchanges_delivery` is gone: no query used it.
fn partitions(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    use super::retention::{partition_table, PARTITIONS};
    for n in 0..PARTITIONS {
        let t = partition_table(n);
        tx.execute_batch(&format!(
            "CREATE TABLE {t} (
                id                INTEGER PRIMARY KEY,  -- from partition_state.next_id
                received_us       INTEGER NOT NULL,     -- microseconds since the epoch, UTC
                method            TEXT    NOT NULL,
                path              TEXT    NOT NULL,
                target            TEXT    NOT NULL,
                remote_addr       TEXT,
                status            INTEGER,
                duration_ms       REAL    NOT NULL,
                error             TEXT,
                event             TEXT,
                replay_of         INTEGER,
                relay_event_id    TEXT,
                has_response      INTEGER NOT NULL,
                req_body_len      INTEGER NOT NULL,     -- bytes that streamed through
                req_body_kept     INTEGER NOT NULL,     -- bytes stored
                req_truncated     INTEGER NOT NULL,
                req_body_file     TEXT,                 -- name under bodies/, when spilled
                resp_body_len     INTEGER NOT NULL,
                resp_body_kept    INTEGER NOT NULL,
                resp_truncated    INTEGER NOT NULL,
                resp_body_file    TEXT,
                body_bytes        INTEGER NOT NULL,     -- req_body_kept + resp_body_kept
                outcome           TEXT,
                provider          TEXT,
                delivery_id       TEXT,
                sig_scheme        TEXT,
                sig_verdict       TEXT,                 -- valid | invalid | unsigned | unchecked
                sig_reason        TEXT,
                relay_body_digest TEXT,                 -- blake3:<hex>, or bare hex = SHA-256
                body_intact       INTEGER,
                sender_timeout_ms INTEGER,
                req_headers       TEXT,                 -- JSON [[name, value], ...]
                resp_headers      TEXT,
                req_body          BLOB,                 -- raw bytes when inline
                resp_body         BLOB
             );
             CREATE INDEX {t}_received ON {t}(received_us, id);
             CREATE INDEX {t}_relay_event ON {t}(relay_event_id)
                 WHERE relay_event_id IS NOT NULL;
             CREATE INDEX {t}_files ON {t}(id)
                 WHERE req_body_file IS NOT NULL OR resp_body_file IS NOT NULL;"
        ))?;
    }
    let rows: i64 = tx.query_row("SELECT COUNT(*) FROM exchanges", [], |r| r.get(0))?;
    let chunk = ((rows + PARTITIONS as i64 - 1) / PARTITIONS as i64).max(1);
    for n in 0..PARTITIONS {
        tx.execute(
            &format!(
                "INSERT INTO {t} ({c}) SELECT {c} FROM exchanges ORDER BY id LIMIT ?1 OFFSET ?2",
                t = partition_table(n),
                c = PARTITION_COLUMNS_V8
            ),
            [chunk, chunk * n as i64],
        )?;
    }
    let current = if rows == 0 { 0 } else { (rows - 1) / chunk };
    // AUTOINCREMENT never reused an id, even one whose row is gone.
    let used: i64 = tx.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(id) FROM exchanges), 0),
                    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'exchanges'), 0))",
        [],
        |r| r.get(0),
    )?;
    let view = (0..PARTITIONS)
        .map(|n| format!("SELECT * FROM {}", partition_table(n)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    tx.execute_batch(&format!(
        "CREATE TABLE partition_state (
             current INTEGER NOT NULL,  -- the partition new exchanges go to
             next_id INTEGER NOT NULL   -- the next exchange id
         );
         DROP TABLE exchanges;
         CREATE VIEW exchanges AS {view};"
    ))?;
    tx.execute(
        "INSERT INTO partition_state (current, next_id) VALUES (?1, ?2)",
        [current, used + 1],
    )?;
    Ok(())
}

/// The error text schema 1 stored for an app that answered after its
/// sender was gone: the only way it told that case apart. Frozen here; the
/// text the forwarder writes today may change freely.
const SCHEMA1_UNDELIVERED: &str = "answered after the sender was gone (hung up, relay timeout or \
     lost link); the answer reached nobody";

/// Migration 2: the `outcome` column, filled for older rows from what
/// schema 1 kept (whether there was an answer, its status, the error text
/// the agent wrote). Rows none of the rules match keep `NULL`: unknown, never
/// guessed.
fn add_outcome(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE exchanges ADD COLUMN outcome TEXT")?;
    let rules: [(Outcome, &str); 5] = [
        (Outcome::Answered, "error IS NULL AND has_response = 1"),
        (Outcome::Undelivered, "error = ?2"),
        (
            Outcome::AppUnreachable,
            "status = 502 AND error LIKE 'whtunnel: %'",
        ),
        (
            Outcome::AppTimeout,
            "status = 504 AND error LIKE 'whtunnel: %'",
        ),
        (Outcome::Cancelled, "error LIKE 'cancelled%'"),
    ];
    for (outcome, rule) in rules {
        let sql = format!("UPDATE exchanges SET outcome = ?1 WHERE outcome IS NULL AND {rule}");
        let mut stmt = tx.prepare(&sql)?;
        if rule.contains("?2") {
            stmt.execute(rusqlite::params![outcome.as_str(), SCHEMA1_UNDELIVERED])?;
        } else {
            stmt.execute(rusqlite::params![outcome.as_str()])?;
        }
    }
    Ok(())
}

/// Migration 5: `received_at` (RFC 3339 text) becomes `received_us`
/// (microseconds since the Unix epoch, UTC: what the text held, exactly, and
/// an 8-byte integer to compare and index), and `payloads` loses its
/// foreign key (checked on every insert and delete; retention deletes a
/// payload with its exchange in the same transaction instead).
///
/// Self-contained: it only adds, fills and drops its own columns of
/// `exchanges`, so columns other migrations add survive it whatever their
/// order. Needs `foreign_keys` off (see [`Store::open_inner`]), or dropping the
/// old `payloads` table would cascade.
fn integer_time_no_foreign_key(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DROP INDEX IF EXISTS exchanges_received_at;
         ALTER TABLE exchanges ADD COLUMN received_us INTEGER NOT NULL DEFAULT 0;",
    )?;
    {
        let mut read = tx.prepare("SELECT id, received_at FROM exchanges")?;
        let mut write = tx.prepare("UPDATE exchanges SET received_us = ?2 WHERE id = ?1")?;
        let rows = read.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, text) = row?;
            write.execute(rusqlite::params![
                id,
                super::parse_time(&text).timestamp_micros()
            ])?;
        }
    }
    tx.execute_batch(
        "ALTER TABLE exchanges DROP COLUMN received_at;
         CREATE INDEX exchanges_received ON exchanges(received_us, id);
         CREATE TABLE payloads_v4 (
             exchange_id   INTEGER PRIMARY KEY,  -- exchanges.id; deleted with it
             req_headers   TEXT NOT NULL,
             resp_headers  TEXT,
             req_body      BLOB,
             resp_body     BLOB
         );
         INSERT INTO payloads_v4 (exchange_id, req_headers, resp_headers, req_body, resp_body)
             SELECT exchange_id, req_headers, resp_headers, req_body, resp_body FROM payloads
             WHERE exchange_id IN (SELECT id FROM exchanges);
         DROP TABLE payloads;
         ALTER TABLE payloads_v4 RENAME TO payloads;",
    )
}

impl Store {
    pub(super) fn migrate(&mut self) -> Result<(), StoreError> {
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
            match &MIGRATIONS[v as usize] {
                Migration::Sql(sql) => tx.execute_batch(sql)?,
                Migration::Code(step) => step(&tx)?,
            }
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
}
