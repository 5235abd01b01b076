//! Automatic TLS: certificates from an ACME CA (Let's Encrypt, or Pebble in
//! tests) through `instant-acme`, answered with the TLS-ALPN-01 challenge on
//! the relay's own TLS listener, kept in the data dir and renewed in the
//! background.
//!
//! Which names get a certificate: the relay's domain at start-up, and
//! `NAME.<domain>` only once tunnel NAME is known to the relay (an agent
//! holds it: [`CertManager::want`]). The TLS handshake never starts an
//! order, so random host names cannot spend the CA's rate limits.
//!
//! [`CertManager`] is the rustls certificate resolver (by SNI; no SNI gets
//! the domain's certificate) and the owner of the background task
//! ([`CertManager::run`]). Files: `acme/account.json` and
//! `acme/certs/<host>.pem` (key + chain), all 0600 in a 0700 directory.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::{Mutex, RwLock};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Names waiting for their first order; more wait for the next check.
const QUEUE: usize = 1024;
/// One ACME HTTP exchange must finish within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest ACME response read (a certificate chain is a few KiB).
const MAX_RESPONSE: usize = 1024 * 1024;

/// How the relay talks to its ACME CA.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact address given to the CA (expiry notices), if any.
    pub email: Option<String>,
    /// Extra CA (PEM) to trust for the ACME server itself (Pebble's).
    pub ca_cert: Option<PathBuf>,
    /// The relay's domain: its own certificate, and the parent of tunnel names.
    pub domain: String,
    /// Where the account and certificates are kept (created 0700).
    pub dir: PathBuf,
    /// Renew when a certificate has less than this left (or a third of its
    /// lifetime, whichever comes first).
    pub renew_before: Duration,
    /// How often certificates are checked for renewal, and failed orders retried.
    pub check_every: Duration,
}

impl AcmeConfig {
    /// A config with the defaults of [`crate::units`], keeping its files in
    /// `data_dir/acme`.
    pub fn new(directory: String, domain: String, data_dir: &Path) -> Self {
        AcmeConfig {
            directory,
            email: None,
            ca_cert: None,
            domain,
            dir: data_dir.join("acme"),
            renew_before: crate::units::ACME_RENEW_BEFORE,
            check_every: crate::units::ACME_CHECK_EVERY,
        }
    }
}

/// What can go wrong getting certificates.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused or failed.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// A file in the data dir could not be read or written.
    #[error("ACME storage {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Anything else (bad certificate from the CA, key generation, TLS setup).
    #[error("ACME: {0}")]
    Other(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One installed certificate.
struct Issued {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Obtains, stores, renews and serves the relay's certificates.
pub struct CertManager {
    config: AcmeConfig,
    certs: RwLock<HashMap<String, Issued>>,
    /// TLS-ALPN-01 answers in progress, by host.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Every host the relay wants a certificate for: its own domain and
    /// the tunnel hosts claimed since it started.
    wanted: Mutex<HashSet<String>>,
    queue: mpsc::Sender<String>,
    queue_rx: Mutex<Option<mpsc::Receiver<String>>>,
    orders: AtomicU64,
    http_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("domain", &self.config.domain)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Opens the store (creating it 0700) and loads the certificates kept
    /// there; they are served at once and renewed when due.
    pub fn new(config: AcmeConfig) -> Result<Arc<CertManager>, AcmeError> {
        let certs_dir = config.dir.join("certs");
        make_private_dir(&config.dir)?;
        make_private_dir(&certs_dir)?;
        let http_tls = crate::tunnel::tls::client_config(config.ca_cert.as_deref())
            .map_err(|e| AcmeError::Other(format!("--acme-ca-cert: {e}")))?;
        let mut certs = HashMap::new();
        let mut wanted = HashSet::new();
        wanted.insert(config.domain.clone());
        for entry in std::fs::read_dir(&certs_dir).map_err(io_err(&certs_dir))? {
            let path = entry.map_err(io_err(&certs_dir))?.path();
            let Some(host) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            let pem = std::fs::read(&path).map_err(io_err(&path))?;
            match parse_issued(&pem) {
                // Served at once, but a tunnel host's certificate is renewed
                // only once an agent claims the name again (`want`): names
                // nobody uses any more must not keep costing CA orders.
                Ok(issued) => {
                    certs.insert(host.to_string(), issued);
                }
                Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
            }
        }
        let (queue, queue_rx) = mpsc::channel(QUEUE);
        Ok(Arc::new(CertManager {
            config,
            certs: RwLock::new(certs),
            challenges: RwLock::new(HashMap::new()),
            wanted: Mutex::new(wanted),
            queue,
            queue_rx: Mutex::new(Some(queue_rx)),
            orders: AtomicU64::new(0),
            http_tls,
        }))
    }

    /// The relay's TLS server config: certificates by SNI from this
    /// manager, HTTP/2 and HTTP/1.1, and the TLS-ALPN-01 protocol.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, AcmeError> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(crate::tunnel::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| AcmeError::Other(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// Tunnel `name` is known to the relay: get `NAME.<domain>` a
    /// certificate if it has none. Cheap when it has one.
    pub fn want(&self, name: &str) {
        let host = format!("{name}.{}", self.config.domain);
        if self.wanted.lock().insert(host.clone()) {
            // A full queue is fine: the next check picks the host up.
            let _ = self.queue.try_send(host);
        }
    }

    /// Each certificate's host and expiry (notAfter), for metrics.
    pub fn expiries(&self) -> Vec<(String, SystemTime)> {
        let mut v: Vec<_> = self
            .certs
            .read()
            .iter()
            .map(|(h, i)| (h.clone(), i.not_after))
            .collect();
        v.sort();
        v
    }

    /// ACME orders placed since start (new certificates and renewals).
    pub fn orders_placed(&self) -> u64 {
        self.orders.load(Ordering::Relaxed)
    }

    /// Gets the missing certificates and renews the due ones until `stop`:
    /// the account first (kept in the store), then the domain's certificate,
    /// then tunnel hosts as [`want`](Self::want) names them, and a check
    /// every [`AcmeConfig::check_every`]. Failures are logged and retried at
    /// the next check.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut queue) = self.queue_rx.lock().take() else {
            return;
        };
        let account = loop {
            match self.account().await {
                Ok(a) => break a,
                Err(e) => tracing::warn!("ACME account at {}: {e}", self.config.directory),
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.check_every) => {}
                () = stop.cancelled() => return,
            }
        };
        let mut tick = tokio::time::interval(self.config.check_every);
        loop {
            let hosts = tokio::select! {
                () = stop.cancelled() => return,
                Some(host) = queue.recv() => vec![host],
                _ = tick.tick() => {
                    for host in self.prune(SystemTime::now()) {
                        tracing::info!(%host, "certificate expired with no agent using the name: deleted");
                    }
                    self.due(SystemTime::now())
                }
            };
            for host in hosts {
                if !self.needs_order(&host, SystemTime::now()) {
                    continue;
                }
                let order = self.obtain(&account, &host);
                let result = tokio::select! {
                    r = order => r,
                    () = stop.cancelled() => return,
                };
                self.challenges.write().remove(&host);
                match result {
                    Ok(not_after) => {
                        let until = chrono::DateTime::<chrono::Utc>::from(not_after);
                        tracing::info!(%host, "certificate obtained, valid until {until}");
                    }
                    Err(e) => tracing::warn!(%host, "no certificate: {e}"),
                }
            }
        }
    }

    /// Wanted hosts without a certificate or due for renewal.
    fn due(&self, now: SystemTime) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .wanted
            .lock()
            .iter()
            .filter(|h| self.needs_order(h, now))
            .cloned()
            .collect();
        // The relay's own name first.
        hosts.sort_by_key(|h| (*h != self.config.domain, h.clone()));
        hosts
    }

    /// Deletes expired certificates of hosts not wanted (no agent claimed
    /// the name since the relay started) from memory and the store;
    /// returns their hosts.
    fn prune(&self, now: SystemTime) -> Vec<String> {
        let wanted = self.wanted.lock();
        let mut certs = self.certs.write();
        let gone: Vec<String> = certs
            .iter()
            .filter(|(host, issued)| issued.not_after <= now && !wanted.contains(*host))
            .map(|(host, _)| host.clone())
            .collect();
        for host in &gone {
            certs.remove(host);
            let path = self.config.dir.join("certs").join(format!("{host}.pem"));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot delete {}: {e}", path.display());
            }
        }
        gone
    }

    fn needs_order(&self, host: &str, now: SystemTime) -> bool {
        match self.certs.read().get(host) {
            None => true,
            Some(i) => renewal_due(i.not_before, i.not_after, now, self.config.renew_before),
        }
    }

    /// The ACME account: the stored one if it is for this directory, else a
    /// new one (stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Stored {
            directory: String,
            credentials: AccountCredentials,
        }
        let path = self.config.dir.join("account.json");
        if let Ok(text) = std::fs::read(&path) {
            match serde_json::from_slice::<Stored>(&text) {
                Ok(stored) if stored.directory == self.config.directory => {
                    return Ok(Account::builder_with_http(self.http())
                        .from_credentials(stored.credentials)
                        .await?);
                }
                Ok(_) => tracing::info!("ACME directory changed: creating a new account"),
                Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
            }
        }
        let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(self.http())
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let stored = Stored {
            directory: self.config.directory.clone(),
            credentials,
        };
        let json = serde_json::to_vec(&stored).map_err(|e| AcmeError::Other(e.to_string()))?;
        write_private(&path, &json)?;
        tracing::info!("ACME account created at {}", self.config.directory);
        Ok(account)
    }

    fn http(&self) -> Box<dyn HttpClient> {
        Box::new(AcmeHttp {
            tls: self.http_tls.clone(),
        })
    }

    /// One order for `host` through TLS-ALPN-01; stores and installs the
    /// certificate. Returns its notAfter.
    async fn obtain(&self, account: &Account, host: &str) -> Result<SystemTime, AcmeError> {
        self.orders.fetch_add(1, Ordering::Relaxed);
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Other(format!(
                        "authorization for {host} is {other:?}"
                    )))
                }
            }
            let mut challenge = authz.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
                AcmeError::Other("the CA offers no tls-alpn-01 challenge".to_string())
            })?;
            let name = challenge.identifier().to_string();
            let answer =
                alpn_challenge_cert(&name, challenge.key_authorization().digest().as_ref())?;
            self.challenges.write().insert(name, answer);
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Other(format!(
                "the order for {host} ended {status:?} (is {host} pointing at this relay, port 443?)"
            )));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Other(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
            .map_err(|e| AcmeError::Other(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Other(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retries).await?;
        let pem = format!("{}{chain}", key.serialize_pem());
        let issued = parse_issued(pem.as_bytes())?;
        let not_after = issued.not_after;
        let path = self.config.dir.join("certs").join(format!("{host}.pem"));
        write_private(&path, pem.as_bytes())?;
        self.certs.write().insert(host.to_string(), issued);
        Ok(not_after)
    }
}

impl ResolvesServerCert for CertManager {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let challenge = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if challenge {
            return self.challenges.read().get(host.as_deref()?).cloned();
        }
        let host = host.unwrap_or_else(|| self.config.domain.clone());
        self.certs.read().get(&host).map(|i| i.key.clone())
    }
}

/// True when a TLS connection was made only to answer TLS-ALPN-01: it
/// carries no HTTP and is closed after the handshake.
pub fn is_challenge(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ACME_TLS_ALPN)
}

/// Whether a certificate valid from `not_before` to `not_after` should be
/// renewed at `now`: less than `renew_before` left, or less than a third
/// of its lifetime (Let's Encrypt's 90 days: renewed with 30 left).
pub fn renewal_due(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    renew_before: Duration,
) -> bool {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let left = not_after.duration_since(now).unwrap_or_default();
    left < renew_before || left < lifetime / 3
}

/// The self-signed certificate that answers TLS-ALPN-01 for `host`: its
/// acmeIdentifier extension carries the key authorization's digest.
fn alpn_challenge_cert(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let other = |e: rcgen::Error| AcmeError::Other(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(other)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(other)?;
    let cert = params.self_signed(&key).map_err(other)?;
    let key_der = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    certified_key(vec![cert.der().clone()], key_der.into())
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let signer = crate::tunnel::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| AcmeError::Other(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// A stored PEM (key, then the chain) as an installed certificate.
fn parse_issued(pem: &[u8]) -> Result<Issued, AcmeError> {
    let bad = |e: &dyn std::fmt::Display| AcmeError::Other(format!("bad certificate file: {e}"));
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(&e))?;
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let leaf = chain.first().ok_or_else(|| bad(&"no certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(&e))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let not_before = at(parsed.validity().not_before.timestamp());
    let not_after = at(parsed.validity().not_after.timestamp());
    Ok(Issued {
        key: certified_key(chain, key)?,
        not_before,
        not_after,
    })
}

fn make_private_dir(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Writes a file readable by its owner only, atomically (temp + rename).
fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // The mode applies only when the file is created.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Any byte stream an ACME request can go over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// instant-acme's HTTP client: one HTTP/1.1 connection per request over
/// the crate's own rustls config (so `--acme-ca-cert` is trusted), instead
/// of instant-acme's default client and its second TLS stack.
struct AcmeHttp {
    tls: Arc<rustls::ClientConfig>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            match tokio::time::timeout(HTTP_TIMEOUT, send(tls, req)).await {
                Ok(r) => r.map_err(instant_acme::Error::Other),
                Err(_) => Err(instant_acme::Error::Other(
                    "the ACME server did not answer in time".into(),
                )),
            }
        })
    }
}

async fn send(
    tls: Arc<rustls::ClientConfig>,
    req: http::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, BoxError> {
    use http_body_util::BodyExt;
    let uri = req.uri().clone();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("unsupported ACME URL {uri}").into()),
    };
    let authority = uri.authority().ok_or("ACME URL without a host")?.clone();
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let stream: Box<dyn Io> = if https {
        let name = rustls_pki_types::ServerName::try_from(host)?;
        Box::new(
            tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?,
        )
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    parts.uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
    parts
        .headers
        .insert(http::header::HOST, authority.as_str().parse()?);
    let resp = sender
        .send_request(http::Request::from_parts(parts, body))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_RESPONSE)
        .collect()
        .await?
        .to_bytes();
    let body = http_body_util::Full::new(body);
    Ok(BytesResponse::from(http::Response::from_parts(parts, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_a_third_or_the_margin() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let end = t0 + 90 * day;
        let margin = 30 * day;
        assert!(!renewal_due(t0, end, t0, margin));
        assert!(!renewal_due(t0, end, t0 + 59 * day, margin));
        assert!(renewal_due(t0, end, t0 + 61 * day, margin));
        assert!(renewal_due(t0, end, end + day, margin));
        // A short certificate: a third of its lifetime.
        let end = t0 + Duration::from_secs(30);
        assert!(!renewal_due(
            t0,
            end,
            t0 + Duration::from_secs(15),
            Duration::ZERO
        ));
        assert!(renewal_due(
            t0,
            end,
            t0 + Duration::from_secs(21),
            Duration::ZERO
        ));
    }

    /// Writes a self-signed certificate for `host`, valid in `year`, as
    /// the store keeps issued ones (key, then chain).
    fn store_cert(dir: &Path, host: &str, year: i32) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(year, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 12, 31);
        let cert = params.self_signed(&key).unwrap();
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        write_private(&dir.join(format!("{host}.pem")), pem.as_bytes()).unwrap();
    }

    #[test]
    fn stored_tunnel_certificates_renew_only_when_claimed_and_expire_unused() {
        let data = tempfile::tempdir().unwrap();
        let config = AcmeConfig::new(
            "https://ca.invalid/dir".into(),
            "hooks.test".into(),
            data.path(),
        );
        let certs = config.dir.join("certs");
        make_private_dir(&config.dir).unwrap();
        make_private_dir(&certs).unwrap();
        for host in ["hooks.test", "old.hooks.test", "back.hooks.test"] {
            store_cert(&certs, host, 2020);
        }
        store_cert(&certs, "fresh.hooks.test", 2999);
        let acme = CertManager::new(config).unwrap();
        let now = SystemTime::now();
        assert_eq!(acme.expiries().len(), 4, "all served at start");
        assert_eq!(
            acme.due(now),
            vec!["hooks.test".to_string()],
            "only the relay's own name"
        );
        acme.want("back");
        assert_eq!(
            acme.due(now),
            vec!["hooks.test".to_string(), "back.hooks.test".to_string()]
        );
        assert_eq!(acme.prune(now), vec!["old.hooks.test".to_string()]);
        assert!(!certs.join("old.hooks.test.pem").exists());
        let left: Vec<String> = acme.expiries().into_iter().map(|(h, _)| h).collect();
        assert_eq!(left, ["back.hooks.test", "fresh.hooks.test", "hooks.test"]);
        assert!(acme.prune(now).is_empty());
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("acme");
        make_private_dir(&sub).unwrap();
        let f = sub.join("x.pem");
        write_private(&f, b"secret").unwrap();
        write_private(&f, b"secret2").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(std::fs::read(&f).unwrap(), b"secret2");
    }
}
