//! whtunnel: a webhook tunnel and inspector.
//!
//! A provider posts a webhook to the public **relay**; the relay hands it
//! over the **tunnel** (HTTP/2 inside a websocket) to the **agent** on the
//! developer's machine, which **forward**s it to the local app, records the
//! whole exchange in the **capture** store, and shows it in the
//! **inspect**or. Data flows one way, and the modules follow it:
//!
//! | module | owns |
//! |---|---|
//! | [`relay`] | the public server: routing by tunnel name, abuse limits, held events while an agent is away |
//! | [`tunnel`] | the link between relay and agent: wire protocol values ([`tunnel::protocol`], no I/O), websocket-as-bytes, HTTP/2 settings, TLS |
//! | [`agent`] | holding one tunnel: connect, reconnect with back-off, and [`agent::Listener`], `whtunnel listen` as a library type |
//! | [`forward`] | one request to the local app and its answer back; held deliveries, replays |
//! | [`capture`] | the durable record of every exchange (SQLite), its readers and exports |
//! | [`inspect`] | the terminal UI over the capture: pure `update`, `draw` on any backend |
//! | [`units`] | sizes, durations and the defaults several parts share |
//! | [`config`] | `whtunnel.toml`: discovery, typed `[listen]`, `[[route]]`, `[[webhook]]`, errors naming file, line and key |
//! | [`verify`] | webhook signatures: verdicts and reasons, re-signing for replay, provider and event recognition (pure, no I/O) |
//! | [`jwks`] | fetching a `jwt` rule's `jwks` URL in the background: HTTPS, cached, refetched for a new `kid` |
//! | [`fixture`] | webhooks as fixture files: save from the capture, send signed afresh, test expectations (JUnit), the `trigger` sample catalog |
//! | [`cluster`] | several relays as one on NATS JetStream: who holds which tunnel, who owns which name, the relay-to-relay hop |
//! | [`cli`] | the command line: flags, and printing what the parts report |
//!
//! Servers follow one shape: `bind` (a handle with its address), then
//! `run(shutdown)`. Tests and the CLI start every part through the same
//! builders ([`relay::Relay::bind`], [`agent::Listener::bind`]). The binary
//! in `main.rs` only calls [`cli::main`].

pub mod agent;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fixture;
pub mod forward;
pub mod inspect;
pub mod jwks;
pub mod relay;
pub mod tunnel;
pub mod units;
pub mod verify;
