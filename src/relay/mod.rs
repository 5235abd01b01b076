//! The relay: the public server. It takes webhook requests at
//! `/t/<name>/...`, hands each to the agent holding that tunnel over the
//! agent's websocket, and returns the app's answer to the sender.
//!
//! [`Relay::bind`] then [`Relay::run`]: tests and the embedded relay in
//! `whtunnel listen` use the same path as the standalone server.
//!
//! Locks here and in the tunnel transport are `parking_lot`'s: they do not
//! poison, so a panic while one is held cannot turn every later request
//! that takes the same lock into a panic too.

pub mod acme;
pub mod admin;
pub mod agents;
pub mod auth;
mod budget;
pub mod drain;
mod framing;
pub mod held;
pub mod held_api;
pub mod host;
pub mod limits;
pub mod metrics;
pub mod owners;
pub mod public;
pub mod users;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::tunnel::protocol::AGENT_PATH;
use crate::tunnel::Body;

pub use auth::Tokens;
pub use drain::{HoldDelivery, HoldOrder};
pub use held::{Caps, HeldStore, OfflinePolicy};
pub use limits::Limits;
pub use owners::{Claimed, NameOwners, Refused};
pub use users::{Accounts, Identity, UsersFile, UsersWatch};

/// Worker threads of a relay process's runtime unless `--threads` (or
/// `TOKIO_WORKER_THREADS`) says otherwise. Every request to a tunnel passes
/// through that tunnel's one link task, and hyper wakes a connection's own
/// task while it reads a request body, which on a multi-thread runtime wakes
/// a second worker for every request; one thread does neither
/// (docs/benchmarks.md, "Session 12").
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// How long the relay waits for in-flight exchanges when asked to stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Request bodies being read into memory to be held, relay-wide (KiB).
const HOLD_BUDGET_KIB: usize = 256 * 1024;
/// Of which one sender IP (one /64) may use this much: two bodies of the
/// largest default size, and an eighth of the whole.
const HOLD_BUDGET_IP_SHARE_KIB: u64 = 64 * 1024;
/// A client must finish sending request headers within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a relay is set up.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Tokens agents must present.
    pub tokens: Tokens,
    /// Base URL the public sees (e.g. `https://hooks.example.com`); derived
    /// from the agent's Host header when unset.
    pub public_url: Option<String>,
    /// Serve HTTPS with this config; plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long to wait for the app's response head before answering 504.
    pub response_timeout: Duration,
    /// Largest request body accepted; larger ones get 413.
    pub max_body: u64,
    /// Where held events and known tunnel names are kept; without it the
    /// relay holds nothing and unknown-while-offline tunnels answer 404.
    pub data_dir: Option<PathBuf>,
    /// Default for tunnels whose agent did not choose: hold or reject
    /// webhooks while the agent is away.
    pub offline: OfflinePolicy,
    /// Per-tunnel bounds on held events.
    pub hold_caps: Caps,
    /// How held events are delivered once their agent is back.
    pub hold_delivery: drain::HoldDelivery,
    /// Abuse limits on the public side (see [`limits`]).
    pub limits: Limits,
    /// Users with their own tokens and names (`--users-file`); when set,
    /// `tokens` is not used.
    pub users: Option<Arc<UsersWatch>>,
    /// Most names one user may own; `None`: [`owners::DEFAULT_MAX_NAMES`]
    /// for users of a users file, no cap for the one plain-token user (as
    /// before owned names). 0: no cap.
    pub max_names_per_user: Option<u64>,
    /// A name unused (no agent held it) for this long is forgotten, with
    /// its held events, and may be claimed by anyone.
    pub name_lifetime: Duration,
    /// Keep senders' `X-Forwarded-For`, `X-Real-IP` and `Forwarded`: for a
    /// relay behind a proxy that sets them. Otherwise the relay is the edge
    /// and drops them.
    pub trust_forwarded: bool,
    /// Where name ownership is kept; `None`: with `cluster` and `users`,
    /// the cluster's KV bucket ([`crate::cluster::KvOwners`]), else the
    /// data dir's SQLite (or memory without one).
    pub owners: Option<OwnersStore>,
    /// The relay's domain (`hooks.example.com`, as [`host::normalize_domain`]
    /// made it): `NAME.<domain>` routes to tunnel NAME (see [`host`]).
    pub domain: Option<String>,
    /// Certificates from an ACME CA; when set and `tls` is not, the relay
    /// serves HTTPS with them and runs their renewal (see [`acme`]).
    pub acme: Option<Arc<acme::CertManager>>,
    /// Join a cluster of relays through NATS JetStream; `None`: this relay
    /// alone, no NATS needed.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// A [`NameOwners`] implementation to use instead of the relay's own.
#[derive(Clone)]
pub struct OwnersStore(pub Arc<dyn NameOwners>);

impl std::fmt::Debug for OwnersStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnersStore")
    }
}

impl RelayConfig {
    /// A config with the defaults of [`crate::units`] (30 s response
    /// timeout, 25 MiB bodies) and of each part.
    pub fn new(listen: SocketAddr, tokens: Tokens) -> Self {
        Self {
            listen,
            tokens,
            public_url: None,
            tls: None,
            response_timeout: crate::units::DEFAULT_RESPONSE_TIMEOUT,
            max_body: crate::units::DEFAULT_MAX_BODY,
            data_dir: None,
            offline: OfflinePolicy::Hold,
            hold_caps: Caps::default(),
            hold_delivery: drain::HoldDelivery::default(),
            limits: Limits::default(),
            users: None,
            max_names_per_user: None,
            name_lifetime: owners::DEFAULT_NAME_LIFETIME,
            trust_forwarded: false,
            owners: None,
            domain: None,
            acme: None,
            cluster: None,
        }
    }
}

/// One agent's session holding a tunnel: the registry entry that routes
/// the tunnel's requests to that agent's live link.
pub(crate) struct TunnelSession {
    /// Tells this session from one that replaced it (a takeover).
    id: u64,
    /// The agent's own id: the same agent reconnecting takes over at once.
    agent_id: Option<String>,
    sender: crate::tunnel::link::LinkClient,
    /// Cancelled when the link ends or the session is replaced.
    closed: CancellationToken,
    /// Held events in flight at once, and strict order, as the agent asked.
    drain: (usize, bool),
    /// Who connected it.
    identity: Identity,
    /// From where.
    remote: std::net::IpAddr,
    /// It replaced another agent's session (`--takeover`).
    took_over: bool,
}

/// How long the agent waits for the app, given the relay's wait for the
/// answer: a little less, so the agent records the 504 itself.
pub(crate) fn agent_timeout(relay: Duration) -> Duration {
    relay.saturating_sub((relay / 10).min(Duration::from_millis(500)))
}

/// State shared by every connection the relay serves.
pub(crate) struct Shared {
    config: RelayConfig,
    tunnels: Mutex<HashMap<String, TunnelSession>>,
    next_session: AtomicU64,
    scheme: &'static str,
    held: Option<Arc<HeldStore>>,
    /// Memory for request bodies being read to be held, relay-wide.
    hold_budget: Arc<budget::HoldBudget>,
    limiter: limits::Limiter,
    /// Who may connect agents.
    accounts: Accounts,
    /// Who owns which names.
    owners: Arc<dyn NameOwners>,
    /// Counters for `/metrics`, and whether the relay is draining.
    metrics: metrics::Metrics,
    /// The cluster this relay is part of, if any: the registry seam (who
    /// holds a tunnel beyond this relay's own `tunnels`) and the hop.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `owners` is the cluster's: a name it expires is expired for every
    /// relay, and what the cluster holds for it is dropped.
    cluster_owners: bool,
}

impl Shared {
    fn sender_for(&self, name: &str) -> Option<crate::tunnel::link::LinkClient> {
        let tunnels = self.tunnels.lock();
        tunnels.get(name).map(|s| s.sender.clone())
    }

    /// What every link announces to its agent: the metadata its requests
    /// share, so that it crosses once per link.
    fn link_meta(&self) -> crate::tunnel::protocol::LinkMeta {
        crate::tunnel::protocol::LinkMeta {
            proto: std::borrow::Cow::Borrowed(self.scheme),
            timeout_ms: agent_timeout(self.config.response_timeout).as_millis() as u64,
        }
    }

    fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Most names one user may own (0: no cap).
    fn max_names(&self) -> u64 {
        match (&self.accounts, self.config.max_names_per_user) {
            (_, Some(n)) => n,
            (Accounts::Users(_), None) => owners::DEFAULT_MAX_NAMES,
            (Accounts::Tokens(_), None) => 0,
        }
    }

    /// Cuts off every agent whose user was revoked, whose token changed or
    /// whose name is no longer among its user's names.
    fn sweep_revoked(&self) {
        let tunnels = self.tunnels.lock();
        for (name, s) in tunnels.iter() {
            if !self.accounts.still_valid(&s.identity, name) {
                tracing::warn!(tunnel = %name, user = %s.identity.user, "user revoked or changed: agent cut off");
                s.closed.cancel();
            }
        }
    }
}

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    listener: TcpListener,
    /// The cluster's hop listener (`--cluster-listen`), if any.
    hop_listener: Option<TcpListener>,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    /// Binds the listening socket (port 0 lets the OS pick) and opens the
    /// held-event store when a data dir is configured.
    pub async fn bind(mut config: RelayConfig) -> std::io::Result<Relay> {
        if let (None, Some(acme)) = (&config.tls, &config.acme) {
            config.tls = Some(acme.server_config().map_err(std::io::Error::other)?);
        }
        // In a cluster, events are held in JetStream instead (the
        // held-events seam): no relay keeps any of its own.
        let held = match &config.data_dir {
            Some(_) if config.cluster.is_some() => None,
            Some(dir) => Some(Arc::new(
                HeldStore::open(dir, config.hold_caps).map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        let accounts = match &config.users {
            Some(watch) => Accounts::Users(watch.clone()),
            None => Accounts::Tokens(config.tokens.clone()),
        };
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let hop_listener = match config.cluster.as_ref().and_then(|c| c.listen) {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} for hops: {e}"))
            })?),
            None => None,
        };
        if config.cluster.is_some() && config.tls.is_some() && hop_listener.is_none() {
            return Err(std::io::Error::other(
                "a relay serving TLS takes hops from the other relays on a second, cleartext \
                 listener: pass --cluster-listen HOST:PORT (an address on the cluster's private network)",
            ));
        }
        let hop_addr = match &hop_listener {
            Some(l) => l.local_addr()?,
            None => local_addr,
        };
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(
                crate::cluster::Cluster::join(c, hop_addr, config.hold_caps)
                    .await
                    .map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        // Users of a cluster own their names cluster-wide: in its KV
        // bucket, not in this relay's SQLite. (With plain tokens there is
        // one user, who owns every name: nothing to share.)
        let cluster_owners = config.owners.is_none() && cluster.is_some() && config.users.is_some();
        let owners: Arc<dyn NameOwners> =
            match (&config.owners, &cluster, &config.users, &config.data_dir) {
                (Some(store), ..) => store.0.clone(),
                (None, Some(cluster), Some(users), _) => Arc::new(
                    cluster
                        .open_owners(&users.fingerprint())
                        .await
                        .map_err(std::io::Error::other)?,
                ),
                (None, _, _, Some(dir)) => {
                    Arc::new(owners::SqliteOwners::open(dir).map_err(std::io::Error::other)?)
                }
                (None, _, _, None) => Arc::new(owners::MemoryOwners::default()),
            };
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Relay {
            listener,
            hop_listener,
            local_addr,
            shared: Arc::new(Shared {
                limiter: limits::Limiter::new(config.limits.clone()),
                accounts,
                owners,
                config,
                tunnels: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
                scheme,
                held,
                hold_budget: budget::HoldBudget::new(HOLD_BUDGET_KIB, HOLD_BUDGET_IP_SHARE_KIB),
                metrics: metrics::Metrics::new(),
                cluster,
                cluster_owners,
            }),
        })
    }

    /// The held-event store, when the relay has a data dir.
    pub fn held_store(&self) -> Option<Arc<HeldStore>> {
        self.shared.held.clone()
    }

    /// Health, metrics and the state they mirror, for the admin endpoint
    /// ([`admin::AdminServer`]); it stays valid after [`run`](Relay::run).
    pub fn status(&self) -> admin::RelayStatus {
        admin::RelayStatus {
            shared: self.shared.clone(),
        }
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the cluster's hop listener, when it has one.
    pub fn hop_addr(&self) -> Option<SocketAddr> {
        self.hop_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The base URL agents and senders use to reach this relay.
    pub fn base_url(&self) -> String {
        match &self.shared.config.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("{}://{}", self.shared.scheme, self.local_addr),
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight exchanges finish (up to [`DRAIN_TIMEOUT`]) and closes every
    /// agent link.
    ///
    /// # Errors
    /// Fails at once, with its listeners closed, if they cannot be moved to
    /// this runtime's reactor (the kernel refused to watch them).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Relay {
            listener,
            hop_listener,
            shared,
            ..
        } = self;
        // Accepted on the runtime that runs the relay, whichever bound it:
        // a listener stays registered with the reactor of the runtime that
        // bound it, and `listen` binds its embedded relay on the agent's
        // runtime but runs it on a thread of its own. Left there, every new
        // connection would first wake the agent's thread, and none would be
        // accepted while that runtime is not driven.
        let listener = on_this_runtime(listener)?;
        let hop_listener = hop_listener.map(on_this_runtime).transpose()?;
        let tls = shared.config.tls.clone().map(TlsAcceptor::from);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(shared.config.limits.header_read_timeout)
            .max_headers(shared.config.limits.max_headers)
            .max_buf_size(shared.config.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        let expiry = shared
            .held
            .clone()
            .map(|held| tokio::spawn(expire_held(held)));
        let names_expiry = tokio::spawn(expire_names(shared.clone()));
        let users_watch = match &shared.accounts {
            Accounts::Users(watch) => {
                Some(tokio::spawn(watch_users(shared.clone(), watch.clone())))
            }
            Accounts::Tokens(_) => None,
        };
        let users_beacon = match (&shared.accounts, &shared.cluster) {
            (Accounts::Users(watch), Some(cluster)) => {
                let (watch, cluster) = (watch.clone(), cluster.clone());
                Some(tokio::spawn(async move {
                    cluster.announce_users(|| watch.fingerprint()).await
                }))
            }
            _ => None,
        };
        let acme_stop = CancellationToken::new();
        let acme = shared
            .config
            .acme
            .clone()
            .map(|m| tokio::spawn(m.run(acme_stop.clone())));

        let hop_accept = || async {
            match &hop_listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        loop {
            let (accepted, hops_only) = tokio::select! {
                accepted = listener.accept() => (accepted, false),
                accepted = hop_accept() => (accepted, true),
                () = &mut shutdown => break,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Abuse limit: over its share of connections, an IP's new
            // connection is closed at once (dropping it sends FIN).
            let Some(slot) = shared.limiter.admit(remote.ip()) else {
                continue;
            };
            let first_bytes = shared.config.limits.header_read_timeout;
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let builder = builder.clone();
            // The hop listener is cleartext and takes nothing but hops.
            let tls = if hops_only { None } else { tls.clone() };
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slot = slot;
                let peer = Arc::new(Peer::new(remote));
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    let peer = peer.clone();
                    async move {
                        let is_hop = || {
                            shared
                                .cluster
                                .as_ref()
                                .is_some_and(|c| c.hop().is_hop(req.headers()))
                        };
                        if hops_only && !is_hop() {
                            return Ok::<_, std::convert::Infallible>(text(
                                StatusCode::NOT_FOUND,
                                "whtunnel relay: this port takes hops from the cluster's relays only",
                            ));
                        }
                        Ok(route(shared, &peer, req).await)
                    }
                });
                let result = match tls {
                    Some(acceptor) => {
                        let tls_stream = match tokio::time::timeout(
                            TLS_HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => return,
                        };
                        if acme::is_challenge(tls_stream.get_ref().1.alpn_protocol()) {
                            return;
                        }
                        let tls_stream = limits::FirstBytesDeadline::new(tls_stream, first_bytes);
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    None => {
                        let stream = limits::FirstBytesDeadline::new(stream, first_bytes);
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%remote, "connection ended: {e}");
                }
            });
        }

        drop(listener);
        drop(hop_listener);
        shared.metrics.set_draining();
        if let Some(task) = expiry {
            task.abort();
        }
        names_expiry.abort();
        if let Some(task) = users_watch {
            task.abort();
        }
        if let Some(task) = users_beacon {
            task.abort();
            if let Some(cluster) = &shared.cluster {
                cluster.leave_users().await;
            }
        }
        acme_stop.cancel();
        if let Some(task) = acme {
            let _ = task.await;
        }
        tracing::info!("relay stopping: draining in-flight exchanges");
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timed out after {DRAIN_TIMEOUT:?}");
        }
        let sessions: Vec<TunnelSession> = shared.tunnels.lock().drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.closed.cancel();
        }
        Ok(())
    }
}

/// Deletes held events past the age cap, once a minute. Each deletion is
/// logged: it is the only way the relay ever lets go of an undelivered event.
async fn expire_held(held: Arc<HeldStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let h = held.clone();
        match tokio::task::spawn_blocking(move || h.expire()).await {
            Ok(Ok(expired)) => {
                for (tunnel, n, _) in expired {
                    let s = if n == 1 { "" } else { "s" };
                    tracing::warn!(%tunnel, "{n} held event{s} expired undelivered");
                }
            }
            Ok(Err(e)) => tracing::warn!("held-event expiry failed: {e}"),
            Err(_) => {}
        }
    }
}

/// Re-reads the users file whenever it changes and cuts off the agents of
/// revoked users at once.
async fn watch_users(shared: Arc<Shared>, watch: Arc<UsersWatch>) {
    let mut tick = tokio::time::interval(UsersWatch::POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut complained = false;
    loop {
        tick.tick().await;
        let w = watch.clone();
        match tokio::task::spawn_blocking(move || w.reload()).await {
            Ok(Ok(true)) => {
                complained = false;
                tracing::info!(users = watch.len(), "users file re-read");
                shared.sweep_revoked();
            }
            Ok(Ok(false)) => complained = false,
            Ok(Err(e)) => {
                if !complained {
                    tracing::warn!("{e}; keeping the users as they were");
                    complained = true;
                }
            }
            Err(_) => {}
        }
    }
}

/// Drops everything held for `name`, on this relay and, when the cluster
/// owns the names, in the cluster: the name expired, or changed hands.
async fn forget_held(shared: &Shared, name: &str) -> Result<(), String> {
    if let Some(held) = shared.held.clone() {
        let n = name.to_string();
        tokio::task::spawn_blocking(move || held.forget(&n))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map(drop).map_err(|e| e.to_string()))
            .map_err(|e| format!("could not drop the held events of '{name}': {e}"))?;
    }
    if let (true, Some(cluster)) = (shared.cluster_owners, &shared.cluster) {
        cluster.forget_held(name).await.map_err(|e| {
            format!("could not drop the held events of '{name}' in the cluster: {e}")
        })?;
    }
    Ok(())
}

/// Forgets names nobody used for the name lifetime, with their held
/// events, so abandoned names stop collecting events and become free.
async fn expire_names(shared: Arc<Shared>) {
    let lifetime = shared.config.name_lifetime;
    let every = (lifetime / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let in_use = |n: &str| shared.tunnels.lock().contains_key(n);
        let gone = match shared.owners.expire(lifetime, &in_use).await {
            Ok(gone) => gone,
            Err(e) => {
                tracing::warn!("name expiry failed: {e}");
                continue;
            }
        };
        for name in &gone {
            if let Err(e) = forget_held(&shared, name).await {
                tracing::warn!(tunnel = %name, "{e}");
            }
        }
        for name in gone {
            tracing::info!(tunnel = %name, "name unused for {lifetime:?}: forgotten with its held events");
        }
    }
}

/// The sender's address as a trusted proxy in front of the relay reports
/// it: the last `X-Forwarded-For` entry (the one the proxy added), else
/// `X-Real-IP`. Used only with `--trust-forwarded`, so that per-IP limits
/// apply to senders and not to the proxy.
fn forwarded_client(headers: &http::HeaderMap) -> Option<std::net::IpAddr> {
    let last_xff = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .rfind(|s| !s.trim().is_empty())
        .map(str::trim);
    let real_ip = || {
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    last_xff.or_else(real_ip)?.parse().ok()
}

/// The TCP peer of a request, kept in its extensions (also when `remote`
/// is the forwarded client): the hop the relay appends to
/// `X-Forwarded-For`. Its texts are made once per connection, not per
/// request.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The peer's address.
    pub(crate) addr: SocketAddr,
    /// `addr` as text, as the request metadata carries it.
    pub(crate) text: Arc<str>,
    /// `addr`'s IP as an `X-Real-IP` value.
    pub(crate) ip: http::HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            text: addr.to_string().into(),
            ip: public::ip_value(addr.ip()),
        }
    }
}

async fn route(shared: Arc<Shared>, peer: &Peer, mut req: Request<Incoming>) -> Response<Body> {
    let remote = peer.addr;
    req.extensions_mut().insert(peer.clone());
    let remote = if shared.config.trust_forwarded {
        forwarded_client(req.headers()).map_or(remote, |ip| SocketAddr::new(ip, remote.port()))
    } else {
        remote
    };
    if let Some(domain) = &shared.config.domain {
        match host::route_host(request_host(req.headers(), req.uri()), domain) {
            host::HostRoute::Relay => {}
            host::HostRoute::Tunnel(name) => {
                let started = Instant::now();
                let resp = match framing::check_framing(&req) {
                    Some(refused) => refused,
                    None => public::forward_host(shared.clone(), remote, req, name).await,
                };
                shared
                    .metrics
                    .request_done(resp.status(), started.elapsed());
                return resp;
            }
            host::HostRoute::Foreign => {
                return text(
                    StatusCode::NOT_FOUND,
                    &format!("whtunnel relay: this relay serves {domain} and NAME.{domain} only"),
                )
            }
            host::HostRoute::Invalid => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "whtunnel relay: malformed Host header",
                )
            }
        }
    }
    let path = req.uri().path();
    if path == AGENT_PATH {
        let resp = agents::upgrade(shared.clone(), remote, req).await;
        shared.metrics.upgrade_done(resp.status());
        resp
    } else if path.starts_with("/t/") {
        let started = Instant::now();
        let resp = match framing::check_framing(&req) {
            Some(refused) => refused,
            None => public::forward(shared.clone(), remote, req).await,
        };
        shared
            .metrics
            .request_done(resp.status(), started.elapsed());
        resp
    } else if path.starts_with(held_api::HELD_API_PATH) {
        held_api::serve(shared, remote, req).await
    } else if path == "/_whtunnel/health" {
        text(StatusCode::OK, "ok")
    } else {
        text(
            StatusCode::NOT_FOUND,
            "whtunnel relay: webhooks go to /t/<tunnel-name>/...",
        )
    }
}

/// The host a request is for: the Host header, else (HTTP/2) the
/// `:authority`.
pub(crate) fn request_host<'a>(
    headers: &'a http::HeaderMap,
    uri: &'a http::Uri,
) -> Option<&'a str> {
    headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        // HTTP/1.1 allows an empty Host: no host.
        .filter(|h| !h.is_empty())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// A 503 asking the sender to come back later.
pub(crate) fn retry_later(reason: &str, after_secs: u64) -> Response<Body> {
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, reason);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(after_secs),
    );
    resp
}

/// A plain-text answer with a one-line reason.
pub(crate) fn text(status: StatusCode, reason: &str) -> Response<Body> {
    use http_body_util::{BodyExt, Full};
    let body = Full::new(bytes::Bytes::from(format!("{reason}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .expect("static response parts are valid")
}

/// Registers `listener` with the reactor of the runtime this is called on
/// (see [`Relay::run`]).
fn on_this_runtime(listener: TcpListener) -> std::io::Result<TcpListener> {
    TcpListener::from_std(listener.into_std()?)
}
