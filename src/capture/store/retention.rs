//! Retention: the store keeps at most `max_exchanges` exchanges and
//! `max_bytes` body bytes, deleting the oldest first, and caches the
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
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
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

impl Store {
    /// Deletes the oldest exchanges until both limits hold; returns the
    /// totals after the deletions.
    pub(super) fn enforce_retention(
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
}
