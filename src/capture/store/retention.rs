//! Retention: the store keeps at most `max_exchanges` exchanges and
//! `max_bytes` body bytes, dropping the oldest in whole partitions (see
//! [`PARTITIONS`]), and caches the
//! [`Totals`] it needs between commits so that it does not scan the table on
//! every batch.

use super::{Store, StoreConfig, StoreError};

/// What retention needs to know, cached between commits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Totals {
    pub(super) count: u64,
    pub(super) bytes: u64,
    /// `PRAGMA data_version` when the totals were right: it changes when
    /// another connection (a `whtunnel replay`) commits, which makes them stale.
    pub(super) data_version: i64,
}

impl Totals {
    /// The totals once `added_count` exchanges holding `added_bytes` body
    /// bytes are inserted in `tx`: the cached ones when still true, else
    /// counted afresh.
    pub(super) fn after_insert(
        tx: &rusqlite::Transaction<'_>,
        cached: Option<Totals>,
        added_count: u64,
        added_bytes: u64,
    ) -> Result<Totals, StoreError> {
        // Our inserts hold the write lock, so no other connection can commit
        // from here on: data_version now says whether the cache is still true.
        let version: i64 = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        Ok(match cached {
            Some(t) if t.data_version == version => Totals {
                count: t.count + added_count,
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
        })
    }
}

/// Retention works in partitions of this fraction of the count limit: once
/// `max_exchanges` is passed, the oldest exchanges are dropped as one
/// partition of 1/`PARTITIONS` of it, with one ranged `DELETE`, so
/// that deletion runs once every `max_exchanges`/`PARTITIONS` exchanges
/// instead of on every commit, and touches the same few pages for all.
pub(super) const PARTITIONS: u64 = 16;

impl Store {
    /// Drops the oldest partitions (by received time, then id) until both
    /// limits hold, never touching exchanges with an id of `first_new` or
    /// above (the batch being committed); returns the totals after.
    ///
    /// Once over `max_exchanges` the store is cut to 15/16 of it (rounded
    /// up), so it holds between 15/16 of the limit and the limit; the byte
    /// limit is kept exactly (the oldest go until the rest fit). Never more
    /// than a limit after a commit, except that an exchange is never dropped
    /// by its own commit (a single body bigger than `max_bytes` stays until
    /// the next commit).
    pub(super) fn enforce_retention(
        tx: &rusqlite::Transaction<'_>,
        config: &StoreConfig,
        totals: Totals,
        first_new: i64,
        removed: &mut Vec<String>,
    ) -> Result<Totals, StoreError> {
        let (mut count, mut bytes) = (totals.count, totals.bytes);
        if count <= config.max_exchanges && bytes <= config.max_bytes {
            return Ok(totals);
        }
        // The byte limit stays exact: where it binds, bodies are large and
        // each one is many pages (or a file) anyway.
        let max_count = if count > config.max_exchanges {
            config.max_exchanges - config.max_exchanges / PARTITIONS
        } else {
            config.max_exchanges
        };
        let max_bytes = config.max_bytes;
        // Where the dropped partition ends: the last (received_us, id) in it.
        let mut last: Option<(i64, i64)> = None;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT received_us, id, body_bytes, req_body_file, resp_body_file FROM exchanges
                 ORDER BY received_us, id",
            )?;
            let mut rows = stmt.query([])?;
            while count > max_count || bytes > max_bytes {
                let Some(row) = rows.next()? else { break };
                let id: i64 = row.get(1)?;
                if id >= first_new {
                    break;
                }
                last = Some((row.get(0)?, id));
                let b: i64 = row.get(2)?;
                if let Some(f) = row.get::<_, Option<String>>(3)? {
                    removed.push(f);
                }
                if let Some(f) = row.get::<_, Option<String>>(4)? {
                    removed.push(f);
                }
                count -= 1;
                bytes = bytes.saturating_sub(b as u64);
            }
        }
        if let Some((us, id)) = last {
            tx.prepare_cached("DELETE FROM exchanges WHERE (received_us, id) <= (?1, ?2)")?
                .execute([us, id])?;
        }
        Ok(Totals {
            count,
            bytes,
            ..totals
        })
    }
}
