//! TLS end to end: an HTTPS public side and a wss:// agent link, both
//! trusting a CA made in the test.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Writes ca.pem, cert.pem and key.pem (for localhost and 127.0.0.1).
fn make_pki(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    write_file(&dir.join("ca.pem"), &ca.pem());
    write_file(&dir.join("cert.pem"), &cert.pem());
    write_file(&dir.join("key.pem"), &key.serialize_pem());
}

#[tokio::test]
async fn https_public_side_and_wss_agent_link() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let app = App::start().await;
    let mut config = relay_config("127.0.0.1:0");
    config.tls = Some(
        whtunnel::tunnel::tls::server_config(
            &dir.path().join("cert.pem"),
            &dir.path().join("key.pem"),
        )
        .unwrap(),
    );
    let relay = start_relay(config).await;
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
    make_pki(dir.path());
    let mut config = relay_config("127.0.0.1:0");
    config.tls = Some(
        whtunnel::tunnel::tls::server_config(
            &dir.path().join("cert.pem"),
            &dir.path().join("key.pem"),
        )
        .unwrap(),
    );
    let relay = start_relay(config).await;
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
