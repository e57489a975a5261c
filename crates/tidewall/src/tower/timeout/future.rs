//! The response future: the call, raced against what is left of the budget.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::Error;
use crate::time::Timeout;

pin_project! {
    /// The response future of a [`TimeoutService`](super::TimeoutService): the inner call,
    /// or [`Error::TimedOut`] when the budget runs out first.
    ///
    /// **Cancel safety:** dropping it drops the inner call and the timer.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ResponseFuture<F, T> {
        #[pin]
        inner: Timeout<F, T>,
    }
}

impl<F, T> ResponseFuture<F, T> {
    #[inline]
    pub(super) fn new(inner: Timeout<F, T>) -> Self {
        Self { inner }
    }
}

impl<F, T, V, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<V, E>>,
    T: Future<Output = ()>,
{
    type Output = Result<V, Error<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|timed| match timed {
            Ok(result) => result.map_err(Error::Inner),
            Err(_elapsed) => Err(Error::TimedOut),
        })
    }
}
