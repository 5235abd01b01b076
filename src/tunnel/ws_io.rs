//! A websocket seen as one byte stream: binary messages in, binary messages
//! out. HTTP/2 runs on top of it, so framing, multiplexing and flow control
//! come from hyper rather than from a home-made layer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest websocket message we send; HTTP/2 frames are far smaller, so this
/// only caps one write of coalesced frames.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// The tunnel's websocket settings, at both ends: explicit size caps (a
/// peer cannot make us buffer more than one message) and small eager
/// buffers, because a relay may hold thousands of idle agents.
///
/// tungstenite zero-fills up to its read buffer's size before every read
/// call it makes (tungstenite-rs#547), the last one of each burst included,
/// which finds nothing; so its reads are small. Large reads of the socket
/// are [`agent_socket`]'s job on the agent; the relay reads answers, a few
/// hundred bytes each. The numbers behind both choices are in
/// docs/benchmarks.md ("Session 15", "Session 20").
pub fn ws_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 2 * 1024;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = 2 * MAX_MESSAGE;
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    config
}

/// The most the agent takes from its socket in one read call, into
/// [`agent_socket`]'s buffer.
pub const AGENT_SOCKET_BUFFER: usize = 64 * 1024;

/// The agent's socket to the relay behind a buffer of
/// [`AGENT_SOCKET_BUFFER`] bytes, zeroed once and refilled by one read call
/// each time it runs dry, so that tungstenite's small zero-filled reads
/// ([`ws_config`]) cost no read call each. Over `wss://` it goes under TLS,
/// so that it is still the socket that is read in large pieces. Only the
/// agent, which holds one link, has one: on the relay, with thousands of
/// links, it would cost each idle agent its size.
pub fn agent_socket<S: AsyncRead>(stream: S) -> tokio::io::BufReader<S> {
    tokio::io::BufReader::with_capacity(AGENT_SOCKET_BUFFER, stream)
}

/// `AsyncRead + AsyncWrite` over a [`WebSocketStream`].
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsIo<S> {
    /// Wraps an established websocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => e,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // tungstenite answers pings itself; nothing else carries data.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected text message on the tunnel",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_MESSAGE);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    // HTTP/2 writes a frame head and its payload as separate slices; sending
    // them as one message halves the messages and syscalls per frame.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut out = bytes::BytesMut::with_capacity(total.min(MAX_MESSAGE));
        for b in bufs {
            let room = MAX_MESSAGE - out.len();
            if room == 0 {
                break;
            }
            out.extend_from_slice(&b[..b.len().min(room)]);
        }
        let n = out.len();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(out.freeze()))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// Pseudo-random bytes from a seed: no stretch of a message repeats
    /// another, so a byte lost, doubled or moved shows.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut out = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    /// The reading half of the agent's socket as a test wants it: every
    /// read returns at most `max` bytes, and the reads that return bytes are
    /// counted.
    struct Chunked<S> {
        inner: S,
        max: usize,
        reads: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Chunked<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let max = self.max.min(buf.remaining());
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(max));
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            buf.advance(n);
            if n > 0 {
                self.reads.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads `agent` to its end in pieces of 1000 bytes, which end inside
    /// messages rather than at their ends.
    async fn read_all<S: AsyncRead + AsyncWrite + Unpin>(agent: &mut WsIo<S>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut piece = [0u8; 1000];
        loop {
            match agent.read(&mut piece).await.unwrap() {
                0 => return got,
                n => got.extend_from_slice(&piece[..n]),
            }
        }
    }

    /// The agent reads through [`agent_socket`] with small tungstenite
    /// reads: what the relay sends arrives whole and in order whether its
    /// socket gives one byte, three, a little under 4 KiB or more than the
    /// buffer per read, and many messages or a part of one come in one
    /// read. The socket is read in the buffer's large pieces, not in
    /// tungstenite's small ones.
    #[tokio::test]
    async fn the_agent_reads_its_link_through_its_buffer_byte_exact() {
        for max in [1, 3, 4093, AGENT_SOCKET_BUFFER + 1] {
            let (relay_side, agent_side) = tokio::io::duplex(1 << 20);
            let relay =
                WebSocketStream::from_raw_socket(relay_side, Role::Server, Some(ws_config())).await;
            let reads = Arc::new(AtomicUsize::new(0));
            let (read_half, write_half) = tokio::io::split(agent_side);
            let chunked = Chunked {
                inner: read_half,
                max,
                reads: reads.clone(),
            };
            let socket = tokio::io::join(chunked, write_half);
            let agent = WebSocketStream::from_raw_socket(
                agent_socket(socket),
                Role::Client,
                Some(ws_config()),
            )
            .await;
            let (mut relay, mut agent) = (WsIo::new(relay), WsIo::new(agent));
            // Small messages (many per socket read), some around the 2 KiB
            // reads, some larger than every buffer, one of the largest size a
            // message may have. A byte at a time, only the small ones.
            let sizes: &[usize] = if max < 100 {
                &[1, 7, 2047, 2048, 2049, 5000]
            } else {
                &[1, 7, 100, 2047, 2048, 2049, 70_000, MAX_MESSAGE, 3, 1024]
            };
            let messages: Vec<Vec<u8>> = sizes
                .iter()
                .zip(1u64..)
                .map(|(&n, seed)| noise(n, seed))
                .collect();
            let expected: Vec<u8> = messages.concat();
            let send = async {
                for m in &messages {
                    // One write is one message: `poll_write` sends what it
                    // is given, up to MAX_MESSAGE.
                    assert_eq!(relay.write(m).await.unwrap(), m.len());
                }
                relay.shutdown().await.unwrap();
            };
            let (_, got) = tokio::time::timeout(Duration::from_secs(60), async {
                tokio::join!(send, read_all(&mut agent))
            })
            .await
            .expect("the agent did not read the link to its end within 60 s");
            assert_eq!(got.len(), expected.len(), "reads of at most {max}");
            assert!(got == expected, "reads of at most {max}: bytes differ");
            if max > AGENT_SOCKET_BUFFER {
                // ~335 KiB: 170 reads of tungstenite's 2 KiB, 6 of the
                // buffer's 64 KiB, a few more where a read ends a burst.
                let reads = reads.load(Ordering::Relaxed);
                assert!(reads < 40, "{reads} reads of the socket");
            }
        }
    }

    /// What the relay sends right behind its 101 may come in with it, in
    /// the handshake's reads of the buffer: those bytes still reach the
    /// agent first, then the rest.
    #[tokio::test]
    async fn messages_read_with_the_handshake_are_not_lost() {
        let (relay_side, agent_side) = tokio::io::duplex(1 << 20);
        let messages = [noise(100, 7), noise(10_000, 8), noise(3, 9)];
        let expected = messages.concat();
        let to_send = messages.clone();
        let relay = tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async_with_config(relay_side, Some(ws_config()))
                .await
                .unwrap();
            // Queued before the agent has read the 101.
            for m in to_send {
                ws.send(Message::Binary(m.into())).await.unwrap();
            }
            ws.close(None).await.unwrap();
            // Kept open until the agent has answered the close.
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
        });
        let reads = Arc::new(AtomicUsize::new(0));
        let (read_half, write_half) = tokio::io::split(agent_side);
        let chunked = Chunked {
            inner: read_half,
            max: usize::MAX,
            reads: reads.clone(),
        };
        let socket = tokio::io::join(chunked, write_half);
        let got = tokio::time::timeout(Duration::from_secs(60), async {
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                "ws://relay.test/agent",
                agent_socket(socket),
                Some(ws_config()),
            )
            .await
            .unwrap();
            read_all(&mut WsIo::new(ws)).await
        })
        .await
        .expect("the agent did not read the link to its end within 60 s");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
        // The 101 and every message came in one read of the socket.
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        relay.await.unwrap();
    }
}
