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
/// which finds nothing. So its reads are small, 2 KiB: on the relay, where
/// the answers come in and every agent's link keeps one (6.6k instructions
/// fewer per webhook than 16 KiB and 3.4 KiB less per idle agent,
/// docs/benchmarks.md, "Session 15"), and on the agent, whose one link
/// reads from [`agent_socket`]'s buffer instead of from the socket (2.1k
/// instructions fewer per webhook than 8 KiB reads of the socket, and a
/// sixth of the read calls for 256 KiB bodies: docs/benchmarks.md,
/// "Session 20").
pub fn ws_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 2 * 1024;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = 2 * MAX_MESSAGE;
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    config
}

/// Bytes the agent takes from its socket per read call, into
/// [`agent_socket`]'s buffer.
pub const AGENT_SOCKET_BUFFER: usize = 64 * 1024;

/// The agent's socket to the relay as its websocket reads it: behind a
/// buffer of [`AGENT_SOCKET_BUFFER`], filled by one read call and zeroed
/// only once, from which tungstenite takes its small, zero-filled reads
/// ([`ws_config`]). One link per agent: the relay, with thousands of them,
/// reads its sockets directly.
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
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A pattern no two offsets of which repeat within a message, so a byte
    /// lost, doubled or moved shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    /// The agent reads through [`agent_socket`] with 2 KiB tungstenite reads:
    /// what the relay sends arrives whole and in order, whether many
    /// messages come in one socket read, a message is larger than every
    /// buffer, or the bytes trickle in one at a time.
    #[tokio::test]
    async fn the_agent_reads_its_link_through_its_buffer_byte_exact() {
        // Relay end on one pipe; a copier between the pipes decides how the
        // agent's socket receives the bytes.
        for trickle in [false, true] {
            let (relay_side, wire_in) = tokio::io::duplex(1 << 20);
            let (wire_out, agent_side) = tokio::io::duplex(1 << 20);
            let relay =
                WebSocketStream::from_raw_socket(relay_side, Role::Server, Some(ws_config())).await;
            let agent = WebSocketStream::from_raw_socket(
                agent_socket(agent_side),
                Role::Client,
                Some(ws_config()),
            )
            .await;
            let (mut relay, mut agent) = (WsIo::new(relay), WsIo::new(agent));
            let copier = tokio::spawn(async move {
                let (mut from, mut to) = (wire_in, wire_out);
                let mut buf = vec![0u8; if trickle { 1 } else { 256 * 1024 }];
                loop {
                    let n = from.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    to.write_all(&buf[..n]).await.unwrap();
                    to.flush().await.unwrap();
                }
            });
            // Small messages (many per socket read), one over the read
            // buffers, and one of the largest size a message may have.
            let sizes: &[usize] = if trickle {
                &[1, 7, 2047, 2048, 2049, 5000]
            } else {
                &[1, 7, 100, 2047, 2048, 2049, 70_000, MAX_MESSAGE, 3, 1024]
            };
            let messages: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| pattern(n, i as u8))
                .collect();
            let expected: Vec<u8> = messages.concat();
            let send = async {
                for m in &messages {
                    // One write is one message: `poll_write` sends what it
                    // is given, up to MAX_MESSAGE.
                    let n = relay.write(m).await.unwrap();
                    assert_eq!(n, m.len());
                }
                relay.shutdown().await.unwrap();
            };
            // Read in pieces that end inside messages, not at their ends.
            let receive = async {
                let mut got = Vec::with_capacity(expected.len());
                let mut piece = [0u8; 1000];
                loop {
                    match agent.read(&mut piece).await.unwrap() {
                        0 => return got,
                        n => got.extend_from_slice(&piece[..n]),
                    }
                }
            };
            let (_, got) = tokio::time::timeout(Duration::from_secs(30), async {
                tokio::join!(send, receive)
            })
            .await
            .expect("the agent did not receive every byte within 30 s");
            assert_eq!(got.len(), expected.len(), "trickle {trickle}");
            assert!(got == expected, "trickle {trickle}: bytes differ");
            drop(relay);
            copier.await.unwrap();
        }
    }
}
