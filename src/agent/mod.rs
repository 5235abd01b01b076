//! The agent: holds one tunnel on a relay and serves the relay's requests by
//! forwarding them to the local app.

pub mod status;

pub use status::ConnectionStatus;
