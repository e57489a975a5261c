//! Waiting until a limiter admits: sleep the exact wait plus jitter, then check again.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tidewall_core::rng::SplitMix64;

use crate::Rejected;
use crate::admission::Wait;
use crate::rt::{Clock, instant_after};

/// A limiter's `max_wait` when it has none: callers wait as long as their deadline allows.
pub(crate) const NO_MAX_WAIT: u64 = u64::MAX;

pin_project! {
    /// The waiting state of one caller: on a denial it sleeps the limiter's exact wait plus a
    /// random jitter (so waiters released by the same refill do not wake as a herd), then
    /// checks again. GCRA reserves nothing while waiting, so it holds no capacity.
    ///
    /// Under [`Wait::No`] a denial is returned as it is; under [`Wait::Until`] it is returned
    /// as it is at once when the wait would end past the limiter's own `max_wait` from the
    /// first denial, and fails with [`Rejected::DeadlineExceeded`] at once when it would end
    /// past the deadline (a wait that ends exactly at either is waited out).
    /// [`Rejected::InsufficientCapacity`] passes through.
    pub(crate) struct Waiting<R: Clock> {
        rt: R,
        wait: Wait,
        jitter_nanos: u64,
        // The limiter's own bound on waiting, `NO_MAX_WAIT` for none, and when it ends
        // (set at the first denial).
        max_wait_nanos: u64,
        waits_until: Option<std::time::Instant>,
        rng: SplitMix64,
        #[pin]
        sleep: Option<R::Sleep>,
    }
}

impl<R: Clock> Waiting<R> {
    /// A wait as `wait` allows, each sleep drawing up to `jitter_nanos` more, bounded by the
    /// limiter's `max_wait_nanos` ([`NO_MAX_WAIT`] for none).
    pub(crate) fn new(
        rt: R,
        wait: Wait,
        jitter_nanos: u64,
        max_wait_nanos: u64,
        seed: u64,
    ) -> Self {
        Self {
            rt,
            wait,
            jitter_nanos,
            max_wait_nanos,
            waits_until: None,
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
            // The limiter's own bound first: its refusal carries the hint a caller can use.
            let own_end = (*this.max_wait_nanos != NO_MAX_WAIT).then(|| {
                *this.waits_until.get_or_insert_with(|| {
                    instant_after(now, Duration::from_nanos(*this.max_wait_nanos))
                })
            });
            if own_end.is_some_and(|end| instant_after(now, wait) > end) {
                return Poll::Ready(Err(Rejected::RateLimited { retry_after: wait }));
            }
            // A wait that ends at the deadline is waited out; one past it is refused now.
            if deadline.remaining(now).is_some_and(|left| left < wait) {
                return Poll::Ready(Err(Rejected::DeadlineExceeded));
            }
            let jitter = Duration::from_nanos(this.rng.below_or_equal(*this.jitter_nanos));
            let mut wake = instant_after(now, wait.saturating_add(jitter));
            for end in [deadline.instant(), own_end].into_iter().flatten() {
                wake = wake.min(end);
            }
            this.sleep.set(Some(this.rt.sleep_until(wake)));
        }
    }
}
