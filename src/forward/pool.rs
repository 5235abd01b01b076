//! The agent's connections to the app: HTTP/1.1, kept alive and reused per
//! target (`host:port`), at most [`MAX_IDLE_PER_TARGET`] idle ones each;
//! none is reused once idle for [`IDLE_TIMEOUT`], and a task closes such
//! ones within half of it more.
//!
//! hyper-util's general client did this job before, for any number of
//! origins: every request hashed its key into a pool map twice (out and
//! back in), and an answer whose body was still coming when its head
//! arrived cost a task to hand the connection back later
//! (docs/benchmarks.md, "Session 14", has what it cost). Here a connection
//! goes back when the app's answer has been read to its end, which is when
//! it is already idle in nearly every case; a task waits for it only when
//! it is not yet.
//!
//! What the general client did that matters is kept: the request gets a Host
//! header when it has none; a kept-alive connection the app closed
//! while it sat idle can fail a request before any byte of it is sent, and
//! hyper hands the request back, so it is sent again on a new connection (a
//! request that may have reached the app is never resent); each address of
//! the target gets its share of [`CONNECT_TIMEOUT`], so an address that
//! drops packets does not use up the time of the next.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{header, HeaderValue, Request, Response};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::tunnel::Body;

/// Idle connections kept per target; past this, the oldest is closed.
pub const MAX_IDLE_PER_TARGET: usize = 64;
/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the app may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the app failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection to the app could be made.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The connection failed while sending the request or reading the
    /// answer's head.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl CallError {
    /// True when the app could not be reached at all (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Connect(_))
    }
}

/// A call in progress: the app's answer, or why there is none.
pub type Call = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, CallError>> + Send>>;

/// The connections, shared by every forwarding task. Cheap to clone.
#[derive(Clone, Default)]
pub struct AppPool {
    idle: Arc<Mutex<Vec<Slot>>>,
    /// Set once the task that closes expired idle connections runs.
    reaping: Arc<std::sync::atomic::AtomicBool>,
}

/// One target's idle connections, oldest first.
struct Slot {
    authority: Authority,
    idle: Vec<Idle>,
}

impl Slot {
    /// How many connections, from the front, have been idle past
    /// [`IDLE_TIMEOUT`] at `now` (oldest first, so they are all there).
    fn expired(&self, now: Instant) -> usize {
        self.idle
            .iter()
            .take_while(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
            .count()
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl AppPool {
    /// Sends `req` (its URI in origin form, `/path?query`, what an app
    /// expects from a client that is not a proxy) to `authority` on a
    /// kept-alive connection, or a new one.
    pub fn request(&self, authority: Authority, mut req: Request<Body>) -> Call {
        let pool = self.clone();
        Box::pin(async move {
            default_host(&mut req, &authority);
            let mut retried = false;
            loop {
                // A retry skips the pool: its other idle connections may
                // have been closed at the same moment (an app restarting).
                let idle = if retried {
                    None
                } else {
                    pool.checkout(&authority).await
                };
                let (mut sender, reused) = match idle {
                    Some(sender) => (sender, true),
                    None => (connect(&authority).await?, false),
                };
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let back = Some(Back {
                            pool: pool.clone(),
                            authority,
                            sender,
                        });
                        return Ok(resp.map(|body| PooledBody { body, back }));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused && !retried => {
                            let why = e.error();
                            tracing::debug!(
                                "kept-alive connection to the app lost ({why}); resending"
                            );
                            req = unsent;
                            retried = true;
                        }
                        _ => return Err(CallError::Http(e.into_error())),
                    },
                }
            }
        })
    }

    /// The newest idle connection to `authority` that is still open, ready
    /// for a request; closed and expired ones are dropped on the way.
    async fn checkout(&self, authority: &Authority) -> Option<SendRequest<Body>> {
        loop {
            let mut idle = {
                let mut slots = self.idle.lock();
                let slot = slots.iter_mut().find(|s| s.authority == *authority)?;
                slot.idle.pop()?
            };
            if idle.sender.is_closed() || idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Only ready connections are put back, so this does not wait,
            // unless the app closed it meanwhile (an error: try the next).
            if idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
    }

    /// Puts a connection that finished its exchange back, if it is ready
    /// for another; if not yet, a task puts it back once it is.
    fn put_back(&self, authority: Authority, mut sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push(authority, sender);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        runtime.spawn(async move {
            // Bounded like any idle connection: one that never becomes
            // ready again is dropped, not waited on forever.
            if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, sender.ready()).await {
                pool.push(authority, sender);
            }
        });
    }

    fn push(&self, authority: Authority, sender: SendRequest<Body>) {
        self.reap_later();
        let now = Instant::now();
        let mut slots = self.idle.lock();
        let slot = match slots.iter().position(|s| s.authority == authority) {
            Some(i) => &mut slots[i],
            None => {
                slots.push(Slot {
                    authority,
                    idle: Vec::new(),
                });
                slots.last_mut().expect("just pushed")
            }
        };
        let expired = slot.expired(now);
        let over = (slot.idle.len() - expired + 1).saturating_sub(MAX_IDLE_PER_TARGET);
        let closed: Vec<Idle> = slot.idle.drain(..expired + over).collect();
        slot.idle.push(Idle { sender, since: now });
        drop(slots);
        drop(closed);
    }

    /// Starts, once, the task that closes connections idle for longer than
    /// [`IDLE_TIMEOUT`] even when no request comes to notice them (an app
    /// with no keep-alive timeout of its own would keep them open). It ends
    /// once nothing is idle (the next `push` starts it again), or with the
    /// pool: an agent nobody sends to is not woken for it.
    fn reap_later(&self) {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Lets a later `push` start another reaper if this one's runtime
        /// stops (its task is then dropped).
        struct Running(Arc<AtomicBool>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        if self.reaping.load(Ordering::Relaxed) || self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let running = Running(self.reaping.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let idle = Arc::downgrade(&self.idle);
        runtime.spawn(async move {
            let _running = running;
            loop {
                tokio::time::sleep(IDLE_TIMEOUT / 2).await;
                let Some(idle) = idle.upgrade() else { return };
                let now = Instant::now();
                let mut slots = idle.lock();
                let expired: Vec<Idle> = slots
                    .iter_mut()
                    .flat_map(|slot| {
                        let n = slot.expired(now);
                        slot.idle.drain(..n).collect::<Vec<_>>()
                    })
                    .collect();
                let empty = slots.iter().all(|s| s.idle.is_empty());
                // Dropped outside the lock: closing is the connection task's.
                drop(slots);
                drop(expired);
                if empty {
                    return;
                }
            }
        });
    }

    /// Idle connections kept for `authority` (for tests).
    #[cfg(test)]
    fn idle_count(&self, authority: &str) -> usize {
        self.idle
            .lock()
            .iter()
            .find(|s| s.authority.as_str() == authority)
            .map_or(0, |s| s.idle.len())
    }
}

/// A Host header if the request has none (without the port when it is
/// HTTP's default, as clients send it).
fn default_host(req: &mut Request<Body>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST) {
        let host = match authority.port_u16() {
            Some(80) => authority.host(),
            _ => authority.as_str(),
        };
        if let Ok(host) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
}

/// A new connection to `authority`, its task spawned. Its addresses are
/// tried in the resolver's order, each for its share of
/// [`CONNECT_TIMEOUT`] (`localhost` is often `::1` then `127.0.0.1`, and an
/// app listens on one of them).
async fn connect(authority: &Authority) -> Result<SendRequest<Body>, CallError> {
    let timed_out = || {
        CallError::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
        ))
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let started = Instant::now();
    let addrs: Vec<_> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| timed_out())?
            .map_err(CallError::Connect)?
            .collect();
    let share = CONNECT_TIMEOUT.saturating_sub(started.elapsed()) / addrs.len().max(1) as u32;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = Some(CallError::Connect(e)),
            Err(_) => last = Some(timed_out()),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e),
        (None, None) => {
            return Err(CallError::Connect(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("a connection to the app ended: {e}");
        }
    });
    Ok(sender)
}

/// Where a connection goes once its exchange is over.
struct Back {
    pool: AppPool,
    authority: Authority,
    sender: SendRequest<Body>,
}

/// The app's answer; its connection goes back to the pool once the answer
/// has been read to its end: polled until it says there is no more, or
/// dropped when it says it is at its end (a known length all read; a
/// chunked answer says so only by ending). An answer dropped before its end
/// leaves the connection unusable (hyper closes it), so it is not put back.
pub struct PooledBody {
    body: Incoming,
    back: Option<Back>,
}

impl PooledBody {
    fn done(&mut self) {
        if let Some(Back {
            pool,
            authority,
            sender,
        }) = self.back.take()
        {
            pool.put_back(authority, sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // The last frame read, and the reader stopped there without asking
        // for the end (it knew from `is_end_stream`): the exchange is over.
        if self.body.is_end_stream() {
            self.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn empty() -> Body {
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn to(addr: std::net::SocketAddr) -> Authority {
        addr.to_string().parse().unwrap()
    }

    fn post(path: &str) -> Request<Body> {
        Request::post(path).body(empty()).unwrap()
    }

    /// An app answering `200 ok` to every request, counting connections,
    /// and writing each request head it reads to `heads`.
    async fn app() -> (
        std::net::SocketAddr,
        Arc<AtomicUsize>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            h.lock().push(String::from_utf8_lossy(&head).into_owned());
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, conns, heads)
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_sent_in_origin_form() {
        let (addr, conns, heads) = app().await;
        let pool = AppPool::default();
        for i in 0..20 {
            let resp = pool
                .request(to(addr), post(&format!("/hook?n={i}")))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one kept-alive connection");
        assert_eq!(pool.idle_count(&addr.to_string()), 1);
        let heads = heads.lock();
        assert_eq!(heads.len(), 20);
        assert!(
            heads[3].starts_with("POST /hook?n=3 HTTP/1.1\r\n"),
            "{}",
            heads[3]
        );
        let host = format!("host: {addr}\r\n");
        assert!(
            heads[3].to_ascii_lowercase().contains(&host),
            "{}",
            heads[3]
        );
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_does_not_return_its_connection() {
        let (addr, conns, _) = app().await;
        let pool = AppPool::default();
        let resp = pool.request(to(addr), post("/a")).await.unwrap();
        // Content-Length 2, nothing read: the connection is mid-answer.
        assert!(!resp.body().is_end_stream());
        drop(resp);
        assert_eq!(pool.idle_count(&addr.to_string()), 0);
        let resp = pool.request(to(addr), post("/b")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    /// The app closes a kept-alive connection while it sits idle (its
    /// keep-alive timeout): the next request goes out on a new connection.
    /// (A close that crosses the next request on the wire is the retry in
    /// `request`; its timing cannot be arranged from here.)
    #[tokio::test]
    async fn a_connection_the_app_closed_while_idle_is_not_a_failed_request() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let heads = Arc::new(AtomicUsize::new(0));
        let h = heads.clone();
        // A blocking app on its own thread; the test closes the first
        // connection itself.
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                loop {
                    let mut line = String::new();
                    let mut head = 0;
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        head += 1;
                        if line == "\r\n" {
                            break;
                        }
                        line.clear();
                    }
                    if head == 0 {
                        break;
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    if n == 0 {
                        let _ = first_tx.send(writer);
                        break;
                    }
                }
            }
        });
        let pool = AppPool::default();
        let resp = pool.request(to(addr), post("/first")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(pool.idle_count(&addr.to_string()), 1);
        let first = first_rx.recv().unwrap();
        first.shutdown(std::net::Shutdown::Both).unwrap();
        drop(first);
        // The agent's side of it sees the close (bounded wait).
        for _ in 0..200 {
            if pool_sees_closed(&pool, addr) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            pool_sees_closed(&pool, addr),
            "the close was not seen in 2 s"
        );
        let resp = pool.request(to(addr), post("/second")).await;
        let resp = resp.unwrap_or_else(|e| panic!("the second request failed: {e}"));
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        assert_eq!(
            heads.load(Ordering::SeqCst),
            2,
            "each request reached the app once"
        );
    }

    /// A connection nobody reuses is closed once idle for longer than
    /// [`IDLE_TIMEOUT`], though no request comes to notice it.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let (addr, conns, _) = app().await;
        let pool = AppPool::default();
        let resp = pool.request(to(addr), post("/a")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(pool.idle_count(&addr.to_string()), 1);
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        assert_eq!(pool.idle_count(&addr.to_string()), 1, "closed too early");
        tokio::time::sleep(IDLE_TIMEOUT * 2).await;
        assert_eq!(pool.idle_count(&addr.to_string()), 0, "still kept");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // Nothing idle: the reaper has stopped, and the next connection
        // put back starts it again.
        assert!(!pool.reaping.load(std::sync::atomic::Ordering::Relaxed));
        let resp = pool.request(to(addr), post("/b")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert!(pool.reaping.load(std::sync::atomic::Ordering::Relaxed));
    }

    fn pool_sees_closed(pool: &AppPool, addr: std::net::SocketAddr) -> bool {
        let slots = pool.idle.lock();
        let slot = slots
            .iter()
            .find(|s| s.authority.as_str() == addr.to_string());
        slot.is_some_and(|s| s.idle.iter().all(|i| i.sender.is_closed()))
    }

    /// What the forwarder sends: the target's origin form, and a Host
    /// filled in from the target only when the request has none.
    #[test]
    fn the_request_line_is_in_origin_form_and_host_is_filled_in_only_when_missing() {
        let cases = [
            (
                "http://example.test",
                "/a?b=1",
                None,
                "/a?b=1",
                "example.test",
            ),
            ("127.0.0.1:3000", "/", None, "/", "127.0.0.1:3000"),
            ("http://[::1]:8080", "/x", None, "/x", "[::1]:8080"),
            (
                "127.0.0.1:3000",
                "/y",
                Some("public.example"),
                "/y",
                "public.example",
            ),
        ];
        for (target, sent, host, path, want) in cases {
            let target: super::super::Target = target.parse().unwrap();
            let uri = target.origin_form(sent).unwrap();
            let mut req = Request::post(uri).body(empty()).unwrap();
            if let Some(h) = host {
                req.headers_mut().insert(header::HOST, h.parse().unwrap());
            }
            default_host(&mut req, target.authority_parsed());
            assert_eq!(req.uri().to_string(), path, "{target}");
            assert_eq!(req.headers()[header::HOST], want, "{target}");
        }
    }

    /// `localhost` may resolve to `::1` first; an app on `127.0.0.1` only
    /// is still reached.
    #[tokio::test]
    async fn localhost_reaches_an_app_on_one_of_its_addresses() {
        let (addr, conns, _) = app().await;
        let pool = AppPool::default();
        let localhost = format!("localhost:{}", addr.port()).parse().unwrap();
        let resp = pool.request(localhost, post("/h")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = AppPool::default()
            .request(to(addr), post("/"))
            .await
            .err()
            .expect("nothing listens");
        assert!(e.is_connect(), "{e:?}");
    }
}
