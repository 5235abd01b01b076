//! TLS end to end: an HTTPS public side and a wss:// agent link, both
//! trusting a CA made in the test.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::pki::{ca_signed, tls_relay, LOCAL};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[tokio::test]
async fn https_public_side_and_wss_agent_link() {
    let dir = tempfile::tempdir().unwrap();
    ca_signed(dir.path(), "cert", &LOCAL, false);
    let app = App::start().await;
    let relay = tls_relay(dir.path(), "cert").await;
    assert!(relay.base.starts_with("https://"), "{}", relay.base);
    let base = format!("https://localhost:{}", relay.addr.port());

    // Without the CA the agent cannot connect (and keeps retrying, not refused).
    let mut opts = AgentOptions::new("secure", &app);
    opts.ca = Some(dir.path().join("ca.pem"));
    let agent = start_agent(&base, opts).await;
    assert_eq!(agent.public_url, format!("{base}/t/secure"));

    // A sender over HTTPS.
    let client_config =
        whtunnel::tunnel::tls::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&client_config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/t/secure/paid?x=1")
        .header("host", format!("localhost:{}", relay.addr.port()))
        .body(Full::new(Bytes::from_static(
            b"{\"type\":\"invoice.paid\"}",
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"{\"type\":\"invoice.paid\"}");
    let seen = app.seen();
    assert_eq!(seen[0].uri, "/paid?x=1");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn an_untrusted_relay_certificate_is_not_accepted() {
    let dir = tempfile::tempdir().unwrap();
    ca_signed(dir.path(), "cert", &LOCAL, false);
    let relay = tls_relay(dir.path(), "cert").await;
    let agent_config = whtunnel::agent::AgentConfig {
        relay: format!("https://localhost:{}", relay.addr.port())
            .parse()
            .unwrap(),
        more_relays: Vec::new(),
        token: TOKEN.into(),
        name: "untrusted".into(),
        takeover: false,
        retry_taken: false,
        offline: None,
        hold_concurrency: None,
        agent_id: None,
        tls: whtunnel::tunnel::tls::client_config(None).unwrap(),
    };
    // A certificate problem is a refusal (final), not a network failure.
    let err = match whtunnel::agent::connect::connect(&agent_config).await {
        Ok(_) => panic!("connected to a relay with an unknown CA"),
        Err(whtunnel::agent::connect::ConnectError::Refused(e)) => e,
        Err(e) => panic!("not final: {e}"),
    };
    assert!(
        err.contains("TLS certificate for localhost is not signed by a CA this agent trusts"),
        "{err}"
    );
}
