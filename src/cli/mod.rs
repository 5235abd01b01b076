//! The command line: each subcommand runs the library's parts (relay,
//! [`agent::Listener`](crate::agent::Listener), capture, inspector) and prints
//! what they report. The contract is in the README; errors end as one line
//! on stderr and a non-zero exit.
//!
//! [`args`] holds the clap definitions, [`datadir`] what is kept in the data
//! directory, [`log`] the `--no-tui` output, [`requests`] the capture
//! readers, [`relay_config`] `whtunnel relay --config FILE`.

pub mod args;
pub mod datadir;
pub mod fixtures;
mod held;
pub mod log;
pub mod relay_config;
pub mod requests;
mod users;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Capture, ConnectionStatus, ListenConfig, Listener, RelayChoice};
use crate::capture::{self, BodyLimits, Recorder, Store, StoreConfig};
use crate::config::layered;
use crate::forward::{Forwarder, ForwarderConfig, HostHeader, Target};
use crate::relay::{self, Caps, Relay, RelayConfig, Tokens};
use crate::tunnel::tls;
use crate::units;

use args::{Cli, Command, ListenArgs, RelayArgs, ReplayArgs};
use datadir::{
    agent_id, ensure_private_dir, lock_data_dir, relay_token, resolve_data_dir, tunnel_name,
};
use log::{init_logging, run_log};
use requests::{load_exchange, requests};

/// Entry point of the `whtunnel` binary.
pub fn main() -> ExitCode {
    // `relay --config FILE`: the file's settings join the command line
    // before it is parsed, so a flag may also complete one in the file.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = match relay_config::requested(&argv) {
        Some(file) => match relay_config::merge(&argv, &file) {
            Ok(merged) => merged,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => argv,
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads(
        &cli.command,
        std::env::var_os("TOKIO_WORKER_THREADS").is_some(),
    ) {
        builder.worker_threads(threads);
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
        Err(e) if e.is::<log::Reported>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime's worker threads where whtunnel chooses them; `None` leaves
/// tokio's choice (`TOKIO_WORKER_THREADS`, else one per core).
///
/// A relay takes `--threads`, else the environment, else
/// [`relay::DEFAULT_WORKER_THREADS`]. An agent serves one link: one worker
/// thread avoids a cross-thread wake-up at every hop of every exchange
/// (docs/benchmarks.md: CPU per request halved, p50 latency -45 % at c=1),
/// unless the environment says otherwise. Its embedded relay, if any, runs
/// on a thread of its own ([`agent::Listener::run`]).
fn worker_threads(command: &Command, env_set: bool) -> Option<usize> {
    match command {
        Command::Relay(a) => match a.threads {
            Some(n) => Some(usize::from(n)),
            None if env_set => None,
            None => Some(relay::DEFAULT_WORKER_THREADS),
        },
        Command::Listen(_) if !env_set => Some(1),
        _ => None,
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
        Command::Relay(args) => relay(*args).await,
        Command::Requests { command } => requests(command),
        Command::Replay(args) => replay(args).await,
        Command::Fixtures { command } => fixtures::fixtures(command),
        Command::Send(args) => fixtures::send(args).await,
        Command::Test(args) => fixtures::test(args).await,
        Command::Trigger(args) => fixtures::trigger(args).await,
        Command::Held(args) => held::held(args).await,
    }
}

fn shutdown_signal() -> CancellationToken {
    shutdown_signals(None)
}

/// A token cancelled by the first Ctrl-C or SIGTERM. With `abandon`, the
/// next one (or the first after `stop` was cancelled otherwise, say by `q`
/// in the inspector) cancels `abandon`: the user gives up on what is still
/// in flight.
///
/// The handlers are installed before this returns, not in the task it
/// spawns: a supervisor may send SIGTERM as soon as the first line is out,
/// and a signal with no handler yet would kill the process instead of
/// stopping it cleanly.
fn shutdown_signals(abandon: Option<CancellationToken>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let mut signals = Signals::install();
    tokio::spawn(async move {
        loop {
            signals.next().await;
            match &abandon {
                Some(abandon) if t.is_cancelled() => {
                    abandon.cancel();
                    return;
                }
                None if t.is_cancelled() => return,
                _ => t.cancel(),
            }
        }
    });
    token
}

/// The stop signals, listened to from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers now. One that cannot be installed is said on
    /// stderr and never fires; the other still does.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let install = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("cannot listen for {name} ({e}): use the other signal to stop");
                    None
                }
            };
            Self {
                interrupt: install(SignalKind::interrupt(), "Ctrl-C"),
                terminate: install(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.interrupt) => {}
                () = recv(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Says on stderr what stopping waits for, when anything.
pub(crate) fn say_waiting(in_flight: usize) {
    if in_flight > 0 {
        let s = if in_flight == 1 { "" } else { "s" };
        eprintln!("{in_flight} request{s} in flight — waiting (Ctrl-C again to abandon)");
    }
}

async fn relay(args: RelayArgs) -> Result<()> {
    if let Some(args::RelayCommand::User { command }) = args.command {
        return users::user_command(command);
    }
    let format = args.ops.log_format;
    log::init_relay_logging(format);
    let ran = serve_relay(args, format).await;
    match ran {
        // JSON logs: the error too is a JSON line.
        Err(e) if format == args::LogFormat::Json => {
            tracing::error!("{e:#}");
            Err(log::Reported.into())
        }
        other => other,
    }
}

async fn serve_relay(args: RelayArgs, format: args::LogFormat) -> Result<()> {
    let domain =
        match &args.domain {
            Some(d) => Some(crate::relay::host::normalize_domain(d).ok_or_else(|| {
                anyhow!("--domain {d:?} is not a DNS name like hooks.example.com")
            })?),
            None => None,
        };
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
    let users = match &args.users_file {
        Some(path) => {
            let watch = crate::relay::UsersWatch::open(path)?;
            if watch.is_empty() {
                log::relay_warns(
                    format,
                    &format!(
                        "warning: {} has no users yet: add one with `whtunnel relay user add USER --names PATTERN --users-file {}`",
                        path.display(),
                        path.display()
                    ),
                );
            }
            if !tokens.is_empty() {
                // WHTUNNEL_TOKEN may be set for agents on the same machine.
                log::relay_says(
                    format,
                    "note: --users-file is given, so --token / WHTUNNEL_TOKEN is not accepted by this relay",
                );
                tokens.clear();
            }
            Some(std::sync::Arc::new(watch))
        }
        None => None,
    };
    for t in tokens.iter().filter(|t| !t.is_empty()) {
        if let Some(warning) = users::weak_token_warning(t) {
            log::relay_warns(format, &warning);
        }
    }
    if users.is_none() && tokens.iter().all(|t| t.is_empty()) {
        let (token, path) = relay_token(&dir, |w| log::relay_warns(format, w))?;
        log::relay_says(
            format,
            &format!(
                "No --token given: agents must use the token in {} (--token-file {})",
                path.display(),
                path.display()
            ),
        );
        tokens.push(token);
    }
    let mut config = RelayConfig::new(args.listen, Tokens::new(&tokens));
    config.public_url = args.public_url.clone();
    config.domain = domain;
    config.response_timeout = args.response_timeout.0;
    config.max_body = args.max_body.0;
    config.data_dir = Some(dir.clone());
    config.offline = args.offline;
    config.hold_caps = Caps {
        max_events: args.hold_max_events,
        max_bytes: args.hold_max_bytes.0,
        max_age: args.hold_max_age.0,
        max_total_bytes: args.hold_max_total_bytes.0,
    };
    config.hold_delivery.concurrency = args.hold_concurrency;
    config.hold_delivery.order = args.hold_order;
    args.limits.apply(&mut config.limits);
    config.users = users;
    config.max_names_per_user = args.max_names_per_user;
    config.name_lifetime = args.name_lifetime.0;
    if config.name_lifetime < config.hold_caps.max_age {
        log::relay_warns(
            format,
            &format!(
                "warning: --name-lifetime {} is shorter than --hold-max-age {}: a name whose agent stays away that long is forgotten with its held events before they age out",
                crate::units::HumanDuration(config.name_lifetime),
                crate::units::HumanDuration(config.hold_caps.max_age)
            ),
        );
    }
    config.trust_forwarded = args.trust_forwarded;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(tls::server_config(cert, key)?);
    }
    if args.acme_email.is_some() || args.acme_directory.is_some() {
        let directory = args
            .acme_directory
            .clone()
            .unwrap_or_else(|| units::ACME_DIRECTORY.to_string());
        let domain = config.domain.clone().context("--acme-* needs --domain")?;
        let mut acme = crate::relay::acme::AcmeConfig::new(directory, domain, &dir);
        acme.email = args.acme_email.clone();
        acme.ca_cert = args.acme_ca_cert.clone();
        acme.renew_before = args.acme_renew_before.0;
        acme.check_every = args.acme_check_every.0;
        config.acme = Some(crate::relay::acme::CertManager::new(acme)?);
    }
    config.cluster = cluster_config(&args.cluster)?;
    let relay = Relay::bind(config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = match args.ops.admin_listen {
        Some(at) => Some((
            relay::admin::AdminServer::bind(at.0, relay.status())
                .await
                .with_context(|| format!("cannot listen on --admin-listen {at}"))?,
            at.is_exposed(),
        )),
        None => None,
    };
    let tunnels_at = match &args.domain {
        Some(_) => format!("{}/t/<name> and <name>.<domain>", relay.base_url()),
        None => format!("{}/t/<name>", relay.base_url()),
    };
    log::relay_says(
        format,
        &format!(
            "whtunnel relay listening on {} (tunnels at {tunnels_at})",
            relay.local_addr(),
        ),
    );
    if let Some(addr) = relay.hop_addr() {
        log::relay_says(
            format,
            &format!("taking hops from the cluster's relays on http://{addr}"),
        );
    }
    // The admin endpoint outlives the relay's own shutdown, so /healthz
    // says "draining" while in-flight exchanges finish.
    let admin_stop = CancellationToken::new();
    let admin = admin.map(|(admin, exposed)| {
        let addr = admin.local_addr();
        log::relay_says(
            format,
            &format!("admin endpoint on http://{addr} (GET /healthz, /metrics)"),
        );
        if exposed {
            log::relay_says(
                format,
                &format!(
                    "warning: the admin endpoint on {addr} has no authentication and is \
                     reachable from other machines; firewall it or bind it to loopback"
                ),
            );
        }
        tokio::spawn(admin.run(admin_stop.clone().cancelled_owned()))
    });
    let stop = shutdown_signal();
    let ran = relay.run(stop.cancelled_owned()).await;
    admin_stop.cancel();
    if let Some(task) = admin {
        let _ = task.await;
    }
    ran.context("the relay stopped")?;
    log::relay_says(format, "whtunnel relay stopped");
    Ok(())
}

/// The `--cluster*` flags as a [`crate::cluster::ClusterConfig`]; `None`
/// without `--cluster`.
fn cluster_config(args: &args::ClusterArgs) -> Result<Option<crate::cluster::ClusterConfig>> {
    if args.cluster.is_empty() {
        return Ok(None);
    }
    for url in &args.cluster {
        if !url.starts_with("nats://") {
            bail!("--cluster: '{url}' is not a nats://HOST:PORT URL");
        }
    }
    let secret = match &args.cluster_secret_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cluster secret file {}", path.display()))?
            .trim()
            .to_string(),
        None => std::env::var("WHTUNNEL_CLUSTER_SECRET").map_err(|_| {
            anyhow!("--cluster needs the cluster's shared secret: pass --cluster-secret-file FILE or set WHTUNNEL_CLUSTER_SECRET")
        })?,
    };
    let mut config = crate::cluster::ClusterConfig::new(args.cluster.clone(), secret);
    config.advertise = args.cluster_advertise.clone();
    config.listen = args.cluster_listen;
    config.holder_ttl = args.cluster_holder_ttl.0;
    Ok(Some(config))
}

async fn listen(mut args: ListenArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let file = crate::config::Config::from_cli(args.config.as_deref(), &cwd)?;
    // A flag (or, for the relay, its environment variable: clap merged
    // them), then the file.
    let target = match layered(args.target.take(), None, file.listen.target.clone()) {
        Some((t, _)) => t,
        None => bail!(
            "no target: pass TARGET (a port like 3000, host:port or a URL), \
             or set [listen] target in whtunnel.toml"
        ),
    };
    let target: Target = target.parse()?;
    if args.relay.is_empty() {
        args.relay.extend(file.listen.relay.clone());
    }
    args.name = layered(args.name.take(), None, file.listen.name.clone()).map(|(n, _)| n);
    let routes = file
        .routes
        .iter()
        .map(|r| {
            let file_name = file
                .path
                .as_deref()
                .unwrap_or(Path::new(crate::config::FILE_NAME));
            let t: Target = r
                .target
                .parse()
                .map_err(|e| anyhow!("{}: route.target: {e}", file_name.display()))?;
            Ok((r.path.clone(), t))
        })
        .collect::<Result<Vec<_>>>()?;
    let dir = resolve_data_dir(&args.data_dir)?;
    let open_dir = ensure_private_dir(&dir)?;
    let _lock = lock_data_dir(&dir)?;
    let name = tunnel_name(args.name.as_deref(), &dir)?;
    let use_tui = !args.no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if use_tui {
        init_logging(Some(&dir.join("whtunnel.log")), "info");
    } else {
        init_logging(None, "warn");
    }
    let mut config = ListenConfig::new(target.clone(), name, dir.clone());
    config.routes = routes;
    config.webhooks = file.webhook_rules();
    if let Some((url, more)) = args.relay.split_first() {
        let token = users::token_from(args.token.clone(), args.token_file.as_deref())?.ok_or_else(
            || anyhow!("the relay needs a token: pass --token-file FILE or set WHTUNNEL_TOKEN"),
        )?;
        let url: agent::RelayUrl = url.parse()?;
        if let Some(warning) = users::cleartext_warning(&url) {
            eprintln!("{warning}");
            tracing::warn!("{warning}");
        }
        config.relay = RelayChoice::Remote {
            url,
            token,
            tls: tls::client_config(args.ca_cert.as_deref())?,
        };
        config.more_relays = more.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    } else {
        config.relay = RelayChoice::Embedded {
            listen: args.listen,
        };
    }
    config.agent_id = Some(agent_id(&dir)?);
    config.takeover = args.takeover;
    config.retry_taken = args.retry_taken;
    config.offline = args.offline;
    config.hold_concurrency = args.hold_concurrency;
    config.host_header = args.host_header.clone();
    config.capture = if args.no_capture {
        Capture::Off
    } else {
        Capture::Store(StoreConfig {
            dir: dir.clone(),
            max_exchanges: args.keep_exchanges,
            max_bytes: args.keep_bytes.0,
        })
    };
    let listener = Listener::bind(config).await?;
    if let Some(relay) = listener.embedded_relay() {
        if let Some(asked) = relay.fallback_from {
            let warning = format!(
                "warning: {asked} is in use, so the embedded relay listens on {} instead: \
                 the public URL is NOT the usual one and webhooks sent to the old one will not \
                 arrive; stop what holds {asked}, or pick a fixed port with --listen 127.0.0.1:PORT",
                relay.addr
            );
            // In the inspector, stderr is hidden: the log file keeps it.
            if use_tui {
                tracing::warn!("{warning}");
            } else {
                eprintln!("{warning}");
            }
        }
    }
    // Probed before the agent runs (it moves the listener); said only once
    // the relay took the agent, so that a refusal stays one line.
    let app_down = match listener.probe_app().await {
        agent::listener::AppState::NotListening { why } => Some(why),
        _ => None,
    };
    let stop = shutdown_signals(Some(listener.abandon_token()));
    let in_flight = listener.in_flight();
    let backlog = listener.forwarder().backlog();
    let dead_letters = listener.forwarder().dead_letters();
    let status = listener.status();
    let recorder = listener.recorder().cloned();
    let replays = listener.replays();
    let notice = use_tui.then(|| {
        crate::inspect::notice::follow(
            listener.app_state(),
            recorder.as_ref().map(Recorder::subscribe_finished),
            target.clone(),
            listener.embedded_relay(),
        )
    });
    let mut agent = tokio::spawn(listener.run(stop.clone()));

    // A refusal on the first attempt ends the command before any UI starts.
    let mut first = status.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        first.wait_for(|s| !matches!(s, ConnectionStatus::Connecting)),
    )
    .await;
    if agent.is_finished() || matches!(*status.borrow(), ConnectionStatus::Refused { .. }) {
        return finish_agent(agent.await);
    }

    if let Some(warning) = open_dir {
        eprintln!("{warning}");
    }
    if let Some(why) = app_down {
        // In the inspector, stderr is hidden: the log file keeps it.
        if use_tui {
            tracing::warn!(
                "app: nothing listening on {} yet ({why})",
                target.authority()
            );
        } else {
            eprintln!("app: nothing listening on {} yet", target.authority());
        }
    }
    let ended = if use_tui {
        run_inspector(
            &dir,
            recorder.as_ref(),
            replays,
            status,
            notice,
            (backlog, dead_letters),
            &target,
            &stop,
            &mut agent,
        )
        .await
    } else {
        run_log(
            recorder.as_ref(),
            status,
            &target,
            &stop,
            &mut agent,
            &in_flight,
            backlog,
        )
        .await
    };
    if use_tui && matches!(ended, Ended::Stopped(_)) {
        say_waiting(*in_flight.borrow());
    }
    stop.cancel();
    // The listener lets calls still in the app's hands finish and closes the
    // store before its task ends.
    match ended {
        Ended::Agent(joined) => finish_agent(joined),
        Ended::Stopped(result) => {
            let joined = agent.await;
            result.and(finish_agent(joined))
        }
    }
}

/// The listener's task, as `listen` runs it.
pub(crate) type AgentTask = tokio::task::JoinHandle<std::result::Result<(), agent::AgentError>>;

/// How the foreground of `listen` (inspector or log) ended.
pub(crate) enum Ended {
    /// The user quit, or a signal came: the listener is still stopping.
    Stopped(Result<()>),
    /// The listener's task ended first; this is its result.
    Agent(std::result::Result<std::result::Result<(), agent::AgentError>, tokio::task::JoinError>),
}

fn finish_agent(
    joined: std::result::Result<std::result::Result<(), agent::AgentError>, tokio::task::JoinError>,
) -> Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("{e}")),
        Err(e) => Err(anyhow!("the agent task failed: {e}")),
    }
}

// The listener's parts, handed over one by one: a struct would exist for
// this one call.
#[allow(clippy::too_many_arguments)]
async fn run_inspector(
    dir: &Path,
    recorder: Option<&Recorder>,
    replays: tokio::sync::mpsc::Sender<capture::ReplayRequest>,
    status: watch::Receiver<ConnectionStatus>,
    notice: Option<watch::Receiver<String>>,
    (backlog, dead_letters): (
        watch::Receiver<u64>,
        watch::Receiver<crate::forward::DeadLetters>,
    ),
    target: &Target,
    stop: &CancellationToken,
    agent: &mut AgentTask,
) -> Ended {
    let Some(recorder) = recorder else {
        return Ended::Stopped(Err(anyhow!(
            "the inspector needs the capture store; drop --no-capture or add --no-tui"
        )));
    };
    let public_url = match &*status.borrow() {
        ConnectionStatus::Connected { public_url, .. } => public_url.clone(),
        _ => String::new(),
    };
    let reader = match Store::open_reader(dir) {
        Ok(r) => r,
        Err(e) => return Ended::Stopped(Err(e.into())),
    };
    let inputs = crate::inspect::Inputs {
        store: reader,
        events: recorder.subscribe(),
        status,
        replays,
        public_url,
        target: target.to_string(),
        notice,
        backlog: Some(backlog),
        dead_letters: Some(dead_letters),
    };
    let mut ui = tokio::task::spawn_blocking(move || crate::inspect::run(inputs));
    tokio::select! {
        done = &mut ui => {
            stop.cancel();
            Ended::Stopped(match done {
                Ok(r) => r,
                Err(e) => Err(anyhow!("the inspector crashed: {e}")),
            })
        }
        joined = &mut *agent => {
            stop.cancel();
            // The UI restores the terminal when its inputs close.
            let _ = ui.await;
            Ended::Agent(joined)
        }
    }
}

async fn replay(args: ReplayArgs) -> Result<()> {
    let dir = resolve_data_dir(&args.data_dir)?;
    let original = load_exchange(&dir, args.id)?;
    if let (Some(why), false) = (crate::forward::not_replayable(&original), args.force) {
        bail!("{why}");
    }
    // Only the recorded target unless --to says otherwise: a replay never
    // goes somewhere the user did not name.
    let target: Target = match &args.to {
        Some(to) => to.parse()?,
        None => {
            let recorded: Target = original.target.parse().with_context(|| {
                format!("exchange #{} has no usable target; pass --to", args.id)
            })?;
            // The store is only a file: an edited copy must not send the
            // recorded headers (Authorization, signatures) to another host.
            if !recorded.is_loopback() {
                bail!(
                    "exchange #{} was recorded for {recorded}, which is not this machine; \
                     pass --to {recorded} to send it there",
                    args.id
                );
            }
            recorded
        }
    };
    eprintln!("replaying #{} to {target}", args.id);
    let store = Store::open_secondary(&StoreConfig::new(dir.clone()))
        .with_context(|| format!("cannot open the capture store in {}", dir.display()))?;
    let limits = BodyLimits::new(store.spill_dir());
    let recorder = Recorder::spawn(store);
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let file = crate::config::Config::from_cli(args.config.as_deref(), &cwd)?;
    let rules = file.webhook_rules();
    recorder.set_webhook_rules(rules.clone());
    let rules = std::sync::Arc::new(rules);
    let forwarder = Forwarder::new(ForwarderConfig {
        target: target.clone(),
        routes: Vec::new(),
        webhooks: rules,
        host_header: HostHeader::Preserve,
        recorder: Some(recorder.clone()),
        body_limits: limits,
    });
    let options = crate::forward::ReplayOptions {
        edit: replay_edit(&original, &args)?,
        force: args.force,
        as_is: args.as_is,
    };
    let outcome = forwarder.replay_with(&original, options).await;
    recorder.close().await;
    if outcome.signing != crate::forward::Signing::None {
        eprintln!("{}", outcome.signing);
    }
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

/// The edit `--set`, `--header` and `--body-file` ask for, or `None` to
/// send the recorded request.
fn replay_edit(
    original: &capture::Exchange,
    args: &ReplayArgs,
) -> Result<Option<capture::RequestEdit>> {
    if args.set.is_empty() && args.headers.is_empty() && args.body_file.is_none() {
        return Ok(None);
    }
    let stored = capture::read_body(&original.request.body)
        .with_context(|| format!("cannot read the body of #{}", args.id))?;
    let body = match &args.body_file {
        Some(path) => bytes::Bytes::from(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None if args.set.is_empty() => stored,
        None => {
            let mut doc: serde_json::Value =
                serde_json::from_slice(&stored).with_context(|| {
                    format!("--set edits JSON, and the body of #{} is not JSON", args.id)
                })?;
            for assignment in &args.set {
                crate::fixture::set::apply(&mut doc, assignment).map_err(|e| anyhow!("{e}"))?;
            }
            bytes::Bytes::from(serde_json::to_vec(&doc)?)
        }
    };
    let mut headers = original.request.headers.clone().into_owned();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header '{h}' is not 'Name: value'"))?;
        let name = name.trim();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            bail!("--header '{h}': '{name}' is not a header name");
        }
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value.trim().as_bytes().to_vec()));
    }
    if args.as_is && !args.set.is_empty() {
        eprintln!(
            "note: --as-is keeps the recorded signature, which an edited body no longer matches"
        );
    }
    Ok(Some(capture::RequestEdit {
        method: original.request.method.clone(),
        path: original.request.path.clone(),
        headers,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGTERM that arrives right after the token is made (a supervisor
    /// stopping a relay the moment it printed its address) stops it
    /// cleanly: the handler is in place before `shutdown_signals` returns,
    /// not once a spawned task first runs. On a one-thread runtime that task
    /// has not run yet here, so without the handler the signal's default
    /// action would end this test process.
    #[cfg(unix)]
    #[tokio::test(flavor = "current_thread")]
    async fn a_sigterm_right_after_start_up_is_caught_not_fatal() {
        let token = shutdown_signals(None);
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill failed: {sent}");
        tokio::time::timeout(Duration::from_secs(10), token.cancelled())
            .await
            .expect("the SIGTERM cancels the token");
    }

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
        // TARGET may come from whtunnel.toml: its absence is checked once
        // the file is read.
        Cli::try_parse_from(["whtunnel", "listen", "--config", "w.toml"]).unwrap();
        assert!(Cli::try_parse_from(["whtunnel", "listen", "3000", "4000"]).is_err());
    }
}
