//! Recording a body while it streams through (STUB).

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use tokio::sync::oneshot;

use super::model::CapturedBody;

/// How much of a body to keep, and where to spill large ones.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Bodies up to this size stay in memory.
    pub in_memory: usize,
    /// Keep at most this many bytes of a body; the rest is counted, not kept.
    pub max_capture: u64,
    /// Directory for spilled bodies.
    pub spill_dir: PathBuf,
}

/// A body wrapper that passes frames through unchanged and records them.
pub struct TeeBody<B> {
    inner: B,
}

/// Wraps `body`; the receiver yields the captured body when the stream ends
/// or the wrapper is dropped (then `truncated` is set).
pub fn tee<B>(body: B, _limits: &BodyLimits) -> (TeeBody<B>, oneshot::Receiver<CapturedBody>) {
    let (_tx, rx) = oneshot::channel();
    (TeeBody { inner: body }, rx)
}

impl<B: Body + Unpin> Body for TeeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
