//! The websocket byte-stream adapter (`WsIo`) reading arbitrary bytes as a
//! server-side websocket stream, to the end: never panics, never returns
//! more bytes than came in, and stops (error or EOF) without hanging.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use whtunnel::tunnel::{ws_io, WsIo};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut peer, ours) = tokio::io::duplex(data.len() + 64 * 1024);
        peer.write_all(data).await.unwrap();
        // The peer is gone after its bytes: EOF after the last one. Our
        // pongs and closes then fail to write, which must be an error, not
        // a panic.
        drop(peer);
        let ws = WebSocketStream::from_raw_socket(
            ours,
            Role::Server,
            Some(ws_io::ws_config()),
        )
        .await;
        let mut io = WsIo::new(ws);
        let mut out = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), io.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "reading a finished stream hung");
        assert!(out.len() <= data.len());
    });
});
