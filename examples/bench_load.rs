//! An exact-count load generator for `bench/instructions.sh`: sends
//! `TOTAL` POSTs of `SIZE` bytes to `URL` over `CONC` keep-alive HTTP/1.1
//! connections and prints `requests N ok M seconds S`. wrk runs for a time,
//! not a count; instructions per request need an exact count.
//!
//! `cargo run --release --example bench_load -- URL CONC TOTAL SIZE`
//!
//! The body is SIZE bytes of `x` (no JSON: nothing to parse downstream).
//! With `BENCH_BODY=json` it is instead an unsigned JSON event of SIZE
//! bytes, shaped like a payment provider's (an `evt_` id, a `type`, a
//! nested object with many small fields), so that what parsing a webhook
//! costs is measured too. `BENCH_BODY=stripe` sends the same event with a
//! `Stripe-Signature` header, which does not verify (the agent has no
//! secret) but makes the agent recognise the sender and read its body.
//! `BENCH_BODY=shopify` sends it with Shopify's headers instead, whose
//! event type and delivery id are in headers: the body is not read.

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
    let size: usize = size.parse().unwrap();
    let kind = std::env::var("BENCH_BODY").unwrap_or_default();
    let body = match kind.as_str() {
        "json" | "stripe" | "shopify" => {
            let body = json_event(size);
            // A body that is not the JSON it claims, or not the size asked
            // for, would measure something else.
            if serde_json::from_slice::<serde_json::Value>(&body).is_err() || body.len() != size {
                eprintln!(
                    "BENCH_BODY={kind}: {size} bytes is too small for the event's fixed fields"
                );
                std::process::exit(2);
            }
            Bytes::from(body)
        }
        "" | "x" => Bytes::from(vec![b'x'; size]),
        other => {
            eprintln!("BENCH_BODY: `{other}` is not a body kind (x, json, stripe, shopify)");
            std::process::exit(2);
        }
    };
    // The sender's headers; its signature does not verify (the agent has
    // no secret to try).
    let sender: &'static [(&str, &str)] = match kind.as_str() {
        "stripe" => &[(
            "stripe-signature",
            "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
        )],
        "shopify" => &[
            ("x-shopify-topic", "orders/create"),
            (
                "x-shopify-hmac-sha256",
                "XWmrwMey6OsLMeiZKwP4FppHH3cmAiiJJAweH5Jo4bM=",
            ),
            ("x-shopify-event-id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
        ],
        _ => &[],
    };
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
                let mut req = Request::post(uri.clone())
                    .header(http::header::HOST, uri.authority().unwrap().as_str())
                    .header(http::header::CONTENT_TYPE, "application/json");
                for (name, value) in sender {
                    req = req.header(*name, *value);
                }
                let req = req.body(Full::new(body.clone())).unwrap();
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

/// An unsigned JSON event of exactly `size` bytes (at least its fixed
/// part): a Stripe-like envelope whose object holds numbered metadata
/// fields, padded to the size with a note.
fn json_event(size: usize) -> Vec<u8> {
    let head = r#"{"id":"evt_1NG8Du2eZvKYlo2CqFRYvbEm","object":"event","type":"invoice.paid","created":1700000000,"livemode":false,"data":{"object":{"id":"in_1NG8Du2eZvKYlo2C","object":"invoice","amount_paid":2000,"currency":"eur","paid":true,"metadata":{"#;
    let tail = r#"}}}}"#;
    let mut out = head.to_string();
    let mut n = 0;
    loop {
        let field = format!(r#"{}"k{n}":"value {n}""#, if n == 0 { "" } else { "," });
        // Keep room for the note that pads to the exact size.
        if out.len() + field.len() + r#","note":"""#.len() + tail.len() > size {
            break;
        }
        out.push_str(&field);
        n += 1;
    }
    let sep = if n == 0 { "" } else { "," };
    let fixed = out.len() + sep.len() + r#""note":"""#.len() + tail.len();
    out.push_str(&format!(
        r#"{sep}"note":"{}""#,
        "x".repeat(size.saturating_sub(fixed))
    ));
    out.push_str(tail);
    out.into_bytes()
}
