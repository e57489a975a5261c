//! The timeout and deadline futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::RetryAfter;

/// A [`FutureExt::timeout`](super::FutureExt::timeout) elapsed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("operation timed out")
    }
}

impl std::error::Error for Elapsed {}

impl RetryAfter for Elapsed {
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A [`Deadline`](super::Deadline) passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

impl RetryAfter for DeadlineExceeded {
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by a timer; see [`FutureExt::timeout`](super::FutureExt::timeout).
    /// Allocates nothing; `S` is the runtime's sleep future (`None` means no limit).
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct Timeout<F, S> {
        #[pin]
        future: F,
        #[pin]
        timer: Option<S>,
    }
}

impl<F, S> Timeout<F, S> {
    pub(crate) fn new(future: F, timer: Option<S>) -> Self {
        Self { future, timer }
    }
}

impl<F: Future, S: Future<Output = ()>> Future for Timeout<F, S> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| Err(Elapsed)),
            None => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by a [`Deadline`](super::Deadline); see
    /// [`FutureExt::deadline`](super::FutureExt::deadline).
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct WithDeadline<F, S> {
        #[pin]
        inner: Timeout<F, S>,
    }
}

impl<F, S> WithDeadline<F, S> {
    pub(crate) fn new(inner: Timeout<F, S>) -> Self {
        Self { inner }
    }
}

impl<F: Future, S: Future<Output = ()>> Future for WithDeadline<F, S> {
    type Output = Result<F::Output, DeadlineExceeded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|r| r.map_err(|Elapsed| DeadlineExceeded))
    }
}
