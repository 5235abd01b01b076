//! Getting a request body back from a call that failed before the app read
//! it. The HTTP client owns the body it sends; when the app is down it drops
//! the body unread, and the capture would keep nothing of a webhook that
//! arrived while the app was away. [`Reclaim`] hands an unfinished body
//! back instead of dropping it, so the forwarder can read the rest (through
//! the capture's tee) before it records the exchange.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::oneshot;

/// A body that, dropped before its end, sends itself back over a oneshot.
pub(super) struct Reclaim<B: Body> {
    inner: Option<B>,
    back: Option<oneshot::Sender<B>>,
}

/// Wraps `body`; the receiver yields it when the wrapper is dropped before
/// the body ended (and errs when it ended, or was never unfinished).
pub(super) fn reclaim<B: Body>(body: B) -> (Reclaim<B>, oneshot::Receiver<B>) {
    let (tx, rx) = oneshot::channel();
    (
        Reclaim {
            inner: Some(body),
            back: Some(tx),
        },
        rx,
    )
}

impl<B: Body<Data = Bytes> + Unpin> Body for Reclaim<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let res = Pin::new(&mut *inner).poll_frame(cx);
        // Ended or failed: there is nothing left worth handing back.
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.back = None;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl<B: Body> Drop for Reclaim<B> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            if !inner.is_end_stream() {
                let _ = back.send(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn an_unread_body_comes_back_and_a_read_one_does_not() {
        let (body, rx) = reclaim(Full::new(Bytes::from_static(b"abc")));
        drop(body);
        let back = rx.await.unwrap();
        assert_eq!(back.collect().await.unwrap().to_bytes(), "abc");

        let (body, rx) = reclaim(Full::new(Bytes::from_static(b"abc")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(rx.await.is_err());
    }
}
