//! Certificate problems on the agent's `wss://` link are final: the agent
//! stops with one line saying what is wrong and how to make a usable
//! certificate, instead of retrying forever. A self-signed certificate
//! given with `--ca-cert` (what `openssl req -x509` makes: CA:TRUE) is
//! pinned exactly and accepted.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::pki::{ca_signed, tls_relay, LOCAL};
use common::process::whtunnel;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A self-signed certificate with CA:TRUE basic constraints, as a default
/// `openssl req -x509` makes: writes `<stem>.pem` and `<stem>-key.pem`.
fn self_signed_ca_true(dir: &Path, stem: &str) {
    let mut params = CertificateParams::new(LOCAL.map(String::from).to_vec()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    write_file(&dir.join(format!("{stem}.pem")), &cert.pem());
    write_file(&dir.join(format!("{stem}-key.pem")), &key.serialize_pem());
}

/// Starts an agent that trusts `ca` and returns its refusal, checking that
/// it was final (the agent task ended with an error).
async fn refusal(relay: &RelayHandle, app: &App, ca: Option<&Path>) -> String {
    let mut opts = AgentOptions::new("secure", app);
    opts.ca = ca.map(Path::to_path_buf);
    let base = format!("https://localhost:{}", relay.addr.port());
    let mut agent = start_agent(&base, opts).await;
    let reason = agent
        .public_url
        .strip_prefix("refused: ")
        .unwrap_or_else(|| panic!("expected a refusal, got {}", agent.public_url))
        .to_string();
    let ended = tokio::time::timeout(Duration::from_secs(2), &mut agent.task)
        .await
        .expect("a refused agent stops")
        .unwrap();
    assert!(ended.is_err());
    assert_eq!(reason.lines().count(), 1, "{reason}");
    assert!(reason.contains("--ca-cert"), "says how to fix: {reason}");
    assert!(reason.contains("openssl req -x509"), "{reason}");
    reason
}

#[tokio::test]
async fn openssl_style_self_signed_cert_is_pinned_with_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    self_signed_ca_true(dir.path(), "self");
    let app = App::start().await;
    let relay = tls_relay(dir.path(), "self").await;
    let base = format!("https://localhost:{}", relay.addr.port());
    let mut opts = AgentOptions::new("secure", &app);
    opts.ca = Some(dir.path().join("self.pem"));
    let agent = start_agent(&base, opts).await;
    assert_eq!(agent.public_url, format!("{base}/t/secure"));

    // A webhook over HTTPS reaches the app through the pinned link.
    let client_config =
        whtunnel::tunnel::tls::client_config(Some(&dir.path().join("self.pem"))).unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&client_config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/t/secure/paid")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    assert_eq!(app.seen()[0].uri, "/paid");
}

#[tokio::test]
async fn untrusted_certificates_stop_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    self_signed_ca_true(dir.path(), "self");
    self_signed_ca_true(dir.path(), "other");
    let app = App::start().await;
    let relay = tls_relay(dir.path(), "self").await;

    // No --ca-cert at all.
    let reason = refusal(&relay, &app, None).await;
    assert!(
        reason.contains("TLS certificate for localhost is a CA certificate"),
        "{reason}"
    );
    // Another self-signed certificate: pinning is exact, not a bypass.
    let reason = refusal(&relay, &app, Some(&dir.path().join("other.pem"))).await;
    assert!(reason.contains("is a CA certificate"), "{reason}");
    relay.stop().await;
    // A proper server certificate from a CA the agent was not given.
    ca_signed(dir.path(), "leaf", &LOCAL, false);
    let relay = tls_relay(dir.path(), "leaf").await;
    let reason = refusal(&relay, &app, None).await;
    assert!(
        reason.contains("TLS certificate for localhost is not signed by a CA this agent trusts"),
        "{reason}"
    );
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn wrong_name_and_ca_as_leaf_are_explained() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    ca_signed(dir.path(), "leaf", &["relay.example.net"], false);
    let relay = tls_relay(dir.path(), "leaf").await;
    let reason = refusal(&relay, &app, Some(&dir.path().join("ca.pem"))).await;
    assert!(
        reason.contains("is not valid for the name localhost"),
        "{reason}"
    );
    relay.stop().await;

    let dir = tempfile::tempdir().unwrap();
    ca_signed(dir.path(), "leaf", &LOCAL, true);
    let relay = tls_relay(dir.path(), "leaf").await;
    let reason = refusal(&relay, &app, Some(&dir.path().join("ca.pem"))).await;
    assert!(reason.contains("is a CA certificate"), "{reason}");
}

#[tokio::test]
async fn listen_exits_with_one_line_on_a_certificate_error() {
    let dir = tempfile::tempdir().unwrap();
    self_signed_ca_true(dir.path(), "self");
    let app = App::start().await;
    let relay = tls_relay(dir.path(), "self").await;
    let relay_url = format!("https://localhost:{}", relay.addr.port());
    let data = dir.path().join("agent");
    let started = std::time::Instant::now();
    let target = app.addr.to_string();
    let args = [
        "listen",
        &target,
        "--no-tui",
        "--data-dir",
        data.to_str().unwrap(),
        "--relay",
        &relay_url,
        "--token",
        TOKEN,
    ];
    let run = whtunnel(&args);
    // An agent that retried forever would never exit.
    let (code, out, err) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("listen exits on a certificate error");
    assert_ne!(code, 0, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("is a CA certificate"), "{err}");
    assert!(!out.contains("Forwarding"), "{out}");
}
