//! Opening the agent's link: TCP, TLS for `wss://`, and the authenticated
//! websocket upgrade. A refusal from the relay is told apart from a network
//! failure, because only the latter is worth retrying.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

use crate::tunnel::protocol::{
    LinkMeta, OfflinePolicy, AGENT_PATH, HDR_AGENT_ID, HDR_DEAD, HDR_HELD, HDR_NAME, HDR_OFFLINE,
    HDR_PROTOCOL, HDR_PUBLIC_URL, HDR_TAKEOVER, PROTOCOL_VERSION,
};
use crate::tunnel::ws_io::{agent_socket, ws_config};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Any byte stream the websocket can run on (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The agent's websocket, over TCP or TLS.
pub type WsStream = WebSocketStream<Box<dyn Io>>;

/// A relay's address, as given to `--relay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
}

/// A `--relay` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid relay URL '{0}': use http(s)://host[:port] or ws(s)://host[:port]")]
pub struct RelayUrlError(String);

impl std::str::FromStr for RelayUrl {
    type Err = RelayUrlError;

    fn from_str(s: &str) -> Result<Self, RelayUrlError> {
        let err = || RelayUrlError(s.to_string());
        let uri: Uri = s.trim().parse().map_err(|_| err())?;
        let tls = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(err()),
        };
        let auth = uri.authority().ok_or_else(err)?;
        if auth.as_str().contains('@') || auth.host().is_empty() {
            return Err(err());
        }
        Ok(RelayUrl {
            tls,
            host: auth.host().trim_matches(['[', ']']).to_string(),
            port: auth.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

impl RelayUrl {
    /// A plain-HTTP relay at `addr`, such as the embedded one.
    pub fn plain(addr: std::net::SocketAddr) -> Self {
        RelayUrl {
            tls: false,
            host: addr.ip().to_string(),
            port: addr.port(),
            base_path: String::new(),
        }
    }

    /// The websocket URL of the relay's agent endpoint.
    pub fn agent_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{scheme}://{host}:{}{}{AGENT_PATH}",
            self.port, self.base_path
        )
    }

    /// The relay's host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// True for `https://` / `wss://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// How the agent reaches its relay.
#[derive(Clone)]
pub struct AgentConfig {
    /// The relay.
    pub relay: RelayUrl,
    /// More relays of the same cluster: when one cannot be reached, the
    /// next is tried at once, in turn (each host name with all its
    /// addresses, as the system resolver returns them).
    pub more_relays: Vec<RelayUrl>,
    /// The token presented to the relay.
    pub token: String,
    /// The tunnel name to hold.
    pub name: String,
    /// Take the name over from another agent holding it.
    pub takeover: bool,
    /// A 409 (the name is held by another agent of the same user) is
    /// retried instead of ending the agent.
    pub retry_taken: bool,
    /// This agent's id (kept in its data dir), so the relay lets it replace
    /// its own stale session after a network blip.
    pub agent_id: Option<String>,
    /// What the relay does with webhooks while this agent is away; `None`
    /// leaves it to the relay.
    pub offline: Option<OfflinePolicy>,
    /// Most held events the relay should deliver at once to this agent
    /// (capped by the relay); `None` leaves it to the relay.
    pub hold_concurrency: Option<u32>,
    /// TLS settings for `wss://` relays.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The relay answered and said no; do not retry.
    #[error("{0}")]
    Refused(String),
    /// The relay could not be reached or the link broke; retry.
    #[error("{0}")]
    Network(String),
}

/// An established link.
pub struct Link {
    /// The websocket.
    pub ws: WsStream,
    /// The tunnel's public URL, as the relay announced it.
    pub public_url: String,
    /// Events the relay held for this tunnel and is about to deliver.
    pub held: u64,
    /// The tunnel's events on the relay's dead-letter list.
    pub dead: u64,
    /// The request metadata the relay announced for every request on the link.
    pub meta: LinkMeta,
}

/// Opens one link to the relay.
pub async fn connect(config: &AgentConfig) -> Result<Link, ConnectError> {
    connect_to(config, &config.relay).await
}

/// Opens one link to `relay` (one of the config's relays).
pub async fn connect_to(config: &AgentConfig, relay: &RelayUrl) -> Result<Link, ConnectError> {
    let net = |what: &str, e: &dyn std::fmt::Display| {
        ConnectError::Network(format!("{what} {}:{}: {e}", relay.host, relay.port))
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((relay.host.as_str(), relay.port)),
    )
    .await
    .map_err(|_| net("timed out connecting to", &"no answer"))?
    .map_err(|e| net("cannot connect to relay", &e))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if relay.tls {
        let name = rustls_pki_types::ServerName::try_from(relay.host.clone())
            .map_err(|e| ConnectError::Refused(format!("invalid relay host name: {e}")))?;
        // The buffer goes under TLS, so that the socket itself is read in
        // large pieces: rustls asks for a few KiB at a time.
        let tls = tokio_rustls::TlsConnector::from(config.tls.clone())
            .connect(name, agent_socket(tcp))
            .await
            .map_err(
                |e| match crate::tunnel::tls::certificate_problem(&e, &relay.host) {
                    // Retrying cannot fix a certificate: the agent stops.
                    Some(problem) => ConnectError::Refused(problem),
                    None => net("TLS handshake failed with", &e),
                },
            )?;
        Box::new(tls)
    } else {
        Box::new(agent_socket(tcp))
    };

    let mut req = relay
        .agent_url()
        .into_client_request()
        .map_err(|e| ConnectError::Refused(format!("invalid relay URL: {e}")))?;
    let h = req.headers_mut();
    h.insert(HDR_PROTOCOL, HeaderValue::from(PROTOCOL_VERSION));
    h.insert(
        HDR_NAME,
        HeaderValue::from_str(&config.name)
            .map_err(|_| ConnectError::Refused("invalid tunnel name".into()))?,
    );
    if config.takeover {
        h.insert(HDR_TAKEOVER, HeaderValue::from_static("1"));
    }
    if let Some(v) = config
        .agent_id
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert(HDR_AGENT_ID, v);
    }
    if let Some(policy) = config.offline {
        h.insert(HDR_OFFLINE, policy.header_value());
    }
    if let Some(n) = config.hold_concurrency {
        h.insert(
            crate::tunnel::protocol::HDR_HOLD_CONCURRENCY,
            HeaderValue::from(n),
        );
    }
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.token)).map_err(|_| {
        ConnectError::Refused("the token contains characters not allowed in a header".into())
    })?;
    auth.set_sensitive(true);
    h.insert(header::AUTHORIZATION, auth);

    let handshake = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()));
    let (ws, resp) = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => {
            return Err(net(
                "timed out in the websocket handshake with",
                &"no answer",
            ))
        }
        Ok(Ok(pair)) => pair,
        Ok(Err(WsError::Http(resp))) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| status.to_string());
            let msg = format!("relay refused the agent ({}): {body}", status.as_u16());
            // Only answers that retrying cannot change end the agent; a 404
            // or 5xx may come from a proxy in front of a relay being deployed.
            return Err(match status {
                StatusCode::CONFLICT if config.retry_taken => ConnectError::Network(msg),
                StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::CONFLICT
                | StatusCode::BAD_REQUEST => ConnectError::Refused(msg),
                _ => ConnectError::Network(msg),
            });
        }
        Ok(Err(e)) => return Err(net("websocket handshake failed with", &e)),
    };
    let public_url = resp
        .headers()
        .get(HDR_PUBLIC_URL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("(the relay did not say; tunnel '{}')", config.name));
    let held = resp
        .headers()
        .get(HDR_HELD)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dead = resp
        .headers()
        .get(HDR_DEAD)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // A relay of this protocol version always announces it.
    let meta = LinkMeta::read(resp.headers()).map_err(|e| {
        ConnectError::Refused(format!(
            "the relay's answer to the upgrade is not understood ({e}); run the same whtunnel version on both ends"
        ))
    })?;
    Ok(Link {
        ws,
        public_url,
        held,
        dead,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let r: RelayUrl = "https://relay.example.com".parse().unwrap();
        assert_eq!(r.agent_url(), "wss://relay.example.com:443/_whtunnel/agent");
        let r: RelayUrl = "http://127.0.0.1:8787/".parse().unwrap();
        assert_eq!(r.agent_url(), "ws://127.0.0.1:8787/_whtunnel/agent");
        let r: RelayUrl = "ws://[::1]:9/base".parse().unwrap();
        assert_eq!(r.agent_url(), "ws://[::1]:9/base/_whtunnel/agent");
        let r: RelayUrl = "wss://h:1".parse().unwrap();
        assert!(r.is_tls());
        for bad in ["relay.example.com", "ftp://x", "http://", "http://u@h"] {
            assert!(bad.parse::<RelayUrl>().is_err(), "{bad}");
        }
    }
}
