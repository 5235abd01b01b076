//! Shared test harness: a real local app, an in-process relay and agent,
//! and a plain HTTP client. Everything binds 127.0.0.1 port 0.
#![allow(dead_code)]

pub mod nats;
pub mod oracle;
pub mod pki;
pub mod ports;
pub mod process;
pub mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use whtunnel::agent::{self, Capture, ConnectionStatus, ListenConfig, Listener, RelayChoice};
use whtunnel::capture::Recorder;
use whtunnel::forward::{DeadLetters, HostHeader, Target};
use whtunnel::relay::{Relay, RelayConfig, Tokens};
use whtunnel::tunnel::tls;

pub const TOKEN: &str = "test-token";

/// One request as the app saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    /// Body bytes, kept only when small (see `App`).
    pub body: Bytes,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
}

/// A local app. Behaviour is chosen by request headers:
/// `x-test-delay-ms` sleeps before answering, `x-test-hold` waits until
/// [`App::release`], `x-test-status` sets the status; it answers with the
/// request body echoed and `x-app: yes`.
pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    held: watch::Sender<bool>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const KEEP_BODY: u64 = 16 * 1024 * 1024;

async fn app_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut released: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            hasher.update(d);
            len += d.len() as u64;
            if len <= KEEP_BODY {
                kept.extend_from_slice(d);
            }
        }
    }
    let body = Bytes::from(kept);
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
        body_len: len,
        body_sha256: hasher.finalize().into(),
    });
    if parts.headers.contains_key("x-test-hold") {
        let _ = released.wait_for(|r| *r).await;
    }
    if let Some(ms) = parts
        .headers
        .get("x-test-delay-ms")
        .and_then(|v| v.to_str().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let status = parts
        .headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u16);
    let extra = parts
        .headers
        .get("x-test-respond-header")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let echo = if len > KEEP_BODY {
        Bytes::from(format!("{len}"))
    } else {
        body
    };
    let mut resp = Response::builder()
        .status(status)
        .header("x-app", "yes")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("content-type", "application/octet-stream");
    if let Some((k, v)) = extra {
        resp = resp.header(k, v);
    }
    resp.body(Full::new(echo)).unwrap()
}

impl App {
    pub async fn start() -> App {
        App::start_on(0).await
    }

    /// An app on a given loopback port (0: any). Tests use it only for a
    /// port the OS handed out earlier, e.g. to bring an app "back".
    pub async fn start_on(port: u16) -> App {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        let (held, released) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    () = st.cancelled() => return,
                };
                let s = s.clone();
                let st = st.clone();
                let released = released.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        let released = released.clone();
                        async move { Ok::<_, Infallible>(app_handle(s, released, req).await) }
                    });
                    // Stopping the app closes its open connections too, so
                    // "app down" is real even for pooled keep-alive links.
                    tokio::select! {
                        _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc) => {}
                        () = st.cancelled() => {}
                    }
                });
            }
        });
        App {
            addr,
            seen,
            stop,
            held,
        }
    }

    /// Lets every request with `x-test-hold` (waiting or still to come)
    /// be answered.
    pub fn release(&self) {
        self.held.send_replace(true);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A running relay.
pub struct RelayHandle {
    pub addr: SocketAddr,
    pub base: String,
    pub held: Option<std::sync::Arc<whtunnel::relay::HeldStore>>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RelayHandle {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub fn relay_config(addr: &str) -> RelayConfig {
    RelayConfig::new(addr.parse().unwrap(), Tokens::new([TOKEN]))
}

pub async fn start_relay(config: RelayConfig) -> RelayHandle {
    let relay = Relay::bind(config).await.unwrap();
    let addr = relay.local_addr();
    let base = relay.base_url();
    let held = relay.held_store();
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone().cancelled_owned()));
    RelayHandle {
        addr,
        base,
        held,
        stop,
        task,
    }
}

/// A running agent.
pub struct AgentHandle {
    pub status: watch::Receiver<ConnectionStatus>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
    pub public_url: String,
    /// The relay's dead letters for this tunnel, as the agent learns them.
    pub dead_letters: watch::Receiver<DeadLetters>,
    /// The data dir made for an agent started without one.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub struct AgentOptions {
    pub name: String,
    pub token: String,
    pub target: String,
    pub host_header: HostHeader,
    pub recorder: Option<Recorder>,
    pub data_dir: Option<std::path::PathBuf>,
    pub ca: Option<std::path::PathBuf>,
    pub agent_id: Option<String>,
    pub takeover: bool,
}

impl AgentOptions {
    pub fn new(name: &str, app: &App) -> Self {
        AgentOptions {
            name: name.into(),
            token: TOKEN.into(),
            target: app.addr.to_string(),
            host_header: HostHeader::Preserve,
            recorder: None,
            data_dir: None,
            ca: None,
            agent_id: None,
            takeover: false,
        }
    }
}

/// Starts an agent through the library's [`Listener`], as `whtunnel
/// listen` does, and waits until it is connected (or refused).
pub async fn start_agent(relay_base: &str, opts: AgentOptions) -> AgentHandle {
    start_agent_on(&[relay_base], opts).await
}

/// [`start_agent`] with a list of relays (`listen --relay A --relay B`),
/// tried in turn.
pub async fn start_agent_on(relays: &[&str], opts: AgentOptions) -> AgentHandle {
    let relay_base = relays[0];
    let (data_dir, temp) = match opts.data_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut config = ListenConfig::new(opts.target.parse::<Target>().unwrap(), opts.name, data_dir);
    config.relay = RelayChoice::Remote {
        url: relay_base.parse().unwrap(),
        token: opts.token,
        tls: tls::client_config(opts.ca.as_deref()).unwrap(),
    };
    config.more_relays = relays[1..].iter().map(|u| u.parse().unwrap()).collect();
    config.agent_id = opts.agent_id;
    config.takeover = opts.takeover;
    config.host_header = opts.host_header;
    config.capture = match opts.recorder {
        Some(r) => Capture::Recorder(r),
        None => Capture::Off,
    };
    let listener = Listener::bind(config).await.unwrap();
    let mut rx = listener.status();
    let status = rx.clone();
    let dead_letters = listener.forwarder().dead_letters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(listener.run(stop.clone()));
    let public_url = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match &*rx.borrow_and_update() {
                ConnectionStatus::Connected { public_url, .. } => return public_url.clone(),
                ConnectionStatus::Refused { reason } => return format!("refused: {reason}"),
                _ => {}
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("agent connected within 10 s");
    AgentHandle {
        status,
        stop,
        task,
        public_url,
        dead_letters,
        _dir: temp,
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request; returns status, headers and the whole body.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .expect("request sent");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    (parts.status, parts.headers, body)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_whtunnel")
}

pub fn write_file(path: &Path, data: &str) {
    std::fs::write(path, data).unwrap();
}

/// A capture recorder over a fresh store in `dir`.
pub fn recorder(dir: &Path) -> Recorder {
    let store =
        whtunnel::capture::Store::open(&whtunnel::capture::StoreConfig::new(dir.to_path_buf()))
            .unwrap();
    Recorder::spawn(store)
}

/// Waits until the app has seen `n` requests (or panics after `within`).
pub async fn wait_for_seen(app: &App, n: usize, within: Duration) {
    let started = std::time::Instant::now();
    while app.seen().len() < n {
        assert!(
            started.elapsed() < within,
            "the app saw {} of {n} requests within {within:?}",
            app.seen().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
