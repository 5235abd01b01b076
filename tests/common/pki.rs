//! Certificates made in the test (rcgen) and a relay serving them.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use super::{relay_config, start_relay, write_file, RelayHandle};

/// The names a loopback relay's certificate is for.
pub const LOCAL: [&str; 2] = ["localhost", "127.0.0.1"];

/// A CA (`ca.pem`) and a server certificate from it for `names`, CA:TRUE
/// or not (`<stem>.pem`, `<stem>-key.pem`).
pub fn ca_signed(dir: &Path, stem: &str, names: &[&str], leaf_is_ca: bool) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if leaf_is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let cert = params.signed_by(&key, &ca).unwrap();
    write_file(&dir.join("ca.pem"), &ca.pem());
    write_file(&dir.join(format!("{stem}.pem")), &cert.pem());
    write_file(&dir.join(format!("{stem}-key.pem")), &key.serialize_pem());
}

/// An in-process relay serving HTTPS and `wss://` with `<stem>.pem` and
/// `<stem>-key.pem` from `dir`.
pub async fn tls_relay(dir: &Path, stem: &str) -> RelayHandle {
    let mut config = relay_config("127.0.0.1:0");
    config.tls = Some(
        whtunnel::tunnel::tls::server_config(
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}-key.pem")),
        )
        .unwrap(),
    );
    start_relay(config).await
}
