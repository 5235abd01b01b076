//! Capture store throughput: how many exchanges with a 1 KiB request body the
//! recorder stores per second (batched single writer, WAL, default retention).
//!
//! `cargo run --release --example store_throughput [N]`

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::Instant;

use whtunnel::capture::{Recorder, Store, StoreConfig};

#[path = "../benches/support/webhook.rs"]
mod support;
use support::webhook;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StoreConfig::new(tmp.path().to_path_buf())).expect("open");
    let rec = Recorder::spawn(store);
    let start = Instant::now();
    let mut pending = VecDeque::new();
    let mut stored = 0usize;
    for i in 0..n {
        pending.push_back(rec.record(webhook(i)));
        // Stay under the queue size: a sender that waits for replies, so the
        // number measures the writer, not queue-full drops.
        if pending.len() >= 1000 {
            stored += pending.pop_front().unwrap().await.unwrap().is_ok() as usize;
        }
    }
    for rx in pending {
        stored += rx.await.unwrap().is_ok() as usize;
    }
    let secs = start.elapsed().as_secs_f64();
    rec.close().await;
    println!(
        "stored {stored}/{n} exchanges (1 KiB bodies) in {secs:.2}s: {:.0} exchanges/s",
        stored as f64 / secs
    );
}
