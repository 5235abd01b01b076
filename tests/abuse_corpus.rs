//! The bad-input corpus: raw request bytes sent over TCP to a real relay,
//! agent and local app, each with the answer the sender must get and what
//! the app may see. Covers request smuggling and framing (Content-Length,
//! Transfer-Encoding, chunked syntax), request-line and header syntax, size
//! limits, slow or truncated input, and path tricks aimed at another tunnel.
//!
//! The app is a hand-written HTTP/1.1 server (`abuse_support::RawApp`) so it
//! sees the exact bytes the agent sends: every request it gets must carry
//! exactly one framing header that agrees with the body. A second tunnel,
//! `victim`, must never see a single byte. After the corpus the relay must
//! still serve a good request.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse_support;
mod common;

use std::net::IpAddr;
use std::time::Duration;

use abuse_support::{exchange_expecting, Outcome, RawApp};
use common::*;

/// The answer the sender must get.
#[derive(Debug, Clone)]
enum Expect {
    /// Exactly these final responses, in order.
    Statuses(Vec<u16>),
    /// Exactly these final responses, then the relay closes the
    /// connection (nothing after them can be read as another request).
    ThenClosed(Vec<u16>),
    /// One 404 with the unknown-tunnel body, byte for byte the same for
    /// every miss.
    Unknown,
    /// No response at all; the relay closed the connection.
    Closed,
}
use Expect::*;

fn closed_after(s: u16) -> Expect {
    ThenClosed(vec![s])
}

fn status(s: u16) -> Expect {
    Statuses(vec![s])
}

/// What the app behind the tunnel may see.
#[derive(Debug, Clone)]
enum AppSees {
    /// Nothing at all, not even a request head.
    Nothing,
    /// No complete request (a head whose body then broke off is allowed:
    /// the relay streams, so the head may already be on its way).
    NoComplete,
    /// Exactly these complete requests: (request target, body).
    Got(Vec<(&'static str, Vec<u8>)>),
}

fn got(target: &'static str, body: &[u8]) -> AppSees {
    AppSees::Got(vec![(target, body.to_vec())])
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    app: AppSees,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect, app: AppSees) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        expect,
        app,
    }
}

const POST: &str = "POST /t/abuse/x HTTP/1.1\r\nHost: relay\r\n";
const GET: &str = "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\n\r\n";
/// The relay's limit in this test, so 413 cases stay small.
const MAX_BODY: u64 = 64 * 1024;

fn post(extra_headers: &str, body: &str) -> String {
    format!("{POST}{extra_headers}\r\n{body}")
}

fn get_path(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n")
}

fn corpus() -> Vec<Case> {
    use AppSees::*;
    let victim_get = "GET /t/victim/x HTTP/1.1\r\nHost: relay\r\n\r\n";
    let smuggled = "GPOST /t/victim/x HTTP/1.1\r\nHost: relay\r\nContent-Length: 15\r\n\r\nx=1";
    let smuggled_chunk = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let many_headers = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    vec![
        // --- Baselines: well-formed requests pass, framed once. ---
        case("get", GET, status(200), got("/x", b"")),
        case("post-content-length", post("Content-Length: 5\r\n", "hello"), status(200), got("/x", b"hello")),
        case("post-chunked", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), status(200), got("/x", b"hello")),
        case("chunk-extension", post("Transfer-Encoding: chunked\r\n", "5;name=val\r\nhello\r\n0\r\n\r\n"), status(200), got("/x", b"hello")),
        case("chunked-trailer", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), status(200), got("/x", b"hello")),
        case("chunk-size-uppercase-hex", post("Transfer-Encoding: chunked\r\n", "A\r\n0123456789\r\n0\r\n\r\n"), status(200), got("/x", b"0123456789")),
        case("te-uppercase-chunked", post("Transfer-Encoding: CHUNKED\r\n", "5\r\nhello\r\n0\r\n\r\n"), status(200), got("/x", b"hello")),
        case("http10-content-length", "POST /t/abuse/x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", status(200), got("/x", b"hello")),
        case("pipelined-two", format!("{GET}{GET}"), Statuses(vec![200, 200]), Got(vec![("/x", vec![]), ("/x", vec![])])),
        case("leading-empty-line", format!("\r\n{GET}"), status(200), got("/x", b"")),
        case("duplicate-identical-content-length", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), status(200), got("/x", b"hello")),
        case("expect-100-continue", post("Content-Length: 5\r\nExpect: 100-continue\r\n", "hello"), status(200), got("/x", b"hello")),
        case("h2c-upgrade-ignored", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", status(200), got("/x", b"")),
        case("connection-names-content-length", post("Content-Length: 5\r\nConnection: content-length\r\n", "hello"), status(200), got("/x", b"hello")),
        case("spoofed-tunnel-metadata-fields", post("Content-Length: 5\r\nwhtunnel-req: 0 evil 10.6.6.6:1\r\nwhtunnel-scheme: https\r\nwhtunnel-host: evil.example\r\nwhtunnel-hop: x-evil:1\r\nwhtunnel-timeout-ms: 1\r\nwhtunnel-attempt: 1\r\nwhtunnel-held-left: 9\r\n", "hello"), status(200), got("/x", b"hello")),
        case("spoofed-tunnel-metadata", post("Content-Length: 5\r\nwhtunnel-meta: {\"proto\":\"https\",\"received_at_ms\":0,\"timeout_ms\":1,\"event_id\":\"evil\"}\r\n", "hello"), status(200), got("/x", b"hello")),
        case("absolute-form-target", "GET http://elsewhere.example/t/abuse/x HTTP/1.1\r\nHost: relay\r\n\r\n", status(200), got("/x", b"")),
        case("obs-text-in-value", b"GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nX-Bytes: \xff\xfe\r\n\r\n".to_vec(), status(200), got("/x", b"")),
        case("underscore-transfer-encoding-is-just-a-header", post("Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", "hello"), status(200), got("/x", b"hello")),
        case("hundred-headers-allowed", format!("GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\n{}\r\n", many_headers(99)), status(200), got("/x", b"")),
        // --- Content-Length ---
        case("content-length-conflicting", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), closed_after(400), Nothing),
        case("content-length-list-conflicting", post("Content-Length: 5, 6\r\n", "hello!"), closed_after(400), Nothing),
        case("content-length-list-same", post("Content-Length: 5, 5\r\n", "hello"), closed_after(400), Nothing),
        case("content-length-negative", post("Content-Length: -5\r\n", "hello"), closed_after(400), Nothing),
        case("content-length-plus-sign", post("Content-Length: +5\r\n", "hello"), closed_after(400), Nothing),
        case("content-length-hex", post("Content-Length: 0x5\r\n", "hello"), closed_after(400), Nothing),
        case("content-length-inner-space", post("Content-Length: 5 5\r\n", "hello"), closed_after(400), Nothing),
        case("content-length-overflow", post("Content-Length: 18446744073709551616\r\n", "hello"), closed_after(400), Nothing),
        case("content-length-empty", post("Content-Length: \r\n", "hello"), closed_after(400), Nothing),
        case("content-length-over-max-body", post(&format!("Content-Length: {}\r\n", MAX_BODY + 1), "hello"), status(413), Nothing),
        case("content-length-shorter-than-body", post("Content-Length: 5\r\n", "helloXXXX\r\n\r\n"), ThenClosed(vec![200, 400]), got("/x", b"hello")),
        case("content-length-longer-than-body", post("Content-Length: 50\r\n", "hello"), closed_after(408), NoComplete),
        // --- Content-Length with Transfer-Encoding: chunked wins, then close. ---
        case("cl-te-smuggle", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{victim_get}")), closed_after(200), got("/x", b"")),
        case("te-cl-smuggle", post("Transfer-Encoding: chunked\r\nContent-Length: 6\r\n", &format!("0\r\n\r\n{victim_get}")), closed_after(200), got("/x", b"")),
        case("te-cl-classic-prefix", post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", &smuggled_chunk), closed_after(200), AppSees::Got(vec![("/x", smuggled.as_bytes().to_vec())])),
        case("te-space-before-colon", post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", "hello"), closed_after(400), Nothing),
        case("te-xchunked", post("Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", "hello"), closed_after(400), Nothing),
        case("te-chunked-then-identity", post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"), closed_after(400), Nothing),
        case("te-identity", post("Transfer-Encoding: identity\r\n", "hello"), closed_after(400), Nothing),
        case("te-gzip-chunked", post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), closed_after(501), Nothing),
        case("te-twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), closed_after(501), Nothing),
        case("te-vertical-tab", post("Transfer-Encoding:\x0bchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), closed_after(400), Nothing),
        case("te-in-http10", "POST /t/abuse/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", closed_after(400), Nothing),
        case("te-obs-fold", post("Transfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), closed_after(400), Nothing),
        // --- Chunked syntax ---
        case("chunk-size-not-hex", post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"), closed_after(400), NoComplete),
        case("chunk-size-overflow", post("Transfer-Encoding: chunked\r\n", "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), closed_after(400), NoComplete),
        case("chunk-size-negative", post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"), closed_after(400), NoComplete),
        case("chunk-size-leading-space", post("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n"), closed_after(400), NoComplete),
        case("chunk-data-no-crlf", post("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"), closed_after(400), NoComplete),
        case("chunk-data-longer-than-size", post("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"), closed_after(400), NoComplete),
        case("chunk-bare-lf", post("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"), closed_after(400), NoComplete),
        case("chunk-extension-oversize", post("Transfer-Encoding: chunked\r\n", &format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(70_000))), closed_after(400), NoComplete),
        case("chunked-truncated", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n"), closed_after(408), NoComplete),
        case("chunked-over-max-body", post("Transfer-Encoding: chunked\r\n", &format!("{:x}\r\n{}\r\n0\r\n\r\n", MAX_BODY + 1, "a".repeat(MAX_BODY as usize + 1))), status(413), NoComplete),
        // --- Request line ---
        case("method-bad-char", "G@T /t/abuse/x HTTP/1.1\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("version-lowercase", "GET /t/abuse/x http/1.1\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("version-2-in-http1", "GET /t/abuse/x HTTP/2.0\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("version-1-2", "GET /t/abuse/x HTTP/1.2\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("http09-request-line", "GET /t/abuse/x\r\n\r\n", closed_after(400), Nothing),
        case("target-with-space", "GET /t/abuse/a b HTTP/1.1\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("target-with-nul", b"GET /t/abuse/\x00 HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(), closed_after(400), Nothing),
        case("target-non-ascii", "GET /t/abuse/\u{e9} HTTP/1.1\r\nHost: relay\r\n\r\n", status(200), got("/\u{e9}", b"")),
        case("target-too-long", format!("GET /t/abuse/{} HTTP/1.1\r\nHost: relay\r\n\r\n", "a".repeat(70_000)), closed_after(431), Nothing),
        case("request-line-trailing-junk", "GET /t/abuse/x HTTP/1.1 junk\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("request-line-double-space", "GET  /t/abuse/x HTTP/1.1\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("request-line-tabs", "GET\t/t/abuse/x\tHTTP/1.1\r\nHost: relay\r\n\r\n", closed_after(400), Nothing),
        case("asterisk-form", "OPTIONS * HTTP/1.1\r\nHost: relay\r\n\r\n", status(404), Nothing),
        case("connect-authority-form", "CONNECT victim:443 HTTP/1.1\r\nHost: victim:443\r\n\r\n", status(404), Nothing),
        case("tls-hello-on-plain-port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(), closed_after(400), Nothing),
        case("binary-garbage", (0u8..=255).rev().collect::<Vec<u8>>(), closed_after(400), Nothing),
        // --- Slow or absent input (this relay's header timeout is 1 s) ---
        case("silent-connection", Vec::new(), Closed, Nothing),
        case("partial-head-then-silence", "GET /t/abuse/x HTTP/1.1\r\nHost: rel", Closed, Nothing),
        case("h2-preface-prefix-then-silence", "PRI * HTTP/2.0\r\n", Closed, Nothing),
        // --- Header syntax and size ---
        case("header-no-colon", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nNoColonHere\r\n\r\n", closed_after(400), Nothing),
        case("header-space-before-colon", "GET /t/abuse/x HTTP/1.1\r\nHost : relay\r\n\r\n", closed_after(400), Nothing),
        case("header-obs-fold", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nX-A: a\r\n b\r\n\r\n", closed_after(400), Nothing),
        case("header-obs-fold-content-length", post("Content-Length:\r\n 5\r\n", "hello"), closed_after(400), Nothing),
        case("header-nul-in-value", b"GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nX-A: a\x00b\r\n\r\n".to_vec(), closed_after(400), Nothing),
        case("header-bare-cr-in-value", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nX-A: a\rb\r\n\r\n", closed_after(400), Nothing),
        case("header-name-bad-char", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nX(A): b\r\n\r\n", closed_after(400), Nothing),
        case("header-name-empty", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\n: b\r\n\r\n", closed_after(400), Nothing),
        case("header-bare-lf-line-endings", "GET /t/abuse/x HTTP/1.1\nHost: relay\n\n", status(200), got("/x", b"")),
        case("too-many-headers", format!("GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\n{}\r\n", many_headers(101)), closed_after(431), Nothing),
        case("header-too-large", format!("GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)), closed_after(431), Nothing),
        case("host-twice", "GET /t/abuse/x HTTP/1.1\r\nHost: relay\r\nHost: victim\r\n\r\n", closed_after(400), Nothing),
        case("host-missing-http11", "GET /t/abuse/x HTTP/1.1\r\n\r\n", closed_after(400), Nothing),
        // --- Path tricks: the name comes from the raw path; victim is never reached. ---
        case("dotdot-after-name", get_path("/t/abuse/../victim/x"), status(200), got("/../victim/x", b"")),
        case("percent-encoded-name", get_path("/t/%76ictim/x"), Unknown, Nothing),
        case("encoded-slash-in-name", get_path("/t/abuse%2f..%2fvictim/x"), Unknown, Nothing),
        case("encoded-dotdot-name", get_path("/t/%2e%2e/victim/x"), Unknown, Nothing),
        case("dotdot-encoded-slash-name", get_path("/t/..%2fvictim/x"), Unknown, Nothing),
        case("dotdot-name", get_path("/t/../victim/x"), Unknown, Nothing),
        case("dot-name", get_path("/t/./victim/x"), Unknown, Nothing),
        case("empty-name", get_path("/t//victim/x"), Unknown, Nothing),
        case("uppercase-name", get_path("/t/VICTIM/x"), Unknown, Nothing),
        case("semicolon-in-name", get_path("/t/abuse;victim/x"), Unknown, Nothing),
        case("nul-escape-in-name", get_path("/t/victim%00/x"), Unknown, Nothing),
        case("double-slash-prefix", get_path("//t/victim/x"), status(404), Nothing),
        case("traversal-before-prefix", get_path("/x/../t/victim/x"), status(404), Nothing),
        case("query-traversal", get_path("/t/abuse?/../victim"), status(200), got("/?/../victim", b"")),
        case("encoded-traversal-after-name", get_path("/t/abuse/%2e%2e%2fvictim"), status(200), got("/%2e%2e%2fvictim", b"")),
    ]
}

const UNKNOWN_BODY: &[u8] = b"whtunnel: no agent is connected for this tunnel\n";

fn check_expect(c: &Case, out: &Outcome) -> Result<(), String> {
    if !out.trailing.is_empty() {
        return Err(format!(
            "unparsable bytes after the responses: {:?}",
            String::from_utf8_lossy(&out.trailing)
        ));
    }
    match &c.expect {
        Statuses(want) => {
            if &out.statuses() != want {
                return Err(format!("statuses {:?}, want {want:?}", out.statuses()));
            }
        }
        ThenClosed(want) => {
            if &out.statuses() != want || !out.closed {
                return Err(format!(
                    "statuses {:?} closed={}, want {want:?} then close",
                    out.statuses(),
                    out.closed
                ));
            }
        }
        Unknown => {
            if out.statuses() != [404] || out.responses[0].body != UNKNOWN_BODY {
                return Err(format!(
                    "want the one unknown-tunnel 404, got {:?} {:?}",
                    out.statuses(),
                    out.responses
                        .first()
                        .map(|r| String::from_utf8_lossy(&r.body))
                ));
            }
        }
        Closed => {
            if !out.responses.is_empty() || !out.closed {
                return Err(format!(
                    "want a silent close, got {:?} closed={}",
                    out.statuses(),
                    out.closed
                ));
            }
        }
    }
    // Every answer the relay makes itself has a one-line reason.
    for r in &out.responses {
        let own = !r.headers.iter().any(|(n, _)| n == "x-app");
        if own && r.status >= 400 && r.status != 400 && r.status != 431 && r.body.is_empty() {
            return Err(format!("{} without a reason", r.status));
        }
    }
    Ok(())
}

fn check_app(c: &Case, new: &[abuse_support::RawSeen]) -> Result<(), String> {
    for s in new.iter().filter(|s| s.complete) {
        if let Some(problem) = s.framing_problem() {
            return Err(format!("app got a badly framed request: {problem}: {s:?}"));
        }
    }
    let complete: Vec<_> = new.iter().filter(|s| s.complete).collect();
    match &c.app {
        AppSees::Nothing if !new.is_empty() => Err(format!("app saw {new:?}")),
        AppSees::NoComplete if !complete.is_empty() => {
            Err(format!("app got a complete request: {complete:?}"))
        }
        AppSees::Got(want) => {
            let got: Vec<(&str, &[u8])> = complete
                .iter()
                .map(|s| (s.target(), s.body.as_slice()))
                .collect();
            let want: Vec<(&str, &[u8])> = want.iter().map(|(t, b)| (*t, b.as_slice())).collect();
            if got != want || complete.len() != new.len() {
                Err(format!("app got {new:?}, want {want:?}"))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

#[tokio::test]
async fn bad_input_corpus() {
    let app = RawApp::start().await;
    let victim_app = RawApp::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.max_body = MAX_BODY;
    // Short timeouts keep the slow cases quick; the unknown-tunnel limiter
    // is off here (the corpus has many misses) and tested on its own.
    config.limits.header_read_timeout = Duration::from_secs(1);
    config.limits.min_body_rate = 1000;
    config.limits.body_rate_grace = Duration::from_millis(500);
    config.limits.body_rate_window = Duration::from_millis(500);
    config.limits.unknown_tunnel_per_min = 0;
    let relay = start_relay(config).await;
    let opts = |name: &str, addr: std::net::SocketAddr| AgentOptions {
        name: name.into(),
        token: TOKEN.into(),
        target: addr.to_string(),
        host_header: whtunnel::forward::HostHeader::Preserve,
        recorder: None,
        data_dir: None,
        ca: None,
        agent_id: None,
        takeover: false,
    };
    let _agent = start_agent(&relay.base, opts("abuse", app.addr)).await;
    let _victim = start_agent(&relay.base, opts("victim", victim_app.addr)).await;

    let cases = corpus();
    assert!(cases.len() >= 60, "corpus has {} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let from: IpAddr = "127.0.0.1".parse().unwrap();
    let mut failures = Vec::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {}", c.name);
        let before = app.seen().len();
        let want = match &c.expect {
            Statuses(s) | ThenClosed(s) => s.len(),
            Unknown => 1,
            Closed => 0,
        };
        let out = exchange_expecting(
            relay.addr,
            from,
            &c.bytes,
            want,
            Duration::from_millis(300),
            Duration::from_secs(8),
        )
        .await;
        // Let anything the case set off reach the app before judging.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let new = app.seen()[before..].to_vec();
        let verdict = check_expect(c, &out).and_then(|()| check_app(c, &new));
        if let Err(e) = verdict {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    assert!(
        victim_app.seen().is_empty(),
        "the victim tunnel was reached: {:?}",
        victim_app.seen()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The relay still serves, and a late smuggled request would show up now.
    let (s, _, body) = send(
        http::Method::POST,
        &format!("{}/t/abuse/after", relay.base),
        &[],
        "still here",
    )
    .await;
    assert_eq!(s, http::StatusCode::OK);
    assert_eq!(body.as_ref(), b"ok");
    let last = app.seen().pop().unwrap();
    assert_eq!(last.target(), "/after");
    assert_eq!(last.body, b"still here");
    assert!(victim_app.seen().is_empty());
    println!("corpus: {} cases passed", cases.len());
}
