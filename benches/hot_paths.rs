//! Micro-benchmarks of whtunnel's per-request hot paths. Not run in CI (slow
//! and noisy); run with `cargo bench --bench hot_paths` and see
//! `docs/benchmarks.md`.
//!
//! - protocol: `RequestMeta::write_headers/take_headers` (and the JSON
//!   form protocol 1 sent), `split_public_path`,
//!   `is_hop_by_hop` over a typical webhook's header names;
//! - transport: `WsIo` write + read of 16 KiB through a `tokio::io::duplex`
//!   pair with a real `WebSocketStream` on both ends;
//! - tunnel: one whole HTTP/2 exchange (1 KiB and 256 KiB request bodies)
//!   with the relay's client settings and the agent's server settings over
//!   `WsIo`, compared with the same exchange over a bare duplex (no
//!   websocket), which isolates the websocket layer's cost, and with the
//!   same link on a current-thread runtime, which isolates the cost of
//!   cross-thread wake-ups.
//! - `is_hop_by_hop` against its old form, which lowercased a copy of every
//!   header name (docs/benchmarks.md, finding 4).
//! - capture: one batch of 32 exchanges into a store already at its
//!   10,000-exchange cap (retention runs on every batch: the table scan it
//!   used to do would show here), and event recognition on a 256 KiB body
//!   that is not JSON and on a 1 KiB webhook.
//! - metrics: what the relay adds to every webhook for `/metrics` (status
//!   class counter and latency histogram, atomics only), and one scrape.
//! - body_hash: the body-hash proof's BLAKE3 against SHA-256 at 1 KiB and
//!   256 KiB.

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use whtunnel::capture::{event, Store, StoreConfig};

#[path = "support/webhook.rs"]
mod support;
use support::webhook;
use tokio_util::sync::CancellationToken;
use whtunnel::tunnel::link::{self, LinkClient};
use whtunnel::tunnel::protocol::{is_hop_by_hop, split_public_path, LinkMeta, RequestMeta};
use whtunnel::tunnel::{h2, ws_io, WsIo};

fn sample_meta() -> RequestMeta {
    RequestMeta {
        remote_addr: Some("203.0.113.7:51234".into()),
        proto: "https".into(),
        host: Some("hooks.example.com".into()),
        received_at_ms: 1_763_900_000_000,
        timeout_ms: 29_500,
        hop_headers: vec![("connection".into(), "keep-alive".into())],
        event_id: None,
        attempt: None,
        held_left: None,
        // A webhook the relay read whole carries its body hash.
        body_blake3: whtunnel::tunnel::body_hash::from_hex(
            b"4878ca0425c739fa427f7eda20fe845f6b2e46ba5fe2a14df5b1e32f50603215",
        ),
    }
}

/// Header names of a typical provider webhook (Stripe-like).
const HEADER_NAMES: [&str; 12] = [
    "host",
    "user-agent",
    "content-length",
    "accept",
    "accept-encoding",
    "cache-control",
    "content-type",
    "stripe-signature",
    "x-request-id",
    "connection",
    "x-forwarded-for",
    "traceparent",
];

/// `is_hop_by_hop` as it was before finding 4 of docs/benchmarks.md: a
/// lowercase copy of every header name. Kept as the baseline the current,
/// allocation-free form is measured against.
fn is_hop_by_hop_lowercasing(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "http2-settings",
    ];
    let lower = name.to_ascii_lowercase();
    HOP.contains(&lower.as_str()) || lower.starts_with("proxy-")
}

fn protocol(c: &mut Criterion) {
    for h in HEADER_NAMES
        .iter()
        .chain(&["Proxy-Authorization", "TE", "Upgrade", "x"])
    {
        assert_eq!(is_hop_by_hop(h), is_hop_by_hop_lowercasing(h), "{h}");
    }
    let meta = sample_meta();
    let link = LinkMeta {
        proto: "https".into(),
        timeout_ms: 29_500,
    };
    let mut encoded = http::HeaderMap::new();
    meta.write_headers(&link, &mut encoded).unwrap();
    let json = meta.to_json();
    let mut g = c.benchmark_group("protocol");
    g.bench_function("RequestMeta::write_headers", |b| {
        b.iter(|| {
            let mut h = http::HeaderMap::new();
            black_box(&meta).write_headers(&link, &mut h).unwrap();
            h
        })
    });
    g.bench_function("RequestMeta::take_headers", |b| {
        b.iter(|| RequestMeta::take_headers(&mut black_box(encoded.clone()), &link).unwrap())
    });
    // The protocol-1 wire form (JSON), still the stored form.
    g.bench_function("RequestMeta::to_json", |b| {
        b.iter(|| black_box(&meta).to_json())
    });
    g.bench_function("RequestMeta::from_json", |b| {
        b.iter(|| RequestMeta::from_json(black_box(json.as_bytes())).unwrap())
    });
    g.bench_function("split_public_path", |b| {
        b.iter(|| {
            split_public_path(black_box(
                "/t/3q0v8k6d1m4h2c5t7n9b0a1s2e/webhooks/stripe?key=abc",
            ))
        })
    });
    g.bench_function("is_hop_by_hop x12 headers", |b| {
        b.iter(|| {
            HEADER_NAMES
                .iter()
                .filter(|h| is_hop_by_hop(black_box(h)))
                .count()
        })
    });
    g.bench_function("is_hop_by_hop x12 headers (old lowercasing form)", |b| {
        b.iter(|| {
            HEADER_NAMES
                .iter()
                .filter(|h| is_hop_by_hop_lowercasing(black_box(h)))
                .count()
        })
    });
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Two `WsIo` ends joined by an in-memory duplex pipe, as relay (server
/// role) and agent (client role) would be.
async fn ws_pair() -> (
    WsIo<tokio::io::BufReader<tokio::io::DuplexStream>>,
    WsIo<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let client = WebSocketStream::from_raw_socket(
        ws_io::agent_socket(a),
        Role::Client,
        Some(ws_io::ws_config()),
    )
    .await;
    let server = WebSocketStream::from_raw_socket(b, Role::Server, Some(ws_io::ws_config())).await;
    (WsIo::new(client), WsIo::new(server))
}

async fn pump<W, R>(w: &mut W, r: &mut R, data: &[u8], buf: &mut [u8])
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    // Write and read concurrently: the duplex buffer is large enough for one
    // message, but this also holds for any size.
    let write = async {
        w.write_all(data).await.unwrap();
        w.flush().await.unwrap();
    };
    let read = async {
        r.read_exact(buf).await.unwrap();
    };
    tokio::join!(write, read);
}

fn transport(c: &mut Criterion) {
    let rt = runtime();
    let data = vec![0x5au8; 16 * 1024];
    let mut buf = vec![0u8; data.len()];
    let mut g = c.benchmark_group("transport");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let (mut client, mut server) = rt.block_on(ws_pair());
    g.bench_function("WsIo write+read 16KiB (client->server)", |b| {
        b.iter(|| rt.block_on(pump(&mut client, &mut server, &data, &mut buf)))
    });
    g.bench_function("WsIo write+read 16KiB (server->client)", |b| {
        b.iter(|| rt.block_on(pump(&mut server, &mut client, &data, &mut buf)))
    });
    let (mut a, mut b2) = tokio::io::duplex(1 << 20);
    g.bench_function("bare duplex write+read 16KiB (baseline)", |b| {
        b.iter(|| rt.block_on(pump(&mut a, &mut b2, &data, &mut buf)))
    });
    g.finish();
}

type Sender = LinkClient;

/// Starts an HTTP/2 link like the tunnel's: relay = client on `relay_io`,
/// agent = server on `agent_io` answering `200 ok` after draining the body.
async fn h2_link<R, A>(relay_io: R, agent_io: A) -> Sender
where
    R: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
    });
    tokio::spawn(async move {
        let _ = h2::server_builder()
            .serve_connection(TokioIo::new(agent_io), service)
            .await;
    });
    let meta = LinkMeta {
        proto: "http".into(),
        timeout_ms: 30_000,
    };
    let (sender, conn) = link::handshake(relay_io, CancellationToken::new(), meta)
        .await
        .unwrap();
    tokio::spawn(conn.run());
    sender
}

async fn exchange(sender: &Sender, body: Bytes) {
    let req = Request::post("http://tunnel/hook")
        .header("content-type", "application/json")
        .body(
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    let resp = sender.send(req).await.unwrap();
    let _ = resp.into_body().collect().await.unwrap();
}

/// Like the relay, where each public request is a task on a worker thread
/// (`block_on`'s thread is not one: it would make every wake-up a
/// cross-thread one).
async fn on_worker(sender: &Sender, body: Bytes) {
    let sender = sender.clone();
    tokio::spawn(async move { exchange(&sender, body).await })
        .await
        .unwrap();
}

fn tunnel(c: &mut Criterion) {
    // A multi-thread runtime like the binaries', with 2 workers like the
    // benchmark machine.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ws_sender = rt.block_on(async {
        let (agent, relay) = ws_pair().await;
        h2_link(relay, agent).await
    });
    let raw_sender = rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        h2_link(a, b).await
    });
    // The same link on a current-thread runtime: relay and agent each on one
    // thread, no cross-thread wake-ups (docs/benchmarks.md, finding 1).
    let rt1 = runtime();
    let ws_sender_1t = rt1.block_on(async {
        let (agent, relay) = ws_pair().await;
        h2_link(relay, agent).await
    });
    let mut g = c.benchmark_group("tunnel_exchange");
    g.measurement_time(Duration::from_secs(5));
    let small = Bytes::from(vec![b'x'; 1024]);
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("h2 over WsIo, current-thread runtime/1024", |b| {
        b.iter(|| rt1.block_on(exchange(&ws_sender_1t, small.clone())))
    });
    for size in [1024usize, 256 * 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("h2 over WsIo", size), &body, |b, body| {
            b.iter(|| rt.block_on(on_worker(&ws_sender, body.clone())))
        });
        g.bench_with_input(
            BenchmarkId::new("h2 over bare duplex", size),
            &body,
            |b, body| b.iter(|| rt.block_on(on_worker(&raw_sender, body.clone()))),
        );
    }
    g.finish();
}

fn capture(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(&StoreConfig::new(tmp.path().to_path_buf())).unwrap();
    let mut next = 0;
    while next < 10_000 {
        let batch: Vec<_> = (next..next + 500).map(webhook).collect();
        store.insert_batch(&batch).unwrap();
        next += 500;
    }
    let mut g = c.benchmark_group("capture");
    g.throughput(Throughput::Elements(32));
    g.bench_function("insert_batch 32 x 1 KiB at the 10k cap", |b| {
        b.iter(|| {
            let batch: Vec<_> = (next..next + 32).map(webhook).collect();
            next += 32;
            black_box(store.insert_batch(&batch).unwrap());
        })
    });
    g.throughput(Throughput::Elements(1));
    let not_json = vec![b'x'; 256 * 1024];
    g.bench_function("event::detect 256 KiB, not JSON", |b| {
        b.iter(|| {
            black_box(event::detect(
                black_box(&not_json),
                Some("application/json"),
            ))
        })
    });
    let json = match &webhook(1).request.body.data {
        whtunnel::capture::BodyData::Memory(b) => b.clone(),
        _ => unreachable!(),
    };
    g.bench_function("event::detect 1 KiB webhook", |b| {
        b.iter(|| black_box(event::detect(black_box(&json), Some("application/json"))))
    });
    // The largest payload the provider docs describe: 6000 transaction ids.
    let ids: Vec<String> = (0..6000).map(|i| format!("\"{i:08x}-tx\"")).collect();
    let bulk = format!(
        r#"{{"id": "abe168ce", "userId": "5c79", "payload": {{"transactions": [{}]}}, "eventType": "newTransactions"}}"#,
        ids.join(", ")
    );
    g.bench_function("event::detect 6000-id webhook", |b| {
        b.iter(|| black_box(event::detect(black_box(bulk.as_bytes()), None)))
    });
    g.finish();
}

fn metrics(c: &mut Criterion) {
    use whtunnel::relay::metrics::{Metrics, Snapshot};
    let m = Metrics::new();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request_done (class counter + histogram)", |b| {
        b.iter(|| {
            m.request_done(
                black_box(http::StatusCode::OK),
                black_box(Duration::from_micros(840)),
            )
        })
    });
    m.set_cert_expiry("hooks.example.com", 1_800_000_000);
    g.bench_function("render (one scrape)", |b| {
        b.iter(|| black_box(m.render(Snapshot::default())))
    });
    g.finish();
}

/// The body-hash proof: BLAKE3 (protocol 3) against the SHA-256 protocol 2
/// used, on a webhook-sized and a large body.
fn body_hash(c: &mut Criterion) {
    use sha2::Digest as _;
    let mut g = c.benchmark_group("body_hash");
    for size in [1024usize, 256 * 1024] {
        let body = vec![0x5a_u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("blake3", size), &body, |b, body| {
            b.iter(|| black_box(whtunnel::tunnel::body_hash::digest(body)))
        });
        g.bench_with_input(BenchmarkId::new("sha256", size), &body, |b, body| {
            b.iter(|| black_box(sha2::Sha256::digest(body)))
        });
    }
    g.finish();
}

// criterion's macro defines an undocumented function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, protocol, transport, tunnel, capture, metrics, body_hash);
}
use group::benches;

criterion_main!(benches);
