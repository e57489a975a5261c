//! Waiting until a limiter admits: sleep the exact wait plus jitter, then check again.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tidewall_core::rng::SplitMix64;

use crate::Rejected;
use crate::admission::Wait;
use crate::rt::{Clock, instant_after};

pin_project! {
    /// The waiting state of one caller: on a denial it sleeps the limiter's exact wait plus a
    /// random jitter (so waiters released by the same refill do not wake as a herd), then
    /// checks again. GCRA reserves nothing while waiting, so it holds no capacity.
    ///
    /// Under [`Wait::No`] a denial is returned as it is; under [`Wait::Until`] it fails with
    /// [`Rejected::DeadlineExceeded`] at once when the wait would end past the deadline (a
    /// wait that ends exactly at it is waited out).
    /// [`Rejected::InsufficientCapacity`] passes through.
    pub(crate) struct Waiting<R: Clock> {
        rt: R,
        wait: Wait,
        jitter_nanos: u64,
        rng: SplitMix64,
        #[pin]
        sleep: Option<R::Sleep>,
    }
}

impl<R: Clock> Waiting<R> {
    pub(crate) fn new(rt: R, wait: Wait, jitter: Duration, seed: u64) -> Self {
        let jitter_nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        Self {
            rt,
            wait,
            jitter_nanos,
            rng: SplitMix64::new(seed),
            sleep: None,
        }
    }

    /// Polls until `check` admits or the wait is refused.
    pub(crate) fn poll_until(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut check: impl FnMut() -> Result<(), Rejected>,
    ) -> Poll<Result<(), Rejected>> {
        let mut this = self.project();
        loop {
            if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep.set(None);
            }
            let (wait, deadline) = match (check(), *this.wait) {
                (Err(Rejected::RateLimited { retry_after }), Wait::Until(deadline)) => {
                    (retry_after, deadline)
                }
                (done, _) => return Poll::Ready(done),
            };
            let now = this.rt.now();
            // A wait that ends at the deadline is waited out; one past it is refused now.
            if deadline.remaining(now).is_some_and(|left| left < wait) {
                return Poll::Ready(Err(Rejected::DeadlineExceeded));
            }
            let jitter = Duration::from_nanos(this.rng.below_or_equal(*this.jitter_nanos));
            let mut wake = instant_after(now, wait.saturating_add(jitter));
            if let Some(at) = deadline.instant() {
                wake = wake.min(at);
            }
            this.sleep.set(Some(this.rt.sleep_until(wake)));
        }
    }
}
