//! SQLite-backed capture store (STUB: signatures are the contract with the
//! agent and the inspector; implementation pending).

use std::path::PathBuf;

use super::model::{Exchange, ExchangeId, ExchangeSummary};

/// Errors from the capture store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed.
    #[error("capture store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A filesystem operation failed.
    #[error("capture store: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the store lives and how much it may keep.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Data directory; the database is `capture.db` inside it.
    pub dir: PathBuf,
    /// Keep at most this many exchanges (oldest deleted first).
    pub max_exchanges: u64,
    /// Keep at most this many body bytes in total (oldest deleted first).
    pub max_bytes: u64,
}

impl StoreConfig {
    /// Defaults: 10,000 exchanges, 1 GiB.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_exchanges: 10_000,
            max_bytes: 1 << 30,
        }
    }
}

/// Which exchanges to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// At most this many rows (newest first); `None` for all.
    pub limit: Option<usize>,
}

/// An open capture store.
pub struct Store {
    _priv: (),
}

impl Store {
    /// Opens (creating and migrating if needed) the store in `config.dir`.
    pub fn open(_config: &StoreConfig) -> Result<Self, StoreError> {
        todo!()
    }

    /// Stores one exchange and returns its id.
    pub fn insert(&mut self, _ex: &Exchange) -> Result<ExchangeId, StoreError> {
        todo!()
    }

    /// Lists exchanges, newest first.
    pub fn list(&self, _q: &ListQuery) -> Result<Vec<ExchangeSummary>, StoreError> {
        todo!()
    }

    /// Loads one exchange with headers and bodies.
    pub fn get(&self, _id: ExchangeId) -> Result<Option<Exchange>, StoreError> {
        todo!()
    }
}

impl Store {
    /// Opens a second connection for readers (STUB).
    pub fn open_reader(_dir: &std::path::Path) -> Result<Self, StoreError> {
        todo!()
    }
}
