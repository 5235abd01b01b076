//! A minimal, fast HTTP/1.1 app for `bench/run.sh`: reads and discards the
//! request body, answers `200 ok`. Binds 127.0.0.1 on a free port (or the
//! port given as the first argument) and prints `listening 127.0.0.1:PORT`.
//!
//! `cargo run --release --example bench_target [PORT]`

// A measuring tool, not the product: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = req.into_body();
    // Drain without keeping: the cost of a body is the tunnel's, not the app's.
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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("listening {addr}\n").as_bytes())
        .await?;
    out.flush().await?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handle))
                .await;
        });
    }
}
