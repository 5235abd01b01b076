//! The wire protocol between relay and agent, as pure data: the upgrade
//! handshake's headers, tunnel names, and the per-request metadata the relay
//! attaches for the agent. No I/O here; `docs/protocol.md` describes the same.

use serde::{Deserialize, Serialize};

/// Path on the relay where agents open their websocket.
pub const AGENT_PATH: &str = "/_whtunnel/agent";
/// Version of this protocol; agent and relay must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;
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
/// Per-request header carrying [`RequestMeta`] as JSON, relay to agent.
pub const HDR_META: &str = "whtunnel-meta";
/// Response header the agent sets on answers it made itself, an
/// [`AgentError`] (app down, timeout), so the relay and the capture can tell
/// them from the app's.
pub const HDR_ERROR: &str = "whtunnel-error";
/// Response header on a `202 Accepted` for a held event.
pub const HDR_EVENT_ID: &str = "whtunnel-event-id";
/// HTTP/2 trailer on a tunnel request: the SHA-256 (lower-case hex) of
/// the body bytes the relay received, known only once the body has streamed
/// by (see [`crate::tunnel::body_hash`]). Agents that do not know it ignore
/// it: trailers never reach an HTTP/1 app unless announced, and the relay
/// strips `Trailer` as hop-by-hop.
pub const TRAILER_BODY_SHA256: &str = "whtunnel-body-sha256";
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
    pub proto: String,
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
    /// (lower-case hex SHA-256); a streamed body's comes as the
    /// [`TRAILER_BODY_SHA256`] trailer instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

impl RequestMeta {
    /// Encodes the metadata for the [`HDR_META`] header.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("RequestMeta serialises")
    }

    /// Decodes the [`HDR_META`] header.
    pub fn decode(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
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

    #[test]
    fn meta_round_trip() {
        let m = RequestMeta {
            remote_addr: Some("127.0.0.1:5000".into()),
            proto: "https".into(),
            host: Some("example.com".into()),
            received_at_ms: 1_700_000_000_000,
            timeout_ms: 30_000,
            hop_headers: vec![("connection".into(), "close".into())],
            event_id: None,
            attempt: None,
            held_left: Some(3),
            body_sha256: Some("ab".repeat(32)),
        };
        assert_eq!(RequestMeta::decode(m.encode().as_bytes()).unwrap(), m);
        assert!(RequestMeta::decode(b"{").is_err());
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
