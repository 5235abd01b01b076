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
    Relay(RelayArgs),
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
    /// The token the tunnel's agent uses.
    #[arg(long, env = "WHTUNNEL_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
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
    /// Token the relay expects.
    #[arg(long, env = "WHTUNNEL_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
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
    /// Keep at most this many recorded exchanges (oldest deleted first).
    #[arg(long, default_value_t = StoreConfig::DEFAULT_MAX_EXCHANGES)]
    pub(crate) keep_exchanges: u64,
    /// Keep at most this many bytes of recorded bodies (e.g. 1GiB).
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
pub(crate) struct RelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8787")]
    pub(crate) listen: SocketAddr,
    /// A token agents may use (repeatable). Without any, one is generated and kept in the data dir.
    #[arg(long = "token", env = "WHTUNNEL_TOKEN", hide_env_values = true)]
    pub(crate) tokens: Vec<String>,
    /// A file with one accepted token per line ('#' starts a comment).
    #[arg(long)]
    pub(crate) tokens_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) data_dir: DataDirArg,
    /// Base URL the public uses to reach this relay, e.g. https://hooks.example.com.
    #[arg(long)]
    pub(crate) public_url: Option<String>,
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
    pub(crate) cluster: ClusterArgs,
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
