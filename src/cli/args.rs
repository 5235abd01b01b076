//! The command line's shape: every subcommand, flag and default, as clap
//! definitions. Defaults come from the types that use them (see
//! [`crate::units`]), never from a second literal.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::agent::listener::EMBEDDED_RELAY_ADDR;
use crate::capture::StoreConfig;
use crate::forward::HostHeader;
use crate::relay::{Caps, HoldDelivery, HoldOrder, Limits, OfflinePolicy};
use crate::units::{self, ByteSize, HumanDuration};

/// whtunnel: receive webhooks on localhost, record every exchange, inspect and replay them.
#[derive(Parser, Debug)]
#[command(name = "whtunnel", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Forward a public tunnel URL to an app on this machine and show every exchange.
    Listen(ListenArgs),
    /// Run the public relay server that agents connect to.
    Relay(Box<RelayArgs>),
    /// List and show recorded exchanges.
    Requests {
        #[command(subcommand)]
        command: RequestsCommand,
    },
    /// Send a recorded request again, to its target or to --to.
    Replay(ReplayArgs),
    /// Save recorded exchanges as fixture files.
    Fixtures {
        #[command(subcommand)]
        command: FixturesCommand,
    },
    /// Send fixture files to the app, signed afresh like their provider would.
    Send(SendArgs),
    /// Send fixture files and check the app's answers (exit 0 only if all hold).
    Test(TestArgs),
    /// Send a sample event from the built-in catalog (or --list them).
    Trigger(TriggerArgs),
    /// List, retry or drop a tunnel's events held by its relay (dead letters included).
    Held(HeldArgs),
}

#[derive(Args, Debug)]
pub(crate) struct HeldArgs {
    #[command(flatten)]
    pub(crate) common: HeldCommon,
    #[command(subcommand)]
    pub(crate) command: HeldCommand,
}

#[derive(Args, Debug)]
pub(crate) struct HeldCommon {
    /// Relay base URL, http(s)://.
    #[arg(long, env = "WHTUNNEL_RELAY", global = true)]
    pub(crate) relay: Option<String>,
    /// The token the tunnel's agent uses (prefer --token-file or WHTUNNEL_TOKEN: argv is visible in ps).
    #[arg(long, env = "WHTUNNEL_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Read the token from this file (first line).
    #[arg(long, global = true, conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,
    /// The tunnel name.
    #[arg(long, global = true)]
    pub(crate) name: Option<String>,
    /// Extra CA certificate (PEM) to trust for an https:// relay.
    #[arg(long, global = true)]
    pub(crate) ca_cert: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum HeldCommand {
    /// List held and dead-lettered events, oldest first.
    List {
        /// Print the relay's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead-lettered event back at the end of the queue.
    Retry {
        /// Event id (see `held list`).
        event_id: String,
    },
    /// Delete a held or dead-lettered event.
    Drop {
        /// Event id (see `held list`).
        event_id: String,
    },
}

#[derive(Args, Debug)]
pub(crate) struct DataDirArg {
    /// Where captures and the tunnel name are kept [default: the OS data dir, e.g. ~/.local/share/whtunnel].
    #[arg(long, env = "WHTUNNEL_DATA_DIR", global = true)]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ListenArgs {
    /// Where to forward: a port (3000), host:port, or a URL (http://localhost:3000/base).
    /// Optional when whtunnel.toml has [listen] target.
    pub(crate) target: Option<String>,
    /// The project config file [default: WHTUNNEL_CONFIG, else the nearest whtunnel.toml].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Relay base URL, http(s):// or ws(s)://; repeat it for the relays of a cluster, tried in turn.
    /// Without it an embedded relay runs in this process.
    #[arg(long, env = "WHTUNNEL_RELAY")]
    pub(crate) relay: Vec<String>,
    /// Token the relay expects (prefer --token-file or WHTUNNEL_TOKEN: argv is visible in ps).
    #[arg(long, env = "WHTUNNEL_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Read the relay token from this file (first line).
    #[arg(long, conflicts_with = "token")]
    pub(crate) token_file: Option<PathBuf>,
    /// When another agent takes the name over, keep retrying (until it is free) instead of exiting.
    #[arg(long)]
    pub(crate) retry_taken: bool,
    /// Tunnel name (a-z, 0-9, '-'); by default one is generated once and kept in the data dir.
    #[arg(long)]
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) data_dir: DataDirArg,
    /// Print one line per exchange instead of the terminal inspector.
    #[arg(long)]
    pub(crate) no_tui: bool,
    /// Take the tunnel name over from another agent that holds it.
    #[arg(long)]
    pub(crate) takeover: bool,
    /// Host header the app sees: preserve (the public host), rewrite (the target's), or a value.
    #[arg(long, default_value = "preserve", value_parser = parse_host_header)]
    pub(crate) host_header: HostHeader,
    /// Extra CA certificate (PEM) to trust for a wss:// relay, e.g. a self-signed one.
    #[arg(long)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Address of the embedded relay (only without --relay). Falls back to a free port if taken.
    #[arg(long, default_value_t = EMBEDDED_RELAY_ADDR)]
    pub(crate) listen: SocketAddr,
    /// Do not record exchanges.
    #[arg(long)]
    pub(crate) no_capture: bool,
    /// Keep at most this many recorded exchanges. Once passed, the oldest are dropped 1/16 of it
    /// at a time, so between 15/16 of it and all of it are kept.
    #[arg(long, default_value_t = StoreConfig::DEFAULT_MAX_EXCHANGES)]
    pub(crate) keep_exchanges: u64,
    /// Keep at most this many bytes of recorded bodies (e.g. 1GiB); the oldest go first.
    #[arg(long, default_value_t = ByteSize(StoreConfig::DEFAULT_MAX_BYTES))]
    pub(crate) keep_bytes: ByteSize,
    /// While this agent is away: hold webhooks and deliver them when it is back (hold),
    /// or answer 503 so the sender retries (reject). Default: the relay's setting.
    #[arg(long)]
    pub(crate) offline: Option<OfflinePolicy>,
    /// Held events delivered at once when this agent returns (the relay caps it at its own setting) [default: the relay's, 16].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) hold_concurrency: Option<u32>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RelayArgs {
    #[command(subcommand)]
    pub(crate) command: Option<RelayCommand>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8787")]
    pub(crate) listen: SocketAddr,
    /// Worker threads [default: 1, or TOKIO_WORKER_THREADS]. One serves
    /// webhooks best; more help many busy tunnels or TLS on a many-core machine.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) threads: Option<u16>,
    /// A token agents may use (repeatable). Without any, one is generated and kept in the data dir.
    #[arg(long = "token", env = "WHTUNNEL_TOKEN", hide_env_values = true)]
    pub(crate) tokens: Vec<String>,
    /// A file with one accepted token per line ('#' starts a comment).
    #[arg(long)]
    pub(crate) tokens_file: Option<PathBuf>,
    /// Users with their own tokens and tunnel names (see `relay user add`); replaces --token.
    #[arg(long, conflicts_with = "tokens_file")]
    pub(crate) users_file: Option<PathBuf>,
    /// Most tunnel names one user may own [default: 20 with --users-file, no cap with --token]; 0: no cap.
    #[arg(long)]
    pub(crate) max_names_per_user: Option<u64>,
    /// A name no agent held for this long is forgotten with its held events (e.g. 30d, 12h).
    #[arg(long, default_value_t = HumanDuration(crate::relay::owners::DEFAULT_NAME_LIFETIME))]
    pub(crate) name_lifetime: HumanDuration,
    /// Keep senders' X-Forwarded-For, X-Real-IP and Forwarded (only behind a proxy that sets them).
    #[arg(long)]
    pub(crate) trust_forwarded: bool,
    #[command(flatten)]
    pub(crate) data_dir: DataDirArg,
    /// Base URL the public uses to reach this relay, e.g. https://hooks.example.com.
    #[arg(long)]
    pub(crate) public_url: Option<String>,
    /// The relay's DNS name: https://NAME.DOMAIN/... reaches tunnel NAME (needs a wildcard DNS record).
    #[arg(long)]
    pub(crate) domain: Option<String>,
    /// Get certificates for DOMAIN and NAME.DOMAIN from an ACME CA (Let's Encrypt by default), contact EMAIL; serve HTTPS on --listen (port 443 for the challenge).
    #[arg(long, requires = "domain", conflicts_with = "tls_cert")]
    pub(crate) acme_email: Option<String>,
    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, requires = "domain", conflicts_with = "tls_cert")]
    pub(crate) acme_directory: Option<String>,
    /// Extra CA (PEM) to trust for the ACME server itself, e.g. Pebble's.
    #[arg(long, requires = "domain")]
    pub(crate) acme_ca_cert: Option<PathBuf>,
    /// Renew an ACME certificate when it has less than this left (or a third of its lifetime).
    #[arg(long, default_value_t = HumanDuration(units::ACME_RENEW_BEFORE))]
    pub(crate) acme_renew_before: HumanDuration,
    /// How often ACME certificates are checked for renewal and failed orders retried.
    #[arg(long, default_value_t = HumanDuration(units::ACME_CHECK_EVERY))]
    pub(crate) acme_check_every: HumanDuration,
    /// TLS certificate chain (PEM); serve HTTPS and wss://.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// How long the app has to answer before the sender gets 504 (e.g. 30s, 500ms).
    #[arg(long, default_value_t = HumanDuration(units::DEFAULT_RESPONSE_TIMEOUT))]
    pub(crate) response_timeout: HumanDuration,
    /// Largest request body accepted; larger ones get 413 (e.g. 25MiB).
    #[arg(long, default_value_t = ByteSize(units::DEFAULT_MAX_BODY))]
    pub(crate) max_body: ByteSize,
    /// While a known tunnel's agent is away: hold webhooks (202) or reject them (503).
    #[arg(long, default_value_t = OfflinePolicy::default())]
    pub(crate) offline: OfflinePolicy,
    /// Most events held per tunnel; beyond it senders get 503 + Retry-After.
    #[arg(long, default_value_t = Caps::default().max_events)]
    pub(crate) hold_max_events: u64,
    /// Most body bytes held per tunnel (e.g. 1GiB).
    #[arg(long, default_value_t = ByteSize(Caps::default().max_bytes))]
    pub(crate) hold_max_bytes: ByteSize,
    /// Held events older than this are deleted (e.g. 72h).
    #[arg(long, default_value_t = HumanDuration(Caps::default().max_age))]
    pub(crate) hold_max_age: HumanDuration,
    /// Most body bytes held relay-wide, all tunnels together (e.g. 4GiB).
    #[arg(long, default_value_t = ByteSize(Caps::default().max_total_bytes))]
    pub(crate) hold_max_total_bytes: ByteSize,
    /// Held events delivered at once per tunnel when its agent is back (an agent may ask for fewer).
    #[arg(long, default_value_t = HoldDelivery::default().concurrency, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) hold_concurrency: u32,
    /// concurrent: held events drain alongside live traffic; strict: one at a time, new traffic queues behind them.
    #[arg(long, default_value_t = HoldOrder::default())]
    pub(crate) hold_order: HoldOrder,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) ops: RelayOpsArgs,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
}

/// Running `whtunnel relay` as a service: admin endpoint, config file, log format.
#[derive(Args, Debug)]
pub(crate) struct RelayOpsArgs {
    /// Serve GET /healthz and /metrics (Prometheus) here: PORT alone is 127.0.0.1:PORT. No authentication: keep it off the internet.
    #[arg(long, value_name = "[HOST:]PORT")]
    pub(crate) admin_listen: Option<crate::relay::admin::AdminListen>,
    /// Read relay settings from this TOML file: each key is a flag's long name (`listen = "0.0.0.0:443"`, `hold-max-age = "72h"`, `token = ["..."]`); flags and their environment variables win over it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, env = "WHTUNNEL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// How the relay writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Joining several relays into one (`docs/cluster.md`).
#[derive(Args, Debug)]
pub(crate) struct ClusterArgs {
    /// Join a cluster of relays through NATS JetStream: nats://HOST:PORT[,...] (servers of one NATS cluster).
    #[arg(long, value_delimiter = ',')]
    pub(crate) cluster: Vec<String>,
    /// File holding the secret every relay of the cluster shares (at least 16 characters) [or WHTUNNEL_CLUSTER_SECRET].
    #[arg(long, requires = "cluster")]
    pub(crate) cluster_secret_file: Option<PathBuf>,
    /// Base URL the other relays reach this one at, http://HOST:PORT [default: the --listen address].
    #[arg(long, requires = "cluster")]
    pub(crate) cluster_advertise: Option<String>,
    /// Take hops from the other relays on this second, cleartext address (on the cluster's private network); needed when the relay serves TLS.
    #[arg(long, requires = "cluster", value_name = "HOST:PORT")]
    pub(crate) cluster_listen: Option<std::net::SocketAddr>,
    /// How long a dead relay's tunnels stay claimed before other relays may take them (e.g. 15s).
    #[arg(long, requires = "cluster", default_value_t = HumanDuration(crate::cluster::DEFAULT_HOLDER_TTL))]
    pub(crate) cluster_holder_ttl: HumanDuration,
}

/// Abuse limits of `whtunnel relay` (see `relay::limits`); 0 disables a limit.
#[derive(Args, Debug)]
pub(crate) struct LimitArgs {
    /// Concurrent connections one IP may hold; more are closed at once.
    #[arg(long, default_value_t = Limits::default().max_conns_per_ip)]
    pub(crate) max_conns_per_ip: usize,
    /// Requests per second per tunnel; more get 429 with Retry-After.
    #[arg(long, default_value_t = Limits::default().rate_limit)]
    pub(crate) rate_limit: f64,
    /// Requests a tunnel may take at once above --rate-limit.
    #[arg(long, default_value_t = Limits::default().rate_burst)]
    pub(crate) rate_burst: u32,
    /// Requests one IP may have in flight on one tunnel; more get 429.
    #[arg(long, default_value_t = Limits::default().max_inflight_per_ip)]
    pub(crate) max_inflight_per_ip: usize,
    /// Unknown-tunnel requests per minute one IP may make before 429.
    #[arg(long, default_value_t = Limits::default().unknown_tunnel_per_min)]
    pub(crate) unknown_tunnel_limit: u32,
    /// Slowest request body accepted after a 10 s grace, per second averaged over 10 s; slower gets 408 (e.g. 1KiB).
    #[arg(long, default_value_t = ByteSize(Limits::default().min_body_rate))]
    pub(crate) min_body_rate: ByteSize,
    /// Time a sender has to send a request head (and a new connection's first bytes).
    #[arg(long, default_value_t = HumanDuration(Limits::default().header_read_timeout))]
    pub(crate) header_timeout: HumanDuration,
    /// Most header fields in one request; more get 431.
    #[arg(long, default_value_t = Limits::default().max_headers)]
    pub(crate) max_headers: usize,
    /// Refused tokens per minute one IP may present; then all its agent upgrades get 429.
    #[arg(long, default_value_t = Limits::default().auth_failures_per_min)]
    pub(crate) auth_failure_limit: u32,
}

/// `whtunnel relay user ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum RelayCommand {
    /// Manage the users of a --users-file.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

/// `whtunnel relay user add|revoke`.
#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Add a user; prints its new token once (only a hash is stored).
    Add {
        /// The user's name.
        user: String,
        /// Tunnel names the user may hold: patterns where '*' matches anything (alice-*).
        #[arg(long, required = true, num_args = 1..)]
        names: Vec<String>,
        /// Tunnels the user may have connected at once.
        #[arg(long, default_value_t = crate::relay::users::DEFAULT_MAX_TUNNELS)]
        max_tunnels: u32,
        /// The users file (created 0600 if missing).
        #[arg(long)]
        users_file: PathBuf,
    },
    /// Remove a user; a running relay cuts its agents off within a second.
    Revoke {
        /// The user's name.
        user: String,
        /// The users file.
        #[arg(long)]
        users_file: PathBuf,
    },
}

impl LimitArgs {
    pub(crate) fn apply(&self, limits: &mut Limits) {
        limits.max_conns_per_ip = self.max_conns_per_ip;
        limits.rate_limit = self.rate_limit;
        limits.rate_burst = self.rate_burst;
        limits.max_inflight_per_ip = self.max_inflight_per_ip;
        limits.unknown_tunnel_per_min = self.unknown_tunnel_limit;
        limits.min_body_rate = self.min_body_rate.0;
        limits.header_read_timeout = self.header_timeout.0;
        limits.max_headers = self.max_headers;
        limits.auth_failures_per_min = self.auth_failure_limit;
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum RequestsCommand {
    /// List recorded exchanges, newest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print at most N exchanges (the newest that match).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Only exchanges matching EXPR, the inspector's `/` syntax:
        /// `5xx`, `404`, `err`, `#12`, `sig:invalid`, `provider:stripe`,
        /// `body:TEXT`, or text in the method, path or event.
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
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
        /// Write a HAR 1.2 file (importable in browser devtools), readable by you alone.
        #[arg(long)]
        har: PathBuf,
        /// Replace credential header values (authorization, cookies, signatures, tokens) with [redacted].
        #[arg(long)]
        redact: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    /// Exchange id (see `requests list`).
    pub(crate) id: i64,
    /// Send to this target instead of the recorded one (port, host:port or URL).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Send even when the recorded body was not kept in full (sends what was kept).
    #[arg(long)]
    pub(crate) force: bool,
    /// Send the recorded bytes and signature untouched (no fresh signature).
    #[arg(long)]
    pub(crate) as_is: bool,
    /// Edit the JSON body before sending: a dotted path with array indexes
    /// and a value (number, bool, null, JSON, else text), e.g. data.object.amount=5000.
    #[arg(long = "set", value_name = "JSON.PATH=VALUE")]
    pub(crate) set: Vec<String>,
    /// Set a header before sending, replacing one of the same name (repeatable).
    #[arg(long = "header", value_name = "Name: value")]
    pub(crate) headers: Vec<String>,
    /// Send this file's bytes as the body.
    #[arg(long, conflicts_with = "set")]
    pub(crate) body_file: Option<PathBuf>,
    /// The project config (whtunnel.toml) whose [[webhook]] secrets sign the replay.
    #[arg(long, env = "WHTUNNEL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) data_dir: DataDirArg,
}

#[derive(Subcommand, Debug)]
pub(crate) enum FixturesCommand {
    /// Write one fixture file per exchange into --dir (provider-event-id.json).
    Save {
        /// Exchange ids (see `requests list`).
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Directory for the fixture files.
        #[arg(long)]
        dir: PathBuf,
        /// whtunnel.toml to use (default: found from the current directory).
        #[arg(long, env = "WHTUNNEL_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

#[derive(Args, Debug)]
pub(crate) struct SendArgs {
    /// Fixture files, or directories searched for *.json.
    #[arg(required = true)]
    pub(crate) fixtures: Vec<PathBuf>,
    /// Where to send (port, host:port or URL); default: the config's [[route]] or [listen] target.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// whtunnel.toml to use (default: found from the current directory).
    #[arg(long, env = "WHTUNNEL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct TestArgs {
    /// Fixture files, or directories searched for *.json.
    #[arg(required = true)]
    pub(crate) fixtures: Vec<PathBuf>,
    /// Where to send (port, host:port or URL); default: the config's [[route]] or [listen] target.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub(crate) junit: Option<PathBuf>,
    /// Fixtures sent at once.
    #[arg(short = 'j', long = "jobs", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) jobs: u16,
    /// Print a JSON report instead of lines.
    #[arg(long)]
    pub(crate) json: bool,
    /// How long the app has to answer each fixture.
    #[arg(long, default_value_t = HumanDuration(units::DEFAULT_RESPONSE_TIMEOUT))]
    pub(crate) timeout: HumanDuration,
    /// whtunnel.toml to use (default: found from the current directory).
    #[arg(long, env = "WHTUNNEL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct TriggerArgs {
    /// Provider id (see --list).
    #[arg(required_unless_present = "list")]
    pub(crate) provider: Option<String>,
    /// Event type (see --list PROVIDER).
    #[arg(required_unless_present = "list")]
    pub(crate) event: Option<String>,
    /// List the catalog's events (of PROVIDER, if given).
    #[arg(long, conflicts_with_all = ["event", "set", "to", "save"])]
    pub(crate) list: bool,
    /// With --list: print JSON.
    #[arg(long, requires = "list")]
    pub(crate) json: bool,
    /// Edit the body: a dotted path with array indexes, then a JSON value or text
    /// (data.object.amount=5000, items[0].id="x").
    #[arg(long, value_name = "JSON.PATH=VALUE")]
    pub(crate) set: Vec<String>,
    /// Where to send (port, host:port or URL); default: the config's [[route]] or [listen] target.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Also save the event sent as a fixture in this directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) save: Option<PathBuf>,
    /// whtunnel.toml to use (default: found from the current directory).
    #[arg(long, env = "WHTUNNEL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

pub(crate) fn parse_host_header(s: &str) -> Result<HostHeader, String> {
    s.parse()
}
