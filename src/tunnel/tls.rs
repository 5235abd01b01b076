//! TLS configuration with rustls and the `ring` provider. The provider is
//! passed explicitly to every config, so no process-wide default is needed
//! and nothing can panic for want of one.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors loading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {path}: {source}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file held no certificate.
    #[error("{0} contains no certificate")]
    NoCertificate(String),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider whtunnel uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.display().to_string(),
        source,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Server config for the relay's HTTPS listener from PEM files. Offers
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client config for the agent's `wss://` link: webpki and system roots,
/// plus `extra_ca` (for a relay with its own CA or certificate).
///
/// Every certificate in `extra_ca` is also *pinned*: a relay presenting
/// exactly one of them (byte for byte) as its end-entity certificate is
/// accepted even when path validation refuses it, which is what a
/// self-signed `openssl req -x509` certificate (a CA certificate used as a
/// server certificate) needs. The handshake signature is still checked
/// against that certificate's key, so only the holder of its private key
/// passes; nothing else is relaxed.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // System roots are a convenience; a machine without any still works.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let mut pinned = Vec::new();
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert.clone())?;
            pinned.push(cert);
        }
    }
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinningVerifier { webpki, pinned }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Web PKI verification, plus exact-certificate pins (see [`client_config`]).
#[derive(Debug)]
struct PinningVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(ok) => Ok(ok),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// How to make a certificate an agent accepts, said after every
/// certificate problem.
const MAKE_A_CERTIFICATE: &str = "give the agent the relay's certificate or its CA with \
--ca-cert FILE (a self-signed certificate given there is pinned exactly), or serve one from a \
CA: `mkcert HOST`, or `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
-days 365 -subj /CN=HOST -addext subjectAltName=DNS:HOST -keyout key.pem -out cert.pem` \
then --ca-cert cert.pem; or let the relay get one with --acme-email";

/// When a TLS handshake failed because the relay's certificate is not
/// acceptable, one line saying what is wrong and how to fix it. `None` for
/// other failures (network, protocol), which are worth retrying.
pub fn certificate_problem(err: &std::io::Error, host: &str) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(e) = err.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    let what = match e {
        C::UnknownIssuer => "is not signed by a CA this agent trusts".to_string(),
        C::Other(o)
            if matches!(
                o.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            "is a CA certificate (basicConstraints CA:TRUE, what a plain \
            `openssl req -x509` makes) used as a server certificate, and not the very \
            certificate given with --ca-cert (which would pin it)"
                .to_string()
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("is not valid for the name {host} (its subjectAltName must list it)")
        }
        C::Expired | C::ExpiredContext { .. } => "has expired".to_string(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "is not valid yet (check the clocks)".to_string()
        }
        C::Revoked => "is revoked".to_string(),
        other => format!("was refused ({other:?})"),
    };
    Some(format!(
        "the relay's TLS certificate for {host} {what}: {MAKE_A_CERTIFICATE}"
    ))
}
