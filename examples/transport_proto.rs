//! The tunnel transport, measured in isolation: the same webhook traffic
//! carried between a "relay" process and an "agent" process over one
//! loopback websocket, by either
//!
//! - `h2`: today's stack, HTTP/2 over the websocket with the crate's own
//!   tunnel code (`tunnel::link` on the relay, `tunnel::h2::server_builder`
//!   on the agent, `tunnel::WsIo` under both), or
//! - `yamux`: the `yamux` multiplexer over the same websocket (through a
//!   write buffer, so a yamux frame's header and body leave as one message),
//!   with an HTTP/1.1 request and answer (hyper's http1 conn) in each stream.
//!
//! Only the transport is measured: no public HTTP side, no local app, no
//! capture. The agent's handler drains the body and answers `ok`, as
//! `bench_target` does. `bench/transport.sh` runs both under callgrind and
//! natively; docs/benchmarks.md ("Transport") has the numbers.
//!
//! ```text
//! transport_proto relay --proto h2|yamux [--requests N] [--warmup W] [--conc C]
//!                       [--size BYTES] [--threads T] [--ws-read-buffer BYTES]
//!                       [--ws-write-buffer BYTES]
//!   prints `listening ADDR`, waits for the agent, sends W + N POSTs over C
//!   concurrent loops, prints one JSON line (CPU and latency of the N)
//! transport_proto agent ADDR --proto h2|yamux [--threads T] [--ws-read-buffer BYTES]
//!                       [--ws-write-buffer BYTES]
//!   connects, answers until the relay goes, prints one JSON line (its CPU
//!   over the same N requests)
//! ```
//!
//! CPU is the sum of every thread's on-CPU time (`/proc/self/task/*/schedstat`)
//! between two marker requests the relay sends around the measured N.

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use whtunnel::tunnel::{h2 as tunnel_h2, link, ws_io, Body, WsIo};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    H2,
    Yamux,
}

struct Args {
    role: String,
    addr: Option<String>,
    proto: Proto,
    requests: usize,
    warmup: usize,
    conc: usize,
    size: usize,
    threads: usize,
    ws_read_buffer: Option<usize>,
    ws_write_buffer: Option<usize>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let role = it.next().expect("usage: transport_proto relay|agent ...");
    let mut a = Args {
        role,
        addr: None,
        proto: Proto::H2,
        requests: 2000,
        warmup: 200,
        conc: 32,
        size: 1024,
        threads: 2,
        ws_read_buffer: None,
        ws_write_buffer: None,
    };
    while let Some(arg) = it.next() {
        let mut val = || it.next().expect("option needs a value");
        match arg.as_str() {
            "--proto" => {
                a.proto = match val().as_str() {
                    "h2" => Proto::H2,
                    "yamux" => Proto::Yamux,
                    other => panic!("unknown proto {other}"),
                }
            }
            "--requests" => a.requests = val().parse().unwrap(),
            "--warmup" => a.warmup = val().parse().unwrap(),
            "--conc" => a.conc = val().parse().unwrap(),
            "--size" => a.size = val().parse().unwrap(),
            "--threads" => a.threads = val().parse().unwrap(),
            "--ws-read-buffer" => a.ws_read_buffer = Some(val().parse().unwrap()),
            "--ws-write-buffer" => a.ws_write_buffer = Some(val().parse().unwrap()),
            other if !other.starts_with("--") && a.addr.is_none() => a.addr = Some(other.into()),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// On-CPU nanoseconds of every thread of this process.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn config(a: &Args) -> WebSocketConfig {
    let mut c = ws_io::ws_config();
    if let Some(n) = a.ws_read_buffer {
        c.read_buffer_size = n;
    }
    if let Some(n) = a.ws_write_buffer {
        c.write_buffer_size = n;
    }
    c
}

fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    // 256 streams of 256 KiB: the same stream cap as the h2 tunnel, and a
    // connection bound of 64 MiB (yamux insists on 256 KiB per stream).
    c.set_max_num_streams(tunnel_h2::MAX_CONCURRENT_STREAMS as usize);
    c.set_max_connection_receive_window(Some(
        tunnel_h2::MAX_CONCURRENT_STREAMS as usize * yamux::DEFAULT_CREDIT as usize,
    ));
    c
}

fn main() {
    let a = parse_args();
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    }
    .unwrap();
    match a.role.as_str() {
        "relay" => rt.block_on(relay(a)),
        "agent" => rt.block_on(agent(a)),
        other => panic!("unknown role {other}"),
    }
}

// ------------------------------------------------------------------ relay

/// Opens yamux streams on behalf of request tasks: the connection is driven
/// by one task, which alone may touch it.
/// What yamux runs on: the websocket, through a write buffer that yamux
/// flushes after every frame (so a frame is one message, not two).
type YamuxIo = tokio_util::compat::Compat<tokio::io::BufWriter<WsIo<TcpStream>>>;

type Opener = mpsc::Sender<oneshot::Sender<yamux::Stream>>;

enum Client {
    H2(link::LinkClient),
    Yamux(Opener),
}

async fn relay(a: Args) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    let (tcp, _) = listener.accept().await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let ws = WebSocketStream::from_raw_socket(tcp, Role::Server, Some(config(&a))).await;
    let client = match a.proto {
        Proto::H2 => {
            // The prototype sends no whtunnel metadata; the announcement
            // is only carried.
            let meta = whtunnel::tunnel::protocol::LinkMeta {
                proto: "http".into(),
                timeout_ms: 30_000,
            };
            let (client, conn) = link::handshake(WsIo::new(ws), CancellationToken::new(), meta)
                .await
                .unwrap();
            tokio::spawn(conn.run());
            Client::H2(client)
        }
        Proto::Yamux => {
            let io = tokio::io::BufWriter::with_capacity(64 * 1024, WsIo::new(ws));
            let conn = yamux::Connection::new(io.compat(), yamux_config(), yamux::Mode::Client);
            let (tx, rx) = mpsc::channel(256);
            tokio::spawn(drive_client(conn, rx));
            Client::Yamux(tx)
        }
    };
    let client = Arc::new(client);
    let body = Bytes::from(vec![b'x'; a.size]);

    run_load(&client, &body, a.warmup, a.conc).await;
    request(&client, "/mark/start", Bytes::new()).await;
    let cpu0 = cpu_ns();
    let t0 = Instant::now();
    let mut lat = run_load(&client, &body, a.requests, a.conc).await;
    let wall = t0.elapsed();
    let cpu = cpu_ns() - cpu0;
    request(&client, "/mark/end", Bytes::new()).await;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{{\"side\":\"relay\",\"proto\":\"{:?}\",\"requests\":{},\"conc\":{},\"size\":{},\"threads\":{},\"wall_ms\":{:.1},\"rps\":{:.0},\"cpu_ns_per_request\":{},\"p50_us\":{},\"p99_us\":{}}}",
        a.proto,
        a.requests,
        a.conc,
        a.size,
        a.threads,
        wall.as_secs_f64() * 1e3,
        a.requests as f64 / wall.as_secs_f64(),
        cpu / a.requests as u64,
        pct(0.5),
        pct(0.99),
    );
    // Give the agent's end mark time to print before the link drops.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// `n` requests over `conc` loops; the latency of each, in microseconds.
async fn run_load(client: &Arc<Client>, body: &Bytes, n: usize, conc: usize) -> Vec<u32> {
    let next = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, body, next, lat) = (client.clone(), body.clone(), next.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                request(&client, "/hook", body.clone()).await;
                lat.lock().push(t.elapsed().as_micros() as u32);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(lat).unwrap().into_inner()
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// One webhook-like request: a JSON POST with a signature header unique to
/// it (as providers send), answered `ok`.
async fn request(client: &Client, path: &str, body: Bytes) {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let sig = format!("sha256={:064x}", u128::from(seq) * 0x9e37_79b9_7f4a_7c15);
    let builder = Request::post(format!("http://tunnel{path}"))
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/2f4a6c1")
        .header("x-hub-signature-256", sig);
    let answer = match client {
        Client::H2(c) => {
            let body: Body = Full::new(body).map_err(|n| match n {}).boxed_unsync();
            let resp = c.send(builder.body(body).unwrap()).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }
        Client::Yamux(open) => {
            let (tx, rx) = oneshot::channel();
            open.send(tx).await.unwrap();
            let stream = rx.await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(StreamIo(stream))
                    .await
                    .unwrap();
            // HTTP/1 wants origin-form and a Host.
            let req = builder
                .uri(path)
                .header("host", "tunnel")
                .body(Full::new(body))
                .unwrap();
            let work = async move {
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let b = resp.into_body().collect().await.unwrap().to_bytes();
                // Dropping the sender ends the conn, which closes the stream.
                drop(sender);
                b
            };
            let (_, b) = tokio::join!(conn, work);
            b
        }
    };
    assert_eq!(&answer[..], b"ok\n");
}

/// Drives the client's yamux connection: opens streams when asked, refuses
/// any the agent opens.
async fn drive_client(
    mut conn: yamux::Connection<YamuxIo>,
    mut asks: mpsc::Receiver<oneshot::Sender<yamux::Stream>>,
) {
    let mut waiting: VecDeque<oneshot::Sender<yamux::Stream>> = VecDeque::new();
    poll_fn(|cx| loop {
        while let Poll::Ready(Some(tx)) = asks.poll_recv(cx) {
            waiting.push_back(tx);
        }
        if !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let _ = waiting.pop_front().unwrap().send(stream);
                    continue;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(_refused))) => continue,
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// A yamux stream as hyper's IO. Not `tokio_util::compat` + `TokioIo`: that
/// zero-fills all of hyper's unfilled read buffer (8 KiB and up) on every
/// read, ~20k instructions per request on each side. Here a read lands in a
/// per-thread scratch buffer, zeroed once, and only the bytes read are
/// copied on.
struct StreamIo(yamux::Stream);

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]);
}

impl hyper::rt::Read for StreamIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        use futures::io::AsyncRead;
        SCRATCH.with_borrow_mut(|scratch| {
            let n = buf.remaining().min(scratch.len());
            match std::pin::Pin::new(&mut self.0).poll_read(cx, &mut scratch[..n]) {
                Poll::Ready(Ok(got)) => {
                    buf.put_slice(&scratch[..got]);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

impl hyper::rt::Write for StreamIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.0), cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.0), cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        futures::io::AsyncWrite::poll_close(std::pin::Pin::new(&mut self.0), cx)
    }
}

// ------------------------------------------------------------------ agent

struct Marks {
    start: AtomicU64,
    threads: usize,
    proto: Proto,
}

async fn agent(a: Args) {
    let tcp = TcpStream::connect(a.addr.as_deref().expect("agent needs the relay's ADDR"))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let ws =
        WebSocketStream::from_raw_socket(ws_io::agent_socket(tcp), Role::Client, Some(config(&a)))
            .await;
    let marks = Arc::new(Marks {
        start: AtomicU64::new(0),
        threads: a.threads,
        proto: a.proto,
    });
    let m = marks.clone();
    let service = hyper::service::service_fn(move |req| handle(req, m.clone()));
    match a.proto {
        Proto::H2 => {
            let _ = tunnel_h2::server_builder()
                .serve_connection(TokioIo::new(WsIo::new(ws)), service)
                .await;
        }
        Proto::Yamux => {
            let io = tokio::io::BufWriter::with_capacity(64 * 1024, WsIo::new(ws));
            let mut conn = yamux::Connection::new(io.compat(), yamux_config(), yamux::Mode::Server);
            while let Some(Ok(stream)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(StreamIo(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    marks: Arc<Marks>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/mark/start" => marks.start.store(cpu_ns(), Ordering::SeqCst),
        "/mark/end" => {
            let cpu = cpu_ns() - marks.start.load(Ordering::SeqCst);
            println!(
                "{{\"side\":\"agent\",\"proto\":\"{:?}\",\"threads\":{},\"cpu_ns\":{}}}",
                marks.proto, marks.threads, cpu
            );
        }
        _ => {}
    }
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}
