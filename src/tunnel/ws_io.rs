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

/// Which end of a tunnel a websocket is: what comes in differs, and so
/// does the read buffer that suits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The relay: reads the app's answers (to a webhook, a few hundred
    /// bytes) from each agent it holds, thousands of them.
    Relay,
    /// The agent: reads the requests, bodies and all.
    Agent,
}

/// The websocket settings of `end`: explicit size caps (a peer cannot make
/// us buffer more than one message) and small eager buffers, because a
/// relay may hold thousands of idle agents.
///
/// tungstenite zero-fills the whole read buffer before every socket read
/// (tungstenite-rs#547), so the buffer is no bigger than what usually
/// comes in: 8 KiB on the agent (at 16 KiB that was ~6k instructions per
/// webhook; 4 KiB costs read syscalls on large bodies, docs/benchmarks.md,
/// "Transport"), 2 KiB on the relay, where the answers come in, and where
/// every agent's link keeps one: 6.6k instructions fewer per webhook and
/// 3.4 KiB less per idle agent, for 3.8 times the read calls on a large
/// answer (1 MiB: no change in time or CPU measured; docs/benchmarks.md,
/// "Session 15").
pub fn ws_config(end: End) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = match end {
        End::Relay => 2 * 1024,
        End::Agent => 8 * 1024,
    };
    config.write_buffer_size = 0;
    config.max_write_buffer_size = 2 * MAX_MESSAGE;
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    config
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
