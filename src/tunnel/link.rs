//! The relay's end of the link: an HTTP/2 client on the `h2` crate, sending
//! each public request to the agent as one stream.
//!
//! Not hyper's HTTP/2 client, which puts two more tasks between the caller
//! and the connection (a dispatch channel to a client task, and a task per
//! response: a wake-up each per request, often on another worker thread)
//! and hands a body to the connection only after its HEADERS are written,
//! so every request would cross the websocket as two messages. Here the
//! caller's own task opens the stream and queues HEADERS and a body already
//! in memory together; the connection task writes them in one message. Only
//! a body still streaming in gets a task of its own. The agent's end is
//! hyper's HTTP/2 server.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::io::InspectReader;
use tokio_util::sync::CancellationToken;

use super::h2::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, MAX_HEADER_LIST, STREAM_WINDOW};
use super::protocol::{content_length, LinkMeta};
use super::{Body, BoxError};

/// Bytes of a request body that may wait in the send buffer for flow-control
/// window (the figure hyper's client uses).
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// Why a request on the link failed. Callers branch on
/// [`LinkError::is_link_failure`]: only then may the request be held for the
/// agent's next link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The HTTP/2 layer failed: the stream was reset, or the link broke.
    #[error("{0}")]
    H2(#[from] h2::Error),
    /// The agent did not answer a keepalive ping in time.
    #[error("the agent did not answer a keepalive ping within {}s", PING_TIMEOUT.as_secs())]
    KeepaliveTimeout,
}

impl LinkError {
    /// True when this one stream was reset (the agent's handler failed, or
    /// the body being sent broke) rather than the whole link failing
    /// (closed, keepalive timeout, I/O error, GOAWAY).
    pub fn is_stream_reset(&self) -> bool {
        match self {
            LinkError::H2(e) => e.is_reset() && !e.is_go_away(),
            LinkError::KeepaliveTimeout => false,
        }
    }

    /// True when the link itself failed (I/O error, GOAWAY, keepalive
    /// timeout): the request may be fine and can be held for the next link.
    /// A request h2 refused to send (say, a header it does not allow) is
    /// neither a reset nor a link failure, and holding it would only fail
    /// the same way on every delivery.
    pub fn is_link_failure(&self) -> bool {
        match self {
            LinkError::H2(e) => e.is_io() || e.is_go_away(),
            LinkError::KeepaliveTimeout => true,
        }
    }
}

/// This side pings only a link that brought nothing from the agent for this
/// long. The agent pings every [`KEEPALIVE_INTERVAL`] on an idle link (and
/// this side's h2 answers), so a live agent's link is never quiet this long
/// and only one end pings: half the keepalive traffic of a relay holding
/// thousands of idle tunnels.
const PING_WHEN_QUIET: std::time::Duration =
    KEEPALIVE_INTERVAL.saturating_add(std::time::Duration::from_secs(1));
/// How long this side waits for the answer to its ping. With
/// [`PING_WHEN_QUIET`], a dead agent is noticed within 10 s.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// When the link last carried something from the agent, so keepalive pings
/// go out only on a quiet link: behind a large answer streaming in, a
/// ping's answer could queue long enough to end a healthy link. Every read
/// that brings bytes counts ([`HeardIo`]), the agent's own pings included.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_heard: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_heard: AtomicU64::new(0),
        }
    }

    fn heard(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_heard.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> std::time::Duration {
        let last = self.last_heard.load(Ordering::Relaxed);
        let now = self.start.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(last))
    }
}

/// Sends requests to one agent. Cheap to clone; every clone uses the same
/// link.
#[derive(Clone)]
pub struct LinkClient {
    tx: h2::client::SendRequest<Bytes>,
    closed: CancellationToken,
    meta: LinkMeta,
}

/// The link's connection: must be driven ([`LinkConnection::run`]) for any
/// request to make progress.
pub struct LinkConnection {
    conn: h2::client::Connection<HeardIo, Bytes>,
    closed: CancellationToken,
    activity: Arc<Activity>,
}

/// What the link runs on: a websocket seen as a byte stream, in practice.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The link's IO, noting in [`Activity`] every read that brings bytes.
type HeardIo = InspectReader<Box<dyn Io>, Box<dyn FnMut(&[u8]) + Send>>;

/// Opens the HTTP/2 client on `io` with the tunnel's settings (see
/// [`super::h2`]). `closed` is cancelled when the connection ends, and can be
/// cancelled by the owner to end it. `meta` is what the relay announced to
/// the agent in its 101 answer.
pub async fn handshake(
    io: impl Io,
    closed: CancellationToken,
    meta: LinkMeta,
) -> Result<(LinkClient, LinkConnection), LinkError> {
    let activity = Arc::new(Activity::new());
    let heard = activity.clone();
    let io: HeardIo = InspectReader::new(
        Box::new(io),
        Box::new(move |read: &[u8]| {
            // Empty at the end of the link: no sign of life.
            if !read.is_empty() {
                heard.heard();
            }
        }),
    );
    let (tx, conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake(io)
        .await?;
    Ok((
        LinkClient {
            tx,
            closed: closed.clone(),
            meta,
        },
        LinkConnection {
            conn,
            closed,
            activity,
        },
    ))
}

impl LinkConnection {
    /// Drives the connection until the link ends, the agent stops answering
    /// pings, or `closed` is cancelled. A link that carried nothing from the
    /// agent for [`PING_WHEN_QUIET`] is pinged, and dropped when the ping is
    /// not answered within [`PING_TIMEOUT`]: a dead peer is noticed within
    /// 10 s. Cancels `closed` on the way out, so every [`LinkClient`] sees
    /// the link is gone.
    pub async fn run(mut self) -> Result<(), LinkError> {
        let closed = self.closed.clone();
        let _cancel_on_exit = closed.clone().drop_guard();
        let pings = self.conn.ping_pong();
        let activity = self.activity.clone();
        let keepalive = async move {
            let Some(mut pings) = pings else {
                return std::future::pending().await;
            };
            loop {
                let quiet = activity.quiet_for();
                if quiet < PING_WHEN_QUIET {
                    tokio::time::sleep(PING_WHEN_QUIET - quiet).await;
                    continue;
                }
                match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_pong)) => activity.heard(),
                    Ok(Err(e)) => return Err(LinkError::H2(e)),
                    Err(_) => return Err(LinkError::KeepaliveTimeout),
                }
            }
        };
        tokio::select! {
            result = &mut self.conn => result.map_err(LinkError::H2),
            result = keepalive => result,
            () = closed.cancelled() => Ok(()),
        }
    }
}

impl LinkClient {
    /// The request metadata announced for every request on this link: a
    /// request's own headers carry only what differs
    /// ([`RequestMeta::write_headers`](super::protocol::RequestMeta::write_headers)).
    pub fn link_meta(&self) -> &LinkMeta {
        &self.meta
    }

    /// True once the link has ended (or is being torn down).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Sends one request and waits for the agent's answer; the answer's body
    /// streams. Dropping the returned future before the answer resets the
    /// stream, so the agent stops working on it.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, LinkError> {
        let mut tx = self.tx.clone().ready().await?;
        let (parts, body) = req.into_parts();
        let mut head = Request::from_parts(parts, ());
        // The framing an app sees from hyper's client: a body of known length
        // says so, and so does an empty one where the method defines a body.
        if let Some(len) = body.size_hint().exact() {
            let defines_body = matches!(
                *head.method(),
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            );
            if (len != 0 || defines_body) && !head.headers().contains_key(header::CONTENT_LENGTH) {
                head.headers_mut()
                    .insert(header::CONTENT_LENGTH, len.into());
            }
        }
        let eos = body.is_end_stream();
        let (answer, stream) = tx.send_request(head, eos)?;
        // Held until the answer arrives: dropped earlier (the caller gave
        // up), it tells a still-running body pipe to reset the stream.
        let (answered, cancelled) = oneshot::channel::<()>();
        if !eos {
            let mut pipe = Box::pin(pipe_body(body, stream, cancelled));
            // A body already in memory is queued right here, next to its
            // HEADERS; only one still arriving needs a task.
            if pipe.as_mut().now_or_never().is_none() {
                tokio::spawn(pipe);
            }
        }
        let resp = answer.await?;
        let _ = answered.send(());
        let len = content_length(resp.headers());
        Ok(resp.map(|rx| {
            RecvBody {
                rx,
                remaining: len,
                data_done: false,
            }
            .boxed_unsync()
        }))
    }
}

/// Sends `body` on `stream`, within the agent's flow-control window, until
/// it ends, the agent resets the stream, or the caller gives up before the
/// answer (`cancelled` dropped).
async fn pipe_body(
    mut body: Body,
    mut stream: h2::SendStream<Bytes>,
    cancelled: oneshot::Receiver<()>,
) {
    let mut cancelled = Some(cancelled);
    loop {
        let next = poll_fn(|cx| {
            if let Some(rx) = cancelled.as_mut() {
                match rx.poll_unpin(cx) {
                    // Dropped without an answer: the caller gave up.
                    Poll::Ready(Err(_)) => return Poll::Ready(Step::Stop(h2::Reason::CANCEL)),
                    // Answered: the rest of the body still goes.
                    Poll::Ready(Ok(())) => cancelled = None,
                    Poll::Pending => {}
                }
            }
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Step::Gone);
            }
            Pin::new(&mut body).poll_frame(cx).map(Step::Frame)
        })
        .await;
        let frame = match next {
            Step::Frame(Some(Ok(frame))) => frame,
            Step::Frame(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Step::Frame(Some(Err(_))) => {
                // The sender's body broke or went over a limit: the relay
                // answers the sender itself; the agent drops the request.
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Step::Stop(reason) => {
                stream.send_reset(reason);
                return;
            }
            Step::Gone => return,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let end = body.is_end_stream();
                if end {
                    // The whole rest is in memory already: queue it at once.
                    let _ = stream.send_data(data, true);
                    return;
                }
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    // The agent may not open its window for a long time (its
                    // app stopped reading): a caller giving up still ends it.
                    let granted = poll_fn(|cx| {
                        if let Some(rx) = cancelled.as_mut() {
                            match rx.poll_unpin(cx) {
                                Poll::Ready(Err(_)) => return Poll::Ready(None),
                                Poll::Ready(Ok(())) => cancelled = None,
                                Poll::Pending => {}
                            }
                        }
                        stream
                            .poll_capacity(cx)
                            .map(|c| Some(c.and_then(Result::ok)))
                    })
                    .await;
                    let granted = match granted {
                        None => {
                            stream.send_reset(h2::Reason::CANCEL);
                            return;
                        }
                        Some(Some(n)) => n,
                        Some(None) => return,
                    };
                    if granted == 0 {
                        continue;
                    }
                    let chunk = data.split_to(granted.min(data.len()));
                    if stream.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            // Refused (a field HTTP/2 forbids): end the stream rather than
            // leave the agent waiting for a body that never ends.
            if stream.send_trailers(trailers).is_err() {
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
            }
            return;
        }
    }
}

enum Step {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    Stop(h2::Reason),
    Gone,
}

/// The agent's answer body, releasing flow-control window as it is read.
struct RecvBody {
    rx: h2::RecvStream,
    /// Declared length not yet read, for an exact size hint: the public side
    /// then answers with the same `Content-Length` framing the app used.
    remaining: Option<u64>,
    data_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.rx.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.rx.flow_control().release_capacity(data.len());
                    if let Some(r) = self.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.rx.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{Full, StreamBody};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{DuplexStream, ReadBuf};

    use super::*;

    fn test_meta() -> LinkMeta {
        LinkMeta {
            proto: "http".into(),
            timeout_ms: 30_000,
        }
    }

    /// The relay's end of a duplex pipe, counting its writes and the
    /// HTTP/2 PINGs in them.
    struct Counted {
        io: DuplexStream,
        writes: Arc<AtomicUsize>,
        frames: FrameCounter,
    }

    /// Parses the relay's output as HTTP/2 frames (after the preface) and
    /// counts the PINGs it sends (not the acks of the agent's).
    #[derive(Default)]
    struct FrameCounter {
        pending: Vec<u8>,
        preface_left: usize,
        pings: Arc<AtomicUsize>,
    }

    impl FrameCounter {
        fn feed(&mut self, mut bytes: &[u8]) {
            let skip = self.preface_left.min(bytes.len());
            self.preface_left -= skip;
            bytes = &bytes[skip..];
            self.pending.extend_from_slice(bytes);
            while self.pending.len() >= 9 {
                let len = u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]])
                    as usize;
                if self.pending.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (self.pending[3], self.pending[4]);
                if kind == 0x6 && flags & 0x1 == 0 {
                    self.pings.fetch_add(1, Ordering::SeqCst);
                }
                self.pending.drain(..9 + len);
            }
        }
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                self.writes.fetch_add(1, Ordering::SeqCst);
                self.frames.feed(&buf[..n]);
            }
            r
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // Like `WsIo`: one call, one message, whatever the slices.
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let r = Pin::new(&mut self.io).poll_write(cx, &all);
            if let Poll::Ready(Ok(n)) = r {
                self.writes.fetch_add(1, Ordering::SeqCst);
                self.frames.feed(&all[..n]);
            }
            r
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A link whose agent end runs `handler` for every request (hyper's
    /// HTTP/2 server with the tunnel's settings, as in `whtunnel listen`).
    async fn link<F, Fut>(handler: F) -> (LinkClient, Arc<AtomicUsize>)
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
    {
        let (client, writes, _) = link_counting_pings(handler, true).await;
        (client, writes)
    }

    /// [`link`], also counting the PINGs the relay's side sends.
    /// `agent_pings`: the agent end keeps its own keepalive, as in `listen`.
    async fn link_counting_pings<F, Fut>(
        handler: F,
        agent_pings: bool,
    ) -> (LinkClient, Arc<AtomicUsize>, Arc<AtomicUsize>)
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
    {
        let (relay_io, agent_io) = tokio::io::duplex(64 * 1024);
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handler(req));
            let mut server = super::super::h2::server_builder();
            if !agent_pings {
                server.keep_alive_interval(None);
            }
            let _ = server
                .serve_connection(TokioIo::new(agent_io), service)
                .await;
        });
        let writes = Arc::new(AtomicUsize::new(0));
        let frames = FrameCounter {
            preface_left: 24,
            ..FrameCounter::default()
        };
        let pings = frames.pings.clone();
        let io = Counted {
            io: relay_io,
            writes: writes.clone(),
            frames,
        };
        let (client, conn) = handshake(io, CancellationToken::new(), test_meta())
            .await
            .unwrap();
        tokio::spawn(conn.run());
        (client, writes, pings)
    }

    fn full(body: impl Into<Bytes>) -> Body {
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn post(body: Body) -> Request<Body> {
        Request::post("http://tunnel/hook").body(body).unwrap()
    }

    async fn echo_length(req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
        let body = req.into_body().collect().await?.to_bytes();
        let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
        Ok(Response::new(full(format!("{} {sum}", body.len()))))
    }

    #[tokio::test]
    async fn a_small_request_crosses_the_link_in_one_write() {
        let (client, writes) = link(echo_length).await;
        // Settle the handshake (SETTINGS and their acks) first.
        let resp = client.send(post(full(vec![1u8; 10]))).await.unwrap();
        let _ = resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let before = writes.load(Ordering::SeqCst);
        let resp = client.send(post(full(vec![7u8; 1024]))).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("1024 {}", 7 * 1024));
        // HEADERS and DATA go out together: one websocket message per
        // webhook, not two.
        assert_eq!(writes.load(Ordering::SeqCst) - before, 1);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_windows_streams_through_intact() {
        let (client, _) = link(echo_length).await;
        // 10 MiB in 64 KiB chunks: more than the stream (1 MiB) and the
        // connection (8 MiB) windows, so the pipe must wait for capacity.
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..160u32)
            .map(|i| Ok(Frame::data(Bytes::from(vec![(i % 251) as u8; 64 * 1024]))))
            .collect();
        let expected: u64 = (0..160u64).map(|i| (i % 251) * 64 * 1024).sum();
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        let resp = client.send(post(body)).await.unwrap();
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, format!("{} {expected}", 160 * 64 * 1024));
    }

    #[tokio::test]
    async fn an_empty_post_says_its_length() {
        let (client, _) = link(|req: Request<Incoming>| async move {
            let len = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap().to_string());
            Ok(Response::new(full(format!("{len:?}"))))
        })
        .await;
        let resp = client.send(post(full(Bytes::new()))).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, r#"Some("0")"#);
        let get = Request::get("http://tunnel/x")
            .body(full(Bytes::new()))
            .unwrap();
        let resp = client.send(get).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "None");
    }

    #[tokio::test]
    async fn the_answer_keeps_its_declared_length() {
        let (client, _) = link(|_req| async {
            let mut resp = Response::new(full("hello"));
            resp.headers_mut().insert(header::CONTENT_LENGTH, 5.into());
            Ok(resp)
        })
        .await;
        let resp = client.send(post(full("x"))).await.unwrap();
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
    }

    #[tokio::test]
    async fn giving_up_before_the_answer_resets_the_stream() {
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
        let (client, _) = link(move |req| {
            let seen = seen_tx.clone();
            async move {
                // Reads until the relay's side resets the stream.
                let outcome = match req.into_body().collect().await {
                    Ok(_) => "body ended",
                    Err(_) => "reset",
                };
                let _ = seen.send(outcome).await;
                Ok::<_, BoxError>(Response::new(full("late")))
            }
        })
        .await;
        // A body that never ends: the sender is slow.
        let (_keep_open, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), client.send(post(body))).await;
        assert!(gave_up.is_err(), "no answer was expected");
        let outcome = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
            .await
            .expect("the agent's handler should learn the request was dropped");
        assert_eq!(outcome, Some("reset"));
        // The link itself is fine.
        let resp = client.send(post(full("again"))).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn a_failed_handler_resets_only_its_stream() {
        let (client, _) = link(|req: Request<Incoming>| async move {
            if req.uri().path() == "/fail" {
                return Err::<Response<Body>, BoxError>("handler failed".into());
            }
            Ok(Response::new(full("ok")))
        })
        .await;
        let req = Request::post("http://tunnel/fail").body(full("x")).unwrap();
        let err = client.send(req).await.unwrap_err();
        assert!(err.is_stream_reset(), "{err}");
        assert!(!client.is_closed());
        let resp = client.send(post(full("x"))).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn a_closed_link_is_not_a_stream_reset() {
        let (relay_io, agent_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(full("ok")))
            });
            let _ = super::super::h2::server_builder()
                .serve_connection(TokioIo::new(agent_io), service)
                .await;
        });
        let closed = CancellationToken::new();
        let (client, conn) = handshake(relay_io, closed.clone(), test_meta())
            .await
            .unwrap();
        let running = tokio::spawn(conn.run());
        client.send(post(full("x"))).await.unwrap();
        server.abort();
        let _ = running.await;
        assert!(client.is_closed());
        let err = client.send(post(full("x"))).await.unwrap_err();
        assert!(!err.is_stream_reset(), "{err}");
        assert!(err.is_link_failure(), "{err}");
    }

    #[tokio::test]
    async fn a_request_h2_refuses_is_not_a_link_failure() {
        let (client, _) = link(echo_length).await;
        // A connection-specific header: HTTP/2 forbids it, h2 refuses to
        // send it. Holding such a request would fail the same way forever.
        let req = Request::post("http://tunnel/hook")
            .header("connection", "close")
            .body(full("x"))
            .unwrap();
        let err = client.send(req).await.unwrap_err();
        assert!(!err.is_link_failure(), "{err}");
        assert!(!err.is_stream_reset(), "{err}");
        let resp = client.send(post(full("x"))).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn giving_up_while_the_agent_stops_reading_resets_the_stream() {
        // The agent's handler never reads: the body fills the stream's
        // 1 MiB window and the pipe waits for capacity.
        let (dropped_tx, mut dropped_rx) = tokio::sync::mpsc::channel::<()>(1);
        let (client, _) = link(move |req: Request<Incoming>| {
            let guard = DropSignal(dropped_tx.clone());
            async move {
                let _keep = (req, guard);
                std::future::pending::<()>().await;
                Ok::<_, BoxError>(Response::new(full("never")))
            }
        })
        .await;
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..64)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))))
            .collect();
        let (_keep_open, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = StreamBody::new(futures_util::StreamExt::chain(
            futures_util::stream::iter(chunks),
            tokio_stream_from(rx),
        ))
        .boxed_unsync();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), client.send(post(body))).await;
        assert!(gave_up.is_err(), "no answer was expected");
        tokio::time::timeout(Duration::from_secs(5), dropped_rx.recv())
            .await
            .expect("the agent should drop the request once the relay gives up");
    }

    /// Sends on drop: tells a test the agent dropped its handler.
    struct DropSignal(tokio::sync::mpsc::Sender<()>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            let _ = self.0.try_send(());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_busy_with_an_answer_is_not_pinged() {
        // An answer trickling in for 12 s (virtual time), a chunk a second,
        // from an agent that sends no pings of its own.
        let (client, _, pings) = link_counting_pings(
            |_req| async {
                let chunks = futures_util::stream::unfold(0u32, |i| async move {
                    if i == 12 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Some((
                        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"."))),
                        i + 1,
                    ))
                });
                Ok(Response::new(StreamBody::new(chunks).boxed_unsync()))
            },
            false,
        )
        .await;
        let resp = client.send(post(full("x"))).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 12);
        assert_eq!(pings.load(Ordering::SeqCst), 0, "pinged a busy link");
        // Quiet from here: pinged after 5 s, and 5 s after each answer.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 2);
        assert!(!client.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_pings_is_not_pinged_back() {
        let (client, _, pings) = link_counting_pings(echo_length, true).await;
        let resp = client.send(post(full("x"))).await.unwrap();
        resp.into_body().collect().await.unwrap();
        // Idle for a minute: the agent's pings (every 4 s) show the link is
        // alive, so this side sends none of its own.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 0);
        assert!(!client.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_is_dropped_within_10_seconds() {
        // The agent end never reads: no answers, no pings of its own.
        let (relay_io, _agent_io) = tokio::io::duplex(64 * 1024);
        let closed = CancellationToken::new();
        let started = Instant::now();
        let handshake = handshake(relay_io, closed.clone(), test_meta());
        // The handshake itself needs no answer from the agent.
        let (client, conn) = handshake.await.unwrap();
        let err = conn.run().await.unwrap_err();
        assert!(matches!(err, LinkError::KeepaliveTimeout), "{err}");
        let took = started.elapsed();
        assert!(took <= Duration::from_secs(10), "{took:?}");
        assert!(client.is_closed());
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
