//! The command line: argument parsing (clap) and the wiring of relay, agent,
//! capture and inspector for each subcommand. The contract is in
//! `shared/design.md` and the README; errors end as one line on stderr and a
//! non-zero exit.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentConfig, ConnectionStatus, RelayUrl};
use crate::capture::{self, BodyLimits, CaptureEvent, Recorder, Store, StoreConfig};
use crate::forward::{Forwarder, ForwarderConfig, HostHeader, Target};
use crate::relay::{Caps, Limits, OfflinePolicy, Relay, RelayConfig, Tokens};
use crate::tunnel::protocol::{generate_name, is_valid_name};
use crate::tunnel::tls;
use crate::units::{self, ByteSize, HumanDuration};

/// whtunnel: receive webhooks on localhost, record every exchange, inspect and replay them.
#[derive(Parser, Debug)]
#[command(name = "whtunnel", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Forward a public tunnel URL to an app on this machine and show every exchange.
    Listen(ListenArgs),
    /// Run the public relay server that agents connect to.
    Relay(RelayArgs),
    /// List and show recorded exchanges.
    Requests {
        #[command(subcommand)]
        command: RequestsCommand,
    },
    /// Send a recorded request again, to its target or to --to.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
struct DataDirArg {
    /// Where captures and the tunnel name are kept [default: the OS data dir, e.g. ~/.local/share/whtunnel].
    #[arg(long, env = "WHTUNNEL_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ListenArgs {
    /// Where to forward: a port (3000), host:port, or a URL (http://localhost:3000/base).
    target: String,
    /// Relay base URL, http(s):// or ws(s)://. Without it an embedded relay runs in this process.
    #[arg(long, env = "WHTUNNEL_RELAY")]
    relay: Option<String>,
    /// Token the relay expects.
    #[arg(long, env = "WHTUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Tunnel name (a-z, 0-9, '-'); by default one is generated once and kept in the data dir.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Print one line per exchange instead of the terminal inspector.
    #[arg(long)]
    no_tui: bool,
    /// Take the tunnel name over from another agent that holds it.
    #[arg(long)]
    takeover: bool,
    /// Host header the app sees: preserve (the public host), rewrite (the target's), or a value.
    #[arg(long, default_value = "preserve", value_parser = parse_host_header)]
    host_header: HostHeader,
    /// Extra CA certificate (PEM) to trust for a wss:// relay, e.g. a self-signed one.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Address of the embedded relay (only without --relay). Falls back to a free port if taken.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Do not record exchanges.
    #[arg(long)]
    no_capture: bool,
    /// Keep at most this many recorded exchanges (oldest deleted first).
    #[arg(long, default_value_t = StoreConfig::DEFAULT_MAX_EXCHANGES)]
    keep_exchanges: u64,
    /// Keep at most this many bytes of recorded bodies (e.g. 1GiB).
    #[arg(long, default_value_t = ByteSize(StoreConfig::DEFAULT_MAX_BYTES))]
    keep_bytes: ByteSize,
    /// While this agent is away: hold webhooks and deliver them when it is back (hold),
    /// or answer 503 so the sender retries (reject). Default: the relay's setting.
    #[arg(long)]
    offline: Option<OfflinePolicy>,
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8787")]
    listen: SocketAddr,
    /// A token agents may use (repeatable). Without any, one is generated and kept in the data dir.
    #[arg(long = "token", env = "WHTUNNEL_TOKEN", hide_env_values = true)]
    tokens: Vec<String>,
    /// A file with one accepted token per line ('#' starts a comment).
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Base URL the public uses to reach this relay, e.g. https://hooks.example.com.
    #[arg(long)]
    public_url: Option<String>,
    /// TLS certificate chain (PEM); serve HTTPS and wss://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long the app has to answer before the sender gets 504 (e.g. 30s, 500ms).
    #[arg(long, default_value_t = HumanDuration(units::DEFAULT_RESPONSE_TIMEOUT))]
    response_timeout: HumanDuration,
    /// Largest request body accepted; larger ones get 413 (e.g. 25MiB).
    #[arg(long, default_value_t = ByteSize(units::DEFAULT_MAX_BODY))]
    max_body: ByteSize,
    /// While a known tunnel's agent is away: hold webhooks (202) or reject them (503).
    #[arg(long, default_value_t = OfflinePolicy::default())]
    offline: OfflinePolicy,
    /// Most events held per tunnel; beyond it senders get 503 + Retry-After.
    #[arg(long, default_value_t = Caps::default().max_events)]
    hold_max_events: u64,
    /// Most body bytes held per tunnel (e.g. 1GiB).
    #[arg(long, default_value_t = ByteSize(Caps::default().max_bytes))]
    hold_max_bytes: ByteSize,
    /// Held events older than this are deleted (e.g. 72h).
    #[arg(long, default_value_t = HumanDuration(Caps::default().max_age))]
    hold_max_age: HumanDuration,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Abuse limits of `whtunnel relay` (see `relay::limits`); 0 disables a limit.
#[derive(Args, Debug)]
struct LimitArgs {
    /// Concurrent connections one IP may hold; more are closed at once.
    #[arg(long, default_value_t = Limits::default().max_conns_per_ip)]
    max_conns_per_ip: usize,
    /// Requests per second per tunnel; more get 429 with Retry-After.
    #[arg(long, default_value_t = Limits::default().rate_limit)]
    rate_limit: f64,
    /// Requests a tunnel may take at once above --rate-limit.
    #[arg(long, default_value_t = Limits::default().rate_burst)]
    rate_burst: u32,
    /// Requests one IP may have in flight on one tunnel; more get 429.
    #[arg(long, default_value_t = Limits::default().max_inflight_per_ip)]
    max_inflight_per_ip: usize,
    /// Unknown-tunnel requests per minute one IP may make before 429.
    #[arg(long, default_value_t = Limits::default().unknown_tunnel_per_min)]
    unknown_tunnel_limit: u32,
    /// Slowest request body accepted after a 10 s grace, per second averaged over 10 s; slower gets 408 (e.g. 1KiB).
    #[arg(long, default_value_t = ByteSize(Limits::default().min_body_rate))]
    min_body_rate: ByteSize,
    /// Time a sender has to send a request head (and a new connection's first bytes).
    #[arg(long, default_value_t = HumanDuration(Limits::default().header_read_timeout))]
    header_timeout: HumanDuration,
    /// Most header fields in one request; more get 431.
    #[arg(long, default_value_t = Limits::default().max_headers)]
    max_headers: usize,
}

impl LimitArgs {
    fn apply(&self, limits: &mut Limits) {
        limits.max_conns_per_ip = self.max_conns_per_ip;
        limits.rate_limit = self.rate_limit;
        limits.rate_burst = self.rate_burst;
        limits.max_inflight_per_ip = self.max_inflight_per_ip;
        limits.unknown_tunnel_per_min = self.unknown_tunnel_limit;
        limits.min_body_rate = self.min_body_rate.0;
        limits.header_read_timeout = self.header_timeout.0;
        limits.max_headers = self.max_headers;
    }
}

#[derive(Subcommand, Debug)]
enum RequestsCommand {
    /// List recorded exchanges, newest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Show one exchange with headers and bodies.
    Show {
        /// Exchange id (see `requests list`).
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print a curl command that sends the same request.
        #[arg(long, conflicts_with = "json")]
        curl: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Export recorded exchanges.
    Export {
        /// Write a HAR 1.2 file (importable in browser devtools).
        #[arg(long)]
        har: PathBuf,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Exchange id (see `requests list`).
    id: i64,
    /// Send to this target instead of the recorded one (port, host:port or URL).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    data_dir: DataDirArg,
}

fn parse_host_header(s: &str) -> Result<HostHeader, String> {
    s.parse()
}

/// Entry point of the `whtunnel` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // An agent with a remote relay serves one link: one worker thread avoids
    // a cross-thread wake-up at every hop of every exchange (measured in
    // docs/benchmarks.md: CPU per request halved, p50 latency -45 % at c=1).
    // TOKIO_WORKER_THREADS still overrides.
    if matches!(&cli.command, Command::Listen(a) if a.relay.is_some())
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap renders them; a usage error becomes one
/// line on stderr (the contract), pointing at `--help`.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        // `whtunnel` alone: the full help is the useful answer.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: invalid arguments");
            eprintln!("{} (see 'whtunnel --help')", first.trim_end());
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Listen(args) => listen(args).await,
        Command::Relay(args) => relay(args).await,
        Command::Requests { command } => requests(command),
        Command::Replay(args) => replay(args).await,
    }
}

/// Takes `<dir>/listen.lock` for as long as the returned file lives. Two
/// agents on one data dir would share a tunnel name and agent id (each
/// reconnect taking the tunnel from the other) and one capture store (each
/// start-up deleting the other's body files in flight), so the second is
/// refused. The kernel drops the lock when the process exits, however it exits.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("listen.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another 'whtunnel listen' is already using {}; stop it, or give this one its own --data-dir",
            dir.display()
        ),
        // A filesystem without locks: carry on, as before locks existed.
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!("cannot lock {}: {e}", path.display());
            Ok(file)
        }
    }
}

/// The data directory: `--data-dir`, `WHTUNNEL_DATA_DIR`, or the OS default.
fn resolve_data_dir(arg: &DataDirArg) -> Result<PathBuf> {
    match &arg.data_dir {
        Some(d) => Ok(d.clone()),
        None => dirs::data_dir().map(|d| d.join("whtunnel")).ok_or_else(|| {
            anyhow!("no home data directory found; pass --data-dir or set WHTUNNEL_DATA_DIR")
        }),
    }
}

/// Creates the data dir readable only by its owner: it holds captured
/// webhooks, which carry secrets.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The tunnel name: `--name`, or the one kept in the data dir, or a new one
/// (kept, so the URL pasted into a provider's dashboard keeps working).
fn tunnel_name(arg: Option<&str>, dir: &Path) -> Result<String> {
    if let Some(n) = arg {
        if !is_valid_name(n) {
            bail!("invalid --name '{n}': use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'");
        }
        return Ok(n.to_string());
    }
    let path = dir.join("name");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim();
        if is_valid_name(saved) {
            return Ok(saved.to_string());
        }
    }
    let name = generate_name();
    write_private(&path, &format!("{name}\n"))?;
    Ok(name)
}

/// This agent's id, generated once per data dir.
fn agent_id(dir: &Path) -> Result<String> {
    let path = dir.join("agent-id");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim();
        if !saved.is_empty() && saved.len() <= 64 {
            return Ok(saved.to_string());
        }
    }
    let id = generate_name();
    write_private(&path, &format!("{id}\n"))?;
    Ok(id)
}

fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}

fn init_logging(to_file: Option<&Path>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WHTUNNEL_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let file = to_file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

async fn relay(args: RelayArgs) -> Result<()> {
    init_logging(None, "info");
    let dir = resolve_data_dir(&args.data_dir)?;
    let mut tokens: Vec<String> = args.tokens.clone();
    if let Some(path) = &args.tokens_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tokens file {}", path.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if tokens.iter().all(|t| t.is_empty()) {
        ensure_private_dir(&dir)?;
        let path = dir.join("relay-token");
        let token = match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 24]>());
                write_private(&path, &format!("{t}\n"))?;
                t
            }
        };
        eprintln!(
            "No --token given: agents must use the token in {} (--token \"$(cat {})\")",
            path.display(),
            path.display()
        );
        tokens.push(token);
    }
    let mut config = RelayConfig::new(args.listen, Tokens::new(&tokens));
    config.public_url = args.public_url.clone();
    config.response_timeout = args.response_timeout.0;
    config.max_body = args.max_body.0;
    config.data_dir = Some(dir.clone());
    config.offline = args.offline;
    config.hold_caps = Caps {
        max_events: args.hold_max_events,
        max_bytes: args.hold_max_bytes.0,
        max_age: args.hold_max_age.0,
    };
    args.limits.apply(&mut config.limits);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(tls::server_config(cert, key)?);
    }
    let relay = Relay::bind(config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "whtunnel relay listening on {} (tunnels at {}/t/<name>)",
        relay.local_addr(),
        relay.base_url()
    );
    let stop = shutdown_signal();
    relay.run(stop.cancelled_owned()).await?;
    eprintln!("whtunnel relay stopped");
    Ok(())
}

async fn listen(args: ListenArgs) -> Result<()> {
    let dir = resolve_data_dir(&args.data_dir)?;
    ensure_private_dir(&dir)?;
    let _lock = lock_data_dir(&dir)?;
    let target: Target = args.target.parse()?;
    let name = tunnel_name(args.name.as_deref(), &dir)?;
    let use_tui = !args.no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if use_tui {
        init_logging(Some(&dir.join("whtunnel.log")), "info");
    } else {
        init_logging(None, "warn");
    }
    let stop = shutdown_signal();

    // Without --relay, run one in this process on loopback.
    let (relay_url, token) = match &args.relay {
        Some(url) => {
            let relay: RelayUrl = url.parse()?;
            let token = args
                .token
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    anyhow!("the relay needs a token: pass --token or set WHTUNNEL_TOKEN")
                })?;
            (relay, token)
        }
        None => {
            let token = data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 24]>());
            let mut config = RelayConfig::new(args.listen, Tokens::new([&token]));
            config.data_dir = Some(dir.join("relay"));
            // Only this machine reaches the embedded relay: rate limits would
            // only get in the way of load tests against one's own app.
            config.limits.rate_limit = 0.0;
            config.limits.unknown_tunnel_per_min = 0;
            let relay = match Relay::bind(config.clone()).await {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    config.listen.set_port(0);
                    let r = Relay::bind(config).await?;
                    if !use_tui {
                        eprintln!(
                            "note: {} is in use; the embedded relay listens on {} instead",
                            args.listen,
                            r.local_addr()
                        );
                    }
                    r
                }
                Err(e) => return Err(e).context(format!("cannot listen on {}", args.listen)),
            };
            let url: RelayUrl = relay.base_url().parse()?;
            let relay_stop = stop.clone();
            tokio::spawn(async move { relay.run(relay_stop.cancelled_owned()).await });
            (url, token)
        }
    };

    let mut body_limits = BodyLimits::new(dir.join("spill"));
    let recorder = if args.no_capture {
        None
    } else {
        let store = Store::open(&StoreConfig {
            dir: dir.clone(),
            max_exchanges: args.keep_exchanges,
            max_bytes: args.keep_bytes.0,
        })
        .with_context(|| format!("cannot open the capture store in {}", dir.display()))?;
        // Spilled bodies sit beside the store so keeping one is a rename.
        body_limits.spill_dir = store.spill_dir();
        Some(Recorder::spawn(store))
    };
    let forwarder = Forwarder::new(ForwarderConfig {
        target: target.clone(),
        host_header: args.host_header.clone(),
        recorder: recorder.clone(),
        body_limits,
    });
    let tls = tls::client_config(args.ca_cert.as_deref())?;
    let agent_config = AgentConfig {
        relay: relay_url,
        token,
        name,
        takeover: args.takeover,
        agent_id: Some(agent_id(&dir)?),
        offline: args.offline,
        tls,
    };
    let (status_tx, status_rx) = watch::channel(ConnectionStatus::Connecting);
    let agent_stop = stop.clone();
    let mut agent = tokio::spawn(agent::run(
        agent_config,
        forwarder.clone(),
        status_tx,
        agent_stop,
    ));

    // A refusal on the first attempt ends the command before any UI starts.
    let mut first = status_rx.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        first.wait_for(|s| !matches!(s, ConnectionStatus::Connecting)),
    )
    .await;
    if agent.is_finished() || matches!(*status_rx.borrow(), ConnectionStatus::Refused { .. }) {
        return finish_agent(agent.await);
    }

    let result = if use_tui {
        run_inspector(
            &dir,
            recorder.as_ref(),
            forwarder.clone(),
            status_rx,
            &target,
            &stop,
            &mut agent,
        )
        .await
    } else {
        run_log(recorder.as_ref(), status_rx, &target, &stop, &mut agent).await
    };
    stop.cancel();
    if let Some(r) = recorder {
        forwarder.settle(SETTLE_ON_STOP).await;
        r.close().await;
    }
    result
}

/// How long `listen` waits on the way out for calls to the app that are
/// still finishing after their stream was reset.
const SETTLE_ON_STOP: Duration = Duration::from_secs(10);

fn finish_agent(
    joined: std::result::Result<std::result::Result<(), agent::AgentError>, tokio::task::JoinError>,
) -> Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("{e}")),
        Err(e) => Err(anyhow!("the agent task failed: {e}")),
    }
}

/// `--no-tui`: one line per exchange on stdout, link changes on stderr.
async fn run_log(
    recorder: Option<&Recorder>,
    mut status: watch::Receiver<ConnectionStatus>,
    target: &Target,
    stop: &CancellationToken,
    agent: &mut tokio::task::JoinHandle<std::result::Result<(), agent::AgentError>>,
) -> Result<()> {
    let mut events = recorder.map(Recorder::subscribe);
    let mut announced = false;
    let report = |s: &ConnectionStatus, announced: &mut bool| match s {
        ConnectionStatus::Connected { public_url, held } => {
            if *announced {
                eprintln!("reconnected: {public_url}");
            } else {
                println!("Forwarding {public_url} -> {target}");
                *announced = true;
            }
            if *held > 0 {
                eprintln!("{held} events held while you were offline — delivering");
            }
        }
        ConnectionStatus::Reconnecting {
            retry_at,
            last_error,
        } => {
            let wait = retry_at.saturating_duration_since(Instant::now());
            eprintln!("{last_error}; reconnecting in {:.1}s", wait.as_secs_f64());
        }
        ConnectionStatus::Refused { reason } => eprintln!("{reason}"),
        ConnectionStatus::Connecting => {}
    };
    let current = status.borrow_and_update().clone();
    report(&current, &mut announced);
    loop {
        tokio::select! {
            changed = status.changed() => {
                // The agent ended: its result says why (a refusal is an error).
                if changed.is_err() {
                    return finish_agent((&mut *agent).await);
                }
                let s = status.borrow_and_update().clone();
                report(&s, &mut announced);
            }
            event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(rx) = events.as_mut() {
                    if !print_log_lines(event, rx) {
                        events = None;
                    }
                }
            }
            joined = &mut *agent => return finish_agent(joined),
            () = stop.cancelled() => break,
        }
    }
    Ok(())
}

/// Prints `first` and every capture event already waiting behind it with one
/// write: under load the recorder publishes a whole batch at once, and a
/// write per line would cost a syscall per exchange. Returns false once the
/// recorder is gone.
fn print_log_lines(
    first: Result<CaptureEvent, tokio::sync::broadcast::error::RecvError>,
    rx: &mut tokio::sync::broadcast::Receiver<CaptureEvent>,
) -> bool {
    use std::io::Write as _;
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut out = String::new();
    let mut open = true;
    let mut next = Some(first);
    while let Some(event) = next.take() {
        match event {
            Ok(CaptureEvent::Stored(s)) => out.push_str(&log_line(&s, None)),
            Ok(CaptureEvent::NotStored { summary, reason }) => {
                out.push_str(&log_line(&summary, Some(&reason)))
            }
            Err(RecvError::Lagged(n)) => {
                eprintln!("({n} exchanges not shown: output could not keep up)")
            }
            Err(RecvError::Closed) => {
                open = false;
                break;
            }
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if out.len() > 64 * 1024 {
            break;
        }
        next = match rx.try_recv() {
            Ok(e) => Some(Ok(e)),
            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => None,
        };
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    open
}

/// One exchange as a log line: time, method, path, status, duration, event.
pub fn log_line(s: &capture::ExchangeSummary, not_stored: Option<&str>) -> String {
    let time = s
        .received_at
        .with_timezone(&chrono::Local)
        .format("%H:%M:%S%.3f");
    let status = s
        .status
        .map(|c| c.to_string())
        .unwrap_or_else(|| "---".into());
    let mut line = format!(
        "{time} {:<6} {} {status} {:.1}ms",
        s.method, s.path, s.duration_ms
    );
    if let Some(e) = &s.event {
        line.push_str(&format!(" {e}"));
    }
    if let Some(id) = s.replay_of {
        line.push_str(&format!(" (replay of #{id})"));
    }
    if s.id > 0 {
        line.push_str(&format!(" #{}", s.id));
    }
    if let Some(err) = &s.error {
        line.push_str(&format!(" [{}]", err.trim()));
    }
    if let Some(reason) = not_stored {
        line.push_str(&format!(" [not stored: {reason}]"));
    }
    line
}

async fn run_inspector(
    dir: &Path,
    recorder: Option<&Recorder>,
    forwarder: Forwarder,
    status: watch::Receiver<ConnectionStatus>,
    target: &Target,
    stop: &CancellationToken,
    agent: &mut tokio::task::JoinHandle<std::result::Result<(), agent::AgentError>>,
) -> Result<()> {
    let recorder = recorder.ok_or_else(|| {
        anyhow!("the inspector needs the capture store; drop --no-capture or add --no-tui")
    })?;
    let public_url = match &*status.borrow() {
        ConnectionStatus::Connected { public_url, .. } => public_url.clone(),
        _ => String::new(),
    };
    let (replay_tx, mut replay_rx) = tokio::sync::mpsc::channel::<capture::ReplayRequest>(16);
    let reader = Store::open_reader(dir)?;
    let inputs = crate::inspect::Inputs {
        store: reader,
        events: recorder.subscribe(),
        status,
        replays: replay_tx,
        public_url,
        target: target.to_string(),
    };
    // Replays requested in the UI run here; their results reach the UI
    // through the capture like any other exchange.
    let replay_dir = dir.to_path_buf();
    tokio::spawn(async move {
        let Ok(store) = Store::open_reader(&replay_dir) else {
            return;
        };
        let store = Arc::new(std::sync::Mutex::new(store));
        while let Some(req) = replay_rx.recv().await {
            // SQLite reads stay off the runtime, which forwards on one thread.
            let (store, id) = (store.clone(), req.id);
            let original = tokio::task::spawn_blocking(move || {
                store.lock().ok().and_then(|s| s.get(id).ok().flatten())
            })
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
    });
    let mut ui = tokio::task::spawn_blocking(move || crate::inspect::run(inputs));
    tokio::select! {
        done = &mut ui => {
            stop.cancel();
            done.map_err(|e| anyhow!("the inspector crashed: {e}"))??;
            Ok(())
        }
        joined = &mut *agent => {
            stop.cancel();
            // The UI restores the terminal when its inputs close.
            let _ = ui.await;
            finish_agent(joined)
        }
    }
}

/// Opens the capture store of `dir` for reading, or `None` when nothing
/// was ever recorded there.
fn open_captures(dir: &Path) -> Result<Option<Store>> {
    if !dir.join(capture::store::DB_FILE).exists() {
        return Ok(None);
    }
    Store::open_reader(dir)
        .map(Some)
        .with_context(|| format!("cannot open the capture store in {}", dir.display()))
}

fn load_exchange(dir: &Path, id: i64) -> Result<capture::Exchange> {
    open_captures(dir)?
        .map(|s| s.get(id))
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            anyhow!(
                "no exchange #{id} in {} (see `whtunnel requests list`)",
                dir.display()
            )
        })
}

fn requests(command: RequestsCommand) -> Result<()> {
    use capture::export;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match command {
        RequestsCommand::List { json, data_dir } => {
            let dir = resolve_data_dir(&data_dir)?;
            let items = match open_captures(&dir)? {
                Some(store) => store.list(&capture::ListQuery::default())?,
                None => Vec::new(),
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&export::list_json(&items))?
                )?;
            } else if items.is_empty() {
                writeln!(out, "no exchanges recorded in {} yet", dir.display())?;
            } else {
                write!(out, "{}", export::list_human(&items))?;
            }
        }
        RequestsCommand::Show {
            id,
            json,
            curl,
            data_dir,
        } => {
            let ex = load_exchange(&resolve_data_dir(&data_dir)?, id)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&export::show_json(&ex))?
                )?;
            } else if curl {
                writeln!(out, "{}", export::curl_command(&ex, None))?;
            } else {
                write!(out, "{}", export::show_human(&ex))?;
            }
        }
        RequestsCommand::Export { har, data_dir } => {
            let dir = resolve_data_dir(&data_dir)?;
            let store = open_captures(&dir)?
                .ok_or_else(|| anyhow!("no exchanges recorded in {} yet", dir.display()))?;
            let file = std::fs::File::create(&har)
                .with_context(|| format!("cannot create {}", har.display()))?;
            let n = export::write_har(&store, None, std::io::BufWriter::new(file))?;
            eprintln!("wrote {n} exchanges to {}", har.display());
        }
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> Result<()> {
    let dir = resolve_data_dir(&args.data_dir)?;
    let original = load_exchange(&dir, args.id)?;
    // Only the recorded target unless --to says otherwise: a replay never
    // goes somewhere the user did not name.
    let target: Target = match &args.to {
        Some(to) => to.parse()?,
        None => original
            .target
            .parse()
            .with_context(|| format!("exchange #{} has no usable target; pass --to", args.id))?,
    };
    let store = Store::open_secondary(&StoreConfig::new(dir.clone()))
        .with_context(|| format!("cannot open the capture store in {}", dir.display()))?;
    let limits = BodyLimits::new(store.spill_dir());
    let recorder = Recorder::spawn(store);
    let forwarder = Forwarder::new(ForwarderConfig {
        target: target.clone(),
        host_header: HostHeader::Preserve,
        recorder: Some(recorder.clone()),
        body_limits: limits,
    });
    let outcome = forwarder.replay(&original, None).await;
    recorder.close().await;
    let id = outcome
        .id
        .map(|i| format!("#{i}"))
        .unwrap_or_else(|| "(not recorded)".into());
    match outcome.error {
        None => {
            println!(
                "replayed #{} -> {id}: {} in {} ({target})",
                args.id,
                outcome.status,
                units::fmt_duration(outcome.duration.as_secs_f64() * 1000.0)
            );
            Ok(())
        }
        Some(e) => bail!(
            "replay of #{} to {target} failed: {} ({e})",
            args.id,
            outcome.status
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = tunnel_name(None, dir.path()).unwrap();
        assert_eq!(tunnel_name(None, dir.path()).unwrap(), first);
        assert_eq!(tunnel_name(Some("mine"), dir.path()).unwrap(), "mine");
        assert!(tunnel_name(Some("Bad Name"), dir.path()).is_err());
        assert_eq!(tunnel_name(None, dir.path()).unwrap(), first);
    }

    #[test]
    fn cli_parses_the_contract() {
        Cli::try_parse_from(["whtunnel", "listen", "3000"]).unwrap();
        Cli::try_parse_from([
            "whtunnel",
            "listen",
            "http://localhost:3000/base",
            "--relay",
            "https://r.example",
            "--token",
            "t",
            "--name",
            "n",
            "--data-dir",
            "/tmp/x",
            "--no-tui",
        ])
        .unwrap();
        Cli::try_parse_from([
            "whtunnel",
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "a",
            "--token",
            "b",
            "--data-dir",
            "/tmp/x",
            "--public-url",
            "https://h",
        ])
        .unwrap();
        Cli::try_parse_from([
            "whtunnel",
            "requests",
            "list",
            "--json",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        Cli::try_parse_from(["whtunnel", "requests", "show", "3", "--json"]).unwrap();
        Cli::try_parse_from(["whtunnel", "replay", "3", "--to", "http://localhost:4000"]).unwrap();
        assert!(Cli::try_parse_from(["whtunnel", "listen"]).is_err());
    }
}
