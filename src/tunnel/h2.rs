//! HTTP/2 settings for the tunnel, shared by both ends so that windows,
//! stream caps and keepalive always match. The relay's client is in
//! [`super::link`]; the agent's server is hyper's, built here.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Boxed error used in streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type that crosses the tunnel in both directions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The agent pings a link that brought it nothing for this long...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(4);
/// ...and drops it when the ping is not answered within this, so a dead
/// relay is noticed within 10 s (the contract is 15 s; the margin absorbs a
/// loaded machine). The relay pings only when the agent's pings stop
/// (`link.rs`), with the same 10 s bound.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(6);
/// Exchanges in flight on one tunnel; more wait for a free stream.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Per-stream receive window: how much of one body may be in flight unread.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Per-connection receive window: caps what one tunnel buffers in total.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest header block accepted on the tunnel (the relay's public side
/// enforces its own, smaller limit first).
pub const MAX_HEADER_LIST: u32 = 256 * 1024;

/// The agent's side: an HTTP/2 server answering the relay's requests.
pub fn server_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST);
    b
}
