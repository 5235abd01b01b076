//! Shared test data: fixed times, a fixed display offset (+01:00, so tests
//! prove times are not shown in the machine's zone) and sample exchanges.

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::capture::{
    BodyData, CaptureEvent, CapturedBody, Exchange, ExchangeId, ExchangeSummary, Outcome,
    RecordedRequest, RecordedResponse,
};
use crate::inspect::state::{update, App, Effect, Msg};
use crate::inspect::theme::Theme;

/// 2026-11-23 10:00:00 UTC plus `secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

pub fn tz() -> FixedOffset {
    FixedOffset::east_opt(3600).unwrap()
}

pub fn app_with(theme: Theme, w: u16, h: u16) -> App {
    let mut app = App::new(
        "https://relay.example/t/demo".into(),
        "http://localhost:3000".into(),
        theme,
        tz(),
    );
    update(&mut app, Msg::Resize(w, h));
    app
}

pub fn app() -> App {
    app_with(Theme::COLOR, 80, 24)
}

pub fn summary(id: ExchangeId, method: &str, path: &str, status: Option<u16>) -> ExchangeSummary {
    ExchangeSummary {
        id,
        received_at: at(id * 7),
        method: method.into(),
        path: path.into(),
        status,
        duration_ms: 12.4 + id as f64,
        event: None,
        replay_of: None,
        request_size: 512 * id as u64,
        response_size: 2,
        outcome: status.map(|_| Outcome::Answered),
        error: None,
        live: 0,
        provider: None,
        signature: None,
        delivery_id: None,
        signature_reason: None,
        relay_event_id: None,
        sender_timeout_ms: None,
    }
}

/// Feeds summaries as live `Stored` events, oldest first.
pub fn feed(app: &mut App, rows: Vec<ExchangeSummary>) {
    for s in rows {
        let fx = update(app, Msg::Captured(CaptureEvent::Stored(s)));
        assert!(fx.is_empty());
    }
}

/// Six exchanges with mixed statuses, an event type, a failure and a replay.
pub fn mixed() -> Vec<ExchangeSummary> {
    let mut v = vec![
        summary(1, "POST", "/hooks/stripe", Some(200)),
        summary(2, "POST", "/hooks/github?key=abc", Some(404)),
        summary(3, "GET", "/health", Some(301)),
        summary(4, "POST", "/hooks/stripe", Some(500)),
        summary(5, "POST", "/hooks/slow", None),
        summary(6, "POST", "/hooks/stripe", Some(200)),
    ];
    v[0].event = Some("invoice.paid".into());
    v[3].event = Some("customer.created".into());
    v[4].error = Some("app did not answer in time".into());
    v[5].replay_of = Some(1);
    v[5].event = Some("invoice.paid".into());
    v
}

pub fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub fn ch(c: char) -> Msg {
    key(KeyCode::Char(c))
}

pub fn ctrl(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

/// Sends each char of `s` as a key press and returns all effects.
pub fn type_str(app: &mut App, s: &str) -> Vec<Effect> {
    s.chars().flat_map(|c| update(app, ch(c))).collect()
}

pub fn body(bytes: &[u8]) -> CapturedBody {
    CapturedBody {
        data: if bytes.is_empty() {
            BodyData::Empty
        } else {
            BodyData::Memory(Bytes::copy_from_slice(bytes))
        },
        total_len: bytes.len() as u64,
        truncated: false,
    }
}

/// A full exchange with the given request body and content type.
pub fn exchange(id: ExchangeId, content_type: &str, req_body: &[u8]) -> Exchange {
    Exchange {
        id: Some(id),
        received_at: at(id * 7),
        target: "http://localhost:3000".into(),
        remote_addr: Some("203.0.113.9:51234".into()),
        request: RecordedRequest {
            method: "POST".into(),
            path: "/hooks/stripe?key=abc".into(),
            headers: vec![
                ("Content-Type".into(), content_type.as_bytes().to_vec()),
                (
                    "Stripe-Signature".into(),
                    b"t=1700000000,v1=5257a869".to_vec(),
                ),
            ]
            .into(),
            body: body(req_body),
        },
        response: Some(RecordedResponse {
            status: 200,
            headers: vec![("Content-Type".into(), b"text/plain".to_vec())].into(),
            body: body(b"ok"),
        }),
        duration_ms: 15.2,
        outcome: Some(Outcome::Answered),
        error: None,
        event: Some("invoice.paid".into()),
        replay_of: None,
        relay_event_id: None,
        live: 0,
        webhook: Default::default(),
        body_proof: Default::default(),
    }
}

pub const JSON_BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid","livemode":false,"amount":4200,"big":12345678901234567890,"data":{"object":{"id":"in_1","lines":[1,2]}},"note":null}"#;

/// `{"alg":"HS256","typ":"JWT"}.{"sub":"123","eventType":"order.created","iat":1700000000}.sig`
pub const JWT_BODY: &[u8] = b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjMiLCJldmVudFR5cGUiOiJvcmRlci5jcmVhdGVkIiwiaWF0IjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJl";
