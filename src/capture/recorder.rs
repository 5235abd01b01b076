//! The single writer in front of the store (STUB).

use tokio::sync::{broadcast, oneshot};

use super::model::{Exchange, ExchangeId, ExchangeSummary};
use super::store::{Store, StoreError};

/// What the recorder publishes after each exchange.
#[derive(Debug, Clone)]
pub enum CaptureEvent {
    /// The exchange was stored.
    Stored(ExchangeSummary),
    /// The exchange was forwarded but could not be stored.
    NotStored {
        /// The exchange's summary (id is 0).
        summary: ExchangeSummary,
        /// Why it was not stored.
        reason: String,
    },
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    _priv: (),
}

impl Recorder {
    /// Starts the writer task over `store`.
    pub fn spawn(_store: Store) -> Self {
        todo!()
    }

    /// Queues an exchange without waiting; the receiver resolves once it is
    /// stored (or failed). Never blocks: when the queue is full the exchange is
    /// reported as not stored.
    pub fn record(&self, _ex: Exchange) -> oneshot::Receiver<Result<ExchangeId, StoreError>> {
        todo!()
    }

    /// Follows stored exchanges.
    pub fn subscribe(&self) -> broadcast::Receiver<CaptureEvent> {
        todo!()
    }

    /// Flushes everything queued and stops the writer.
    pub async fn close(self) {
        todo!()
    }
}
