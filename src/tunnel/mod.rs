//! The tunnel transport: one websocket per agent, with HTTP/2 running over
//! its binary messages (relay = HTTP/2 client, agent = HTTP/2 server). HTTP/2
//! gives multiplexing, per-stream flow control, streamed bodies,
//! cancellation and keepalive pings. See `docs/protocol.md`.

pub mod body_hash;
pub mod h2;
pub mod link;
pub mod protocol;
pub mod tls;
pub mod ws_io;

pub use h2::{Body, BoxError};
pub use ws_io::WsIo;
