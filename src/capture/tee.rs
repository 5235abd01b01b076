//! Recording a body while it streams through: [`tee`] wraps an `http_body`
//! body, passes every frame on unchanged and at once, and keeps a bounded copy.
//!
//! Forwarding never waits on capture. Small bodies are kept as the `Bytes`
//! chunks themselves (reference-counted, no copy). Past `in_memory` bytes the
//! chunks go over a bounded channel to a blocking writer that spills them to a
//! file; if that writer falls behind (channel or byte budget full), capture
//! stops and the body is marked truncated, while forwarding goes on.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::oneshot;

use super::model::{BodyData, CapturedBody};

/// Chunks queued to the spill writer, at most.
const SPILL_QUEUE: usize = 1024;
/// Bytes queued to the spill writer (sent, not yet written), at most. This
/// bounds a body's capture memory to `in_memory + SPILL_BUDGET`.
pub const SPILL_BUDGET: usize = 4 * 1024 * 1024;

/// How much of a body to keep, and where to spill large ones.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Bodies up to this size stay in memory.
    pub in_memory: usize,
    /// Keep at most this many bytes of a body; the rest is counted, not kept.
    pub max_capture: u64,
    /// Directory for spilled bodies.
    pub spill_dir: PathBuf,
}

impl BodyLimits {
    /// Defaults: 256 KiB in memory, as much kept as the relay accepts
    /// ([`crate::units::DEFAULT_MAX_BODY`]). (Bodies between the store's
    /// inline limit and 256 KiB are written to a file by the store's writer
    /// thread, in one piece, rather than spilled chunk by chunk here.)
    pub fn new(spill_dir: PathBuf) -> Self {
        Self {
            in_memory: 256 * 1024,
            max_capture: crate::units::DEFAULT_MAX_BODY,
            spill_dir,
        }
    }
}

/// State shared between the polling side and the spill writer.
#[derive(Default)]
struct SpillShared {
    /// Bytes sent to the writer and not yet written.
    in_flight: AtomicUsize,
    /// Final values, set by the polling side before it hangs up.
    total_len: AtomicU64,
    truncated: AtomicBool,
}

struct Spill {
    chunks: SyncSender<Bytes>,
    shared: Arc<SpillShared>,
}

/// The capture side of a [`TeeBody`]; finishing happens at the end of the
/// stream, on error, or on drop (then truncated).
struct Capture {
    limits: BodyLimits,
    mem: Vec<Bytes>,
    mem_len: usize,
    total_len: u64,
    kept: u64,
    truncated: bool,
    capturing: bool,
    spill: Option<Spill>,
    tx: Option<Deliver>,
    done: bool,
}

/// Where a finished capture goes.
enum Deliver {
    /// To a receiver, which may be gone (then a spilled file is removed).
    Channel(oneshot::Sender<CapturedBody>),
    /// To a function, called once, on whichever thread the body ends on.
    Call(Then),
}

impl Deliver {
    fn send(self, body: CapturedBody) {
        match self {
            Deliver::Channel(tx) => {
                if let Err(unwanted) = tx.send(body) {
                    if let BodyData::File(p) = unwanted.data {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
            Deliver::Call(mut then) => {
                if let Some(f) = then.0.take() {
                    f(body);
                }
            }
        }
    }
}

/// The function of [`tee_then`]. Dropped without being called (a spill
/// writer the runtime refused at shutdown), it is called with nothing
/// kept, cut off: as a dropped channel reads to [`tee`]'s receiver, so the
/// exchange is still recorded.
struct Then(Option<Box<dyn FnOnce(CapturedBody) + Send + Sync>>);

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(CapturedBody {
                truncated: true,
                ..CapturedBody::default()
            });
        }
    }
}

/// A body wrapper that passes frames through unchanged and records them.
pub struct TeeBody<B> {
    inner: B,
    cap: Capture,
}

/// Wraps `body`; the receiver yields the captured body when the stream ends
/// or the wrapper is dropped (then `truncated` is set).
pub fn tee<B: Body<Data = Bytes> + Unpin>(
    body: B,
    limits: &BodyLimits,
) -> (TeeBody<B>, oneshot::Receiver<CapturedBody>) {
    let (tx, rx) = oneshot::channel();
    (wrap(body, limits, Deliver::Channel(tx)), rx)
}

/// Like [`tee`], but hands the captured body to `then` where the stream
/// ends (in the task polling it, in its drop, or on the spill writer's
/// thread) instead of through a channel: no task has to wait for it.
pub fn tee_then<B: Body<Data = Bytes> + Unpin>(
    body: B,
    limits: &BodyLimits,
    then: impl FnOnce(CapturedBody) + Send + Sync + 'static,
) -> TeeBody<B> {
    wrap(body, limits, Deliver::Call(Then(Some(Box::new(then)))))
}

fn wrap<B: Body<Data = Bytes> + Unpin>(body: B, limits: &BodyLimits, tx: Deliver) -> TeeBody<B> {
    let mut cap = Capture {
        limits: limits.clone(),
        mem: Vec::new(),
        mem_len: 0,
        total_len: 0,
        kept: 0,
        truncated: false,
        capturing: true,
        spill: None,
        tx: Some(tx),
        done: false,
    };
    // An empty body may never be polled (hyper checks this first).
    if body.is_end_stream() {
        cap.finish(true);
    }
    TeeBody { inner: body, cap }
}

impl<B> TeeBody<B> {
    /// Bytes of the body currently held in memory by the capture (not counting
    /// chunks queued to the spill writer). Never above `in_memory`.
    pub fn buffered_bytes(&self) -> usize {
        self.cap.mem_len
    }

    /// Bytes queued to the spill writer and not yet written. Never above
    /// [`SPILL_BUDGET`].
    pub fn spill_in_flight(&self) -> usize {
        self.cap
            .spill
            .as_ref()
            .map_or(0, |s| s.shared.in_flight.load(Ordering::Relaxed))
    }

    /// Bytes that streamed through so far.
    pub fn total_len(&self) -> u64 {
        self.cap.total_len
    }
}

impl Capture {
    fn stop(&mut self) {
        self.capturing = false;
        self.truncated = true;
    }

    fn on_data(&mut self, chunk: &Bytes) {
        self.total_len += chunk.len() as u64;
        if !self.capturing || chunk.is_empty() {
            return;
        }
        let room = self.limits.max_capture.saturating_sub(self.kept);
        if room == 0 {
            self.stop();
            return;
        }
        let take = if chunk.len() as u64 > room {
            self.truncated = true;
            self.capturing = false;
            chunk.slice(..room as usize)
        } else {
            chunk.clone()
        };
        if self.spill.is_none() && self.mem_len + take.len() <= self.limits.in_memory {
            self.mem_len += take.len();
            self.kept += take.len() as u64;
            self.mem.push(take);
            return;
        }
        if self.spill.is_none() && !self.start_spill() {
            self.stop();
            return;
        }
        self.send_spill(take);
    }

    /// Starts the spill writer and hands it the chunks kept so far.
    fn start_spill(&mut self) -> bool {
        let Some(tx) = self.tx.take() else {
            return false;
        };
        let (chunks, rx) = sync_channel(SPILL_QUEUE);
        let shared = Arc::new(SpillShared::default());
        let dir = self.limits.spill_dir.clone();
        let sh = shared.clone();
        let job = move || spill_writer(dir, rx, sh, tx);
        // The writer blocks on file I/O: a blocking-pool thread when inside a
        // runtime, else a plain thread.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(job);
            }
            Err(_) => {
                if std::thread::Builder::new()
                    .name("whtunnel-spill".into())
                    .spawn(job)
                    .is_err()
                {
                    return false;
                }
            }
        }
        // The in-memory chunks move to the writer (the kept count is unchanged).
        // The queue is fresh, so this only fails with thousands of tiny
        // chunks; then the capture stops there (truncated).
        let spill = Spill { chunks, shared };
        let mut ok = true;
        for c in std::mem::take(&mut self.mem) {
            let len = c.len();
            // Counted before sending: the writer may subtract it at once.
            spill.shared.in_flight.fetch_add(len, Ordering::Relaxed);
            if !ok || spill.chunks.try_send(c).is_err() {
                ok = false;
                spill.shared.in_flight.fetch_sub(len, Ordering::Relaxed);
                self.kept -= len as u64;
            }
        }
        self.mem_len = 0;
        self.spill = Some(spill);
        ok
    }

    fn send_spill(&mut self, chunk: Bytes) {
        let Some(spill) = &self.spill else {
            self.stop();
            return;
        };
        let len = chunk.len();
        let in_flight = spill.shared.in_flight.load(Ordering::Relaxed);
        if in_flight + len > SPILL_BUDGET {
            self.stop();
            return;
        }
        spill.shared.in_flight.fetch_add(len, Ordering::Relaxed);
        match spill.chunks.try_send(chunk) {
            Ok(()) => self.kept += len as u64,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                spill.shared.in_flight.fetch_sub(len, Ordering::Relaxed);
                self.stop();
            }
        }
    }

    /// Resolves the receiver (directly, or through the spill writer once the
    /// file is complete). `complete` is false on error or early drop.
    fn finish(&mut self, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if !complete {
            self.truncated = true;
        }
        if let Some(spill) = self.spill.take() {
            spill
                .shared
                .total_len
                .store(self.total_len, Ordering::Release);
            if self.truncated {
                spill.shared.truncated.store(true, Ordering::Release);
            }
            // Hanging up tells the writer to close the file and answer.
            drop(spill);
            return;
        }
        let data = match self.mem.len() {
            0 => BodyData::Empty,
            1 => BodyData::Memory(self.mem.pop().unwrap_or_default()),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(self.mem_len);
                for c in self.mem.drain(..) {
                    all.extend_from_slice(&c);
                }
                BodyData::Memory(all.freeze())
            }
        };
        self.mem_len = 0;
        if let Some(tx) = self.tx.take() {
            tx.send(CapturedBody {
                data,
                total_len: self.total_len,
                truncated: self.truncated,
            });
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Unique spill file name (several bodies spill at once).
fn spill_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}.spill",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes queued chunks to a new file in `dir`; when the sender hangs up,
/// closes the file and only then resolves `tx`.
fn spill_writer(dir: PathBuf, rx: Receiver<Bytes>, shared: Arc<SpillShared>, tx: Deliver) {
    use std::io::Write;
    let path = dir.join(spill_name());
    let file = std::fs::create_dir_all(&dir).and_then(|_| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(&path)
    });
    let mut out = file
        .ok()
        .map(|f| std::io::BufWriter::with_capacity(256 * 1024, f));
    let mut failed = out.is_none();
    while let Ok(chunk) = rx.recv() {
        if let Some(w) = out.as_mut() {
            if w.write_all(&chunk).is_err() {
                failed = true;
                out = None;
            }
        }
        shared.in_flight.fetch_sub(chunk.len(), Ordering::Relaxed);
    }
    if let Some(w) = out.take() {
        match w.into_inner() {
            Ok(f) => drop(f),
            Err(_) => failed = true,
        }
    }
    let truncated = failed || shared.truncated.load(Ordering::Acquire);
    let total_len = shared.total_len.load(Ordering::Acquire);
    let data = match std::fs::metadata(&path) {
        Ok(m) if m.len() > 0 => BodyData::File(path),
        _ => {
            let _ = std::fs::remove_file(&path);
            BodyData::Empty
        }
    };
    // Nobody waiting for it (the exchange was abandoned) removes the file.
    tx.send(CapturedBody {
        data,
        total_len,
        truncated,
    });
}

/// True for files written by the tee's spill writer (owned by the capture,
/// safe to delete once the exchange is dropped).
pub(crate) fn is_spill_file(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "spill")
}

impl<B: Body<Data = Bytes> + Unpin> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.cap.on_data(data);
                }
                if this.inner.is_end_stream() {
                    this.cap.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.cap.finish(false),
            Poll::Ready(None) => this.cap.finish(true),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A synthetic streaming body: `n` chunks produced on demand (nothing
    /// is held), optionally failing after `fail_after` chunks.
    struct Chunks {
        n: usize,
        size: usize,
        sent: usize,
        fail_after: Option<usize>,
    }

    impl Chunks {
        fn new(n: usize, size: usize) -> Self {
            Self {
                n,
                size,
                sent: 0,
                fail_after: None,
            }
        }
        /// Byte `i` of the stream (a pattern that catches reordering).
        fn byte(i: usize) -> u8 {
            (i % 251) as u8
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.fail_after == Some(self.sent) {
                return Poll::Ready(Some(Err(std::io::Error::other("reset"))));
            }
            if self.sent == self.n {
                return Poll::Ready(None);
            }
            let start = self.sent * self.size;
            let chunk: Vec<u8> = (start..start + self.size).map(Self::byte).collect();
            self.sent += 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
        }
    }

    fn limits(dir: &std::path::Path, in_memory: usize, max_capture: u64) -> BodyLimits {
        BodyLimits {
            in_memory,
            max_capture,
            spill_dir: dir.to_path_buf(),
        }
    }

    async fn drain<B: Body<Data = Bytes> + Unpin>(mut b: B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        let mut out = Vec::new();
        while let Some(f) = b.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                out.extend_from_slice(&d);
            }
        }
        out
    }

    #[tokio::test]
    async fn small_body_passes_through_and_is_kept_in_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let (body, rx) = tee(
            Chunks::new(4, 1000),
            &limits(tmp.path(), 64 * 1024, 1 << 20),
        );
        let forwarded = drain(body).await;
        let want: Vec<u8> = (0..4000).map(Chunks::byte).collect();
        assert_eq!(forwarded, want);
        let cap = rx.await.unwrap();
        assert_eq!(cap.data, BodyData::Memory(Bytes::from(want)));
        assert_eq!(cap.total_len, 4000);
        assert!(!cap.truncated);
    }

    #[tokio::test]
    async fn full_body_ending_via_is_end_stream_resolves_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let lim = limits(tmp.path(), 1024, 1 << 20);
        // A Full body reports end-of-stream right after its data frame;
        // hyper then stops polling, so the tee must finish there.
        let (mut body, rx) = tee(Full::new(Bytes::from_static(b"hello")), &lim);
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "hello");
        assert!(body.is_end_stream());
        let cap = rx.await.unwrap();
        assert_eq!(cap, CapturedBody::from_bytes(&b"hello"[..]));
        drop(body);

        // An empty body that is never polled is complete, not truncated.
        let (body, rx) = tee(Full::new(Bytes::new()), &lim);
        let cap = rx.await.unwrap();
        assert_eq!(cap, CapturedBody::default());
        drop(body);
    }

    /// `tee_then` hands the body over exactly once wherever the stream
    /// ends: at once for an empty body, at the end of a small one, from the
    /// spill writer for a big one, and cut off when dropped early.
    #[tokio::test]
    async fn tee_then_hands_over_the_body_once_wherever_it_ends() {
        use std::sync::Mutex;
        let tmp = tempfile::tempdir().unwrap();
        let lim = limits(tmp.path(), 64 * 1024, 1 << 30);
        let got: Arc<Mutex<Vec<CapturedBody>>> = Arc::default();
        let then = |got: &Arc<Mutex<Vec<CapturedBody>>>| {
            let got = got.clone();
            move |b| got.lock().unwrap().push(b)
        };

        let body = tee_then(Full::new(Bytes::new()), &lim, then(&got));
        assert_eq!(*got.lock().unwrap(), vec![CapturedBody::default()]);
        drop(body);
        assert_eq!(got.lock().unwrap().len(), 1, "not again on drop");

        got.lock().unwrap().clear();
        let body = tee_then(Chunks::new(4, 1000), &lim, then(&got));
        let want: Vec<u8> = (0..4000).map(Chunks::byte).collect();
        assert_eq!(drain(body).await, want);
        assert_eq!(
            *got.lock().unwrap(),
            vec![CapturedBody::from_bytes(Bytes::from(want))]
        );

        got.lock().unwrap().clear();
        let (n, size) = (192, 16 * 1024);
        let body = tee_then(Chunks::new(n, size), &lim, then(&got));
        drain(body).await;
        let started = std::time::Instant::now();
        while got.lock().unwrap().is_empty() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(got.lock().unwrap().len(), 1, "once");
        let spilled = got.lock().unwrap().pop().unwrap();
        assert!(!spilled.truncated);
        let BodyData::File(p) = &spilled.data else {
            panic!("expected a spilled file, got {:?}", spilled.data);
        };
        assert_eq!(std::fs::metadata(p).unwrap().len(), (n * size) as u64);

        let mut body = tee_then(Chunks::new(4, 1000), &lim, then(&got));
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(got.lock().unwrap().len(), 1, "once");
        let cut = got.lock().unwrap().pop().unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.total_len, 1000);

        // A function never called (the spill writer's job dropped by a
        // runtime shutting down) still hears of the body: nothing kept.
        drop(Deliver::Call(Then(Some(Box::new(then(&got))))));
        assert_eq!(
            *got.lock().unwrap(),
            vec![CapturedBody {
                truncated: true,
                ..CapturedBody::default()
            }]
        );
    }

    #[tokio::test]
    async fn big_body_spills_to_a_complete_file() {
        let tmp = tempfile::tempdir().unwrap();
        // 3 MiB in 16 KiB chunks: above in_memory, below the spill budget,
        // so nothing may be dropped.
        let (n, size) = (192, 16 * 1024);
        let (body, rx) = tee(
            Chunks::new(n, size),
            &limits(tmp.path(), 64 * 1024, 1 << 30),
        );
        let forwarded = drain(body).await;
        let want: Vec<u8> = (0..n * size).map(Chunks::byte).collect();
        assert_eq!(forwarded, want);
        let cap = rx.await.unwrap();
        assert!(!cap.truncated);
        assert_eq!(cap.total_len, (n * size) as u64);
        let BodyData::File(p) = &cap.data else {
            panic!("expected a spilled file, got {:?}", cap.data);
        };
        // Resolved only after the file is complete and closed.
        assert_eq!(std::fs::read(p).unwrap(), want);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[tokio::test]
    async fn truncates_at_max_capture_but_forwards_everything() {
        let tmp = tempfile::tempdir().unwrap();
        // In memory: keep 2500 of 4000 bytes, cut inside a chunk.
        let (body, rx) = tee(Chunks::new(4, 1000), &limits(tmp.path(), 1 << 20, 2500));
        assert_eq!(drain(body).await.len(), 4000);
        let cap = rx.await.unwrap();
        let want: Vec<u8> = (0..2500).map(Chunks::byte).collect();
        assert_eq!(cap.data, BodyData::Memory(Bytes::from(want)));
        assert_eq!(cap.total_len, 4000);
        assert!(cap.truncated);

        // Spilled: keep 100,000 of 1 MiB.
        let (body, rx) = tee(Chunks::new(64, 16384), &limits(tmp.path(), 10_000, 100_000));
        assert_eq!(drain(body).await.len(), 64 * 16384);
        let cap = rx.await.unwrap();
        assert!(cap.truncated);
        assert_eq!(cap.total_len, 64 * 16384);
        let BodyData::File(p) = &cap.data else {
            panic!("{:?}", cap.data)
        };
        let kept = std::fs::read(p).unwrap();
        assert_eq!(kept, (0..100_000).map(Chunks::byte).collect::<Vec<_>>());

        // Exactly at the limit is not truncated.
        let (body, rx) = tee(Chunks::new(2, 1000), &limits(tmp.path(), 1 << 20, 2000));
        drain(body).await;
        assert!(!rx.await.unwrap().truncated);
    }

    #[tokio::test]
    async fn early_drop_and_errors_mark_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut body, rx) = tee(Chunks::new(10, 100), &limits(tmp.path(), 1 << 20, 1 << 20));
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body); // the sender went away mid-body
        let cap = rx.await.unwrap();
        assert!(cap.truncated);
        assert_eq!(cap.total_len, 200);
        assert_eq!(
            cap.data,
            BodyData::Memory((0..200).map(Chunks::byte).collect())
        );

        // Dropped while spilling: the file still resolves, complete so far.
        let (mut body, rx) = tee(Chunks::new(100, 1000), &limits(tmp.path(), 1500, 1 << 20));
        for _ in 0..5 {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
        let cap = rx.await.unwrap();
        assert!(cap.truncated);
        let BodyData::File(p) = &cap.data else {
            panic!("{:?}", cap.data)
        };
        assert_eq!(
            std::fs::read(p).unwrap(),
            (0..5000).map(Chunks::byte).collect::<Vec<_>>()
        );

        // An error frame is passed through and ends the capture.
        let mut failing = Chunks::new(10, 100);
        failing.fail_after = Some(3);
        let (mut body, rx) = tee(failing, &limits(tmp.path(), 1 << 20, 1 << 20));
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        assert!(body.frame().await.unwrap().is_err());
        let cap = rx.await.unwrap();
        assert!(cap.truncated);
        assert_eq!(cap.total_len, 300);
    }

    #[tokio::test]
    async fn memory_stays_bounded_for_a_100_mib_body() {
        let tmp = tempfile::tempdir().unwrap();
        let in_memory = 256 * 1024;
        let (n, size) = (1600, 64 * 1024); // 100 MiB
        let (mut body, rx) = tee(
            Chunks::new(n, size),
            &limits(tmp.path(), in_memory, 1 << 40),
        );
        let mut forwarded = 0usize;
        let (mut max_buf, mut max_flight) = (0, 0);
        while let Some(f) = body.frame().await {
            forwarded += f.unwrap().into_data().unwrap().len();
            max_buf = max_buf.max(body.buffered_bytes());
            max_flight = max_flight.max(body.spill_in_flight());
            assert!(body.buffered_bytes() <= in_memory);
            assert!(body.spill_in_flight() <= SPILL_BUDGET);
        }
        assert_eq!(forwarded, n * size);
        assert!(max_buf <= in_memory && max_flight <= SPILL_BUDGET);
        let cap = rx.await.unwrap();
        assert_eq!(cap.total_len, (n * size) as u64);
        let BodyData::File(p) = &cap.data else {
            panic!("{:?}", cap.data)
        };
        let len = std::fs::metadata(p).unwrap().len();
        // The writer may fall behind a producer this fast: then capture stops
        // (truncated) rather than buffer; what was kept is a prefix.
        if cap.truncated {
            assert!(len < (n * size) as u64);
        } else {
            assert_eq!(len, (n * size) as u64);
        }
    }

    #[tokio::test]
    async fn abandoned_spill_file_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let (body, rx) = tee(Chunks::new(10, 1000), &limits(tmp.path(), 100, 1 << 20));
        drop(rx); // the exchange was abandoned
        assert_eq!(drain(body).await.len(), 10_000);
        for _ in 0..100 {
            if std::fs::read_dir(tmp.path()).unwrap().count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("spill file left behind");
    }
}
