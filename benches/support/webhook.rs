//! One synthetic 1 KiB JSON webhook exchange, shared by the capture
//! benchmarks (`benches/hot_paths.rs`, `examples/store_throughput.rs`).

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::HeaderName;
use whtunnel::capture::{CapturedBody, Exchange, Headers, RecordedRequest, RecordedResponse};

/// Headers in the form the agent records them (as received).
fn received(list: &[(&HeaderName, &[u8])]) -> Headers {
    let mut h = Headers::received(list.len(), list.iter().map(|(_, v)| v.len()).sum());
    for (name, value) in list {
        h.push(name, value);
    }
    h
}

/// Exchange number `i`: a 1 KiB JSON body with a `type`, a 200 `ok` answer,
/// and a time-ordered relay event id, as the agent records them.
pub fn webhook(i: usize) -> Exchange {
    let mut body = format!("{{\"type\":\"bench.event\",\"i\":{i},\"pad\":\"").into_bytes();
    body.resize(1024 - 2, b'x');
    body.extend_from_slice(b"\"}");
    Exchange {
        received_at: chrono::Utc::now(),
        target: "http://localhost:3000".into(),
        remote_addr: Some("127.0.0.1:1234".into()),
        request: RecordedRequest {
            method: "POST".into(),
            path: format!("/hooks/{i}?key=1"),
            headers: received(&[
                (&CONTENT_TYPE, b"application/json"),
                (&USER_AGENT, b"bench/1.0"),
                (
                    &HeaderName::from_static("x-signature"),
                    b"t=1,v1=0123456789abcdef",
                ),
            ]),
            body: CapturedBody::from_bytes(body),
        },
        response: Some(RecordedResponse {
            status: 200,
            headers: received(&[(&CONTENT_LENGTH, b"2")]),
            body: CapturedBody::from_bytes(&b"ok"[..]),
        }),
        duration_ms: 1.5,
        relay_event_id: Some(format!("ev_{i:026}")),
        ..Default::default()
    }
}
