//! Opens N idle agent links to a relay with the real protocol (authenticated
//! websocket upgrade, then an HTTP/2 server over the websocket, as
//! `whtunnel listen` does), holds them, then exits. Used by `bench/run.sh`
//! to measure the relay's memory per idle agent, and (with `--relay`
//! repeated) to spread many tunnels over the relays of a cluster.
//!
//! ```text
//! cargo run --release --example idle_agents -- \
//!     --relay http://127.0.0.1:PORT --token T --count 1000 --hold-secs 10
//! ```
//!
//! Agent `i` is named `PREFIX-i` and connects to the `(i mod R)`-th of the R
//! `--relay` URLs (it does not move to another relay: one link per agent).
//! Every agent answers any request with `200 ok`.
//!
//! Prints `connected N failed F retried R in S s` once every link is up (or
//! failed), then `holding` and, after `--hold-secs`, exits. A link that
//! fails is tried again up to `--retries` times (default 0), 0.5 s apart,
//! as `whtunnel listen` would. Everything is bounded: connecting gives up
//! after `--connect-timeout-secs` (default 120).

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use whtunnel::agent::connect::{connect, AgentConfig, RelayUrl};
use whtunnel::tunnel::{h2, tls, WsIo};

struct Args {
    relays: Vec<String>,
    token: String,
    count: usize,
    hold: Duration,
    parallel: usize,
    connect_timeout: Duration,
    prefix: String,
    retries: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        relays: Vec::new(),
        token: String::new(),
        count: 1000,
        hold: Duration::from_secs(10),
        parallel: 64,
        connect_timeout: Duration::from_secs(120),
        prefix: "idle".into(),
        retries: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--relay" => a.relays.push(val()?),
            "--token" => a.token = val()?,
            "--count" => a.count = num(val()?)? as usize,
            "--hold-secs" => a.hold = Duration::from_secs(num(val()?)?),
            "--parallel" => a.parallel = num(val()?)?.max(1) as usize,
            "--connect-timeout-secs" => a.connect_timeout = Duration::from_secs(num(val()?)?),
            "--prefix" => a.prefix = val()?,
            "--retries" => a.retries = num(val()?)? as u32,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.relays.is_empty() || a.token.is_empty() {
        return Err("usage: idle_agents --relay URL [--relay URL2 ...] --token T [--count N] [--hold-secs S] [--parallel P] [--prefix NAME] [--retries N]".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let relays: Vec<RelayUrl> = match args.relays.iter().map(|r| r.parse()).collect() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let tls = tls::client_config(None).expect("TLS client config");
    let started = Instant::now();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gate = Arc::new(Semaphore::new(args.parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let config = AgentConfig {
            relay: relays[i % relays.len()].clone(),
            more_relays: Vec::new(),
            token: args.token.clone(),
            name: format!("{}-{i}", args.prefix),
            takeover: false,
            retry_taken: false,
            offline: None,
            hold_concurrency: None,
            agent_id: None,
            tls: tls.clone(),
        };
        let (ok, failed, retried, gate, first_error) = (
            ok.clone(),
            failed.clone(),
            retried.clone(),
            gate.clone(),
            first_error.clone(),
        );
        let retries = args.retries;
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let mut attempt = 0;
            let link = loop {
                match connect(&config).await {
                    Ok(l) => break l,
                    Err(e) => {
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                        if attempt >= retries {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        // As `whtunnel listen` does, try again after a pause.
                        attempt += 1;
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            ok.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            // Serve HTTP/2 like the real agent; answer anything with 200.
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = h2::server_builder()
                .serve_connection(TokioIo::new(WsIo::new(link.ws)), service)
                .await;
        });
    }
    let deadline = started + args.connect_timeout;
    loop {
        let done = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if done >= args.count || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "connected {} failed {} retried {} in {:.2} s",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Some(e) = first_error.lock().unwrap().take() {
        eprintln!("first error: {e}");
    }
    println!("holding");
    tokio::time::sleep(args.hold).await;
    tasks.abort_all();
    println!("done");
}
