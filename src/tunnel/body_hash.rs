//! The body-hash proof: the relay hashes (BLAKE3) the request body bytes it
//! receives as they stream to the agent and, since the hash is known only
//! at the end, sends it as an HTTP/2 trailer ([`TRAILER_BODY_BLAKE3`]); the
//! agent hashes the bytes it passes on to the app and compares. A match
//! proves the tunnel delivered the body byte for byte; a mismatch proves
//! something between relay and app changed it.
//!
//! Neither side buffers: each wrapper hashes frames as they pass. The one
//! exception is the agent holding back a body's last chunk until the trailer
//! behind it arrives (the HTTP/1 client stops reading a body once its
//! `Content-Length` is sent, so it would never see the trailer otherwise).
//!
//! When the capture keeps the body whole, the agent does not hash it on
//! the way ([`Check::Stored`]): the stored bytes are the bytes the app got,
//! so the capture store compares them with the relay's hash when the proof
//! is shown (`capture::body_intact`). Recording then costs no hashing at
//! all, and the comparison covers the stored copy too.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::protocol::TRAILER_BODY_BLAKE3;

/// A BLAKE3 digest (32 bytes).
pub type Digest = [u8; 32];

/// BLAKE3 of `bytes`: the proof's hash. BLAKE3 rather than SHA-256 because
/// the relay hashes every body it carries, and on a 256 KiB body BLAKE3 takes
/// a quarter of SHA-256's time even where the CPU has SHA instructions
/// (docs/benchmarks.md), while staying a cryptographic hash.
pub fn digest(bytes: &[u8]) -> Digest {
    *blake3::hash(bytes).as_bytes()
}

/// Lower-case hex of a digest, as the trailer carries it.
pub fn to_hex(d: &Digest) -> String {
    data_encoding::HEXLOWER.encode(d)
}

/// Reads a digest from hex (either case); `None` unless exactly 32 bytes.
pub fn from_hex(s: &[u8]) -> Option<Digest> {
    let mut d = [0u8; 32];
    // `decode_mut` wants the output sized for the input exactly.
    if s.len() != 2 * d.len() {
        return None;
    }
    data_encoding::HEXLOWER_PERMISSIVE
        .decode_mut(s, &mut d)
        .ok()?;
    Some(d)
}

/// Relay side: passes a request body through and ends it with the
/// [`TRAILER_BODY_BLAKE3`] trailer. Trailers the sender sent are dropped:
/// only the relay's own reach the agent, so a sender cannot forge the proof.
pub struct HashTrailer<B> {
    inner: B,
    hasher: blake3::Hasher,
    done: bool,
}

impl<B: Body> HashTrailer<B> {
    /// Wraps `inner`. Use [`Self::applies`] first: a body known to be empty
    /// is sent as it is (a trailer would turn a body-less request into one
    /// with a body of unknown length on the app's side).
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            done: false,
        }
    }

    /// False for a body already at its end (no bytes to prove).
    pub fn applies(inner: &B) -> bool {
        !inner.is_end_stream()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for HashTrailer<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.hasher.update(&data);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // The sender's own trailers: not passed on.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    let digest: Digest = *this.hasher.finalize().as_bytes();
                    let mut trailers = HeaderMap::with_capacity(1);
                    trailers.insert(
                        TRAILER_BODY_BLAKE3,
                        HeaderValue::from_str(&to_hex(&digest)).expect("hex is a header value"),
                    );
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the agent found once a request body has streamed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyHashes {
    /// The relay's hash of the bytes it received (`None`: no hash in the
    /// metadata and no trailer).
    pub relay: Option<Digest>,
    /// The hash of the bytes this side passed on; `None` under
    /// [`Check::Stored`], where the stored copy is compared instead.
    pub here: Option<Digest>,
}

impl BodyHashes {
    /// `Some(true)` when the relay's hash matches the bytes passed on,
    /// `Some(false)` when it does not, `None` without a relay hash or
    /// without a hash here.
    pub fn intact(&self) -> Option<bool> {
        Some(self.relay? == self.here?)
    }
}

/// Where the agent compares the relay's hash with the bytes the app got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Hash the bytes as they pass: for a body the capture does not keep
    /// whole.
    Streaming,
    /// Do not hash them: the capture keeps this body whole, and the store
    /// compares the relay's hash with those bytes when the proof is shown.
    Stored,
}

/// Agent side: passes a request body on with its trailers removed, hashes
/// the bytes (under [`Check::Streaming`]), reads the relay's
/// [`TRAILER_BODY_BLAKE3`] and, once the body
/// ended whole, fills the slot [`Self::new`] returned. A body that fails
/// midway leaves it empty.
pub struct CheckHash<B> {
    inner: B,
    /// `None` under [`Check::Stored`]. Boxed: a hasher is 1.9 KB, which
    /// every move of the request future would copy.
    hasher: Option<Box<blake3::Hasher>>,
    read: u64,
    /// The body's declared length: its last chunk is held back until the
    /// trailer behind it is read.
    exact: Option<u64>,
    relay: Option<Digest>,
    held_back: Option<Bytes>,
    finished: bool,
    slot: Arc<OnceLock<BodyHashes>>,
}

impl<B: Body<Data = Bytes> + Unpin> CheckHash<B> {
    /// Wraps `inner`; the slot is filled when the body has ended. `relay`:
    /// the relay's hash when it came with the request (a body the relay
    /// read whole); then no trailer is waited for.
    pub fn new(inner: B, relay: Option<Digest>, check: Check) -> (Self, Arc<OnceLock<BodyHashes>>) {
        let slot = Arc::new(OnceLock::new());
        let mut me = Self {
            // Only a trailer is worth holding the last chunk back for.
            exact: inner.size_hint().exact().filter(|_| relay.is_none()),
            inner,
            hasher: (check == Check::Streaming).then(Default::default),
            read: 0,
            relay,
            held_back: None,
            finished: false,
            slot: slot.clone(),
        };
        if me.inner.is_end_stream() {
            me.finish();
        }
        (me, slot)
    }

    fn finish(&mut self) {
        self.finished = true;
        let here = self.hasher.as_ref().map(|h| *h.finalize().as_bytes());
        let _ = self.slot.set(BodyHashes {
            relay: self.relay,
            here,
        });
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CheckHash<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(this.held_back.take().map(|d| Ok(Frame::data(d))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(h) = &mut this.hasher {
                            h.update(&data);
                        }
                        this.read += data.len() as u64;
                        if this.inner.is_end_stream() {
                            this.finish();
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if this.exact == Some(this.read) {
                            // The last chunk: wait for the trailer behind it.
                            this.held_back = Some(data);
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if let Some(h) = trailers
                                .get(TRAILER_BODY_BLAKE3)
                                .and_then(|v| from_hex(v.as_bytes()))
                            {
                                this.relay = Some(h);
                            }
                        }
                        // Trailers end the stream.
                        this.finish();
                    }
                },
                Some(Err(e)) => {
                    this.held_back = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.finish(),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.held_back.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(
                n.saturating_sub(self.read) + self.held_back.as_ref().map_or(0, |b| b.len() as u64),
            ),
            None => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn frames(
        parts: Vec<Frame<Bytes>>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        StreamBody::new(futures_util::stream::iter(parts.into_iter().map(Ok)))
    }

    /// The published BLAKE3 test vectors (BLAKE3-team/BLAKE3,
    /// `test_vectors/test_vectors.json`: input byte i is `i % 251`; the
    /// default hash is the first 32 bytes of each extended output).
    #[tokio::test]
    async fn the_proof_is_blake3_by_its_published_test_vectors() {
        let input = |len: usize| (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        assert_eq!(
            to_hex(&digest(&input(0))),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        // Streamed across frames, as the relay hashes a large body.
        let bytes = Bytes::from(input(1025));
        let body = frames(vec![
            Frame::data(bytes.slice(..1)),
            Frame::data(bytes.slice(1..1024)),
            Frame::data(bytes.slice(1024..)),
        ]);
        let got = HashTrailer::new(body).collect().await.unwrap();
        assert_eq!(
            got.trailers().unwrap()[TRAILER_BODY_BLAKE3],
            "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"
        );
    }

    #[tokio::test]
    async fn the_relay_trailer_matches_on_the_agent_and_never_reaches_the_app() {
        let body = Full::new(Bytes::from_static(b"{\"a\":1}"));
        assert!(HashTrailer::applies(&body));
        let relay = HashTrailer::new(body);
        let (agent, slot) = CheckHash::new(relay, None, Check::Streaming);
        let got = agent.collect().await.unwrap();
        assert!(got.trailers().is_none(), "the trailer is removed");
        assert_eq!(got.to_bytes(), "{\"a\":1}");
        let h = slot.get().unwrap();
        let want: Digest = *blake3::hash(b"{\"a\":1}").as_bytes();
        assert_eq!(h.relay, Some(want));
        assert_eq!(h.intact(), Some(true));
    }

    #[test]
    fn a_digest_reads_from_hex_of_either_case_and_exactly_32_bytes() {
        let d = digest(b"abc");
        assert_eq!(from_hex(to_hex(&d).as_bytes()), Some(d));
        assert_eq!(from_hex(to_hex(&d).to_uppercase().as_bytes()), Some(d));
        assert_eq!(from_hex(&to_hex(&d).as_bytes()[..62]), None);
        assert_eq!(from_hex(format!("{}00", to_hex(&d)).as_bytes()), None);
        assert_eq!(from_hex("zz".repeat(32).as_bytes()), None);
    }

    #[tokio::test]
    async fn a_body_checked_where_it_is_stored_is_not_hashed_here_but_its_trailer_is_read() {
        let relay = HashTrailer::new(Full::new(Bytes::from_static(b"{\"a\":1}")));
        let (agent, slot) = CheckHash::new(relay, None, Check::Stored);
        let got = agent.collect().await.unwrap();
        assert!(got.trailers().is_none(), "the trailer is removed");
        assert_eq!(got.to_bytes(), "{\"a\":1}");
        let h = slot.get().unwrap();
        assert_eq!(h.relay, Some(digest(b"{\"a\":1}")));
        assert_eq!(h.here, None);
        assert_eq!(h.intact(), None, "left to the store");
    }

    #[tokio::test]
    async fn other_bytes_than_the_relay_hashed_are_proven_changed() {
        let relay_saw: Digest = *blake3::hash(b"amount=100").as_bytes();
        let mut t = HeaderMap::new();
        t.insert(TRAILER_BODY_BLAKE3, to_hex(&relay_saw).parse().unwrap());
        let body = frames(vec![
            Frame::data(Bytes::from_static(b"amount=")),
            Frame::data(Bytes::from_static(b"900")),
            Frame::trailers(t),
        ]);
        let (agent, slot) = CheckHash::new(body, None, Check::Streaming);
        assert_eq!(agent.collect().await.unwrap().to_bytes(), "amount=900");
        assert_eq!(slot.get().unwrap().intact(), Some(false));
    }

    #[tokio::test]
    async fn without_a_trailer_there_is_no_verdict_and_a_sender_trailer_is_dropped() {
        let (agent, slot) =
            CheckHash::new(Full::new(Bytes::from_static(b"x")), None, Check::Streaming);
        agent.collect().await.unwrap();
        assert_eq!(slot.get().unwrap().intact(), None);

        let mut forged = HeaderMap::new();
        forged.insert(TRAILER_BODY_BLAKE3, "00".repeat(32).parse().unwrap());
        let sender = frames(vec![
            Frame::data(Bytes::from_static(b"x")),
            Frame::trailers(forged),
        ]);
        let got = HashTrailer::new(sender).collect().await.unwrap();
        let want: Digest = *blake3::hash(b"x").as_bytes();
        assert_eq!(
            got.trailers().unwrap()[TRAILER_BODY_BLAKE3],
            to_hex(&want).as_str()
        );
    }

    #[tokio::test]
    async fn a_hash_from_the_metadata_needs_no_trailer() {
        let (agent, slot) = CheckHash::new(
            Full::new(Bytes::from_static(b"abc")),
            Some(digest(b"abc")),
            Check::Streaming,
        );
        assert_eq!(agent.collect().await.unwrap().to_bytes(), "abc");
        assert_eq!(slot.get().unwrap().intact(), Some(true));
        let (agent, slot) = CheckHash::new(
            Full::new(Bytes::from_static(b"abd")),
            Some(digest(b"abc")),
            Check::Streaming,
        );
        agent.collect().await.unwrap();
        assert_eq!(slot.get().unwrap().intact(), Some(false));
    }

    #[tokio::test]
    async fn the_last_chunk_of_a_sized_body_waits_for_the_trailer() {
        // A body with a declared length, as the agent's HTTP/2 server gives
        // it: the last data frame is not the end of the stream.
        struct Sized(Vec<Frame<Bytes>>, u64);
        impl Body for Sized {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Ready((!self.0.is_empty()).then(|| Ok(self.0.remove(0))))
            }
            fn is_end_stream(&self) -> bool {
                self.0.is_empty()
            }
            fn size_hint(&self) -> SizeHint {
                SizeHint::with_exact(self.1)
            }
        }
        let relay = HashTrailer::new(Full::new(Bytes::from_static(b"abc")));
        let wire = relay.collect().await.unwrap();
        let t = wire.trailers().cloned().unwrap();
        let mut agent = CheckHash::new(
            Sized(
                vec![Frame::data(Bytes::from_static(b"abc")), Frame::trailers(t)],
                3,
            ),
            None,
            Check::Streaming,
        );
        let first = agent.0.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        // Ended with the data frame: an HTTP/1 client that stops reading
        // here has the proof already.
        assert!(agent.0.is_end_stream());
        assert_eq!(agent.1.get().unwrap().intact(), Some(true));
    }
}
