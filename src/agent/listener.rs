//! `whtunnel listen` as a library type: everything between "forward
//! NAME to TARGET" and a running agent. [`Listener::bind`] opens the
//! capture store, binds the embedded relay when no remote one is given,
//! and builds the forwarder; [`Listener::run`] holds the tunnel until
//! shutdown, then lets calls still in the app's hands finish and closes the
//! store. The CLI, the tests and the benchmarks all start agents this way.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{AgentConfig, AgentError, ConnectionStatus, RelayUrl};
use crate::capture::{BodyLimits, Recorder, ReplayRequest, Store, StoreConfig, StoreError};
use crate::forward::{Forwarder, ForwarderConfig, HostHeader, Target};
use crate::relay::{Relay, RelayConfig, Tokens};
use crate::tunnel::protocol::OfflinePolicy;

/// Where the embedded relay listens unless told otherwise: a fixed port,
/// so the URL pasted into a provider's dashboard still works tomorrow.
pub const EMBEDDED_RELAY_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8787));

/// How long [`Listener::run`] lets exchanges in flight finish once asked to
/// stop; then it gives up on them (each is answered 503 and recorded as
/// abandoned), and waits as long again at most for calls still finishing
/// after their stream was reset, so that they are recorded before the
/// store closes.
pub const SETTLE_ON_STOP: Duration = Duration::from_secs(10);

/// How long the start-up probe of the app waits for a TCP connection.
pub const APP_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// What is known of the app behind the target: the "connected" of the
/// status is the relay's, this is the app's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppState {
    /// Not probed yet.
    Unknown,
    /// Something accepted a TCP connection on the target.
    Listening,
    /// Nothing accepted one: the app is not running (yet), or the target is
    /// wrong. `why` is the connect error, or that it timed out.
    NotListening {
        /// The connect error.
        why: String,
    },
}

/// Tries a TCP connection to `target` within [`APP_PROBE_TIMEOUT`].
pub async fn probe_app(target: &Target) -> AppState {
    let connect = tokio::net::TcpStream::connect(target.authority());
    match tokio::time::timeout(APP_PROBE_TIMEOUT, connect).await {
        Ok(Ok(_)) => AppState::Listening,
        Ok(Err(e)) => AppState::NotListening { why: e.to_string() },
        Err(_) => AppState::NotListening {
            why: format!("no answer within {} ms", APP_PROBE_TIMEOUT.as_millis()),
        },
    }
}

/// Replay requests waiting for the replay worker.
const REPLAY_QUEUE: usize = 16;

/// Which relay the agent holds its tunnel on.
#[derive(Clone)]
pub enum RelayChoice {
    /// A relay elsewhere, reached with a token.
    Remote {
        /// The relay's base URL.
        url: RelayUrl,
        /// The token the relay expects.
        token: String,
        /// TLS settings for a `wss://` relay.
        tls: Arc<rustls::ClientConfig>,
    },
    /// A relay in this process on `listen` (loopback), so the first run
    /// needs nothing else. When that port is taken, any free port is used
    /// instead and [`Listener::embedded_relay`] says so.
    Embedded {
        /// The address asked for.
        listen: SocketAddr,
    },
}

/// What the listener records.
#[derive(Clone)]
pub enum Capture {
    /// Record nothing.
    Off,
    /// Open (or create) the capture store with this config; the listener
    /// closes it when it stops.
    Store(StoreConfig),
    /// Record into a recorder its owner opened and will close (several
    /// listeners over time can share one).
    Recorder(Recorder),
}

/// How a [`Listener`] is set up.
#[derive(Clone)]
pub struct ListenConfig {
    /// Where requests go.
    pub target: Target,
    /// The relay to hold the tunnel on.
    pub relay: RelayChoice,
    /// More relays of the same cluster, tried in turn after a remote
    /// `relay` when it cannot be reached (ignored with the embedded relay).
    pub more_relays: Vec<RelayUrl>,
    /// The tunnel name.
    pub name: String,
    /// The agent's id, kept in its data dir: lets it replace its own stale
    /// session after a network blip.
    pub agent_id: Option<String>,
    /// Take the name over from another agent that holds it.
    pub takeover: bool,
    /// When another agent holds the name (409), keep retrying instead of
    /// stopping (`--retry-taken`).
    pub retry_taken: bool,
    /// What the relay does with webhooks while this agent is away; `None`
    /// leaves it to the relay.
    pub offline: Option<OfflinePolicy>,
    /// Most held events delivered at once (`--hold-concurrency`): asked of
    /// the relay, and the embedded relay's own setting; `None`: the default.
    pub hold_concurrency: Option<u32>,
    /// The Host header the app sees.
    pub host_header: HostHeader,
    /// What is recorded.
    pub capture: Capture,
    /// The data directory: spilled bodies, and the embedded relay's held
    /// events (in `relay/` below it).
    pub data_dir: PathBuf,
    /// The `[[webhook]]` rules: each recorded exchange gets its sender and
    /// signature verdict by them (or by recognition when none matches).
    /// Empty leaves a [`Capture::Recorder`]'s own rules in place.
    pub webhooks: crate::verify::Rules,
    /// `[[route]]`s: requests below a path prefix go to another local
    /// target (longest prefix wins; `target` takes the rest).
    pub routes: Vec<(String, Target)>,
}

impl ListenConfig {
    /// A config that forwards tunnel `name` to `target` through the
    /// embedded relay, recording into a store in `data_dir` with its
    /// default limits.
    pub fn new(target: Target, name: impl Into<String>, data_dir: PathBuf) -> Self {
        ListenConfig {
            target,
            relay: RelayChoice::Embedded {
                listen: EMBEDDED_RELAY_ADDR,
            },
            more_relays: Vec::new(),
            name: name.into(),
            agent_id: None,
            takeover: false,
            retry_taken: false,
            offline: None,
            hold_concurrency: None,
            host_header: HostHeader::Preserve,
            capture: Capture::Store(StoreConfig::new(data_dir.clone())),
            data_dir,
            webhooks: Default::default(),
            routes: Vec::new(),
        }
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The capture store could not be opened.
    #[error("cannot open the capture store in {dir}: {source}")]
    Store {
        /// The store's directory.
        dir: PathBuf,
        /// What went wrong.
        source: StoreError,
    },
    /// The TLS client settings could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tunnel::tls::TlsError),
    /// The embedded relay could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The embedded relay, once bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The address asked for, when it was taken and `addr` is another one:
    /// the public URL is not the one of earlier runs.
    pub fallback_from: Option<SocketAddr>,
}

/// An agent ready to [`run`](Listener::run): store open, embedded relay
/// bound, nothing connected yet.
pub struct Listener {
    agent: AgentConfig,
    forwarder: Forwarder,
    /// Set when the listener opened the store, and so closes it.
    owned_recorder: Option<Recorder>,
    embedded: Option<(Relay, EmbeddedRelay)>,
    status_tx: watch::Sender<ConnectionStatus>,
    status_rx: watch::Receiver<ConnectionStatus>,
    replay_tx: mpsc::Sender<ReplayRequest>,
    replay_rx: mpsc::Receiver<ReplayRequest>,
    data_dir: PathBuf,
    app_state: watch::Sender<AppState>,
}

impl Listener {
    /// Opens the capture store and binds the embedded relay (if any).
    pub async fn bind(config: ListenConfig) -> Result<Listener, ListenError> {
        let (recorder, owned_recorder) = match config.capture {
            Capture::Off => (None, None),
            Capture::Recorder(r) => (Some(r), None),
            Capture::Store(store_config) => {
                let dir = store_config.dir.clone();
                let store = Store::open(&store_config)
                    .map_err(|source| ListenError::Store { dir, source })?;
                let r = Recorder::spawn(store);
                (Some(r.clone()), Some(r))
            }
        };
        // A recorder handed in may have been given its rules by its owner.
        if let Some(r) = recorder.as_ref().filter(|_| !config.webhooks.is_empty()) {
            r.set_webhook_rules(config.webhooks.clone());
        }
        let mut more_relays = config.more_relays;
        let (embedded, relay_url, token, tls) = match config.relay {
            RelayChoice::Remote { url, token, tls } => (None, url, token, tls),
            RelayChoice::Embedded { listen } => {
                let token = crate::tunnel::protocol::generate_token();
                let (relay, info) =
                    bind_embedded(listen, &token, &config.data_dir, config.hold_concurrency)
                        .await?;
                // Plain HTTP on loopback: the TLS settings go unused.
                let tls = crate::tunnel::tls::client_config(None)?;
                (Some((relay, info)), RelayUrl::plain(info.addr), token, tls)
            }
        };
        // Spilled bodies sit beside the store, so keeping one is a rename.
        let body_limits = BodyLimits::new(config.data_dir.join("spill"));
        let forwarder = Forwarder::new(ForwarderConfig {
            target: config.target,
            routes: config.routes,
            webhooks: Arc::new(config.webhooks),
            host_header: config.host_header,
            recorder,
            body_limits,
        });
        if embedded.is_some() {
            more_relays.clear();
        }
        let agent = AgentConfig {
            relay: relay_url,
            more_relays,
            token,
            name: config.name,
            takeover: config.takeover,
            retry_taken: config.retry_taken,
            agent_id: config.agent_id,
            offline: config.offline,
            hold_concurrency: config.hold_concurrency,
            tls,
        };
        let (status_tx, status_rx) = watch::channel(ConnectionStatus::Connecting);
        let (replay_tx, replay_rx) = mpsc::channel(REPLAY_QUEUE);
        Ok(Listener {
            agent,
            forwarder,
            owned_recorder,
            embedded,
            status_tx,
            status_rx,
            replay_tx,
            replay_rx,
            data_dir: config.data_dir,
            app_state: watch::channel(AppState::Unknown).0,
        })
    }

    /// The app's state as last probed ([`Listener::probe_app`]).
    pub fn app_state(&self) -> watch::Receiver<AppState> {
        self.app_state.subscribe()
    }

    /// Probes the target (a TCP connection, at most [`APP_PROBE_TIMEOUT`])
    /// and publishes the result on [`Listener::app_state`].
    pub async fn probe_app(&self) -> AppState {
        let state = probe_app(self.target()).await;
        self.app_state.send_replace(state.clone());
        state
    }

    /// The agent's connection state, as it changes.
    pub fn status(&self) -> watch::Receiver<ConnectionStatus> {
        self.status_rx.clone()
    }

    /// The recorder, when capture is on.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.forwarder.recorder()
    }

    /// The forwarder requests go through.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Where requests go.
    pub fn target(&self) -> &Target {
        self.forwarder.target()
    }

    /// The embedded relay, when there is one.
    pub fn embedded_relay(&self) -> Option<EmbeddedRelay> {
        self.embedded.as_ref().map(|(_, info)| *info)
    }

    /// Exchanges in flight (arrived, not yet recorded): what stopping
    /// waits for.
    pub fn in_flight(&self) -> watch::Receiver<usize> {
        self.forwarder.in_flight()
    }

    /// Cancelling this gives up on the exchanges in flight (a second
    /// Ctrl-C): each is answered 503 and recorded as abandoned at exit.
    /// [`run`](Listener::run) cancels it itself [`SETTLE_ON_STOP`] after
    /// `shutdown`.
    pub fn abandon_token(&self) -> CancellationToken {
        self.forwarder.abandon_token()
    }

    /// Where the inspector sends replay requests; [`run`](Listener::run)
    /// carries them out (only while capture is on: a replay reads the
    /// stored exchange).
    pub fn replays(&self) -> mpsc::Sender<ReplayRequest> {
        self.replay_tx.clone()
    }

    /// Holds the tunnel until `shutdown` is cancelled (`Ok`), the relay
    /// refuses the agent (the refusal), or the embedded relay stops while
    /// the agent serves it ([`AgentError::EmbeddedRelayStopped`]). In every
    /// case, exchanges in flight get up to [`SETTLE_ON_STOP`] to finish
    /// (then they are abandoned, see [`abandon_token`](Listener::abandon_token))
    /// and are recorded, and a store the listener opened is closed, before it
    /// returns. The embedded relay runs on a thread of its own meanwhile,
    /// with a one-thread runtime.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        // Also cancelled from within, when the embedded relay stops early;
        // the caller's token is left alone.
        let shutdown = shutdown.child_token();
        let Listener {
            agent,
            forwarder,
            owned_recorder,
            embedded,
            status_tx,
            status_rx,
            replay_tx,
            replay_rx,
            data_dir,
            app_state,
        } = self;
        drop(app_state);
        drop(replay_tx);
        // Signatures over the URL the sender used (Square, Twilio) need the
        // tunnel's public URL, known once connected.
        let public_url = forwarder.recorder().cloned().map(|recorder| {
            let mut status = status_rx;
            tokio::spawn(async move {
                loop {
                    if let ConnectionStatus::Connected { public_url, .. } =
                        &*status.borrow_and_update()
                    {
                        recorder.set_public_url(Some(public_url.clone()));
                    }
                    if status.changed().await.is_err() {
                        break;
                    }
                }
            })
        });
        // The embedded relay stops with the agent, not before it: in-flight
        // exchanges drain through it.
        let relay_stop = CancellationToken::new();
        // However `run` ends (a panic, or its future dropped), the relay's
        // thread is told to stop.
        let _relay_stop_on_drop = relay_stop.clone().drop_guard();
        let relay_task = embedded.map(|(relay, _)| {
            watch_embedded(
                run_embedded(relay, relay_stop.clone()),
                relay_stop.clone(),
                shutdown.clone(),
            )
        });
        let replays = forwarder
            .recorder()
            .is_some()
            .then(|| tokio::spawn(replay_worker(data_dir, forwarder.clone(), replay_rx)));

        // The bound on stopping: past it, whatever is still waiting for the
        // app is given up on (and recorded as such).
        let abandon = forwarder.abandon_token();
        let bound = {
            let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                tokio::select! {
                    () = tokio::time::sleep(SETTLE_ON_STOP) => abandon.cancel(),
                    () = abandon.cancelled() => {}
                }
            })
        };
        let result = super::run(agent, forwarder.clone(), status_tx, shutdown).await;

        if let Some(task) = replays {
            task.abort();
        }
        if let Some(task) = public_url {
            task.abort();
        }
        if forwarder.recorder().is_some() {
            forwarder.settle(SETTLE_ON_STOP).await;
            // Answered exchanges whose record is still on its way (the
            // answer's body was streaming back) are queued before the store
            // closes.
            let mut in_flight = forwarder.in_flight();
            let _ = tokio::time::timeout(SETTLE_ON_STOP, in_flight.wait_for(|n| *n == 0)).await;
        }
        if let Some(r) = owned_recorder {
            drop(forwarder);
            r.close().await;
        }
        relay_stop.cancel();
        let relay_result = match relay_task {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        bound.abort();
        result?;
        relay_result
    }
}

/// Runs `f`, a panic becoming an error that carries its message: the
/// panic hook's own report goes to stderr, which the inspector hides. The
/// message is made terminal-safe and cut short, since it may quote what a
/// sender sent.
fn caught(f: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        let message: String = crate::capture::export::terminal_safe(message, false)
            .chars()
            .take(PANIC_MESSAGE_CHARS)
            .collect();
        Err(std::io::Error::other(format!("it panicked: {message}")))
    })
}

/// How much of a panic's message [`caught`] keeps.
const PANIC_MESSAGE_CHARS: usize = 300;

/// Watches the embedded relay's end. Ended before `relay_stop` (its error,
/// a panic on its thread, or a return nobody asked for), the tunnel is
/// unreachable: `shutdown` stops the agent, and the task's result says why,
/// instead of an agent that goes on serving nobody. Ended after, an error
/// of its own stopping is only logged.
fn watch_embedded(
    ended: oneshot::Receiver<std::io::Result<()>>,
    relay_stop: CancellationToken,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), AgentError>> {
    tokio::spawn(async move {
        let failure = match ended.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("its thread panicked".to_string()),
        };
        if relay_stop.is_cancelled() {
            if let Some(why) = failure {
                tracing::warn!("the embedded relay did not stop cleanly: {why}");
            }
            return Ok(());
        }
        // Said once, by the error `listen` ends with, as a refusal is.
        let why = failure.unwrap_or_else(|| "it returned".to_string());
        shutdown.cancel();
        Err(AgentError::EmbeddedRelayStopped(why))
    })
}

/// Runs the embedded relay until `stop`, on a thread of its own with a
/// one-thread runtime; the receiver gets its result.
///
/// On the agent's runtime the relay's tasks would share its worker threads,
/// and every request's relay half would wake another worker (hyper wakes a
/// connection's own task while it reads the request body, and a woken
/// running task makes tokio wake a second worker). Apart, each side stays
/// on its thread and only the two hops of an exchange cross between them,
/// as with a relay process of its own (docs/benchmarks.md, "Session 12").
/// If the thread cannot be started, the relay runs on the agent's runtime;
/// if its runtime cannot be built, the receiver gets that error.
fn run_embedded(relay: Relay, stop: CancellationToken) -> oneshot::Receiver<std::io::Result<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    // The thread's closure owns nothing that must not be dropped here: if
    // the thread cannot start, the relay comes back out of `slot`, and the
    // runtime (which may not be dropped on an async thread) is built in it.
    let slot = Arc::new(parking_lot::Mutex::new(Some((relay, stop, done_tx))));
    let taken = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("whtunnel-relay".into())
        .spawn(move || {
            let Some((relay, stop, done_tx)) = taken.lock().take() else {
                return;
            };
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => caught(|| runtime.block_on(relay.run(stop.cancelled_owned()))),
                Err(e) => Err(e),
            };
            let _ = done_tx.send(result);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the embedded relay's thread ({e}): it shares the agent's");
        if let Some((relay, stop, done_tx)) = slot.lock().take() {
            tokio::spawn(async move {
                let _ = done_tx.send(relay.run(stop.cancelled_owned()).await);
            });
        }
    }
    done_rx
}

/// Binds the embedded relay on `listen`, or on any free loopback port when
/// that one is taken.
async fn bind_embedded(
    listen: SocketAddr,
    token: &str,
    data_dir: &std::path::Path,
    hold_concurrency: Option<u32>,
) -> Result<(Relay, EmbeddedRelay), ListenError> {
    let mut config = RelayConfig::new(listen, Tokens::new([token]));
    if let Some(n) = hold_concurrency {
        config.hold_delivery.concurrency = n;
    }
    config.data_dir = Some(data_dir.join("relay"));
    // Only this machine reaches the embedded relay: rate limits would only
    // get in the way of load tests against one's own app.
    config.limits.rate_limit = 0.0;
    config.limits.unknown_tunnel_per_min = 0;
    // On loopback, what reaches it comes through this machine's own
    // proxies (a tunnel client, a dev proxy), whose forwarded headers count.
    config.trust_forwarded = listen.ip().is_loopback();
    let bind_error = |source| ListenError::Bind {
        addr: listen,
        source,
    };
    match Relay::bind(config.clone()).await {
        Ok(relay) => {
            let addr = relay.local_addr();
            Ok((
                relay,
                EmbeddedRelay {
                    addr,
                    fallback_from: None,
                },
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            config.listen.set_port(0);
            let relay = Relay::bind(config).await.map_err(bind_error)?;
            let addr = relay.local_addr();
            Ok((
                relay,
                EmbeddedRelay {
                    addr,
                    fallback_from: Some(listen),
                },
            ))
        }
        Err(e) => Err(bind_error(e)),
    }
}

/// Carries out the inspector's replay requests: each reads the stored
/// exchange and sends it again; its result reaches the inspector through
/// the capture, like any other exchange.
async fn replay_worker(
    dir: PathBuf,
    forwarder: Forwarder,
    mut requests: mpsc::Receiver<ReplayRequest>,
) {
    let Ok(store) = Store::open_reader(&dir) else {
        return;
    };
    let store = Arc::new(parking_lot::Mutex::new(store));
    while let Some(req) = requests.recv().await {
        // SQLite reads stay off the runtime, which may forward on one thread.
        let (store, id) = (store.clone(), req.id);
        let original = tokio::task::spawn_blocking(move || store.lock().get(id).ok().flatten())
            .await
            .ok()
            .flatten();
        if let Some(original) = original {
            let fwd = forwarder.clone();
            tokio::spawn(async move {
                fwd.replay(&original, req.edit).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the relay's thread sends, and when.
    async fn watched(
        outcome: Option<std::io::Result<()>>,
        stop_first: bool,
    ) -> (Result<(), AgentError>, bool) {
        let (tx, rx) = oneshot::channel();
        let (relay_stop, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let task = watch_embedded(rx, relay_stop.clone(), shutdown.clone());
        if stop_first {
            relay_stop.cancel();
        }
        match outcome {
            Some(r) => tx.send(r).unwrap(),
            // The thread panicked: its sender is dropped unsent.
            None => drop(tx),
        }
        (task.await.unwrap(), shutdown.is_cancelled())
    }

    #[tokio::test]
    async fn an_embedded_relay_that_stops_early_stops_the_agent_with_the_reason() {
        let (r, stopped) =
            watched(Some(Err(std::io::Error::other("no more sockets"))), false).await;
        assert!(stopped, "the agent is told to stop");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("embedded relay stopped: no more sockets"), "{e}");
        let (r, stopped) = watched(None, false).await;
        assert!(stopped);
        assert!(r.unwrap_err().to_string().contains("panicked"));
        let (r, stopped) = watched(Some(Ok(())), false).await;
        assert!(
            stopped && r.is_err(),
            "an unasked-for return is an early stop too"
        );
    }

    #[test]
    fn a_panic_on_the_relay_thread_becomes_an_error_with_its_message() {
        assert!(caught(|| Ok(())).is_ok());
        let e = caught(|| panic!("bad \x1b]0;title\x07 state {}", 7)).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("it panicked: bad "), "{e}");
        assert!(e.contains("state 7"), "{e}");
        assert!(!e.contains('\x1b') && !e.contains('\x07'), "escaped: {e:?}");
        let e = caught(|| panic!("static text")).unwrap_err().to_string();
        assert_eq!(e, "it panicked: static text");
        let long = caught(|| panic!("{}", "x".repeat(10_000)))
            .unwrap_err()
            .to_string();
        assert!(long.chars().count() <= "it panicked: ".len() + PANIC_MESSAGE_CHARS);
    }

    #[tokio::test]
    async fn an_embedded_relay_stopped_by_the_agent_is_no_error() {
        for outcome in [Some(Ok(())), Some(Err(std::io::Error::other("x"))), None] {
            let (r, stopped) = watched(outcome, true).await;
            assert!(r.is_ok());
            assert!(!stopped, "the agent was already stopping");
        }
    }
}
