//! Tests of the inspector: `update` behaviour and rendering into
//! `TestBackend` (with insta snapshots under `snapshots/`).

mod filter;
mod find;
mod fixtures;
mod halves;
mod held;
mod live;
mod notice;
mod render;
mod session;
mod update;
mod webhook;
