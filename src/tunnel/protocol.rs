//! The wire protocol between relay and agent, as pure data: the upgrade
//! handshake's headers, tunnel names, and the per-request metadata the relay
//! attaches for the agent. No I/O here; `docs/protocol.md` describes the same.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// Path on the relay where agents open their websocket.
pub const AGENT_PATH: &str = "/_whtunnel/agent";
/// Version of this protocol; agent and relay must speak the same one.
pub const PROTOCOL_VERSION: u32 = 3;
/// Upgrade request header carrying [`PROTOCOL_VERSION`].
pub const HDR_PROTOCOL: &str = "whtunnel-protocol";
/// Upgrade request header naming the tunnel the agent wants to hold.
pub const HDR_NAME: &str = "whtunnel-name";
/// Upgrade request header asking to take over a name another agent holds.
pub const HDR_TAKEOVER: &str = "whtunnel-takeover";
/// Upgrade request header: a random id the agent keeps in its data dir. A
/// connection from the same agent replaces its own stale session (the relay
/// may not have noticed the old link is dead yet) instead of getting 409.
pub const HDR_AGENT_ID: &str = "whtunnel-agent-id";
/// Upgrade request header: an [`OfflinePolicy`], what the relay does with
/// this tunnel's webhooks while the agent is away (the relay's default if
/// absent).
pub const HDR_OFFLINE: &str = "whtunnel-offline";
/// 101 response header: how many held events are waiting for the agent.
pub const HDR_HELD: &str = "whtunnel-held";
/// 101 response header, and header of a [`Control::DeadLetter`] request:
/// how many of the tunnel's held events are on the relay's dead-letter list.
pub const HDR_DEAD: &str = "whtunnel-dead";
/// Header of the relay's control requests on the link (not webhooks), a
/// [`Control`]: `ready` is sent once the tunnel is routable, so the agent announces its
/// URL only when a webhook sent to it will arrive. Stripped from public
/// requests, so a sender cannot forge one.
pub const HDR_CONTROL: &str = "whtunnel-control";
/// Response header the agent sets on a held event's answer, an [`Ack`], once
/// the relay may delete the event.
pub const HDR_ACK: &str = "whtunnel-ack";
/// 101 response header carrying the tunnel's public URL.
pub const HDR_PUBLIC_URL: &str = "whtunnel-public-url";
/// Per-request header, never indexed by HPACK: the [`RequestMeta`] fields
/// that differ on every request, space-separated:
/// `<received_at_ms> <event_id|-> <remote_addr|-> [<body_blake3>]`.
pub const HDR_REQUEST: &str = "whtunnel-req";
/// Per-request header: the Host the sender sent ([`RequestMeta::host`]).
/// Indexed by HPACK, as most requests to one tunnel repeat it.
pub const HDR_HOST: &str = "whtunnel-host";
/// Per-request header, repeated: one hop-by-hop header the relay received,
/// as `<name>:<value>` ([`RequestMeta::hop_headers`]).
pub const HDR_HOP: &str = "whtunnel-hop";
/// 101 response header: the scheme senders use on this relay
/// ([`RequestMeta::proto`] of every request on the link); also a request
/// header on a request whose scheme differs (held by another relay).
pub const HDR_SCHEME: &str = "whtunnel-scheme";
/// 101 response header: the agent's timeout for every request on the link
/// ([`RequestMeta::timeout_ms`]); also a request header on a request whose
/// timeout differs.
pub const HDR_TIMEOUT_MS: &str = "whtunnel-timeout-ms";
/// Request header on a held event's delivery: the attempt, from 1
/// ([`RequestMeta::attempt`]).
pub const HDR_ATTEMPT: &str = "whtunnel-attempt";
/// Request header on a held event's delivery: the tunnel's held events still
/// queued ([`RequestMeta::held_left`]).
pub const HDR_HELD_LEFT: &str = "whtunnel-held-left";
/// Response header the agent sets on answers it made itself, an
/// [`AgentError`] (app down, timeout), so the relay and the capture can tell
/// them from the app's.
pub const HDR_ERROR: &str = "whtunnel-error";
/// Response header on a `202 Accepted` for a held event.
pub const HDR_EVENT_ID: &str = "whtunnel-event-id";
/// HTTP/2 trailer on a tunnel request: the BLAKE3 hash (lower-case hex) of
/// the body bytes the relay received, known only once the body has streamed
/// by (see [`crate::tunnel::body_hash`]). Agents that do not know it ignore
/// it: trailers never reach an HTTP/1 app unless announced, and the relay
/// strips `Trailer` as hop-by-hop.
pub const TRAILER_BODY_BLAKE3: &str = "whtunnel-body-blake3";
/// Upgrade request header: the most held events the agent wants delivered
/// at once (the relay caps it at its own `--hold-concurrency`).
pub const HDR_HOLD_CONCURRENCY: &str = "whtunnel-hold-concurrency";
/// Upgrade request header: a [`HoldOrder`] (the relay's default if absent).
pub const HDR_HOLD_ORDER: &str = "whtunnel-hold-order";

/// Declares a closed set of protocol header values: the enum, its wire
/// text ([`as_str`](Ack::as_str)), parsing from text and from a header.
macro_rules! wire_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as written on the wire (and on the command line).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value as a header value.
            pub const fn header_value(self) -> http::HeaderValue {
                http::HeaderValue::from_static(self.as_str())
            }

            /// Reads a header value; `None` for anything this version does not know.
            pub fn from_header(value: &http::HeaderValue) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| value.as_bytes() == v.as_str().as_bytes())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("'{s}' is not one of: {}", known.join(", "))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_values! {
    /// Values of [`HDR_CONTROL`]: the relay's control requests on the link.
    Control {
        /// The tunnel is routable: a webhook sent to it now will arrive.
        Ready = "ready",
        /// A held event (its id in [`HDR_EVENT_ID`]) kept failing and moved
        /// to the dead-letter list ([`HDR_DEAD`] counts the list), so the
        /// agent can show it. An agent that does not know this value answers
        /// it 400 (no [`RequestMeta`]) and nothing reaches its app.
        DeadLetter = "dead-letter",
        /// A dead-lettered event (its id in [`HDR_EVENT_ID`]) was retried
        /// or dropped through the held API; [`HDR_DEAD`] counts the list.
        DeadLetterCleared = "dead-letter-cleared",
    }
}

wire_values! {
    /// Values of [`HDR_OFFLINE`]: what a relay does with a known tunnel's
    /// webhooks while its agent is away.
    #[derive(Default)]
    OfflinePolicy {
        /// Store them and answer 202; deliver when the agent returns.
        #[default]
        Hold = "hold",
        /// Answer 503 with Retry-After, leaving retries to the sender.
        Reject = "reject",
    }
}

wire_values! {
    /// Values of [`HDR_HOLD_ORDER`]: how a tunnel's held events are
    /// delivered once its agent is back.
    #[derive(Default)]
    HoldOrder {
        /// Several at once, dispatched in arrival order; new traffic goes
        /// live alongside them; a failed one is retried later without
        /// holding up the rest.
        #[default]
        Concurrent = "concurrent",
        /// One at a time in arrival order; new traffic queues behind them
        /// and a failed one is retried before any later one.
        Strict = "strict",
    }
}

wire_values! {
    /// Values of [`HDR_ACK`]: why the relay may delete a held event.
    Ack {
        /// The app answered and the exchange is recorded (or capture is off).
        Recorded = "1",
        /// The event already reached the app earlier; it was not sent again.
        Duplicate = "duplicate",
        /// The app took the event but never answered in time, on
        /// several deliveries: it stops holding up the queue.
        TimedOut = "timed-out",
    }
}

wire_values! {
    /// Values of [`HDR_ERROR`]: which answer the agent made itself, in place
    /// of the app's.
    AgentError {
        /// The relay's request lacked valid metadata or had a malformed path.
        BadRequest = "bad-request",
        /// The app could not be reached: the connection was refused (502).
        AppUnreachable = "app-unreachable",
        /// The app took the connection, then broke it off without an
        /// answer (502): a handler that crashes on this request.
        AppBrokeOff = "app-broke-off",
        /// The app was reached but did not answer in time (504).
        AppTimeout = "app-timeout",
        /// An earlier delivery of the same held event is still in progress
        /// (503, not acknowledged: the relay retries).
        InProgress = "in-progress",
    }
}

wire_values! {
    /// How an exchange ended, as the capture store keeps it (its `outcome`
    /// column) and `requests show --json` prints it. The text is stored:
    /// changing one needs a store migration.
    Outcome {
        /// The app answered, and its answer went back to the sender.
        Answered = "answered",
        /// The app answered after the sender was gone (hung up, relay
        /// timeout, lost link): the app has the request, but its answer
        /// reached nobody.
        Undelivered = "undelivered",
        /// The app could not be reached, or broke off: the agent answered 502.
        AppUnreachable = "app-unreachable",
        /// The app did not answer in time: the agent answered 504.
        AppTimeout = "app-timeout",
        /// The call was cut off with no answer: the stream was reset and the
        /// app gave none in time (or too many calls were still finishing).
        Cancelled = "cancelled",
    }
}

impl Outcome {
    /// True when the app got the request and answered it: a redelivery of
    /// the same held event must not reach the app again.
    pub fn app_answered(self) -> bool {
        matches!(self, Outcome::Answered | Outcome::Undelivered)
    }
}

/// Longest tunnel name accepted (a DNS label, so names can become subdomains).
pub const MAX_NAME_LEN: usize = 63;

/// True when `name` is a valid tunnel name: 1 to 63 of `a-z`, `0-9`, `-`,
/// not starting or ending with `-`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Makes a fresh unguessable tunnel name: 128 random bits, base32 (26 chars).
pub fn generate_name() -> String {
    let bytes: [u8; 16] = rand::random();
    data_encoding::BASE32_DNSSEC.encode(&bytes)
}

/// Makes a fresh agent token: 192 random bits, base64url.
pub fn generate_token() -> String {
    data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 24]>())
}

/// Headers that describe one hop, not the message: never forwarded
/// (RFC 9110 §7.6.1), though kept in the capture.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "http2-settings",
    ];
    // No lowercase copy: this runs for every header of every exchange.
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Removes hop-by-hop headers, and every header the Connection header names,
/// returning them (lossily as text) for the capture.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) -> Vec<(String, String)> {
    let mut named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| http::HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    named.extend(
        headers
            .keys()
            .filter(|k| is_hop_by_hop(k.as_str()))
            .cloned(),
    );
    let mut removed = Vec::new();
    for name in named {
        if let http::header::Entry::Occupied(e) = headers.entry(&name) {
            let (k, values) = e.remove_entry_mult();
            for v in values {
                removed.push((
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
        }
    }
    removed
}

/// The `Content-Length` a message declares, if it is a valid number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Removes `whtunnel-*` headers: on the tunnel they carry the protocol, so
/// an app's response must not be able to set them (a forged ack would let
/// the relay delete an event that was never recorded).
pub fn strip_protocol_headers(headers: &mut http::HeaderMap) {
    let ours: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("whtunnel-"))
        .cloned()
        .collect();
    for k in ours {
        headers.remove(k);
    }
}

/// Splits a public request path `/t/<name>/<rest>?<query>` into the tunnel
/// name and what the app sees (`/<rest>?<query>`). The name is taken from the
/// raw, undecoded path, so `%2f` or `..` can never point at another tunnel.
pub fn split_public_path(path_and_query: &str) -> Option<(&str, String)> {
    let rest = path_and_query.strip_prefix("/t/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (name, tail) = rest.split_at(end);
    if !is_valid_name(name) {
        return None;
    }
    let app_path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Some((name, app_path))
}

/// What the relay knows about a request that the agent needs and HTTP/2
/// cannot carry: the hop-level facts and the original hop-by-hop headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RequestMeta {
    /// Sender's socket address as the relay saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// `http` or `https`: the scheme the sender used.
    pub proto: Cow<'static, str>,
    /// The Host header the sender sent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the relay received the request, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// How long the relay waits for the response head, in milliseconds. The
    /// agent gives up just before, so it can record the 504 itself.
    pub timeout_ms: u64,
    /// Hop-by-hop headers the relay received but does not forward, for the
    /// capture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hop_headers: Vec<(String, String)>,
    /// Held-event id, when this request was held while the agent was away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Delivery attempt of a held event, starting at 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// On a held event's delivery: the tunnel's held events still queued,
    /// this one included, so the agent can show the backlog draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_left: Option<u64>,
    /// The body-hash proof for a body the relay read whole before sending
    /// (BLAKE3; lower-case hex on the wire and when stored); a streamed
    /// body's comes as the [`TRAILER_BODY_BLAKE3`] trailer instead. Held
    /// events stored by an older relay may carry `body_sha256`, which is
    /// ignored: the relay hashes a held body afresh at each delivery.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "stored_digest"
    )]
    pub body_blake3: Option<super::body_hash::Digest>,
}

/// [`RequestMeta::body_blake3`] in stored metadata: written in lower-case
/// hex, as when the field was text; read in either case. A stored value
/// that is not a digest reads as none (the relay hashes a held body afresh
/// at each delivery anyway).
mod stored_digest {
    use crate::tunnel::body_hash::{from_hex, to_hex, Digest};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&to_hex(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Digest>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        Ok(text.and_then(|t| from_hex(t.as_bytes())))
    }
}

impl RequestMeta {
    /// Metadata stored before a relay upgrade (held events) was checked
    /// more loosely: what [`check`](Self::check) would refuse and can be
    /// done without is dropped, so the event is still delivered. The
    /// scheme falls back to `link`'s; a bad host, remote address or
    /// hop-by-hop header is left out.
    pub fn repair_stored(&mut self, link: &LinkMeta) {
        if !matches!(&*self.proto, "http" | "https") {
            self.proto = link.proto.clone();
        }
        if self
            .host
            .as_deref()
            .is_some_and(|h| check_host(h.as_bytes()).is_err())
        {
            self.host = None;
        }
        if self
            .remote_addr
            .as_deref()
            .is_some_and(|a| check_remote_addr(a.as_bytes()).is_err())
        {
            self.remote_addr = None;
        }
        self.hop_headers.retain(|(n, v)| check_hop(n, v).is_ok());
        self.hop_headers.truncate(MAX_HOP_HEADERS);
    }

    /// The metadata as JSON, the form the relay stores with a held event.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("RequestMeta serialises")
    }

    /// Reads [`to_json`](Self::to_json)'s form.
    pub fn from_json(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }
}

/// Longest [`RequestMeta::host`] carried: far above any real host name
/// (253 characters and a port), and bounding what an agent allocates.
pub const MAX_HOST_LEN: usize = 4096;
/// Most [`RequestMeta::hop_headers`] carried (a relay reads at most 100
/// header fields by default).
pub const MAX_HOP_HEADERS: usize = 128;
/// Longest [`RequestMeta::event_id`] carried.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest [`RequestMeta::remote_addr`] carried (an IPv6 socket address
/// with a scope id is at most 55).
const MAX_ADDR_LEN: usize = 64;
/// Longest number field: an `i64`/`u64` in decimal.
const MAX_NUMBER_LEN: usize = 20;
/// Length of [`RequestMeta::body_blake3`] in [`HDR_REQUEST`]: 32 bytes in lower-case hex.
const DIGEST_HEX_LEN: usize = 64;
/// Written for an absent field of [`HDR_REQUEST`].
const ABSENT: &[u8] = b"-";

/// Every header that carries [`RequestMeta`] on a tunnel request. A relay
/// removes them from public requests, so a sender cannot forge metadata.
pub const META_HEADERS: [&str; 7] = [
    HDR_REQUEST,
    HDR_HOST,
    HDR_HOP,
    HDR_SCHEME,
    HDR_TIMEOUT_MS,
    HDR_ATTEMPT,
    HDR_HELD_LEFT,
];

/// The JSON metadata header of protocol 1, still removed from public
/// requests so that no relay version lets a sender's copy reach an app.
const RETIRED_META: &str = "whtunnel-meta";

// As `HeaderName`s: inserting or looking up an entry by `&'static str`
// copies a custom name into a fresh allocation every time.
const NAME_REQUEST: HeaderName = HeaderName::from_static(HDR_REQUEST);
const NAME_HOST: HeaderName = HeaderName::from_static(HDR_HOST);
const NAME_HOP: HeaderName = HeaderName::from_static(HDR_HOP);
const NAME_SCHEME: HeaderName = HeaderName::from_static(HDR_SCHEME);
const NAME_TIMEOUT_MS: HeaderName = HeaderName::from_static(HDR_TIMEOUT_MS);
const NAME_ATTEMPT: HeaderName = HeaderName::from_static(HDR_ATTEMPT);
const NAME_HELD_LEFT: HeaderName = HeaderName::from_static(HDR_HELD_LEFT);

/// Removes from a public request every header a sender could use to pose
/// as the relay: [`META_HEADERS`], [`HDR_CONTROL`], and protocol 1's
/// metadata header.
pub fn strip_meta_headers(headers: &mut HeaderMap) {
    // Nearly every request has none: one pass over the names instead of a
    // lookup per name.
    if !headers.keys().any(|k| k.as_str().starts_with("whtunnel-")) {
        return;
    }
    for name in META_HEADERS.into_iter().chain([HDR_CONTROL, RETIRED_META]) {
        headers.remove(name);
    }
}

/// Why [`RequestMeta`] could not be written to, or read from, headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// A header every request must carry is not there.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// A header that may appear once appears more often.
    #[error("the {0} header appears more than once")]
    Repeated(&'static str),
    /// A field's value does not fit its format or bound.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// The field (or header) at fault.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn invalid(field: &'static str, why: &'static str) -> MetaError {
    MetaError::Invalid { field, why }
}

/// The metadata that is the same for every request on one link, so it
/// crosses once, in the relay's 101 answer ([`HDR_SCHEME`],
/// [`HDR_TIMEOUT_MS`]), instead of on every request. A request whose value
/// differs carries its own header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMeta {
    /// [`RequestMeta::proto`] of the link's requests.
    pub proto: Cow<'static, str>,
    /// [`RequestMeta::timeout_ms`] of the link's requests.
    pub timeout_ms: u64,
}

impl LinkMeta {
    /// Adds the announcement to the relay's 101 answer.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(HDR_SCHEME, scheme_value(&self.proto));
        headers.insert(HDR_TIMEOUT_MS, HeaderValue::from(self.timeout_ms));
    }

    /// Reads the announcement from the relay's 101 answer.
    pub fn read(headers: &HeaderMap) -> Result<Self, MetaError> {
        let proto = headers
            .get(HDR_SCHEME)
            .ok_or(MetaError::Missing(HDR_SCHEME))?;
        let timeout = headers
            .get(HDR_TIMEOUT_MS)
            .ok_or(MetaError::Missing(HDR_TIMEOUT_MS))?;
        Ok(LinkMeta {
            proto: parse_scheme(proto.as_bytes())?,
            timeout_ms: parse_number(timeout.as_bytes(), HDR_TIMEOUT_MS)?,
        })
    }
}

/// The one value of a scheme header; no copy for the two known schemes.
fn scheme_value(proto: &str) -> HeaderValue {
    match proto {
        "http" => HeaderValue::from_static("http"),
        "https" => HeaderValue::from_static("https"),
        // Unreachable through `check`, which refuses anything else.
        other => HeaderValue::from_str(other).unwrap_or(HeaderValue::from_static("http")),
    }
}

fn parse_scheme(value: &[u8]) -> Result<Cow<'static, str>, MetaError> {
    match value {
        b"http" => Ok(Cow::Borrowed("http")),
        b"https" => Ok(Cow::Borrowed("https")),
        _ => Err(invalid("scheme", "not http or https")),
    }
}

fn parse_number<T: std::str::FromStr>(value: &[u8], field: &'static str) -> Result<T, MetaError> {
    if value.is_empty() || value.len() > MAX_NUMBER_LEN {
        return Err(invalid(field, "not a number of 1 to 20 digits"));
    }
    // Digits only (and a leading '-' where T is signed): `parse` alone
    // would take a '+' too.
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid(field, "not a decimal number"));
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(field, "out of range"))
}

fn check_event_id(id: &[u8]) -> Result<(), MetaError> {
    if id.is_empty() || id.len() > MAX_EVENT_ID_LEN {
        return Err(invalid("event id", "not 1 to 64 characters"));
    }
    if !id
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'~' | b'.'))
    {
        return Err(invalid("event id", "not made of a-z, A-Z, 0-9, _ - ~ ."));
    }
    if id == ABSENT {
        return Err(invalid("event id", "'-' stands for no id"));
    }
    Ok(())
}

fn check_remote_addr(addr: &[u8]) -> Result<(), MetaError> {
    if addr.len() > MAX_ADDR_LEN
        || std::str::from_utf8(addr)
            .ok()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .is_none()
    {
        return Err(invalid("remote address", "not an IP socket address"));
    }
    Ok(())
}

/// The body hash of [`HDR_REQUEST`]: exactly 64 lower-case hex digits,
/// checked and decoded in one pass.
fn parse_digest(hex: &[u8]) -> Result<super::body_hash::Digest, MetaError> {
    let refused = || invalid("body hash", "not 64 lower-case hex digits");
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        _ => Err(refused()),
    };
    if hex.len() != DIGEST_HEX_LEN {
        return Err(refused());
    }
    let mut d = [0u8; DIGEST_HEX_LEN / 2];
    for (byte, pair) in d.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Ok(d)
}

fn check_host(host: &[u8]) -> Result<(), MetaError> {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(invalid("host", "not 1 to 4096 bytes"));
    }
    if !host.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(invalid("host", "not printable ASCII"));
    }
    Ok(())
}

/// A hop-by-hop header's name must be a lower-case header name (no ':',
/// which separates it from the value); its value any header value.
fn check_hop(name: &str, value: &str) -> Result<(), MetaError> {
    let ok_name = !name.is_empty()
        && HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| n.as_str() == name);
    if !ok_name {
        return Err(invalid("hop-by-hop header", "not a lower-case header name"));
    }
    if !value
        .bytes()
        .all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
    {
        return Err(invalid("hop-by-hop header", "value has control characters"));
    }
    Ok(())
}

/// [`META_HEADERS`] as `HeaderName`s, in the same order.
const META_NAMES: [HeaderName; 7] = [
    NAME_REQUEST,
    NAME_HOST,
    NAME_HOP,
    NAME_SCHEME,
    NAME_TIMEOUT_MS,
    NAME_ATTEMPT,
    NAME_HELD_LEFT,
];

/// A header of [`META_HEADERS`], by its index there (and in [`META_NAMES`]).
#[derive(Clone, Copy)]
enum Meta {
    Request,
    Host,
    Hop,
    Scheme,
    TimeoutMs,
    Attempt,
    HeldLeft,
}

/// Which of [`META_HEADERS`] a request carries, a bit per index there:
/// found in one pass over the names, so that each absent one (four or
/// five on nearly every request: most carry `whtunnel-req` and
/// `whtunnel-host` only) costs no hashed lookup.
#[derive(Clone, Copy)]
struct Present(u8);

// A bit per metadata header.
const _: () = assert!(META_HEADERS.len() <= u8::BITS as usize);

impl Present {
    fn scan(headers: &HeaderMap) -> Self {
        let mut bits = 0u8;
        for name in headers.keys().map(HeaderName::as_str) {
            if !name.starts_with("whtunnel-") {
                continue;
            }
            if let Some(i) = META_HEADERS.iter().position(|m| *m == name) {
                bits |= 1 << i;
            }
        }
        Present(bits)
    }

    /// Whether `m` is there.
    fn has(self, m: Meta) -> bool {
        self.0 & (1 << m as u8) != 0
    }
}

/// The only value of `m` in `headers`, removed from them.
fn take_one(
    headers: &mut HeaderMap,
    present: Present,
    m: Meta,
) -> Result<Option<HeaderValue>, MetaError> {
    if !present.has(m) {
        return Ok(None);
    }
    let name = &META_NAMES[m as usize];
    let mut values = headers.get_all(name).iter();
    let (first, repeated) = (values.next().cloned(), values.next().is_some());
    if repeated {
        return Err(MetaError::Repeated(META_HEADERS[m as usize]));
    }
    headers.remove(name);
    Ok(first)
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, MetaError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| invalid(field, "not UTF-8"))
}

impl RequestMeta {
    /// Checks that every field fits its wire format and bound, so that
    /// [`write_headers`](Self::write_headers) cannot fail. A relay checks a
    /// public request's metadata before holding or sending it.
    pub fn check(&self) -> Result<(), MetaError> {
        if !matches!(&*self.proto, "http" | "https") {
            return Err(invalid("scheme", "not http or https"));
        }
        if let Some(id) = &self.event_id {
            check_event_id(id.as_bytes())?;
        }
        if let Some(addr) = &self.remote_addr {
            check_remote_addr(addr.as_bytes())?;
        }
        if let Some(host) = &self.host {
            check_host(host.as_bytes())?;
        }
        if self.hop_headers.len() > MAX_HOP_HEADERS {
            return Err(invalid("hop-by-hop headers", "more than 128"));
        }
        for (name, value) in &self.hop_headers {
            check_hop(name, value)?;
        }
        Ok(())
    }

    /// Adds the metadata to a tunnel request's headers: the unique fields
    /// in one never-indexed [`HDR_REQUEST`] (HPACK would only churn its
    /// table with them), the repeating ones as indexed headers, and what
    /// `link` announced not at all. `headers` must hold none of
    /// [`META_HEADERS`] yet ([`strip_meta_headers`]).
    pub fn write_headers(&self, link: &LinkMeta, headers: &mut HeaderMap) -> Result<(), MetaError> {
        self.check()?;
        let mut received = itoa::Buffer::new();
        let received = received.format(self.received_at_ms).as_bytes();
        let id = self.event_id.as_deref().map_or(ABSENT, str::as_bytes);
        let addr = self.remote_addr.as_deref().map_or(ABSENT, str::as_bytes);
        let mut hex = [0u8; DIGEST_HEX_LEN];
        let hash = self.body_blake3.as_ref().map(|d| {
            data_encoding::HEXLOWER.encode_mut(d, &mut hex);
            &hex[..]
        });
        let len = received.len() + 1 + id.len() + 1 + addr.len() + hash.map_or(0, |h| 1 + h.len());
        // Exactly sized: the buffer becomes the header value's without a copy.
        let mut value = Vec::with_capacity(len);
        for (i, part) in [received, id, addr].into_iter().chain(hash).enumerate() {
            if i > 0 {
                value.push(b' ');
            }
            value.extend_from_slice(part);
        }
        let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
            .map_err(|_| invalid("request metadata", "not a header value"))?;
        value.set_sensitive(true);
        let host = match &self.host {
            Some(host) => Some(
                HeaderValue::from_str(host).map_err(|_| invalid("host", "not a header value"))?,
            ),
            None => None,
        };
        let hops = self
            .hop_headers
            .iter()
            .map(|(name, value)| {
                HeaderValue::from_str(&format!("{name}:{value}"))
                    .map_err(|_| invalid("hop-by-hop header", "not a header value"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Nothing is added before everything converted.
        headers.insert(NAME_REQUEST, value);
        if let Some(host) = host {
            headers.insert(NAME_HOST, host);
        }
        for hop in hops {
            headers.append(NAME_HOP, hop);
        }
        if self.proto != link.proto {
            headers.insert(NAME_SCHEME, scheme_value(&self.proto));
        }
        if self.timeout_ms != link.timeout_ms {
            headers.insert(NAME_TIMEOUT_MS, HeaderValue::from(self.timeout_ms));
        }
        if let Some(n) = self.attempt {
            headers.insert(NAME_ATTEMPT, HeaderValue::from(n));
        }
        if let Some(n) = self.held_left {
            headers.insert(NAME_HELD_LEFT, HeaderValue::from(n));
        }
        Ok(())
    }

    /// Reads the metadata [`write_headers`](Self::write_headers) added,
    /// removing its headers, with `link`'s values for what the request does
    /// not carry itself. Anything malformed or over its bound is refused.
    pub fn take_headers(headers: &mut HeaderMap, link: &LinkMeta) -> Result<Self, MetaError> {
        let present = Present::scan(headers);
        let request =
            take_one(headers, present, Meta::Request)?.ok_or(MetaError::Missing(HDR_REQUEST))?;
        let mut fields = request.as_bytes().split(|b| *b == b' ');
        let mut next = |what| fields.next().ok_or(invalid("request metadata", what));
        let received_at_ms = parse_number(next("no receive time")?, "receive time")?;
        let id = next("no event id")?;
        let addr = next("no remote address")?;
        let hash = fields.next();
        if fields.next().is_some() {
            return Err(invalid("request metadata", "more than 4 fields"));
        }
        let event_id = if id == ABSENT {
            None
        } else {
            check_event_id(id)?;
            Some(utf8(id, "event id")?)
        };
        let remote_addr = if addr == ABSENT {
            None
        } else {
            check_remote_addr(addr)?;
            Some(utf8(addr, "remote address")?)
        };
        let body_blake3 = match hash {
            None => None,
            Some(h) => Some(parse_digest(h)?),
        };
        let host = match take_one(headers, present, Meta::Host)? {
            None => None,
            Some(v) => {
                check_host(v.as_bytes())?;
                Some(utf8(v.as_bytes(), "host")?)
            }
        };
        let mut hop_headers = Vec::new();
        // Not looked up when absent: `entry` may grow the map even then.
        if !present.has(Meta::Hop) {
        } else if let http::header::Entry::Occupied(e) = headers.entry(NAME_HOP) {
            for v in e.remove_entry_mult().1 {
                if hop_headers.len() == MAX_HOP_HEADERS {
                    return Err(invalid("hop-by-hop headers", "more than 128"));
                }
                let line = std::str::from_utf8(v.as_bytes())
                    .map_err(|_| invalid("hop-by-hop header", "not UTF-8"))?;
                let (name, value) = line
                    .split_once(':')
                    .ok_or(invalid("hop-by-hop header", "no ':' after the name"))?;
                check_hop(name, value)?;
                hop_headers.push((name.to_owned(), value.to_owned()));
            }
        }
        let proto = match take_one(headers, present, Meta::Scheme)? {
            Some(v) => parse_scheme(v.as_bytes())?,
            None => link.proto.clone(),
        };
        let timeout_ms = match take_one(headers, present, Meta::TimeoutMs)? {
            Some(v) => parse_number(v.as_bytes(), HDR_TIMEOUT_MS)?,
            None => link.timeout_ms,
        };
        let attempt = take_one(headers, present, Meta::Attempt)?
            .map(|v| parse_number(v.as_bytes(), HDR_ATTEMPT))
            .transpose()?;
        let held_left = take_one(headers, present, Meta::HeldLeft)?
            .map(|v| parse_number(v.as_bytes(), HDR_HELD_LEFT))
            .transpose()?;
        Ok(RequestMeta {
            remote_addr,
            proto,
            host,
            received_at_ms,
            timeout_ms,
            hop_headers,
            event_id,
            attempt,
            held_left,
            body_blake3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_unknown_ones_are_refused() {
        for ack in Ack::ALL {
            assert_eq!(Ack::from_header(&ack.header_value()), Some(*ack));
            assert_eq!(ack.as_str().parse::<Ack>(), Ok(*ack));
        }
        assert_eq!(Ack::Recorded.as_str(), "1", "old relays look for any ack");
        assert_eq!(
            Ack::from_header(&http::HeaderValue::from_static("later")),
            None
        );
        assert_eq!("hold".parse::<OfflinePolicy>(), Ok(OfflinePolicy::Hold));
        let e = "keep".parse::<OfflinePolicy>().unwrap_err();
        assert!(e.contains("hold, reject"), "{e}");
        assert_eq!(AgentError::AppTimeout.to_string(), "app-timeout");
        assert_eq!(
            Control::from_header(&http::HeaderValue::from_static("ready")),
            Some(Control::Ready)
        );
    }

    /// Metadata an older relay stored with a held event, which today's
    /// checks refuse, is repaired rather than the event dropped.
    #[test]
    fn stored_metadata_the_checks_refuse_is_repaired_not_dropped() {
        let link = LinkMeta {
            proto: "https".into(),
            timeout_ms: 30_000,
        };
        let mut meta = RequestMeta {
            proto: "".into(),
            host: Some(String::new()),
            remote_addr: Some("not an address".into()),
            hop_headers: vec![
                ("te".into(), "trailers".into()),
                ("Bad Name".into(), "x".into()),
            ],
            event_id: Some("ev_1".into()),
            ..RequestMeta::default()
        };
        assert!(meta.check().is_err());
        meta.repair_stored(&link);
        meta.check().unwrap();
        assert_eq!(meta.proto, "https");
        assert_eq!((meta.host, meta.remote_addr), (None, None));
        assert_eq!(
            meta.hop_headers,
            vec![("te".to_string(), "trailers".to_string())]
        );
        assert_eq!(meta.event_id.as_deref(), Some("ev_1"), "the rest is kept");
    }

    #[test]
    fn content_length_reads_only_a_valid_number() {
        let mut h = http::HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(http::header::CONTENT_LENGTH, " 42 ".parse().unwrap());
        assert_eq!(content_length(&h), Some(42));
        h.insert(http::header::CONTENT_LENGTH, "-1".parse().unwrap());
        assert_eq!(content_length(&h), None);
        h.insert(http::header::CONTENT_LENGTH, "12abc".parse().unwrap());
        assert_eq!(content_length(&h), None);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("my-hooks"));
        assert!(is_valid_name("a"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name("a-"));
        assert!(!is_valid_name("UPPER"));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name(&"a".repeat(64)));
        let n = generate_name();
        assert_eq!(n.len(), 26);
        assert!(is_valid_name(&n), "{n}");
        assert_ne!(n, generate_name());
    }

    #[test]
    fn public_paths() {
        assert_eq!(split_public_path("/t/abc"), Some(("abc", "/".into())));
        assert_eq!(split_public_path("/t/abc/"), Some(("abc", "/".into())));
        assert_eq!(
            split_public_path("/t/abc/a/b?x=1"),
            Some(("abc", "/a/b?x=1".into()))
        );
        assert_eq!(
            split_public_path("/t/abc?x=1"),
            Some(("abc", "/?x=1".into()))
        );
        assert_eq!(
            split_public_path("/t/abc//x/../y"),
            Some(("abc", "//x/../y".into()))
        );
        // Encoded separators stay inside the name segment, which then fails
        // validation instead of routing elsewhere.
        assert_eq!(split_public_path("/t/abc%2f..%2fother/x"), None);
        assert_eq!(split_public_path("/t/%2e%2e/x"), None);
        assert_eq!(split_public_path("/t/../x"), None);
        assert_eq!(split_public_path("/x/abc"), None);
        assert_eq!(split_public_path("/t/"), None);
    }

    #[test]
    fn hop_by_hop() {
        for h in [
            "Connection",
            "keep-alive",
            "TE",
            "Transfer-Encoding",
            "Proxy-Authorization",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(h), "{h}");
        }
        for h in ["content-type", "content-length", "host", "x-signature"] {
            assert!(!is_hop_by_hop(h), "{h}");
        }
    }

    fn link() -> LinkMeta {
        LinkMeta {
            proto: "https".into(),
            timeout_ms: 29_500,
        }
    }

    /// [`full_meta`]'s body hash in hex: every byte different, so that a
    /// byte or nibble out of place shows.
    const FULL_META_HASH: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

    fn full_meta() -> RequestMeta {
        RequestMeta {
            remote_addr: Some("[2001:db8::1]:5000".into()),
            proto: "https".into(),
            host: Some("hooks.example.com".into()),
            received_at_ms: 1_700_000_000_000,
            timeout_ms: 29_500,
            hop_headers: vec![
                ("connection".into(), "close".into()),
                ("x-custom-hop".into(), " a:b, \u{fffd} ".into()),
            ],
            event_id: Some("ev_0123456789abcdefghijklmnop~".into()),
            attempt: Some(2),
            held_left: Some(3),
            body_blake3: Some(std::array::from_fn(|i| 0xa0 ^ i as u8)),
        }
    }

    fn round_trip(m: &RequestMeta, link: &LinkMeta) -> (RequestMeta, HeaderMap) {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        m.write_headers(link, &mut h).unwrap();
        let wire = h.clone();
        let back = RequestMeta::take_headers(&mut h, link).unwrap();
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"], "only the app's headers are left");
        (back, wire)
    }

    /// The one-pass decoder agrees with `data_encoding`'s on every digit,
    /// and takes lower-case hex only.
    #[test]
    fn body_hashes_decode_as_data_encoding_does() {
        // Every digit as a high and as a low nibble.
        let hex = [&b"0123456789abcdef"[..], b"123456789abcdef0"]
            .concat()
            .repeat(2);
        let want = crate::tunnel::body_hash::from_hex(&hex).unwrap();
        assert_eq!(parse_digest(&hex), Ok(want));
        assert_eq!(want[..8], [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(
            want[8..16],
            [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0]
        );
        for bad in [&b"0123456789ABCDEF".repeat(4)[..], &hex[..62], &[b'g'; 64]] {
            assert!(
                parse_digest(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn meta_names_follow_meta_headers() {
        let names = META_NAMES;
        let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, META_HEADERS);
        assert_eq!(META_HEADERS[Meta::Hop as usize], HDR_HOP);
        assert_eq!(META_HEADERS[Meta::HeldLeft as usize], HDR_HELD_LEFT);
    }

    #[test]
    fn meta_round_trips_through_compact_headers() {
        let m = full_meta();
        let (back, wire) = round_trip(&m, &link());
        assert_eq!(back, m);
        let req = &wire[HDR_REQUEST];
        assert!(req.is_sensitive(), "unique values are never indexed");
        assert_eq!(
            req.to_str().unwrap(),
            format!(
                "1700000000000 ev_0123456789abcdefghijklmnop~ [2001:db8::1]:5000 {}",
                FULL_META_HASH
            )
        );
        assert!(
            !wire[HDR_HOST].is_sensitive(),
            "a repeating host is indexed"
        );
        assert_eq!(wire.get_all(HDR_HOP).iter().count(), 2);
        // What the link announced does not cross again.
        assert!(!wire.contains_key(HDR_SCHEME) && !wire.contains_key(HDR_TIMEOUT_MS));

        // A request differing from the link carries its own values.
        let other = RequestMeta {
            proto: "http".into(),
            timeout_ms: 5_000,
            ..m.clone()
        };
        let (back, wire) = round_trip(&other, &link());
        assert_eq!(back, other);
        assert_eq!(wire[HDR_SCHEME], "http");
        assert_eq!(wire[HDR_TIMEOUT_MS], "5000");

        // The least a request carries.
        let bare = RequestMeta {
            proto: "https".into(),
            received_at_ms: -1,
            timeout_ms: 29_500,
            ..Default::default()
        };
        let (back, wire) = round_trip(&bare, &link());
        assert_eq!(back, bare);
        assert_eq!(wire[HDR_REQUEST], "-1 - -");
        assert_eq!(wire.len(), 2, "{wire:?}");

        // The stored form is unchanged JSON: the body hash is lower-case
        // hex, and a stored one that is not a digest reads as none.
        let stored = m.to_json();
        assert!(
            stored.contains(&format!(r#""body_blake3":"{FULL_META_HASH}""#)),
            "{stored}"
        );
        assert_eq!(RequestMeta::from_json(stored.as_bytes()).unwrap(), m);
        let short = stored.replace(FULL_META_HASH, "abab");
        let read = RequestMeta::from_json(short.as_bytes()).unwrap();
        assert_eq!(read.body_blake3, None);
        assert_eq!(read.event_id, m.event_id, "the rest is kept");
        assert!(RequestMeta::from_json(b"{").is_err());
    }

    #[test]
    fn the_link_announcement_round_trips_and_is_required() {
        let mut h = HeaderMap::new();
        link().write(&mut h);
        assert_eq!(LinkMeta::read(&h), Ok(link()));
        assert!(matches!(
            LinkMeta::read(&h).unwrap().proto,
            Cow::Borrowed(_)
        ));
        h.insert(HDR_SCHEME, HeaderValue::from_static("gopher"));
        assert_eq!(
            LinkMeta::read(&h).unwrap_err().to_string(),
            "invalid scheme: not http or https"
        );
        h.remove(HDR_TIMEOUT_MS);
        h.insert(HDR_SCHEME, HeaderValue::from_static("http"));
        assert_eq!(LinkMeta::read(&h), Err(MetaError::Missing(HDR_TIMEOUT_MS)));
    }

    /// Every malformed or hostile value is refused with a reason, never
    /// taken in part or read past its bound.
    #[test]
    fn malformed_meta_headers_are_refused() {
        let hash = "ab".repeat(32);
        let long_host = "h".repeat(MAX_HOST_LEN + 1);
        let long_id = format!("1 {} -", "e".repeat(MAX_EVENT_ID_LEN + 1));
        let upper_hash = format!("1 - - {}", hash.to_uppercase());
        let five = format!("1 - - {hash} x");
        // (headers sent, what the refusal must say)
        type Case<'a> = (Vec<(&'static str, &'a [u8])>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], "the whtunnel-req header is missing"),
            (vec![(HDR_REQUEST, b"")], "invalid receive time"),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_REQUEST, b"1 - -")],
                "appears more than once",
            ),
            (vec![(HDR_REQUEST, b"1")], "no event id"),
            (vec![(HDR_REQUEST, b"1 -")], "no remote address"),
            (vec![(HDR_REQUEST, b"abc - -")], "invalid receive time"),
            (vec![(HDR_REQUEST, b"+1 - -")], "invalid receive time"),
            (
                vec![(HDR_REQUEST, b"99999999999999999999 - -")],
                "invalid receive time: out of range",
            ),
            (
                vec![(HDR_REQUEST, b"123456789012345678901 - -")],
                "invalid receive time",
            ),
            (vec![(HDR_REQUEST, b"1  -")], "invalid event id"),
            (vec![(HDR_REQUEST, b"1 ev/../x -")], "invalid event id"),
            (vec![(HDR_REQUEST, long_id.as_bytes())], "invalid event id"),
            (
                vec![(HDR_REQUEST, b"1 - 999.1.1.1:80")],
                "invalid remote address",
            ),
            (
                vec![(HDR_REQUEST, b"1 - 10.0.0.1")],
                "invalid remote address",
            ),
            (vec![(HDR_REQUEST, b"1 - - ABAB")], "invalid body hash"),
            (
                vec![(HDR_REQUEST, upper_hash.as_bytes())],
                "invalid body hash",
            ),
            (vec![(HDR_REQUEST, five.as_bytes())], "more than 4 fields"),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOST, long_host.as_bytes())],
                "invalid host",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOST, b"a\tb")],
                "invalid host: not printable",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOST, b"a"), (HDR_HOST, b"b")],
                "whtunnel-host header appears more than once",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOP, b"connection close")],
                "no ':'",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOP, b"Connection:close")],
                "lower-case header name",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOP, b":close")],
                "lower-case header name",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HOP, b"x:\xff")],
                "not UTF-8",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_SCHEME, b"ftp")],
                "invalid scheme",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_TIMEOUT_MS, b"-1")],
                "invalid whtunnel-timeout-ms: out of range",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_ATTEMPT, b"4294967296")],
                "invalid whtunnel-attempt: out of range",
            ),
            (
                vec![(HDR_REQUEST, b"1 - -"), (HDR_HELD_LEFT, b"1e3")],
                "invalid whtunnel-held-left",
            ),
        ];
        for (headers, want) in cases {
            let mut h = HeaderMap::new();
            for (name, value) in &headers {
                h.append(*name, HeaderValue::from_bytes(value).unwrap());
            }
            let got = RequestMeta::take_headers(&mut h, &link());
            let e = got.expect_err(&format!("{headers:?} must be refused"));
            assert!(e.to_string().contains(want), "{headers:?}: {e}");
        }
        // Too many hop-by-hop headers.
        let mut h = HeaderMap::new();
        h.insert(HDR_REQUEST, HeaderValue::from_static("1 - -"));
        for _ in 0..=MAX_HOP_HEADERS {
            h.append(HDR_HOP, HeaderValue::from_static("x-a:1"));
        }
        let e = RequestMeta::take_headers(&mut h, &link()).unwrap_err();
        assert!(e.to_string().contains("more than 128"), "{e}");
    }

    #[test]
    fn metadata_that_cannot_cross_is_refused_before_sending() {
        let bad = [
            RequestMeta {
                host: Some("h".repeat(MAX_HOST_LEN + 1)),
                ..full_meta()
            },
            RequestMeta {
                host: Some("a\u{7f}b".into()),
                ..full_meta()
            },
            RequestMeta {
                remote_addr: Some("somewhere".into()),
                ..full_meta()
            },
            RequestMeta {
                event_id: Some("ev 1".into()),
                ..full_meta()
            },
            RequestMeta {
                event_id: Some("-".into()),
                ..full_meta()
            },
            RequestMeta {
                proto: "ws".into(),
                ..full_meta()
            },
            RequestMeta {
                hop_headers: vec![("x-a".into(), "line\nbreak".into())],
                ..full_meta()
            },
            RequestMeta {
                hop_headers: vec![("x-a".into(), "1".into()); MAX_HOP_HEADERS + 1],
                ..full_meta()
            },
        ];
        for m in bad {
            let mut h = HeaderMap::new();
            assert!(m.check().is_err(), "{m:?}");
            assert!(m.write_headers(&link(), &mut h).is_err(), "{m:?}");
            assert!(h.is_empty(), "nothing half-written: {h:?}");
        }
    }

    #[test]
    fn a_senders_meta_headers_are_stripped() {
        let mut h = HeaderMap::new();
        for name in META_HEADERS {
            h.append(name, HeaderValue::from_static("forged"));
            h.append(name, HeaderValue::from_static("twice"));
        }
        h.insert(HDR_CONTROL, HeaderValue::from_static("ready"));
        h.insert("whtunnel-meta", HeaderValue::from_static("{}"));
        h.insert("x-app", HeaderValue::from_static("1"));
        strip_meta_headers(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-app"]);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "keep-alive, x-custom-hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-custom-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("proxy-authorization", "x".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("x-dup", "a".parse().unwrap());
        h.append("x-dup", "b".parse().unwrap());
        let removed = strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-dup"]);
        assert_eq!(h.get_all("x-dup").iter().count(), 2);
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(removed.contains(&("x-custom-hop".into(), "1".into())));
    }
}
