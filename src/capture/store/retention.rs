//! Partitions and retention: exchanges live in [`PARTITIONS`] tables used as
//! a ring, new ones in the current partition; the count limit is kept by
//! emptying the oldest partition whole (SQLite frees its pages without
//! visiting rows or index entries, where deleting rows one by one rewrote
//! every leaf they sat on), and the byte limit exactly, oldest rows first.
//! [`Parts`] caches what the writer needs between commits so that it does
//! not count the tables on every batch.

use std::sync::LazyLock;

use super::{StoreConfig, StoreError};

/// How many partition tables there are: the store keeps up to this many
/// sixteenths of `max_exchanges`, dropping the oldest sixteenth at once, so
/// it holds between 15/16 of the limit and the limit.
pub const PARTITIONS: usize = 16;

/// How many exchanges a partition holds before the next one becomes current.
fn share(config: &StoreConfig) -> u64 {
    config.max_exchanges.div_ceil(PARTITIONS as u64).max(1)
}

/// The name of partition `n`'s table.
pub fn partition_table(n: usize) -> String {
    format!("exchanges_p{n}")
}

/// One SQL text per partition, built once: statements are cached by text.
fn per_partition(sql: impl Fn(&str) -> String) -> [String; PARTITIONS] {
    std::array::from_fn(|n| sql(&partition_table(n)))
}

/// The insert of one exchange into each partition, values in the table's
/// column order (`schema::PARTITION_COLUMNS_V8`; a column added later fails
/// every insert until it is added here). Short on purpose: rusqlite finds a
/// cached statement by hashing its text, twice per use.
pub(super) static INSERT: LazyLock<[String; PARTITIONS]> = LazyLock::new(|| {
    per_partition(|t| format!("INSERT INTO {t} VALUES ({})", ["?"; 35].join(",")))
});
static TOTALS: LazyLock<[String; PARTITIONS]> = LazyLock::new(|| {
    per_partition(|t| format!("SELECT COUNT(*), COALESCE(SUM(body_bytes), 0) FROM {t}"))
});
/// The number of exchanges, counted table by table.
pub(super) static COUNT_ALL: LazyLock<String> = LazyLock::new(|| {
    let sum = (0..PARTITIONS)
        .map(|n| format!("(SELECT COUNT(*) FROM {})", partition_table(n)))
        .collect::<Vec<_>>()
        .join(" + ");
    format!("SELECT {sum}")
});
static FILES: LazyLock<[String; PARTITIONS]> = LazyLock::new(|| {
    per_partition(|t| {
        format!(
            "SELECT req_body_file, resp_body_file FROM {t}
             WHERE req_body_file IS NOT NULL OR resp_body_file IS NOT NULL"
        )
    })
});
static EMPTY: LazyLock<[String; PARTITIONS]> =
    LazyLock::new(|| per_partition(|t| format!("DELETE FROM {t}")));
static OLDEST: LazyLock<[String; PARTITIONS]> = LazyLock::new(|| {
    per_partition(|t| {
        format!("SELECT id, body_bytes, req_body_file, resp_body_file FROM {t} ORDER BY id")
    })
});
static TRIM: LazyLock<[String; PARTITIONS]> =
    LazyLock::new(|| per_partition(|t| format!("DELETE FROM {t} WHERE id <= ?1")));

/// What the writer knows of the partitions as of its last commit.
#[derive(Debug, Clone)]
pub(super) struct Parts {
    /// The partition new exchanges go to; the next one round the ring is
    /// the oldest.
    pub(super) current: usize,
    /// The id the next exchange gets.
    pub(super) next_id: i64,
    rows: [u64; PARTITIONS],
    bytes: [u64; PARTITIONS],
    /// `PRAGMA data_version` when this was right: it changes when another
    /// connection (a `whtunnel replay`, a user's `sqlite3`) commits.
    data_version: i64,
    /// Partitions this transaction inserted into (bit n: partition n).
    written: u32,
}

impl Parts {
    /// The partitions as they are in `tx` (which holds the write lock): the
    /// cached ones when nobody else has committed since, else read afresh.
    pub(super) fn now(
        tx: &rusqlite::Connection,
        cached: Option<Parts>,
    ) -> Result<Parts, StoreError> {
        let version: i64 = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if let Some(p) = cached.filter(|p| p.data_version == version) {
            return Ok(Parts { written: 0, ..p });
        }
        let (current, next_id): (i64, i64) = tx
            .prepare_cached("SELECT current, next_id FROM partition_state")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut p = Parts {
            current: (current as usize) % PARTITIONS,
            next_id,
            rows: [0; PARTITIONS],
            bytes: [0; PARTITIONS],
            data_version: version,
            written: 0,
        };
        for n in 0..PARTITIONS {
            let (rows, bytes): (i64, i64) = tx
                .prepare_cached(&TOTALS[n])?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            p.rows[n] = rows as u64;
            p.bytes[n] = bytes as u64;
        }
        Ok(p)
    }

    /// Exchanges stored.
    pub(super) fn count(&self) -> u64 {
        self.rows.iter().sum()
    }

    /// Body bytes kept.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Takes the next id for an exchange of `kept` body bytes going into the
    /// current partition.
    pub(super) fn take(&mut self, kept: u64) -> (usize, i64) {
        let (n, id) = (self.current, self.next_id);
        self.next_id += 1;
        self.rows[n] += 1;
        self.bytes[n] += kept;
        self.written |= 1 << n;
        (n, id)
    }

    /// Writes the current partition and the next id back.
    pub(super) fn save(&self, tx: &rusqlite::Connection) -> Result<(), StoreError> {
        tx.prepare_cached("UPDATE partition_state SET current = ?1, next_id = ?2")?
            .execute([self.current as i64, self.next_id])?;
        Ok(())
    }

    /// Partitions oldest first, the current one last.
    fn oldest_first(&self) -> impl Iterator<Item = usize> {
        let cur = self.current;
        (1..=PARTITIONS).map(move |i| (cur + i) % PARTITIONS)
    }

    fn written(&self, n: usize) -> bool {
        self.written & (1 << n) != 0
    }

    /// Makes room for one more exchange (the primary writer, before each
    /// insert): once the current partition holds its share of the count
    /// limit, the next one round the ring becomes current, emptied whole if
    /// it held the oldest exchanges and the limit needs the room.
    pub(super) fn make_room(
        &mut self,
        tx: &rusqlite::Connection,
        config: &StoreConfig,
        removed: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        if self.rows[self.current] < share(config) {
            return Ok(());
        }
        let next = (self.current + 1) % PARTITIONS;
        // The ring went round within one commit (a limit below a batch):
        // its own exchanges are never dropped, the current one grows.
        if self.written(next) {
            return Ok(());
        }
        if self.rows[next] > 0 {
            // A raised limit: fill on until it binds. A partition that grew
            // past its share (a secondary writer's inserts) is not emptied
            // whole: `enforce` trims it row by row until it may be.
            if self.count() < config.max_exchanges || !self.may_empty(next, config) {
                return Ok(());
            }
            self.empty(tx, next, removed)?;
        }
        self.current = next;
        Ok(())
    }

    /// Whether emptying partition `n` whole keeps the count at or above the
    /// least the limit promises (15/16 of it).
    fn may_empty(&self, n: usize, config: &StoreConfig) -> bool {
        n != self.current
            && !self.written(n)
            && self.count() - self.rows[n] >= config.max_exchanges.saturating_sub(share(config))
    }

    /// Empties partition `n` whole, adding its body files to `removed`.
    fn empty(
        &mut self,
        tx: &rusqlite::Connection,
        n: usize,
        removed: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        {
            let mut stmt = tx.prepare_cached(&FILES[n])?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                removed.extend(row.get::<_, Option<String>>(0)?);
                removed.extend(row.get::<_, Option<String>>(1)?);
            }
        }
        // No WHERE: SQLite's truncate optimisation frees the table's and its
        // indexes' pages without visiting a row.
        tx.prepare_cached(&EMPTY[n])?.execute([])?;
        self.rows[n] = 0;
        self.bytes[n] = 0;
        Ok(())
    }

    /// Brings the store within both limits after a commit's inserts (the
    /// primary writer), never dropping an exchange with an id of `first_new`
    /// or above (the batch being committed).
    ///
    /// The count limit empties whole partitions, oldest first, that this
    /// commit did not write (they hold exchanges from before a lowered
    /// limit); what is still over it, and the byte limit, go row by row from
    /// the oldest (the byte limit stays exact: where it binds, bodies are
    /// large and each one is many pages or a file anyway). Never more than a
    /// limit after a commit, except that an exchange is never dropped by its
    /// own commit (a single body bigger than `max_bytes` stays until the next).
    pub(super) fn enforce(
        &mut self,
        tx: &rusqlite::Connection,
        config: &StoreConfig,
        first_new: i64,
        removed: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let over = |p: &Parts| p.count() > config.max_exchanges || p.bytes() > config.max_bytes;
        if !over(self) {
            return Ok(());
        }
        for n in self.oldest_first() {
            if self.count() <= config.max_exchanges {
                break;
            }
            if self.rows[n] == 0 {
                continue;
            }
            if !self.may_empty(n, config) {
                break;
            }
            self.empty(tx, n, removed)?;
        }
        for n in self.oldest_first() {
            if !over(self) {
                break;
            }
            if self.rows[n] == 0 {
                continue;
            }
            let mut last = None;
            {
                let mut stmt = tx.prepare_cached(&OLDEST[n])?;
                let mut rows = stmt.query([])?;
                while over(self) {
                    let Some(row) = rows.next()? else { break };
                    let id: i64 = row.get(0)?;
                    if id >= first_new {
                        break;
                    }
                    last = Some(id);
                    removed.extend(row.get::<_, Option<String>>(2)?);
                    removed.extend(row.get::<_, Option<String>>(3)?);
                    self.rows[n] = self.rows[n].saturating_sub(1);
                    self.bytes[n] = self.bytes[n].saturating_sub(row.get::<_, i64>(1)? as u64);
                }
            }
            match last {
                Some(id) => {
                    tx.prepare_cached(&TRIM[n])?.execute([id])?;
                }
                // This partition's oldest is already from this commit.
                None => break,
            }
        }
        Ok(())
    }
}
