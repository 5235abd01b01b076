//! WAL checkpoints on a thread of their own, so that the recorder's writer
//! never stops storing while SQLite copies the log into the database.
//!
//! A checkpoint copies the pages the log holds into the database file and
//! syncs both files: 0.43 s to copy SQLite's 16 MiB and 35–50 ms per sync
//! on the project's 2-core test machine. Run by the writer (SQLite's
//! `wal_autocheckpoint`), it held up every commit meanwhile: at 6,000–9,000
//! webhooks a second the recorder's bounded queue filled, and 0.5–2 % of
//! them went unrecorded. WAL lets another connection checkpoint while the
//! writer appends, so this thread does it: PASSIVE (it never waits for the
//! writer or readers), when the writer has committed, at most once per
//! [`CHECKPOINT_EVERY`], and again at once while frames remain uncopied.
//!
//! The writer keeps SQLite's own checkpoint, at [`WRITER_CHECKPOINT_PAGES`],
//! as the bound on the log's length (see there why the log can grow that
//! long); what it then copies is only what this thread has not.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// At most one checkpoint per this long while exchanges are being stored:
/// the pages every commit rewrites (the tables' last leaves) are copied
/// once per checkpoint, not once per commit. Short enough that what the
/// log holds beyond the last checkpoint stays small: that is what the
/// writer copies should it ever checkpoint itself.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Log pages after which the writer checkpoints itself (256 MiB of 4 KiB
/// pages). Under steady load the log is not restarted (SQLite restarts it
/// only once every frame is in the database, and the writer keeps adding
/// frames while this thread copies), so it grows until a pause in the
/// traffic lets this thread catch up; this bounds it should none come.
pub const WRITER_CHECKPOINT_PAGES: u32 = 65_536;

/// Bytes the log file is cut back to when SQLite restarts it, so that a
/// burst's long log does not keep its disk space.
pub const WAL_FILE_LIMIT: u64 = 64 << 20;

/// Checkpoints in a row while the log keeps frames not yet copied (the
/// writer committed during the last one); then the next commit's nudge.
/// Two: under a steady load no number of rounds catches up (each costs two
/// syncs, during which the writer commits again), and when the load is
/// light the first almost always does.
const CATCH_UP_ROUNDS: usize = 2;

/// The writer's side: tells the checkpoint thread that something was
/// committed. Dropping it stops the thread after a last checkpoint.
pub struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the checkpoint thread on its own connection to `db`. `gate`
    /// is held during each checkpoint (tests hold it to stop checkpoints).
    pub fn start(db: &Path, gate: Arc<parking_lot::Mutex<()>>) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let (nudge, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("whtunnel-checkpoint".into())
            .spawn(move || run(conn, rx, gate))?;
        Ok(Self {
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    /// Something was committed. Never blocks.
    pub fn committed(&self) {
        if let Some(n) = &self.nudge {
            // Full: a nudge is already waiting. Disconnected: the thread
            // ended, and the writer's own checkpoint bounds the log.
            let _ = n.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.nudge.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, rx: Receiver<()>, gate: Arc<parking_lot::Mutex<()>>) {
    let mut last: Option<Instant> = None;
    let mut stop = false;
    while !stop {
        // Wait for a commit; a closed channel means: one last checkpoint.
        stop = rx.recv().is_err();
        // Then wait out the interval, taking further nudges meanwhile.
        if let Some(until) = last.map(|t| t + CHECKPOINT_EVERY) {
            while let Some(rest) = until.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(rest) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
        }
        for _ in 0..CATCH_UP_ROUNDS {
            let _held = gate.lock();
            match checkpoint(&conn) {
                Ok(false) => {}
                Ok(true) => break,
                Err(e) => {
                    tracing::warn!("capture: checkpoint failed: {e}");
                    break;
                }
            }
        }
        last = Some(Instant::now());
    }
}

/// One PASSIVE checkpoint; whether every frame of the log is now in the
/// database.
fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && done >= log)
}
