//! Automatic TLS against a real ACME CA: Pebble (Debian's `pebble`
//! package, which `test.sh` installs) with its mock DNS
//! (`pebble-challtestsrv`) answering 127.0.0.1 for every name. The
//! challenge is real: Pebble connects to the relay's TLS port and checks
//! the TLS-ALPN-01 answer (no `PEBBLE_VA_ALWAYS_VALID`).
//!
//! The relay gets its domain's certificate at start, a tunnel host's once
//! the tunnel's agent connects (never for a random host), serves them by
//! SNI, keeps them 0600, and renews them: Pebble issues 20-second
//! certificates here, so renewal is seen within the test.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ports::PortReservation;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use whtunnel::agent::{ConnectionStatus, ListenConfig, Listener, RelayChoice};
use whtunnel::relay::acme::{AcmeConfig, CertManager};

const DOMAIN: &str = "hooks.example.com";
/// Lifetime of the certificates Pebble issues in this test.
const VALIDITY_SECS: u64 = 20;

struct Pebble {
    _pebble: Child,
    _dns: Child,
    _ports: Vec<PortReservation>,
    directory: String,
    management: SocketAddr,
    /// The CA of Pebble's own HTTPS (made here), for `--acme-ca-cert`.
    https_ca: PathBuf,
}

fn require_pebble() {
    let found = std::process::Command::new("pebble")
        .arg("-h")
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "pebble is not installed: run ./test.sh (it installs Debian's pebble package)"
    );
}

/// Starts Pebble (validating on `tls_port`) and its mock DNS.
async fn start_pebble(dir: &Path, tls_port: u16) -> Pebble {
    require_pebble();
    // Pebble's own HTTPS certificate, from a CA made here.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    write_file(&dir.join("pebble-ca.pem"), &ca.pem());
    write_file(&dir.join("pebble-cert.pem"), &cert.pem());
    write_file(&dir.join("pebble-key.pem"), &key.serialize_pem());

    let (api, mgmt, http01, dns, dns_mgmt) = (
        PortReservation::new(),
        PortReservation::new(),
        PortReservation::new(),
        PortReservation::new(),
        PortReservation::new(),
    );
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": api.addr.to_string(),
            "managementListenAddress": mgmt.addr.to_string(),
            "certificate": dir.join("pebble-cert.pem"),
            "privateKey": dir.join("pebble-key.pem"),
            "httpPort": http01.addr.port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECS,
        }
    });
    write_file(&dir.join("pebble.json"), &config.to_string());
    let dns_child = Command::new("pebble-challtestsrv")
        .args(["-management", &dns_mgmt.addr.to_string()])
        .args(["-dns01", &dns.addr.to_string()])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &dns.addr.to_string()])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(api.addr).await.is_err() {
        assert!(Instant::now() < deadline, "pebble did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Pebble {
        _pebble: pebble,
        _dns: dns_child,
        directory: format!("https://{}/dir", api.addr),
        management: mgmt.addr,
        https_ca: dir.join("pebble-ca.pem"),
        _ports: vec![api, mgmt, http01, dns, dns_mgmt],
    }
}

/// One HTTP/1.1 request over TLS to `addr` with SNI `sni`; returns the
/// status, body and the certificate the server presented.
async fn https(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    req: http::Request<Full<Bytes>>,
) -> Result<(u16, Bytes, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body, leaf))
}

fn client_trusting(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(whtunnel::tunnel::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    // Every handshake in full: a resumed session reports the certificate
    // of the session it resumed, not the one the relay serves now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Pebble's issuing root, from its management API.
async fn issuing_root(pebble: &Pebble) -> CertificateDer<'static> {
    let ca = CertificateDer::from_pem_file(&pebble.https_ca).unwrap();
    let req = http::Request::get("/roots/0")
        .header("host", pebble.management.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body, _) = https(client_trusting(&[ca]), pebble.management, "127.0.0.1", req)
        .await
        .unwrap();
    assert_eq!(status, 200);
    CertificateDer::from_pem_slice(&body).unwrap()
}

/// Verifies the relay's certificate as if `127.0.0.1` were `hooks.example.com`
/// (what `curl --resolve` does): the agent dials the IP, and the
/// certificate must still be a valid one for the domain from Pebble's root.
#[derive(Debug)]
struct ResolveAs {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ResolveAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn agent_tls(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        whtunnel::tunnel::tls::provider(),
    )
    .build()
    .unwrap();
    let verifier = ResolveAs {
        inner,
        name: ServerName::try_from(DOMAIN).unwrap(),
    };
    Arc::new(
        rustls::ClientConfig::builder_with_provider(whtunnel::tunnel::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    )
}

async fn wait_for_cert(acme: &CertManager, host: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !acme.expiries().iter().any(|(h, _)| h == host) {
        assert!(
            Instant::now() < deadline,
            "no certificate for {host} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn not_after(cert: &CertificateDer<'_>) -> i64 {
    let (_, c) = x509_parser::parse_x509_certificate(cert).unwrap();
    c.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_pebble_are_served_by_sni_and_renewed() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("whtunnel=warn")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let relay_port = PortReservation::new();
    let pebble = start_pebble(dir.path(), relay_port.addr.port()).await;

    let mut acme = AcmeConfig::new(
        pebble.directory.clone(),
        DOMAIN.into(),
        &dir.path().join("relay"),
    );
    acme.ca_cert = Some(pebble.https_ca.clone());
    acme.email = Some("ops@example.com".into());
    // Renew with 15 s of the 20 left: about every 5 s.
    acme.renew_before = Duration::from_secs(15);
    acme.check_every = Duration::from_millis(500);
    let manager = CertManager::new(acme).unwrap();
    let mut config = relay_config(&relay_port.addr.to_string());
    config.domain = Some(DOMAIN.into());
    config.acme = Some(manager.clone());
    let relay = start_relay(config).await;
    assert!(relay.base.starts_with("https://"));

    // The domain's own certificate at start-up.
    wait_for_cert(&manager, DOMAIN, Duration::from_secs(30)).await;
    let root = issuing_root(&pebble).await;

    // An agent (dialing 127.0.0.1, verifying the domain's certificate).
    let app = App::start().await;
    let agent_dir = tempfile::tempdir().unwrap();
    let mut lc = ListenConfig::new(
        app.addr.to_string().parse().unwrap(),
        "alpha",
        agent_dir.path().to_path_buf(),
    );
    lc.relay = RelayChoice::Remote {
        url: format!("https://127.0.0.1:{}", relay.addr.port())
            .parse()
            .unwrap(),
        token: TOKEN.into(),
        tls: agent_tls(&root),
    };
    let listener = Listener::bind(lc).await.unwrap();
    let mut status = listener.status();
    let stop = CancellationToken::new();
    let _agent = tokio::spawn(listener.run(stop.clone()));
    let public_url = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ConnectionStatus::Connected { public_url, .. } = &*status.borrow_and_update() {
                return public_url.clone();
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("agent connected");
    let host = format!("alpha.{DOMAIN}");
    assert_eq!(public_url, format!("https://{host}:{}", relay.addr.port()));

    // The tunnel host's certificate follows; a sender trusting only
    // Pebble's root posts to https://alpha.hooks.example.com.
    wait_for_cert(&manager, &host, Duration::from_secs(30)).await;
    let sender_tls = client_trusting(std::slice::from_ref(&root));
    let post = |path: &str| {
        http::Request::post(path)
            .header("host", format!("{host}:{}", relay.addr.port()))
            .body(Full::new(Bytes::from_static(b"{\"paid\":true}")))
            .unwrap()
    };
    let (status, body, first) = https(sender_tls.clone(), relay.addr, &host, post("/hook?x=1"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body.as_ref(), b"{\"paid\":true}");
    assert_eq!(app.seen()[0].uri, "/hook?x=1");

    // A random host: no certificate served, and none ordered.
    let random = format!("random.{DOMAIN}");
    let refused = https(sender_tls.clone(), relay.addr, &random, post("/")).await;
    assert!(refused.is_err(), "a handshake for a random host fails");
    let apex_req = http::Request::post("/x")
        .header("host", format!("ghost.{DOMAIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = https(sender_tls.clone(), relay.addr, DOMAIN, apex_req)
        .await
        .unwrap();
    assert_eq!(status, 404, "an unknown tunnel host");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let left = not_after(&first) - now;
    assert!(
        left <= VALIDITY_SECS as i64,
        "Pebble issued a certificate with {left} s left, not {VALIDITY_SECS} s"
    );
    // Renewal: a new certificate (later notAfter) is served for the host.
    let deadline = Instant::now() + Duration::from_secs(45);
    let renewed = loop {
        assert!(Instant::now() < deadline, "no renewed certificate served");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _, leaf) = https(sender_tls.clone(), relay.addr, &host, post("/again"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        if leaf != first {
            break leaf;
        }
    };
    assert!(not_after(&renewed) > not_after(&first));

    // Never an order, nor a file, for the hosts nobody holds.
    let hosts: Vec<String> = manager.expiries().into_iter().map(|(h, _)| h).collect();
    assert_eq!(hosts, [host.clone(), DOMAIN.to_string()]);
    let store = dir.path().join("relay/acme");
    let mut files: Vec<String> = std::fs::read_dir(store.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, [format!("{host}.pem"), format!("{DOMAIN}.pem")]);

    // Account and certificates are the owner's only.
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("account.json")), 0o600);
    for f in &files {
        assert_eq!(mode(&store.join("certs").join(f)), 0o600, "{f}");
    }
    stop.cancel();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_command_gets_its_certificate_with_the_acme_flags() {
    let dir = tempfile::tempdir().unwrap();
    let relay_port = PortReservation::new();
    let pebble = start_pebble(dir.path(), relay_port.addr.port()).await;
    let data = dir.path().join("relay");
    let mut relay = common::process::Spawn::relay(&data)
        .args(["--listen", &relay_port.addr.to_string()])
        .args(["--token", "acme-flags-token", "--domain", DOMAIN])
        .args(["--acme-email", "ops@example.com"])
        .args(["--acme-directory", &pebble.directory])
        .args(["--acme-ca-cert", pebble.https_ca.to_str().unwrap()])
        .args(["--admin-listen", "0"])
        .start()
        .await;
    let admin_line = relay.next_line().await;
    let admin = admin_line
        .strip_prefix("admin endpoint on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("admin line: {admin_line}"))
        .to_string();
    let cert = data.join("acme/certs").join(format!("{DOMAIN}.pem"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cert.exists() {
        assert!(
            Instant::now() < deadline,
            "no certificate file for {DOMAIN}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode(&cert), 0o600);
    assert_eq!(mode(&data.join("acme/account.json")), 0o600);
    // Served to a client that trusts only Pebble's root.
    let root = issuing_root(&pebble).await;
    let req = http::Request::get("/_whtunnel/health")
        .header("host", DOMAIN)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, served) = https(client_trusting(&[root]), relay_port.addr, DOMAIN, req)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // /metrics gives the certificate's notAfter, as the served one has it.
    let (s, _, body) = send(
        http::Method::GET,
        &format!("http://{admin}/metrics"),
        &[],
        "",
    )
    .await;
    assert_eq!(s, http::StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let line = format!("whtunnel_certificate_expiry_timestamp_seconds{{host=\"{DOMAIN}\"}} ");
    let value: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no expiry gauge for {DOMAIN} in:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(value, not_after(&served));
    drop(relay);
}
