//! The inspector's state and its only mutator: [`App`] is plain data,
//! [`update`](fn@update) applies one [`Msg`] and returns the [`Effect`]s the
//! event loop must carry out (store reads, replays, quitting). Nothing here
//! touches the terminal, the store or a clock, so every behaviour is
//! unit-testable.
//!
//! `app` holds the data and the operations on it, `filter` the filter
//! language, `keys` what each key does on each screen, and `update` the
//! messages, the effects and the dispatch between them.

mod app;
mod filter;
mod find;
mod held;
mod keys;
mod update;

pub use app::{
    body_height, App, BodySearch, DetailView, Editor, Level, Notice, Row, RowKey, View,
    CHROME_ROWS, MAX_ROWS,
};
pub use filter::{bad_sig_term, body_term, matches, matches_summary};
pub use find::Find;
pub use held::{dead_letter_text, DeadLetters, Drain};
pub use update::{update, Effect, Msg};
