//! The capture store: every exchange the agent forwards is recorded here
//! (SQLite, durable, bounded), read back by the CLI and the inspector.
//!
//! Data flows one way: the forwarder tees bodies ([`tee`]) and hands a finished
//! [`Exchange`] to the [`Recorder`]; the recorder's single writer task stores it
//! and publishes a [`CaptureEvent`] that the inspector and the log printer follow.
//! [`checkpoint`] copies the store's log into its database on a thread of
//! its own, so that the writer never waits for it. [`event`] recognises
//! webhook event types; [`export`] renders exchanges for
//! the CLI (JSON, tables, curl, HAR); [`headers`] is the recorded header
//! list, kept as received (two allocations per head) or as owned pairs.

pub mod checkpoint;
pub mod event;
pub mod export;
pub mod headers;
pub mod model;
pub mod recorder;
pub mod store;
pub mod tee;

pub use model::*;
pub use recorder::{CaptureEvent, Recorder};
pub use store::{body_intact, read_body, ListQuery, Store, StoreConfig, StoreError};
pub use tee::{tee, tee_then, BodyLimits, TeeBody};
