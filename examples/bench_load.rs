//! An exact-count load generator for `bench/instructions.sh`: sends
//! `TOTAL` POSTs of `SIZE` bytes to `URL` over `CONC` keep-alive HTTP/1.1
//! connections and prints `requests N ok M seconds S`. wrk runs for a time,
//! not a count; instructions per request need an exact count.
//!
//! `cargo run --release --example bench_load -- URL CONC TOTAL SIZE`

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, conc, total, size] = args.as_slice() else {
        eprintln!("usage: bench_load URL CONC TOTAL SIZE");
        std::process::exit(2);
    };
    let uri: http::Uri = url.parse().unwrap();
    let conc: usize = conc.parse().unwrap();
    let total: usize = total.parse().unwrap();
    let body = Bytes::from(vec![b'x'; size.parse().unwrap()]);
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80));
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (addr, uri, body, next, ok) = (
            addr.clone(),
            uri.clone(),
            body.clone(),
            next.clone(),
            ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let req = Request::post(uri.clone())
                    .header(http::header::HOST, uri.authority().unwrap().as_str())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let Ok(resp) = send.send_request(req).await else {
                    break;
                };
                let good = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Bounded: a stuck tunnel ends the run rather than hanging the harness.
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(Duration::from_secs(600), all).await;
    println!(
        "requests {} ok {} seconds {:.3}",
        total.min(next.load(Ordering::Relaxed)),
        ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}
