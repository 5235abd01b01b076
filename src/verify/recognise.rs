//! Naming the sender from the request alone, and reading the event type and
//! delivery id from the sender's own place for them. Each rule needs a mark
//! only that sender leaves (a header of its own, or a body shape its
//! documents show); anything else stays unrecognised rather than guessed.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::asym::jwt_payload;
use super::{Provider, RequestView};

/// A recognised sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    /// Who sent it.
    pub provider: Provider,
    /// The event type, from the provider's own place for it.
    pub event: Option<String>,
    /// The provider's delivery/event id: retries of one delivery share it.
    pub delivery_id: Option<String>,
}

/// The sender of `req`, or `None` when no sender's mark is on it.
pub fn recognise(req: &RequestView<'_>) -> Option<Recognised> {
    // The body (a JWT body's claims) is read once, for the sender's body
    // shape and then its event and id; not at all when no sender's shape
    // can be in it, or when the sender names both in headers.
    let jwt = is_jwt(req);
    let body = || {
        if jwt {
            Body::parse(&jwt_payload(req.body)?)
        } else {
            Body::parse(req.body)
        }
    };
    let (provider, body) = match provider_by_headers(req) {
        Some(p) if names_all_in_headers(p) => (p, None),
        Some(p) => (p, body()),
        None if jwt => {
            let body = body();
            let claims = body.as_ref()?.object()?;
            let moneyhub = claims.object_at("events").is_some_and(|e| e.moneyhub_key)
                || claims.str_at("iss").is_some_and(|i| i.contains("moneyhub"));
            (moneyhub.then_some(Provider::Moneyhub)?, body)
        }
        None if !may_have_a_shape(req.body) => return None,
        None => {
            let body = body();
            (body_shape(body.as_ref()?)?, body)
        }
    };
    Some(Recognised {
        provider,
        event: event_of(provider, req, body.as_ref()),
        delivery_id: delivery_of(provider, req, body.as_ref()),
    })
}

/// `content_type() == "application/jwt"`, without building the lower-case
/// text: recognition asks for every exchange.
fn is_jwt(req: &RequestView<'_>) -> bool {
    req.header("content-type").is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/jwt")
    })
}

/// Whether `body` may have one of [`body_shape`]'s shapes: each needs a
/// key (`partnerAppId`, `created_at`, `userId`) that is written out in the
/// body unless its letters are `\u` escapes. Most webhooks have none. Each
/// mark has one byte of `I`, `_` and `\`, at a known place: one SIMD scan
/// for those three bytes finds every place a mark could be (a fraction of
/// a parse, and of four substring searches).
fn may_have_a_shape(body: &[u8]) -> bool {
    const MARKS: [(&[u8], usize); 4] = [
        (b"partnerAppId", 10),
        (b"userId", 4),
        (b"created_at", 7),
        (b"\\u", 0),
    ];
    memchr::memchr3_iter(b'I', b'_', b'\\', body).any(|at| {
        MARKS
            .iter()
            .any(|&(mark, k)| mark[k] == body[at] && at >= k && body[at - k..].starts_with(mark))
    })
}

/// A header name that marks a sender, for [`provider_by_headers`].
#[derive(Clone, Copy)]
enum Mark {
    /// A sender's own header. A request with two senders' headers is
    /// attributed to the one of lower rank.
    Sender(u8, Provider),
    /// Standard Webhooks, with [`Mark::WebhookSignature`]: both must be there.
    WebhookId,
    /// Standard Webhooks' signature header.
    WebhookSignature,
    /// FinAegis names itself in its `User-Agent`.
    UserAgent,
}

impl Mark {
    /// The mark a lower-case header name is, if any: the one list of
    /// senders' header names, in rank order.
    fn of(name: &[u8]) -> Option<Mark> {
        use Provider::*;
        Some(match name {
            b"stripe-signature" => Mark::Sender(0, Stripe),
            b"x-github-event" => Mark::Sender(1, Github),
            b"svix-id" => Mark::Sender(2, Svix),
            b"x-shopify-topic" => Mark::Sender(3, Shopify),
            b"x-shopify-hmac-sha256" => Mark::Sender(4, Shopify),
            b"x-slack-signature" => Mark::Sender(5, Slack),
            b"x-square-hmacsha256-signature" => Mark::Sender(6, Square),
            b"paddle-signature" => Mark::Sender(7, Paddle),
            b"x-twilio-email-event-webhook-signature" => Mark::Sender(8, Sendgrid),
            b"x-twilio-signature" => Mark::Sender(9, Twilio),
            b"x-zm-signature" => Mark::Sender(10, Zoom),
            b"twitch-eventsub-message-signature" => Mark::Sender(11, Twitch),
            b"x-signature-ed25519" => Mark::Sender(12, Discord),
            b"bridgeapi-signature" => Mark::Sender(13, Bridge),
            b"x-klavi-signature" => Mark::Sender(14, Klavi),
            b"webhook-id" => Mark::WebhookId,
            b"webhook-signature" => Mark::WebhookSignature,
            b"user-agent" => Mark::UserAgent,
            _ => return None,
        })
    }

    /// A bit of its own for each mark, to see only a name's first header:
    /// a sender's rank (below 29), or one of the three top bits.
    fn bit(self) -> u32 {
        match self {
            Mark::Sender(rank, _) => {
                debug_assert!(rank < 29, "rank {rank} shares a bit");
                1 << rank
            }
            Mark::WebhookId => 1 << 29,
            Mark::WebhookSignature => 1 << 30,
            Mark::UserAgent => 1 << 31,
        }
    }
}

/// The sender named by a header of its own. One pass over the headers, a
/// `match` on each name, rather than a search of all of them for each of
/// eighteen names: recognition runs on every exchange. A name counts as
/// [`RequestView::header`] sees it: by its first header, when that one's
/// value is UTF-8.
fn provider_by_headers(req: &RequestView<'_>) -> Option<Provider> {
    // Longer than the longest mark's name (38 bytes).
    let mut lower = [0u8; 40];
    let (mut seen, mut best) = (0u32, None::<(u8, Provider)>);
    let (mut webhook_id, mut webhook_signature, mut finaegis) = (false, false, false);
    for (name, value) in req.headers.iter() {
        // Received names are lower case already; owned ones may not be.
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            let Some(buf) = lower.get_mut(..name.len()) else {
                continue;
            };
            buf.copy_from_slice(name.as_bytes());
            buf.make_ascii_lowercase();
            &*buf
        } else {
            name.as_bytes()
        };
        let Some(mark) = Mark::of(name) else {
            continue;
        };
        if seen & mark.bit() != 0 {
            continue;
        }
        seen |= mark.bit();
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        match mark {
            Mark::Sender(rank, p) => {
                if best.is_none_or(|(r, _)| rank < r) {
                    best = Some((rank, p));
                }
            }
            Mark::WebhookId => webhook_id = true,
            Mark::WebhookSignature => webhook_signature = true,
            Mark::UserAgent => finaegis = value.starts_with("FinAegis-Webhook"),
        }
    }
    match best {
        Some((_, p)) => Some(p),
        None if webhook_id && webhook_signature => Some(Provider::StandardWebhooks),
        None => finaegis.then_some(Provider::Finaegis),
    }
}

/// Senders that sign nothing in headers, told apart by the body shape their
/// documents show (`shared/providers/`).
fn body_shape(body: &Body) -> Option<Provider> {
    let o = match body {
        Body::Array(first) => {
            let klavi = first
                .as_ref()
                .is_some_and(|f| f.at("partnerAppId").is_some() && f.at("eventName").is_some());
            return klavi.then_some(Provider::Klavi);
        }
        Body::Object(o) => o,
        Body::Other => return None,
    };
    // Finexer: an event object like Stripe's but with `created_at` text
    // and `evt_` ids; Stripe's has a numeric `created` and a signature header.
    if o.str_at("object") == Some("event")
        && o.str_at("id").is_some_and(|i| i.starts_with("evt_"))
        && o.str_at("created_at").is_some()
        && o.at("type").is_some()
    {
        return Some(Provider::Finexer);
    }
    // Moneyhub's JSON format: exactly its four documented fields.
    let moneyhub = !o.other_key
        && o.values.iter().flatten().count() == 4
        && ["id", "eventType", "userId", "payload"]
            .iter()
            .all(|k| o.at(k).is_some());
    moneyhub.then_some(Provider::Moneyhub)
}

/// Senders whose event type and delivery id are both in headers (see
/// [`event_of`], [`delivery_of`]): their bodies, often several KiB of
/// JSON, need not be parsed at all.
fn names_all_in_headers(p: Provider) -> bool {
    matches!(p, Provider::Shopify | Provider::Twitch)
}

/// The event type of a request from `p`. A provider that starts reading
/// its body here must leave [`names_all_in_headers`].
fn event_of(p: Provider, req: &RequestView<'_>, body: Option<&Body>) -> Option<String> {
    let top = body.and_then(Body::object);
    let field = |k: &str| top?.str_at(k).map(str::to_string);
    let first = || body.and_then(Body::first);
    match p {
        Provider::Github => {
            let event = req.header("X-GitHub-Event")?.to_string();
            Some(match field("action") {
                Some(action) => format!("{event}.{action}"),
                None => event,
            })
        }
        Provider::Shopify => req.header("X-Shopify-Topic").map(str::to_string),
        Provider::Twitch => req
            .header("Twitch-Eventsub-Subscription-Type")
            .map(str::to_string),
        Provider::Slack => top
            .and_then(|o| o.object_at("event")?.str_at("type"))
            .map(str::to_string)
            .or_else(|| field("type")),
        Provider::Paddle => field("event_type"),
        Provider::Zoom => field("event"),
        Provider::Sendgrid => first()?.str_at("event").map(str::to_string),
        Provider::Klavi => first()?.str_at("eventName").map(str::to_string),
        Provider::Moneyhub => {
            field("eventType").or_else(|| top?.object_at("events")?.least_key.clone())
        }
        Provider::Finaegis => req
            .header("X-Webhook-Event")
            .map(str::to_string)
            .or_else(|| field("event"))
            .or_else(|| field("type")),
        Provider::Twilio | Provider::Discord => None,
        _ => field("type"),
    }
}

fn delivery_of(p: Provider, req: &RequestView<'_>, body: Option<&Body>) -> Option<String> {
    let header = |h: &str| req.header(h).map(str::to_string);
    let field = |k: &str| match body?.object()?.at(k)? {
        Node::Text(s) => Some(s.clone()),
        Node::Int(n) => Some(n.to_string()),
        Node::Object(_) | Node::Other => None,
    };
    match p {
        Provider::Github => header("X-GitHub-Delivery"),
        Provider::Svix => header("svix-id"),
        Provider::StandardWebhooks => header("webhook-id"),
        Provider::Shopify => {
            header("X-Shopify-Event-Id").or_else(|| header("X-Shopify-Webhook-Id"))
        }
        Provider::Twitch => header("Twitch-Eventsub-Message-Id"),
        Provider::Finaegis => header("X-Webhook-ID"),
        Provider::Slack => field("event_id"),
        Provider::Square | Provider::Paddle => field("event_id"),
        Provider::Klavi => body?.first()?.str_at("eventId").map(str::to_string),
        Provider::Moneyhub => field("id").or_else(|| field("jti")),
        Provider::Stripe | Provider::Finexer => field("id"),
        _ => None,
    }
}

/// Keys recognition reads from a JSON body (`body_shape`, `event_of`,
/// `delivery_of`, the JWT claims). Only their values are kept.
const KEYS: &[&str] = &[
    "object",
    "id",
    "created_at",
    "type",
    "event",
    "event_type",
    "event_id",
    "action",
    "eventType",
    "eventName",
    "eventId",
    "partnerAppId",
    "userId",
    "payload",
    "jti",
    "events",
    "iss",
];

/// What recognition reads of a JSON body. The body is parsed (and must be
/// valid JSON, as before: see [`Skip`]) but only the values under [`KEYS`] are built,
/// one level deep: a `serde_json::Value` of a whole webhook costs an
/// allocation per field, ~100k instructions for a 1 KiB event with forty-six
/// small fields (docs/benchmarks.md, "Session 17"), on the recorder's
/// writer thread for every exchange.
enum Body {
    Object(Fields),
    /// An array, with its first element when that is an object.
    Array(Option<Fields>),
    Other,
}

impl Body {
    fn parse(json: &[u8]) -> Option<Body> {
        // Text first: skipped strings are not checked for UTF-8 by
        // serde_json, and a body that is not UTF-8 is not JSON.
        serde_json::from_str(std::str::from_utf8(json).ok()?).ok()
    }

    fn object(&self) -> Option<&Fields> {
        match self {
            Body::Object(o) => Some(o),
            _ => None,
        }
    }

    fn first(&self) -> Option<&Fields> {
        match self {
            Body::Array(first) => first.as_ref(),
            _ => None,
        }
    }
}

/// An object's values under [`KEYS`]. A repeated key keeps its last value,
/// as a parsed JSON object does.
#[derive(Default)]
struct Fields {
    values: [Option<Node>; KEYS.len()],
    /// A key outside [`KEYS`] was seen.
    other_key: bool,
    /// Below the top only: the least key (the first of a `serde_json` map,
    /// which is sorted), and whether a key names a Moneyhub event URN.
    least_key: Option<String>,
    moneyhub_key: bool,
}

impl Fields {
    fn at(&self, key: &str) -> Option<&Node> {
        let i = KEYS.iter().position(|k| *k == key);
        debug_assert!(i.is_some(), "{key} is not in KEYS");
        self.values[i?].as_ref()
    }

    fn str_at(&self, key: &str) -> Option<&str> {
        match self.at(key)? {
            Node::Text(s) => Some(s),
            _ => None,
        }
    }

    fn object_at(&self, key: &str) -> Option<&Fields> {
        match self.at(key)? {
            Node::Object(o) => Some(o),
            _ => None,
        }
    }
}

/// A value under one of [`KEYS`].
enum Node {
    Text(String),
    /// An integer that fits an `i64` (what `Value::as_i64` reads).
    Int(i64),
    /// An object directly under the top one; deeper objects are `Other`.
    Object(Box<Fields>),
    Other,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
                FieldsVisitor { nested: false }
                    .visit_map(map)
                    .map(Body::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                let first = seq.next_element::<First>()?.and_then(|f| f.0);
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Body::Array(first))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
                Ok(Body::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
                Ok(Body::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
                Ok(Body::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
                Ok(Body::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Body, E> {
                Ok(Body::Other)
            }
            fn visit_unit<E>(self) -> Result<Body, E> {
                Ok(Body::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// An array's first element: its fields when it is an object.
struct First(Option<Fields>);

impl<'de> Deserialize<'de> for First {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize_nested(d, true)? {
            Node::Object(o) => Ok(First(Some(*o))),
            _ => Ok(First(None)),
        }
    }
}

struct FieldsVisitor {
    /// Below the top object: values are read one level only.
    nested: bool,
}

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key<'_>>()? {
            if self.nested {
                let k = key.0.as_ref();
                if fields.least_key.as_deref().is_none_or(|least| k < least) {
                    fields.least_key = Some(k.to_string());
                }
                fields.moneyhub_key |= k.starts_with("urn:com:moneyhub:");
            }
            match KEYS.iter().position(|k| *k == key.0.as_ref()) {
                Some(i) => {
                    fields.values[i] = Some(if self.nested {
                        map.next_value::<Leaf>()?.0
                    } else {
                        map.next_value::<Node>()?
                    })
                }
                None => {
                    fields.other_key = true;
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(s.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(s.to_string().into()))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(s.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A value under a key of an object below the top: no further objects.
struct Leaf(Node);

impl<'de> Deserialize<'de> for Leaf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Node::deserialize_nested(d, false).map(Leaf)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Node::deserialize_nested(d, true)
    }
}

impl Node {
    /// A value; an object is read (one level, as [`Fields`]) only when
    /// `objects`, else skipped as `Other`.
    fn deserialize_nested<'de, D: Deserializer<'de>>(
        d: D,
        objects: bool,
    ) -> Result<Node, D::Error> {
        struct V {
            objects: bool,
        }
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::Text(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::Text(s))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Int(n))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(i64::try_from(n).map_or(Node::Other, Node::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Node::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                if self.objects {
                    let fields = FieldsVisitor { nested: true }.visit_map(map)?;
                    return Ok(Node::Object(Box::new(fields)));
                }
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Node::Other)
            }
        }
        d.deserialize_any(V { objects })
    }
}

/// A value read and thrown away. Not serde's `IgnoredAny`: serde_json skips
/// that without the checks its parse makes (its nesting limit, `\u`
/// escapes that are lone surrogates, numbers out of range), and a body
/// recognition accepts must be one the full parse accepted. Strings are
/// borrowed from the body, so nothing is allocated.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::may_have_a_shape;

    #[test]
    fn a_shape_mark_is_found_wherever_it_is_and_only_there() {
        for mark in ["partnerAppId", "created_at", "userId", "\\u"] {
            for body in [
                mark.to_string(),
                format!(r#"{{"{mark}":1}}"#),
                format!("{}{mark}", "I_x".repeat(50)),
                format!("{mark}{}", "_I\\x".repeat(50)),
            ] {
                assert!(may_have_a_shape(body.as_bytes()), "{body}");
            }
        }
        for body in [
            "",
            "I_\\",
            r#"{"partnerApp":1,"created":"at","user_id":"u","Id":"\n"}"#,
            "partnerAppI",
            "reated_at",
            "serId",
            "\\",
        ] {
            assert!(!may_have_a_shape(body.as_bytes()), "{body}");
        }
    }
}
