//! Sends one POST to each URL of a list and reports per-request latency and
//! answers: used by `bench/run.sh --only cluster10k` to time webhooks to many
//! different tunnels (wrk and `bench_load` hit one URL) and to count which
//! tunnels answer.
//!
//! ```text
//! cargo run --release --example tunnel_probe -- URLS_FILE CONC [SIZE]
//! ```
//!
//! `URLS_FILE` has one `http://HOST:PORT/PATH` a line; `CONC` workers take
//! the next URL in turn and keep one HTTP/1.1 keep-alive connection per
//! relay, so the latency is the request's, not a TCP handshake's (the first
//! request on each connection pays for it; with few relays that is a
//! handful of samples). Prints one JSON object: `requests`, `answered_200`,
//! `status` (count per status code, `"error"` for a failed or timed-out
//! exchange), `seconds`, and `p50_us`/`p90_us`/`p99_us`/`max_us` over every
//! exchange that got an answer. Bounded: 10 s per request, 600 s in all.

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const PER_REQUEST: Duration = Duration::from_secs(10);
const IN_ALL: Duration = Duration::from_secs(600);

/// What one exchange came to.
enum Outcome {
    Answered { status: u16, micros: u64 },
    Failed,
}

async fn connect(authority: &str) -> Option<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(authority).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn exchange(
    conns: &mut HashMap<String, SendRequest<Full<Bytes>>>,
    uri: &http::Uri,
    body: &Bytes,
) -> Outcome {
    let authority = uri.authority().unwrap().as_str().to_string();
    let reusable = match conns.get_mut(&authority) {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    if !reusable {
        match tokio::time::timeout(PER_REQUEST, connect(&authority)).await {
            Ok(Some(s)) => {
                conns.insert(authority.clone(), s);
            }
            _ => {
                conns.remove(&authority);
                return Outcome::Failed;
            }
        }
    }
    let send = conns.get_mut(&authority).unwrap();
    let req = Request::post(uri.clone())
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    let started = Instant::now();
    let done = tokio::time::timeout(PER_REQUEST, async {
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    })
    .await;
    match done {
        Ok(Some(status)) => Outcome::Answered {
            status,
            micros: started.elapsed().as_micros() as u64,
        },
        _ => {
            // The connection is in an unknown state: start a new one.
            conns.remove(&authority);
            Outcome::Failed
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (file, conc, size) = match args.as_slice() {
        [_, f, c] => (f, c, "64"),
        [_, f, c, s] => (f, c, s.as_str()),
        _ => {
            eprintln!("usage: tunnel_probe URLS_FILE CONC [SIZE]");
            std::process::exit(2);
        }
    };
    let urls: Vec<http::Uri> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let urls = Arc::new(urls);
    let conc: usize = conc.parse::<usize>().unwrap().max(1);
    let body = Bytes::from(vec![b'x'; size.parse().unwrap()]);
    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(urls.len())));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (urls, body, next, outcomes) =
            (urls.clone(), body.clone(), next.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let mut conns = HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(uri) = urls.get(i) else { break };
                let o = exchange(&mut conns, uri, &body).await;
                outcomes.lock().unwrap().push(o);
            }
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(IN_ALL, all).await;
    let seconds = started.elapsed().as_secs_f64();
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut status: BTreeMap<String, usize> = BTreeMap::new();
    let mut micros = Vec::new();
    for o in &outcomes {
        match o {
            Outcome::Answered {
                status: s,
                micros: m,
            } => {
                *status.entry(s.to_string()).or_default() += 1;
                micros.push(*m);
            }
            Outcome::Failed => *status.entry("error".into()).or_default() += 1,
        }
    }
    // Requests never started (the 600 s bound ran out) count as errors too.
    let missing = urls.len() - outcomes.len();
    if missing > 0 {
        *status.entry("error".into()).or_default() += missing;
    }
    micros.sort_unstable();
    let summary = serde_json::json!({
        "requests": urls.len(),
        "answered_200": status.get("200").copied().unwrap_or(0),
        "status": status,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "p50_us": percentile(&micros, 50.0),
        "p90_us": percentile(&micros, 90.0),
        "p99_us": percentile(&micros, 99.0),
        "max_us": micros.last(),
    });
    println!("{summary}");
}
