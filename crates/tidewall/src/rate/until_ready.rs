//! The future that waits until a [`RateLimiter`] admits.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::RateLimiter;
use super::wait::Waiting;
use crate::Rejected;
use crate::rt::Clock;

pin_project! {
    /// Waits until a [`RateLimiter`] admits: [`RateLimiter::until_ready`] and its variants,
    /// and the limiter's [`Admission::admit`](crate::admission::Admission::admit). It owns a
    /// handle to the limiter, so it is `'static`.
    ///
    /// **Cancel safety:** GCRA reserves nothing while waiting; dropping it loses nothing and
    /// takes no capacity.
    #[must_use = "futures do nothing unless polled"]
    pub struct UntilReady<R: Clock> {
        limiter: RateLimiter<R>,
        cells: u32,
        #[pin]
        waiting: Waiting<R>,
    }
}

impl<R: Clock> UntilReady<R> {
    pub(super) fn new(limiter: RateLimiter<R>, cells: u32, waiting: Waiting<R>) -> Self {
        Self {
            limiter,
            cells,
            waiting,
        }
    }
}

impl<R: Clock> Future for UntilReady<R> {
    type Output = Result<(), Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (limiter, cells) = (&*this.limiter, *this.cells);
        let decided = std::task::ready!(this.waiting.poll_until(cx, || limiter.decide(cells)));
        Poll::Ready(decided.inspect_err(|rejected| limiter.record_rejection(rejected)))
    }
}

impl<R: Clock> std::fmt::Debug for UntilReady<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UntilReady")
            .field("limiter", &self.limiter)
            .field("cells", &self.cells)
            .finish_non_exhaustive()
    }
}
