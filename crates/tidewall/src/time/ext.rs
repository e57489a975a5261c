//! The extension trait for futures.

use std::future::Future;
use std::time::Duration;

use super::{Deadline, Timeout, WithDeadline};
use crate::fallback::{Fallback, FallbackFuture};
use crate::rt::Clock;

/// Timeouts, deadlines and fallbacks as methods on any future.
///
/// The methods without a runtime argument use tokio (feature `tokio`); the `_on` variants take
/// any [`Clock`].
pub trait FutureExt: Future + Sized {
    /// Fails with [`Elapsed`](super::Elapsed) unless the future completes within `duration`,
    /// counted from this call (as tokio's `timeout`), not from the first poll: a timeout made
    /// early and awaited later has less left. The future is polled before the timer, so one
    /// that completes on that poll succeeds however late it is (the module's bias toward
    /// work done). A `duration` the clock cannot add to now (such as `Duration::MAX`) waits
    /// about thirty years instead, tokio's "forever"
    /// ([`instant_after`](crate::rt::instant_after)).
    ///
    /// **Cancel safety**: dropping it drops the inner future.
    #[cfg(feature = "tokio")]
    fn timeout(self, duration: Duration) -> Timeout<Self, <crate::rt::Tokio as Clock>::Sleep> {
        self.timeout_on(&crate::rt::Tokio, duration)
    }

    /// [`FutureExt::timeout`] on the given runtime's clock.
    fn timeout_on<R: Clock>(self, rt: &R, duration: Duration) -> Timeout<Self, R::Sleep> {
        Timeout::new(self, Some(rt.sleep(duration)))
    }

    /// Fails with [`DeadlineExceeded`](super::DeadlineExceeded) unless the future completes
    /// before `deadline` ([`Deadline::none`] never fails). The future is polled before the
    /// timer, so one that completes on that poll succeeds even past the deadline.
    ///
    /// **Cancel safety**: dropping it drops the inner future.
    #[cfg(feature = "tokio")]
    fn deadline(
        self,
        deadline: Deadline,
    ) -> WithDeadline<Self, <crate::rt::Tokio as Clock>::Sleep> {
        self.deadline_on(&crate::rt::Tokio, deadline)
    }

    /// [`FutureExt::deadline`] on the given runtime's clock.
    fn deadline_on<R: Clock>(self, rt: &R, deadline: Deadline) -> WithDeadline<Self, R::Sleep> {
        let timer = deadline.instant().map(|at| rt.sleep_until(at));
        WithDeadline::new(Timeout::new(self, timer))
    }

    /// On an error that `fallback` handles, replaces it with the fallback's result; see
    /// [`crate::fallback`].
    ///
    /// **Cancel safety**: dropping it drops the inner future, or the fallback's once it runs.
    fn or_fallback<T, E, P>(self, fallback: P) -> FallbackFuture<Self, P, T, E>
    where
        Self: Future<Output = Result<T, E>>,
        P: Fallback<T, E>,
    {
        FallbackFuture::new(self, fallback)
    }
}

impl<F: Future> FutureExt for F {}
