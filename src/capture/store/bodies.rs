//! Where body bytes live: inline in SQLite up to [`INLINE_BODY_MAX`], else a
//! file under `bodies/` written (or adopted from the tee's spill, or hard
//! linked from a replayed exchange's file) before its row commits; the pool
//! of freed files retention hands back for reuse; orphan cleanup; and the
//! private (0600/0700) file and directory creation everything here relies on.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Store, StoreError, INLINE_BODY_MAX};
use crate::capture::model::{BodyData, BodyDigest, CapturedBody, Exchange};

/// How many body files retention keeps for reuse instead of deleting them
/// (as many as one batch may need: a batch writes its files before its
/// commit frees old ones). Creating and deleting a file per body at the
/// rate bodies arrive makes ext4 scan past every recently freed inode on
/// each create, which can take most of the writer thread's time. A pooled
/// file is truncated as it enters the pool: it keeps its inode, never a
/// previous body's bytes, and holds no disk space. Reused oldest first;
/// deleted when the store closes and when the next writer opens.
pub(super) const FREE_POOL_MAX: usize = 256;

/// Directory (next to `bodies/`) for freed body files awaiting reuse.
pub(super) const FREE_DIR: &str = "bodies-free";

/// Storage decided for one body before its row is written.
#[derive(Debug, Default)]
pub(super) struct PreparedBody {
    pub(super) inline: Option<Bytes>,
    pub(super) file: Option<String>,
    pub(super) kept: u64,
    pub(super) total_len: u64,
    pub(super) truncated: bool,
}

/// Both bodies of one exchange, prepared (files already in `bodies/`).
#[derive(Debug, Default)]
pub(super) struct Prepared {
    pub(super) req: PreparedBody,
    pub(super) resp: PreparedBody,
}

impl Prepared {
    pub(super) fn files(&self) -> impl Iterator<Item = &String> {
        self.req.file.iter().chain(self.resp.file.iter())
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist; an existing
/// directory's mode is left alone (it is the user's).
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
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

/// Whether the app got exactly the bytes the relay received: what the
/// agent found, or, for a body it left to the store (recorded with a relay
/// hash and no verdict, `body_hash::Check::Stored`), whether the stored
/// copy, which is what the app got, hashes to the relay's hash. Reads a
/// body file when the body is in one. `None` without a relay hash, or when
/// the stored copy is not the whole body: a copy cut short proves nothing
/// either way.
pub fn body_intact(ex: &Exchange) -> Option<bool> {
    let proof = &ex.body_proof;
    if proof.intact.is_some() {
        return proof.intact;
    }
    let relay = proof.relay?;
    let body = &ex.request.body;
    if body.truncated {
        return None;
    }
    match &body.data {
        BodyData::Empty => (body.total_len == 0).then(|| relay.matches(b"")),
        BodyData::Memory(b) => (b.len() as u64 == body.total_len).then(|| relay.matches(b)),
        BodyData::File(path) => {
            prove_file(relay, &fs::File::open(path).ok()?, path, body.total_len)
        }
    }
}

/// [`body_intact`] for a body in the file `path`, opened as `file`. The
/// agent's retention may empty the file (and hand it to another body under
/// another name) while another process reads it: a verdict counts only if
/// exactly `total_len` bytes were read and the file is still at `path`,
/// unchanged in length.
pub(super) fn prove_file(
    relay: BodyDigest,
    file: &fs::File,
    path: &Path,
    total_len: u64,
) -> Option<bool> {
    use std::io::Seek;
    let before = file.metadata().ok()?;
    if before.len() != total_len {
        return None;
    }
    let verdict = relay.matches_reader(std::io::BufReader::new(file)).ok()?;
    let read = (&*file).stream_position().ok()?;
    let after = fs::metadata(path).ok()?;
    (read == total_len && after.len() == total_len && same_file(&before, &after)).then_some(verdict)
}

/// Whether two metadata describe the same file (not another one put at the
/// same path since).
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        a.len() == b.len()
    }
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
    /// Deletes body files no row refers to, and leftovers in the spill dir.
    pub(super) fn clean_orphans(&self) -> Result<(), StoreError> {
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

    /// Decides where each body goes; writes or adopts files under `bodies/`.
    pub(super) fn prepare(&self, ex: &Exchange) -> Result<Prepared, StoreError> {
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
    pub(super) fn retire_body_file(&self, name: &str) {
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

    pub(super) fn body_from(
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
}
