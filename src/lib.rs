//! whtunnel: a webhook tunnel and inspector.
//!
//! Data flows one way: [`relay`] → [`tunnel`] → [`agent`] → [`forward`] →
//! [`capture`] → [`inspect`]. The binary in `main.rs` only calls [`cli::main`].

pub mod agent;
pub mod capture;
pub mod cli;
pub mod forward;
pub mod inspect;
pub mod relay;
pub mod tunnel;
pub mod units;
