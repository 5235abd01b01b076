//! The contract JSON of `requests list --json` and `requests show --json`
//! (the field names are a promise to scripts: extra fields may be added,
//! none renamed or dropped).

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{header_text, load, B64};
use crate::capture::model::{CapturedBody, Exchange, ExchangeSummary};
use crate::capture::Headers;

/// RFC 3339 with milliseconds, as in the JSON contract and HAR.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One list row in the contract shape: `id`, `received_at`, `method`, `path`,
/// `status`, `duration_ms`, `event`, `replay_of`, `provider` (id or null)
/// and `signature` (verdict or null).
pub fn summary_json(s: &ExchangeSummary) -> Value {
    json!({
        "id": s.id,
        "received_at": rfc3339(&s.received_at),
        "method": s.method,
        "path": s.path,
        "status": s.status,
        "duration_ms": s.duration_ms,
        "event": s.event,
        "replay_of": s.replay_of,
        "provider": s.provider,
        "signature": s.signature.map(|v| v.as_str()),
    })
}

/// `requests list --json`: a JSON array of [`summary_json`] rows, in the
/// order given (the store lists newest first).
pub fn list_json(items: &[ExchangeSummary]) -> Value {
    Value::Array(items.iter().map(summary_json).collect())
}

/// The `{"headers", "body", "body_base64"}` object of `show --json`, plus
/// extra fields `body_size` (bytes that streamed through), `truncated`, and
/// `body_error` when the bytes could not be read.
fn half_json(headers: &Headers, body: &CapturedBody) -> Map<String, Value> {
    let mut m = Map::new();
    let hs: Vec<Value> = headers
        .iter()
        .map(|(n, v)| json!([n, header_text(v)]))
        .collect();
    m.insert("headers".into(), Value::Array(hs));
    let (mut text, mut b64, mut err) = (Value::Null, Value::Null, Value::Null);
    match load(body) {
        Ok(b) if b.is_empty() => {}
        Ok(b) => match std::str::from_utf8(&b) {
            Ok(s) => text = Value::String(s.to_owned()),
            Err(_) => b64 = Value::String(B64.encode(&b)),
        },
        Err(e) => err = Value::String(e),
    }
    m.insert("body".into(), text);
    m.insert("body_base64".into(), b64);
    m.insert("body_size".into(), json!(body.total_len));
    m.insert("truncated".into(), json!(body.truncated));
    if !err.is_null() {
        m.insert("body_error".into(), err);
    }
    m
}

/// `requests show <ID> --json`: the list fields plus `request`, `response`
/// (with `status`, or null when there was no response), `error`, and
/// `signature` as an object (`provider`, `scheme`, `verdict`, `reason`) or
/// null. Extra fields: `sender_timeout_ms` (the sender's own timeout the
/// exchange is measured against: the rule's `timeout =`, else the
/// provider's; null when unknown), `outcome` (how it ended, see
/// [`Outcome`](crate::capture::Outcome)), `target`, `remote_addr`,
/// `relay_event_id`, per half `body_size`, `truncated` (and `body_error` if
/// a spilled file is gone), and in `request` the body-hash proof:
/// `relay_body_digest` (`blake3:<hex>`, `sha256:<hex>` from an older relay,
/// or null when the relay sent none) and
/// `body_intact` (true: the app got exactly the bytes the relay received;
/// false: something between them changed the body; null: not known).
pub fn show_json(ex: &Exchange) -> Value {
    let mut v = summary_json(&ex.summary());
    let o = v.as_object_mut().expect("summary is an object");
    let mut request = half_json(&ex.request.headers, &ex.request.body);
    let proof = &ex.body_proof;
    request.insert(
        "relay_body_digest".into(),
        json!(proof.relay.as_ref().map(ToString::to_string)),
    );
    request.insert("body_intact".into(), json!(crate::capture::body_intact(ex)));
    o.insert("request".into(), Value::Object(request));
    let resp = ex.response.as_ref().map_or(Value::Null, |r| {
        let mut m = Map::new();
        m.insert("status".into(), json!(r.status));
        m.extend(half_json(&r.headers, &r.body));
        Value::Object(m)
    });
    o.insert("response".into(), resp);
    o.insert("error".into(), json!(ex.error));
    o.insert("outcome".into(), json!(ex.outcome.map(|o| o.as_str())));
    let signature = ex.webhook.signature.as_ref().map(|s| {
        json!({
            "provider": ex.webhook.provider,
            "scheme": s.scheme,
            "verdict": s.verdict.as_str(),
            "reason": s.reason,
        })
    });
    o.insert("signature".into(), signature.unwrap_or(Value::Null));
    o.insert(
        "sender_timeout_ms".into(),
        json!(ex.webhook.sender_timeout_ms),
    );
    o.insert("target".into(), json!(ex.target));
    o.insert("remote_addr".into(), json!(ex.remote_addr));
    o.insert("relay_event_id".into(), json!(ex.relay_event_id));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::export::ex_with;
    use crate::capture::model::BodyData;

    #[test]
    fn list_json_has_exactly_the_contract_fields() {
        let mut a = ex_with(b"{}").summary();
        a.replay_of = Some(3);
        let mut b = ex_with(b"").summary();
        b.id = 8;
        b.status = None;
        b.event = None;
        let v = list_json(&[b.clone(), a.clone()]);
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        for row in arr {
            let mut keys: Vec<_> = row.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "duration_ms",
                    "event",
                    "id",
                    "method",
                    "path",
                    "provider",
                    "received_at",
                    "replay_of",
                    "signature",
                    "status"
                ]
            );
            let t = row["received_at"].as_str().unwrap();
            assert!(DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
        }
        assert_eq!(arr[0]["id"], 8);
        assert_eq!(arr[0]["status"], Value::Null);
        assert_eq!(arr[0]["event"], Value::Null);
        assert_eq!(arr[0]["replay_of"], Value::Null);
        assert_eq!(arr[1]["status"], 200);
        assert_eq!(arr[1]["path"], "/hooks?key=0123");
        assert_eq!(arr[1]["method"], "POST");
        assert_eq!(arr[1]["duration_ms"], 12.5);
        assert_eq!(arr[1]["event"], "consent.created");
        assert_eq!(arr[1]["replay_of"], 3);
    }

    #[test]
    fn show_json_text_vs_base64_bodies() {
        let v = show_json(&ex_with("{\"a\":\"é\"}".as_bytes()));
        assert_eq!(v["id"], 7);
        assert_eq!(v["request"]["body"], "{\"a\":\"é\"}");
        assert_eq!(v["request"]["body_base64"], Value::Null);
        assert_eq!(
            v["request"]["headers"],
            json!([
                ["Content-Type", "application/json"],
                ["X-Dup", "one"],
                ["Host", "example.test"],
                ["X-Dup", "two"]
            ])
        );
        assert_eq!(v["response"]["status"], 200);
        assert_eq!(v["response"]["body"], "ok");
        assert_eq!(v["response"]["body_base64"], Value::Null);
        assert_eq!(v["error"], Value::Null);
        for k in [
            "id",
            "received_at",
            "method",
            "path",
            "status",
            "duration_ms",
            "event",
            "replay_of",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }

        let binary = [0u8, 159, 146, 150, 255, b'\n'];
        let mut ex = ex_with(&binary);
        ex.response = None;
        ex.error = Some("app down: connection refused".into());
        ex.outcome = Some(crate::capture::Outcome::AppUnreachable);
        let v = show_json(&ex);
        assert_eq!(v["request"]["body"], Value::Null);
        let b64 = v["request"]["body_base64"].as_str().unwrap();
        assert_eq!(B64.decode(b64).unwrap(), binary);
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["status"], Value::Null);
        assert_eq!(v["error"], "app down: connection refused");
        assert_eq!(v["outcome"], "app-unreachable");

        // No body: both null.
        let v = show_json(&ex_with(b""));
        assert_eq!(v["request"]["body"], Value::Null);
        assert_eq!(v["request"]["body_base64"], Value::Null);

        // A spilled body file that retention deleted: reported, not a panic.
        let mut ex = ex_with(b"");
        ex.request.body = CapturedBody {
            data: BodyData::File("/nonexistent/whtunnel/x.body".into()),
            total_len: 10,
            truncated: false,
        };
        let v = show_json(&ex);
        assert_eq!(v["request"]["body"], Value::Null);
        assert!(v["request"]["body_error"]
            .as_str()
            .unwrap()
            .contains("no longer available"));
    }
}
