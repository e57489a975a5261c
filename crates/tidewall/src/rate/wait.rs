//! Waiting until a limiter admits: sleep the exact wait plus jitter, then check again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tidewall_core::rng::SplitMix64;

use crate::rt::{Clock, instant_after};
use crate::{Deadline, Rejected};

pin_project! {
    /// Waits until `check` admits: on a denial it sleeps the limiter's exact wait plus a random
    /// jitter (so waiters released by the same refill do not wake as a herd), then checks
    /// again. GCRA reserves nothing while waiting, so the future holds no capacity.
    ///
    /// Fails with [`Rejected::DeadlineExceeded`] at once when the wait would end past the
    /// deadline, and passes [`Rejected::InsufficientCapacity`] through.
    pub(crate) struct WaitUntilReady<C, R: Clock> {
        check: C,
        rt: R,
        deadline: Deadline,
        jitter_nanos: u64,
        rng: SplitMix64,
        #[pin]
        sleep: Option<R::Sleep>,
    }
}

impl<C, R: Clock> WaitUntilReady<C, R> {
    pub(crate) fn new(check: C, rt: R, deadline: Deadline, jitter: Duration, seed: u64) -> Self {
        let jitter_nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        Self {
            check,
            rt,
            deadline,
            jitter_nanos,
            rng: SplitMix64::new(seed),
            sleep: None,
        }
    }
}

impl<C: FnMut() -> Result<(), Rejected>, R: Clock> Future for WaitUntilReady<C, R> {
    type Output = Result<(), Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep.set(None);
            }
            let wait = match (this.check)() {
                Err(Rejected::RateLimited { retry_after }) => retry_after,
                done => return Poll::Ready(done),
            };
            let now = this.rt.now();
            if !this.deadline.allows(now, wait) {
                return Poll::Ready(Err(Rejected::DeadlineExceeded));
            }
            let jitter = Duration::from_nanos(this.rng.below_or_equal(*this.jitter_nanos));
            let mut wake = instant_after(now, wait.saturating_add(jitter));
            if let Some(at) = this.deadline.instant() {
                wake = wake.min(at);
            }
            this.sleep.set(Some(this.rt.sleep_until(wake)));
        }
    }
}
