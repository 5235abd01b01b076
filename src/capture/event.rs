//! Event-type recognition: which kind of webhook a request body carries
//! (`consent.created`, `newTransactions`, ...), shown in lists and exports.
//!
//! Pure and cheap: no I/O, bodies over [`MAX_DETECT_LEN`] are skipped, and a
//! body that is not JSON (or a JWT whose claims are JSON) yields `None`.

use std::fmt;

use base64::Engine;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Bodies larger than this are not parsed (recognition must stay cheap).
pub const MAX_DETECT_LEN: usize = 1024 * 1024;

/// Keys that name the event, most specific first. `eventName` comes before
/// `eventType` because senders that have both use `eventType` for a broad
/// category (`"api"`) and `eventName` for the event (`"link created"`).
const KEYS: &[&str] = &[
    "type",
    "eventName",
    "eventType",
    "event",
    "event_type",
    "event_name",
];

/// Recognises the event type of a webhook body.
///
/// JSON objects: the first string among `type`, `eventName`, `eventType`,
/// `event`, `event_type`, `event_name`; an `event` object is searched the same
/// way (`{"event": {"type": ..}}`). A top-level array uses its first element.
/// `application/jwt` bodies (compact JWS `header.payload.signature`) are
/// recognised from their decoded claims; the signature is not checked.
/// A body (or claims) that is not UTF-8 is not JSON: no event type.
pub fn detect(body: &[u8], content_type: Option<&str>) -> Option<String> {
    if body.is_empty() || body.len() > MAX_DETECT_LEN {
        return None;
    }
    let trimmed = body.trim_ascii();
    let is_jwt_type = content_type.is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/jwt") || mime.to_ascii_lowercase().ends_with("+jwt")
    });
    let looks_json = matches!(trimmed.first(), Some(b'{') | Some(b'['));
    if !looks_json && (is_jwt_type || looks_like_jws(trimmed)) {
        return jwt_claims(trimmed).and_then(|raw| parse(&raw));
    }
    if !looks_json {
        return None;
    }
    parse(trimmed)
}

/// Finds the event name in a JSON document. Only the values under [`KEYS`]
/// are kept; everything else is checked and skipped without being built
/// (a `serde_json::Value` of a payload with 6000 ids is thousands of
/// allocations, on the capture writer's thread for every exchange).
///
/// The body must be UTF-8 (checked first: serde_json does not check the
/// strings it skips) and JSON by RFC 8259's grammar. Skipped values are
/// read as `IgnoredAny`, so serde_json's own limits do not apply to them:
/// a number out of `f64` range, a lone surrogate escape, nesting past 128.
/// The grammar allows all three, and holding skipped values to those
/// limits cost 4.1k instructions per 1 KiB event (docs/benchmarks.md,
/// "Session 18"). Values under [`KEYS`] are read by serde_json's full
/// parse, limits included, and so is every value in recognition
/// ([`recognise`](fn@crate::verify::recognise)), whose answers are pinned
/// to a `serde_json::Value` reading.
fn parse(json: &[u8]) -> Option<String> {
    let json = std::str::from_utf8(json.trim_ascii()).ok()?;
    let names = match json.as_bytes().first()? {
        b'[' => serde_json::from_str::<FirstElement>(json).ok()?.0?,
        _ => serde_json::from_str::<Names>(json).ok()?,
    };
    names.event_name()
}

/// Three base64url segments separated by dots, nothing else. The first
/// segment is a JSON object header, so it starts with `e` (the top bits of
/// `{` encoded: `eyJ` for `{"`, `eyA` for `{ `, `ew` for `{` and a newline):
/// that check turns most bodies away without scanning them.
fn looks_like_jws(b: &[u8]) -> bool {
    if b.first() != Some(&b'e') {
        return false;
    }
    let mut dots = 0;
    for &c in b {
        match c {
            b'.' => {
                dots += 1;
                if dots > 2 {
                    return false;
                }
            }
            b'-' | b'_' | b'=' => {}
            c if c.is_ascii_alphanumeric() => {}
            _ => return false,
        }
    }
    dots == 2
}

/// Decodes the claims (middle segment) of a compact JWS.
fn jwt_claims(b: &[u8]) -> Option<Vec<u8>> {
    let mut parts = b.split(|&c| c == b'.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = payload.strip_suffix(b"=").unwrap_or(payload);
    let payload = payload.strip_suffix(b"=").unwrap_or(payload);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
}

/// The values of an object's [`KEYS`], by position in `KEYS`. A key seen
/// twice keeps its last value, as a JSON object would.
#[derive(Default)]
struct Names([Option<Field>; KEYS.len()]);

/// A value under one of the [`KEYS`].
enum Field {
    Text(String),
    /// An object: `{"event": {"type": ..}}` is searched one level down.
    Object(Box<Names>),
    Other,
}

impl Names {
    /// The first non-blank string among [`KEYS`], in their order; an `event`
    /// object is searched the same way (one level only: cheap and enough).
    fn event_name(&self) -> Option<String> {
        for (key, field) in KEYS.iter().zip(&self.0) {
            match field {
                Some(Field::Text(s)) if !s.trim().is_empty() => return Some(s.clone()),
                Some(Field::Object(inner)) if *key == "event" => {
                    let text = inner.0.iter().find_map(|f| match f {
                        Some(Field::Text(s)) if !s.trim().is_empty() => Some(s.clone()),
                        _ => None,
                    });
                    if text.is_some() {
                        return text;
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// An object key, as its position in [`KEYS`] (compared without copying).
struct KeyIndex(Option<usize>);

impl<'de> Deserialize<'de> for KeyIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyIndex;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, s: &str) -> Result<KeyIndex, E> {
                Ok(KeyIndex(KEYS.iter().position(|k| *k == s)))
            }
        }
        d.deserialize_str(V)
    }
}

struct NamesVisitor;

impl<'de> Visitor<'de> for NamesVisitor {
    type Value = Names;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Names, A::Error> {
        let mut names = Names::default();
        while let Some(KeyIndex(index)) = map.next_key()? {
            match index {
                Some(i) => names.0[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(names)
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(NamesVisitor)
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Field, E> {
                Ok(Field::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Field, E> {
                Ok(Field::Text(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
                NamesVisitor
                    .visit_map(map)
                    .map(|n| Field::Object(Box::new(n)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A top-level array: the first element's names (when it is an object);
/// the rest is checked and skipped.
struct FirstElement(Option<Names>);

impl<'de> Deserialize<'de> for FirstElement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstElement;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstElement, A::Error> {
                let first = seq.next_element::<Names>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstElement(first))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64url(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    /// 000 Finexer: an event object with `type` (and `object: "event"`).
    #[test]
    fn finexer_type() {
        let body = br#"{
          "id": "evt_BziHSDpmRBDsdfxGebuC7a", "object": "event",
          "created_at": "2020-01-30T12:44:55Z", "type": "consent.created",
          "data": {"object": {"id": "cst_5iHhGn4lSjvQofwhWVWKoZ", "object": "consent",
            "status": "pending", "metadata": {}}}
        }"#;
        assert_eq!(
            detect(body, Some("application/json")).as_deref(),
            Some("consent.created")
        );
    }

    /// 001 banking sync: `type` next to `content` and a numeric `timestamp`.
    #[test]
    fn banking_sync_test_event() {
        let body = br#"{"content": {"item_id": 1234567890, "status": 0,
            "user_uuid": "9a95b38f-f98b-417a-988b-9d0d584893e7"},
            "timestamp": 1611681789, "type": "TEST_EVENT"}"#;
        assert_eq!(detect(body, None).as_deref(), Some("TEST_EVENT"));
    }

    /// 002 API users, JSON format: `eventType`.
    #[test]
    fn api_users_json_event_type() {
        let body = br#"{"id": "abe168ce-1b2f-4c38-9c92-db5730485cb3",
            "eventType": "newTransactions", "userId": "5c79210bbac25ecb5e71ac40",
            "payload": {"accounts": [{"id": "6d0baf11", "transactions": ["d520402a"]}]}}"#;
        assert_eq!(
            detect(body, Some("application/json; charset=utf-8")).as_deref(),
            Some("newTransactions")
        );
    }

    /// 002 API users, JWT format: the same claims inside a compact JWS.
    #[test]
    fn api_users_jwt_body() {
        let claims = r#"{"id":"abe168ce","eventType":"newTransactions","userId":"5c79"}"#;
        let jwt = format!(
            "{}.{}.{}",
            b64url(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64url(claims),
            b64url("not-a-real-signature")
        );
        assert_eq!(
            detect(jwt.as_bytes(), Some("application/jwt")).as_deref(),
            Some("newTransactions")
        );
        // Recognised without the content type too, and with a trailing newline.
        let with_nl = format!("{jwt}\n");
        assert_eq!(
            detect(with_nl.as_bytes(), None).as_deref(),
            Some("newTransactions")
        );
        // A header with spaces or a newline after `{` encodes differently
        // (`eyAi`, `ewo`): still recognised without the content type.
        for header in [r#"{ "alg": "none" }"#, "{\n\"alg\":\"none\"}"] {
            let spaced = format!("{}.{}.", b64url(header), b64url(claims));
            assert_eq!(
                detect(spaced.as_bytes(), None).as_deref(),
                Some("newTransactions"),
                "{header}"
            );
        }
        // A JWT whose claims are not JSON yields nothing, without panicking.
        let bad = format!("{}.{}.x", b64url("{}"), b64url("nope"));
        assert_eq!(detect(bad.as_bytes(), Some("application/jwt")), None);
    }

    /// 003 Open Finance Brazil: a top-level array; `eventType` is the broad
    /// category "api", `eventName` the event.
    #[test]
    fn open_finance_brazil_array() {
        let body = br#"[{"partnerAppId": "12345678",
            "eventId": "1495468585434-0e73d1719173766fe4dfe1a8",
            "eventType": "api", "eventName": "link_created",
            "eventTime": "2022-06-25T20:08:17.848Z",
            "payload": {"personalTaxId": "25872252137", "linkId": "ed812"},
            "externalInfo": {"myTraceId": "yourTraceId-1"}}]"#;
        assert_eq!(detect(body, None).as_deref(), Some("link_created"));
    }

    /// 004 FinAegis: dotted event names; shapes vary, cover `event` and
    /// `{"event": {"type": ..}}`.
    #[test]
    fn finaegis_event_names() {
        assert_eq!(
            detect(br#"{"event": "transfer.completed", "data": {}}"#, None).as_deref(),
            Some("transfer.completed")
        );
        assert_eq!(
            detect(br#"{"event": {"type": "account.frozen", "id": 3}}"#, None).as_deref(),
            Some("account.frozen")
        );
        assert_eq!(
            detect(br#"{"event_type": "workflow.timeout"}"#, None).as_deref(),
            Some("workflow.timeout")
        );
    }

    #[test]
    fn key_order_and_non_matches() {
        // `type` wins over the others.
        assert_eq!(
            detect(br#"{"event": "b", "type": "a"}"#, None).as_deref(),
            Some("a")
        );
        // Non-string `type` is skipped, next key used.
        assert_eq!(
            detect(br#"{"type": 3, "eventType": "x"}"#, None).as_deref(),
            Some("x")
        );
        assert_eq!(detect(br#"{"id": 1}"#, None), None);
        assert_eq!(detect(b"[]", None), None);
        assert_eq!(detect(b"not json", Some("text/plain")), None);
        assert_eq!(detect(b"{broken", None), None);
        assert_eq!(detect(b"", None), None);
        assert_eq!(detect(&[0xff, 0xfe, 0x00], None), None);
        // Escaped keys and values are read like any JSON.
        assert_eq!(
            detect(br#"{"\u0074ype": "a\u002eb"}"#, None).as_deref(),
            Some("a.b")
        );
        // A repeated key keeps its last value; blank strings are skipped.
        assert_eq!(
            detect(br#"{"type": "old", "type": "new"}"#, None).as_deref(),
            Some("new")
        );
        assert_eq!(
            detect(
                br#"{"type": "  ", "event": {"id": 1, "eventName": "x"}}"#,
                None
            )
            .as_deref(),
            Some("x")
        );
        // An array whose first element is not an object, or a broken tail.
        assert_eq!(detect(br#"[1, {"type": "a"}]"#, None), None);
        assert_eq!(detect(br#"[{"type": "a"}, {"#, None), None);
        assert_eq!(detect(br#"{"type": "a", "x": [1, {"#, None), None);
        // Ids as numbers, strings and nested arrays around the key are skipped.
        let ids: Vec<String> = (0..6000).map(|i| format!("\"id-{i}\"")).collect();
        let big = format!(
            r#"{{"ids": [{}], "nested": [[1, 2], {{"a": null}}], "eventType": "bulk"}}"#,
            ids.join(",")
        );
        assert_eq!(detect(big.as_bytes(), None).as_deref(), Some("bulk"));
    }

    /// Detection as its documentation reads, over a whole parsed
    /// `serde_json::Value`: the oracle for the targeted parse.
    fn by_value(body: &[u8]) -> Option<String> {
        use serde_json::Value;
        fn names(o: &serde_json::Map<String, Value>, nested: bool) -> Option<String> {
            for key in KEYS {
                match o.get(*key) {
                    Some(Value::String(s)) if !s.trim().is_empty() => return Some(s.clone()),
                    Some(Value::Object(inner)) if *key == "event" && !nested => {
                        if let Some(s) = names(inner, true) {
                            return Some(s);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        match serde_json::from_slice::<Value>(body).ok()? {
            Value::Object(o) => names(&o, false),
            Value::Array(a) => match a.first()? {
                Value::Object(o) => names(o, false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A body gets the event type a `serde_json::Value` reading finds in
    /// it; bodies serde_json refuses only for its own limits (the grammar
    /// allows them) are read by the grammar.
    #[test]
    fn detection_reads_bodies_as_the_value_parse_does() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let mut bodies: Vec<Vec<u8>> = [
            r#"{"type":"a"}"#,
            r#"{"type":"a","x":1e300}"#,
            r#"{"type":"a","x":18446744073709551616}"#,
            r#"{"type":"a","x":"\ud83d\ude00"}"#,
            r#"{"type":"a","x":"\u00zz"}"#,
            "{\"type\":\"a\",\"x\":\"tab\tin\"}",
            r#"{"type":"a","x":tru}"#,
            r#"{"type":"a"} trailing"#,
            r#"{"event":{"type":"b"},"type":" "}"#,
            r#"{"event":{"event":{"type":"c"}}}"#,
            r#"[{"event":{"type":"d"}}]"#,
            r#"[]"#,
            r#"[1,{"type":"a"}]"#,
            r#"{"type":1,"event_name":"e"}"#,
            r#"{"type":1e400,"event_name":"e"}"#,
            r#"{"type":"\ud800","event":"e"}"#,
        ]
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
        bodies.push(format!(r#"{{"type":"a","x":{}}}"#, deep(100)).into_bytes());
        bodies.push(b"{\"type\":\"a\",\"x\":\"\xff\"}".to_vec());
        bodies.push(b"{\"type\":\"a\",\"\xc3\":1}".to_vec());
        bodies.push(b"[{\"type\":\"a\"},\"\xed\xa0\x80\"]".to_vec());
        bodies.push("{\"type\":\"a\u{e9}\"}".as_bytes().to_vec());
        for body in &bodies {
            assert_eq!(
                detect(body, Some("application/json")),
                by_value(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut beyond_limits: Vec<String> = [
            r#"{"type":"a","x":1e400}"#,
            r#"{"type":"a","x":-1e400}"#,
            r#"{"type":"a","x":"\ud800"}"#,
            r#"{"type":"a","x":{"y":["\udc00\ud800"]}}"#,
            r#"[{"type":"a"},1e400]"#,
            r#"{"event":{"type":"a","x":1e400}}"#,
        ]
        .map(String::from)
        .to_vec();
        for n in [128, 200] {
            beyond_limits.push(format!(r#"{{"type":"a","x":{}}}"#, deep(n)));
            beyond_limits.push(format!(r#"[{{"type":"a"}},{}]"#, deep(n)));
        }
        for body in &beyond_limits {
            assert_eq!(by_value(body.as_bytes()), None, "{body}");
            assert_eq!(
                detect(body.as_bytes(), None).as_deref(),
                Some("a"),
                "{body}"
            );
        }
    }

    #[test]
    fn skips_huge_bodies() {
        let mut body = br#"{"type": "big", "pad": ""#.to_vec();
        body.resize(MAX_DETECT_LEN + 10, b'a');
        body.extend_from_slice(br#""}"#);
        assert_eq!(detect(&body, None), None);
    }
}
