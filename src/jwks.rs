//! Fetching a `[[webhook]]` rule's `jwks` URL for the `jwt` scheme: the
//! I/O behind [`crate::verify::KeySource`]. Verification never waits for
//! it: fetches run in the background on the runtime that created the
//! fetcher, and until the first one succeeds a verdict is `unchecked` with
//! the reason ("jwks not fetched yet", or the error).
//!
//! HTTPS only (rustls, webpki roots), except `http://` to a loopback host
//! so tests and local key servers can serve it. The keys are kept for
//! [`JWKS_TTL`] and fetched again sooner when a token names a `kid` they
//! lack (at most every [`JWKS_MIN_REFETCH`]); each fetch is bounded in time
//! ([`JWKS_FETCH_TIMEOUT`]) and size ([`JWKS_MAX_BYTES`]). Redirects are not
//! followed.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::units::{JWKS_FETCH_TIMEOUT, JWKS_MAX_BYTES, JWKS_MIN_REFETCH, JWKS_TTL};
use crate::verify::KeySource;

/// A JWKS URL's keys, fetched in the background. Cheap to clone.
#[derive(Clone)]
pub struct JwksFetcher {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    runtime: Option<tokio::runtime::Handle>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<JwkSet>>,
    fetched_at: Option<Instant>,
    error: Option<String>,
    started_at: Option<Instant>,
    in_flight: bool,
}

impl std::fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFetcher")
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}

impl JwksFetcher {
    /// A fetcher for `url`; the first fetch starts at once when called on a
    /// tokio runtime (later fetches run there too). Off a runtime nothing is
    /// ever fetched and verdicts say so.
    pub fn start(url: &str) -> Self {
        let me = Self {
            shared: Arc::new(Shared {
                url: url.to_string(),
                runtime: tokio::runtime::Handle::try_current().ok(),
                state: Mutex::new(State::default()),
            }),
        };
        me.fetch_unless_recent(None);
        me
    }

    /// Starts a fetch unless one is running or one started within
    /// `min_gap`. True when one started.
    fn fetch_unless_recent(&self, min_gap: Option<std::time::Duration>) -> bool {
        let Some(rt) = &self.shared.runtime else {
            return false;
        };
        {
            let mut st = self.shared.state.lock();
            let recent = match (st.started_at, min_gap) {
                (Some(t), Some(gap)) => t.elapsed() < gap,
                _ => false,
            };
            if st.in_flight || recent {
                return false;
            }
            st.in_flight = true;
            st.started_at = Some(Instant::now());
        }
        let shared = self.shared.clone();
        rt.spawn(async move {
            let got = tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch(&shared.url)).await;
            let got = got.unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}s",
                    JWKS_FETCH_TIMEOUT.as_secs()
                ))
            });
            let mut st = shared.state.lock();
            st.in_flight = false;
            match got {
                Ok(keys) => {
                    st.keys = Some(Arc::new(keys));
                    st.fetched_at = Some(Instant::now());
                    st.error = None;
                }
                Err(e) => {
                    tracing::warn!(url = %shared.url, "jwks fetch failed: {e}");
                    st.error = Some(e);
                }
            }
        });
        true
    }
}

impl KeySource for JwksFetcher {
    fn keys(&self) -> Result<Arc<JwkSet>, String> {
        let (keys, stale, error) = {
            let st = self.shared.state.lock();
            let stale = st.fetched_at.is_none_or(|t| t.elapsed() >= JWKS_TTL);
            (st.keys.clone(), stale, st.error.clone())
        };
        if stale {
            // Old keys serve while new ones are fetched.
            self.fetch_unless_recent(Some(JWKS_MIN_REFETCH));
        }
        match (keys, error) {
            (Some(k), _) => Ok(k),
            (None, Some(e)) => Err(format!(
                "jwks could not be fetched from {}: {e}",
                self.shared.url
            )),
            (None, None) => Err(format!("jwks not fetched yet from {}", self.shared.url)),
        }
    }

    fn unknown_kid(&self) -> bool {
        self.fetch_unless_recent(Some(JWKS_MIN_REFETCH))
    }
}

/// Whether `url` may be fetched: `https://`, or `http://` to a loopback
/// host. The error says what to use instead.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "{url}: keys are fetched over https:// (http:// only from a loopback host)"
        )),
        _ => Err(format!("{url}: a jwks URL starts with https://")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One GET of the JWKS, parsed.
async fn fetch(url: &str) -> Result<JwkSet, String> {
    check_url(url)?;
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().unwrap_or_default().to_string();
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let body = if https {
        let name = rustls_pki_types::ServerName::try_from(bare.clone())
            .map_err(|e| format!("bad host name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        get(tls, &uri, &host).await?
    } else {
        get(tcp, &uri, &host).await?
    };
    serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
}

/// rustls with the webpki roots, built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            rustls::ClientConfig::builder_with_provider(crate::tunnel::tls::provider())
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS configuration: {e}"))
        })
        .clone()
}

async fn get<S>(io: S, uri: &http::Uri, host: &str) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("whtunnel/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("the key server answered {}", resp.status()));
    }
    Limited::new(resp.into_body(), JWKS_MAX_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the JWKS is over {} KiB", JWKS_MAX_BYTES / 1024)
            } else {
                format!("reading the JWKS: {e}")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{check, Provider, Reason, RequestView, Rule, Verdict};
    use base64::Engine as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};

    /// A local key server: answers GETs with `doc` (or `status`), counting them.
    struct KeyServer {
        url: String,
        doc: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
    }

    async fn key_server() -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let doc = Arc::new(Mutex::new((200, String::new())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = d.lock().clone();
                        async move {
                            let mut r =
                                http::Response::new(http_body_util::Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        KeyServer { url, doc, hits }
    }

    fn key(n: u8) -> p256::SecretKey {
        p256::SecretKey::from_slice(&[n; 32]).unwrap()
    }

    fn jwk(kid: &str, sk: &p256::SecretKey) -> serde_json::Value {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let point = sk.public_key().to_encoded_point(false);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap())})
    }

    fn token(kid: &str, sk: &p256::SecretKey) -> String {
        use p256::pkcs8::EncodePrivateKey as _;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = serde_json::json!({"jti": "1", "events": {"urn:x:e": {}}});
        let der = sk.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()),
        )
        .unwrap()
    }

    fn judge(rule: &Rule, body: &str) -> (Verdict, Option<Reason>) {
        let h = vec![("content-type".to_string(), b"application/jwt".to_vec())];
        let req = RequestView::new("POST", "https://x/", &h, body.as_bytes());
        let c = check(rule, &req, SystemTime::now()).unwrap();
        (c.verdict, c.reason)
    }

    fn rule(fetcher: &JwksFetcher) -> Rule {
        let mut r = Rule::for_provider(Provider::Moneyhub);
        r.jwks_source = Some(Arc::new(fetcher.clone()));
        r
    }

    /// Polls until the fetcher has no fetch in flight.
    async fn settled(f: &JwksFetcher) {
        for _ in 0..500 {
            if !f.shared.state.lock().in_flight {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fetch did not end within 5 s");
    }

    #[tokio::test]
    async fn keys_are_fetched_in_the_background_and_refetched_for_a_new_kid() {
        let server = key_server().await;
        let (k1, k2, k3) = (key(3), key(4), key(5));
        *server.doc.lock() = (
            200,
            serde_json::json!({"keys": [jwk("k1", &k1)]}).to_string(),
        );
        let fetcher = JwksFetcher::start(&server.url);
        let rule = rule(&fetcher);
        // Judged at once, never waiting: unchecked until the keys are in.
        let (v, why) = judge(&rule, &token("k1", &k1));
        assert_eq!(v, Verdict::Unchecked);
        assert!(why
            .unwrap()
            .to_string()
            .contains("jwks not fetched yet from http://127.0.0.1:"));
        settled(&fetcher).await;
        assert_eq!(judge(&rule, &token("k1", &k1)), (Verdict::Valid, None));
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "cached, not fetched per request"
        );

        // The sender rotates to k2: the first k2 token starts a fetch (and
        // says so), the next is judged by the new keys.
        *server.doc.lock() = (
            200,
            serde_json::json!({"keys": [jwk("k1", &k1), jwk("k2", &k2)]}).to_string(),
        );
        // The first fetch was just now: a refetch for a new kid waits out
        // the minimum gap, so pretend it was long ago.
        fetcher.shared.state.lock().started_at = Some(Instant::now() - JWKS_MIN_REFETCH);
        let (v, why) = judge(&rule, &token("k2", &k2));
        assert_eq!(v, Verdict::Unchecked);
        assert!(why.unwrap().to_string().contains("kid `k2`"));
        settled(&fetcher).await;
        assert_eq!(judge(&rule, &token("k2", &k2)), (Verdict::Valid, None));
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);

        // A kid nobody published, right after a fetch: invalid, and no
        // new fetch (a sender cannot make whtunnel hammer the key server).
        let (v, why) = judge(&rule, &token("k3", &k3));
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(
            why,
            Some(Reason::UnknownKey {
                kid: Some("k3".into())
            })
        );
        // A token signed with another key under a known kid: a mismatch.
        let (v, _) = judge(&rule, &token("k1", &k3));
        assert_eq!(v, Verdict::Invalid);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn fetch_errors_and_oversized_documents_are_the_reason() {
        let server = key_server().await;
        *server.doc.lock() = (500, "down".into());
        let fetcher = JwksFetcher::start(&server.url);
        settled(&fetcher).await;
        let (v, why) = judge(&rule(&fetcher), &token("k1", &key(3)));
        assert_eq!(v, Verdict::Unchecked);
        let why = why.unwrap().to_string();
        assert!(
            why.contains("jwks could not be fetched from http://127.0.0.1:"),
            "{why}"
        );
        assert!(why.contains("answered 500"), "{why}");

        *server.doc.lock() = (
            200,
            format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(300 * 1024)),
        );
        let big = JwksFetcher::start(&server.url);
        settled(&big).await;
        let why = big.keys().unwrap_err();
        assert!(why.contains("over 256 KiB"), "{why}");

        *server.doc.lock() = (200, "<html>".into());
        let junk = JwksFetcher::start(&server.url);
        settled(&junk).await;
        assert!(junk.keys().unwrap_err().contains("not a JWKS"));
    }

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(check_url("https://id.example/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:9/jwks").is_ok());
        assert!(check_url("http://[::1]:9/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        let e = check_url("http://id.example/jwks").unwrap_err();
        assert!(e.contains("https://"), "{e}");
        assert!(check_url("ftp://id.example/jwks").is_err());
        // Off a runtime: nothing is fetched, and the verdict says why.
        let f = JwksFetcher::start("https://id.example/jwks");
        assert!(f.keys().unwrap_err().contains("not fetched yet"));
    }
}
