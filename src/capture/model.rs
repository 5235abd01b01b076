//! The data model of a recorded exchange, shared by the forwarder that fills
//! it, the store that keeps it and the inspector that shows it.

use chrono::{DateTime, Utc};

pub use crate::tunnel::protocol::Outcome;
pub use crate::verify::Verdict;

pub use super::headers::{Headers, HeadersRef};

/// Identifier of a stored exchange (SQLite rowid, assigned by the store).
pub type ExchangeId = i64;

/// A header as received: name and raw value bytes, in order, duplicates kept.
pub type Header = (String, Vec<u8>);

/// A body as captured: the raw bytes (in memory or spilled to a file), never
/// re-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapturedBody {
    /// Where the captured bytes are.
    pub data: BodyData,
    /// Length of the body as it streamed through (may exceed what was kept).
    pub total_len: u64,
    /// True when fewer bytes were kept than streamed through (capture limit,
    /// store pressure, or the stream ended early).
    pub truncated: bool,
}

/// Where captured body bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BodyData {
    /// No body (zero length).
    #[default]
    Empty,
    /// Small bodies are kept in memory until stored.
    Memory(bytes::Bytes),
    /// Large bodies are spilled to a file while streaming; the store adopts it.
    File(std::path::PathBuf),
}

/// The request half of an exchange, as the agent received it from the relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path and query as the app received it, e.g. `/hooks?key=1`.
    pub path: String,
    /// Headers as received by the relay, including hop-by-hop ones.
    pub headers: Headers,
    /// The request body.
    pub body: CapturedBody,
}

/// The response half of an exchange, as returned to the sender.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers in order.
    pub headers: Headers,
    /// The response body.
    pub body: CapturedBody,
}

/// One complete request/response exchange, ready to be stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exchange {
    /// Assigned by the store; `None` until stored.
    pub id: Option<ExchangeId>,
    /// When the relay received the request.
    pub received_at: DateTime<Utc>,
    /// Base URL of the target the request was forwarded to.
    pub target: String,
    /// Sender's address as seen by the relay, if known.
    pub remote_addr: Option<String>,
    /// The request.
    pub request: RecordedRequest,
    /// The response, when there was one (synthesised 502/504 included).
    pub response: Option<RecordedResponse>,
    /// Wall time from receipt to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// How it ended; `None` for older records none of the migration's rules
    /// could classify.
    pub outcome: Option<Outcome>,
    /// Why the exchange failed (app down, timeout, cancelled...), for people.
    pub error: Option<String>,
    /// Event type recognised from the request body, if any.
    pub event: Option<String>,
    /// The exchange this one replays, if it is a replay.
    pub replay_of: Option<ExchangeId>,
    /// The relay's held-event id, when the request was held while offline.
    pub relay_event_id: Option<String>,
    /// This process's number for the exchange while it is in flight (see
    /// [`Recorder::started`](super::Recorder::started)): lets the finished
    /// exchange replace its in-progress row. 0 when none; never stored.
    pub live: u64,
    /// The sender and its signature, when a `[[webhook]]` rule matched or
    /// the sender was recognised.
    pub webhook: WebhookInfo,
    /// The body-hash proof: the relay's hash of the request body and
    /// whether the app got those very bytes.
    pub body_proof: BodyProof,
}

/// The body-hash proof of one exchange: the relay hashed the request body
/// bytes it received, the agent the bytes it passed to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyProof {
    /// The relay's hash of the body bytes it received; `None` when it sent
    /// none (a body-less request, a replay, a body cut off).
    pub relay: Option<BodyDigest>,
    /// `Some(true)`: the app got exactly the bytes the relay received;
    /// `Some(false)`: something between relay and app changed them.
    /// Recorded as `None` with a relay hash when the agent left the
    /// comparison to the store (`body_hash::Check::Stored`): read the proof
    /// with [`body_intact`](crate::capture::body_intact), which makes it
    /// from the stored bytes then.
    pub intact: Option<bool>,
}

/// A hash of a request body, with the algorithm that made it: relays hash
/// with BLAKE3 since protocol 3, with SHA-256 before (stores keep both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDigest {
    /// BLAKE3, 32 bytes.
    Blake3([u8; 32]),
    /// SHA-256, from a protocol-2 relay.
    Sha256([u8; 32]),
}

impl BodyDigest {
    /// Whether `bytes` hash to this digest, by its own algorithm.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        use sha2::Digest;
        match self {
            BodyDigest::Blake3(d) => blake3::hash(bytes).as_bytes() == d,
            BodyDigest::Sha256(d) => <[u8; 32]>::from(sha2::Sha256::digest(bytes)) == *d,
        }
    }

    /// Whether the bytes `reader` yields hash to this digest, read in
    /// pieces (a stored body file may be large).
    pub fn matches_reader(&self, mut reader: impl std::io::Read) -> std::io::Result<bool> {
        use sha2::Digest;
        Ok(match self {
            BodyDigest::Blake3(d) => {
                blake3::Hasher::new()
                    .update_reader(reader)?
                    .finalize()
                    .as_bytes()
                    == d
            }
            BodyDigest::Sha256(d) => {
                let mut h = sha2::Sha256::new();
                std::io::copy(&mut reader, &mut h)?;
                <[u8; 32]>::from(h.finalize()) == *d
            }
        })
    }

    /// Reads the [`Display`](std::fmt::Display) form, `blake3:<hex>` or
    /// `sha256:<hex>`; bare hex, as stores before schema 7 kept it, is
    /// SHA-256.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = |h: &str| crate::tunnel::body_hash::from_hex(h.as_bytes());
        match text.split_once(':') {
            Some(("blake3", h)) => hex(h).map(BodyDigest::Blake3),
            Some(("sha256", h)) => hex(h).map(BodyDigest::Sha256),
            Some(_) => None,
            None => hex(text).map(BodyDigest::Sha256),
        }
    }

    /// The [`Display`](std::fmt::Display) form in a fixed buffer: the store
    /// writes one per exchange, and this allocates nothing.
    pub fn text(&self) -> DigestText {
        let (algorithm, d) = match self {
            BodyDigest::Blake3(d) => (b"blake3:", d),
            BodyDigest::Sha256(d) => (b"sha256:", d),
        };
        let mut buf = [0u8; DigestText::LEN];
        buf[..7].copy_from_slice(algorithm);
        data_encoding::HEXLOWER.encode_mut(d, &mut buf[7..]);
        DigestText(buf)
    }
}

/// `<algorithm>:<lower-case hex>` of a [`BodyDigest`], without allocating.
#[derive(Clone, Copy)]
pub struct DigestText([u8; DigestText::LEN]);

impl DigestText {
    /// Both algorithms' names are 6 letters; 32 bytes are 64 hex digits.
    const LEN: usize = 7 + 64;

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }
}

impl std::fmt::Display for BodyDigest {
    /// `<algorithm>:<lower-case hex>`, as `requests show --json` and the
    /// store write it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// What is known of a webhook's sender and its signature, as stored with
/// the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookInfo {
    /// The provider id (`stripe`, `github`, ...), named by a rule or
    /// recognised; `None` for senders nobody recognised (never guessed).
    pub provider: Option<String>,
    /// The provider's delivery or event id: retries of one delivery share it.
    pub delivery_id: Option<String>,
    /// The signature check, when there was one to make.
    pub signature: Option<SignatureCheck>,
    /// The sender's own timeout this exchange is measured against, in
    /// milliseconds: the `[[webhook]]` rule's `timeout =`, else the
    /// provider's published one; `None` when neither is known.
    pub sender_timeout_ms: Option<u64>,
}

/// One request's signature check, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The scheme checked (`hmac`, `stripe`, `jwt`, ...).
    pub scheme: String,
    /// The contract's verdict.
    pub verdict: Verdict,
    /// Why, in one line (which check failed, or why nothing was checked).
    pub reason: Option<String>,
}

/// What a list row needs: everything but headers and bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSummary {
    /// Store id.
    pub id: ExchangeId,
    /// When the relay received the request.
    pub received_at: DateTime<Utc>,
    /// HTTP method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Response status, if any.
    pub status: Option<u16>,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Recognised event type.
    pub event: Option<String>,
    /// Replayed exchange id.
    pub replay_of: Option<ExchangeId>,
    /// Request body length in bytes.
    pub request_size: u64,
    /// Response body length in bytes.
    pub response_size: u64,
    /// How it ended (see [`Exchange::outcome`]).
    pub outcome: Option<Outcome>,
    /// Failure reason, if any.
    pub error: Option<String>,
    /// This process's in-flight number (see [`Exchange::live`]); 0 when
    /// read from the store.
    pub live: u64,
    /// The provider id (see [`WebhookInfo::provider`]).
    pub provider: Option<String>,
    /// The signature verdict, when there was a check.
    pub signature: Option<Verdict>,
    /// The provider's delivery id (see [`WebhookInfo::delivery_id`]).
    pub delivery_id: Option<String>,
    /// Why the signature verdict is what it is (see [`SignatureCheck::reason`]).
    pub signature_reason: Option<String>,
    /// The relay's id of the held event this exchange delivered (see
    /// [`Exchange::relay_event_id`]).
    pub relay_event_id: Option<String>,
    /// The sender's timeout (see [`WebhookInfo::sender_timeout_ms`]).
    pub sender_timeout_ms: Option<u64>,
}

/// A user's edit of a captured request before replaying it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestEdit {
    /// Method to send.
    pub method: String,
    /// Path and query to send (below the target's base path).
    pub path: String,
    /// Headers to send, in order.
    pub headers: Vec<Header>,
    /// Body bytes to send.
    pub body: bytes::Bytes,
}

/// A request to replay a stored exchange, optionally edited first. Sent by
/// the inspector; carried out by the agent's forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The exchange to replay.
    pub id: ExchangeId,
    /// The edited request, or `None` to send the original bytes.
    pub edit: Option<RequestEdit>,
}

impl Exchange {
    /// The list-row view of this exchange; `id` is 0 until the store assigns
    /// one. Sizes are the lengths that streamed through, not what was kept.
    pub fn summary(&self) -> ExchangeSummary {
        ExchangeSummary {
            id: self.id.unwrap_or(0),
            received_at: self.received_at,
            method: self.request.method.clone(),
            path: self.request.path.clone(),
            status: self.response.as_ref().map(|r| r.status),
            duration_ms: self.duration_ms,
            event: self.event.clone(),
            replay_of: self.replay_of,
            request_size: self.request.body.total_len,
            response_size: self.response.as_ref().map_or(0, |r| r.body.total_len),
            outcome: self.outcome,
            error: self.error.clone(),
            live: self.live,
            provider: self.webhook.provider.clone(),
            signature: self.webhook.signature.as_ref().map(|s| s.verdict),
            delivery_id: self.webhook.delivery_id.clone(),
            signature_reason: self
                .webhook
                .signature
                .as_ref()
                .and_then(|s| s.reason.clone()),
            relay_event_id: self.relay_event_id.clone(),
            sender_timeout_ms: self.webhook.sender_timeout_ms,
        }
    }

    /// [`Exchange::summary`], with the text moved out of the exchange
    /// instead of copied: for the recorder, which is done with it once it
    /// is stored.
    pub fn into_summary(self) -> ExchangeSummary {
        let (status, response_size) = self
            .response
            .as_ref()
            .map_or((None, 0), |r| (Some(r.status), r.body.total_len));
        let (signature, signature_reason) = match self.webhook.signature {
            Some(s) => (Some(s.verdict), s.reason),
            None => (None, None),
        };
        ExchangeSummary {
            id: self.id.unwrap_or(0),
            received_at: self.received_at,
            method: self.request.method,
            path: self.request.path,
            status,
            duration_ms: self.duration_ms,
            event: self.event,
            replay_of: self.replay_of,
            request_size: self.request.body.total_len,
            response_size,
            outcome: self.outcome,
            error: self.error,
            live: self.live,
            provider: self.webhook.provider,
            signature,
            delivery_id: self.webhook.delivery_id,
            signature_reason,
            relay_event_id: self.relay_event_id,
            sender_timeout_ms: self.webhook.sender_timeout_ms,
        }
    }
}

impl CapturedBody {
    /// A fully captured in-memory body (`total_len` = its length, not truncated).
    pub fn from_bytes(bytes: impl Into<bytes::Bytes>) -> Self {
        let bytes: bytes::Bytes = bytes.into();
        if bytes.is_empty() {
            return Self::default();
        }
        Self {
            total_len: bytes.len() as u64,
            data: BodyData::Memory(bytes),
            truncated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorder's moving summary says what the copying one says, with
    /// every field set and with the optional parts missing.
    #[test]
    fn a_summary_moved_out_of_an_exchange_equals_the_copied_one() {
        let mut full = crate::capture::store::tests::sample_full(b"{\"type\":\"t\"}");
        full.id = Some(41);
        full.live = 3;
        let mut bare = full.clone();
        bare.response = None;
        bare.webhook = WebhookInfo::default();
        bare.id = None;
        for ex in [full, bare] {
            let copied = ex.summary();
            assert_eq!(ex.into_summary(), copied);
        }
    }

    #[test]
    fn a_digest_is_written_as_algorithm_and_lower_case_hex_and_reads_back() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8 ^ 0xa5);
        let hex = crate::tunnel::body_hash::to_hex(&d);
        assert_eq!(hex.len(), 64);
        for (digest, name) in [
            (BodyDigest::Blake3(d), "blake3"),
            (BodyDigest::Sha256(d), "sha256"),
        ] {
            assert_eq!(digest.to_string(), format!("{name}:{hex}"));
            assert_eq!(digest.text().as_str(), digest.to_string());
            assert_eq!(BodyDigest::parse(digest.text().as_str()), Some(digest));
        }
    }
}
