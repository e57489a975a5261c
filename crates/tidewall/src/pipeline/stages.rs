//! The stages a pipeline nests, each a type parameter; `()` is the empty stage and costs
//! nothing, so a pipeline pays only for the policies it has.

use std::future::Future;
use std::time::Duration;

use tidewall_core::backoff::{Backoff, DelayState};

use crate::breaker::{CircuitBreaker, Outcome};
use crate::budget::RetryBudget;
use crate::bulkhead::Bulkhead;
use crate::rate::RateLimiter;
use crate::rt::Runtime;
use crate::{Deadline, Rejected};

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<R: crate::rt::Runtime> Sealed for crate::rate::RateLimiter<R> {}
    impl<R: crate::rt::Runtime> Sealed for crate::bulkhead::Bulkhead<R> {}
    impl<R: crate::rt::Runtime> Sealed for crate::breaker::CircuitBreaker<R> {}
    impl Sealed for super::RetryStage {}
}

/// A stage that admits a call before it runs: a rate limiter, a bulkhead, or nothing.
///
/// Not sealed: a limiter or bulkhead kept elsewhere (e.g. `tidewall-redis`'s, shared through
/// Redis) implements it and goes into a [`Pipeline`](super::Pipeline) or an
/// [`AdmitLayer`](crate::tower::AdmitLayer) unchanged. An implementation that cannot decide
/// without waiting (a network round trip) returns `Ok(None)` from `try_admit` and decides in
/// `admit`.
pub trait Admission: Send + Sync {
    /// Held for the whole call (a bulkhead slot), released on drop.
    type Guard<'a>: Send
    where
        Self: 'a;

    /// Admits at once if it can: `Ok(Some(guard))`; `Ok(None)` when the caller must wait
    /// with [`admit`](Self::admit).
    ///
    /// # Errors
    ///
    /// A rejection that no wait can fix (e.g. more cells than the burst).
    fn try_admit(&self) -> Result<Option<Self::Guard<'_>>, Rejected>;

    /// Waits for admission, but never past `deadline`.
    ///
    /// **Cancel safety:** dropping the future releases whatever it was waiting for.
    ///
    /// # Errors
    ///
    /// The stage's rejection, or [`Rejected::DeadlineExceeded`].
    fn admit(
        &self,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Self::Guard<'_>, Rejected>> + Send;
}

impl Admission for () {
    type Guard<'a> = ();

    fn try_admit(&self) -> Result<Option<()>, Rejected> {
        Ok(Some(()))
    }

    async fn admit(&self, _: Deadline) -> Result<(), Rejected> {
        Ok(())
    }
}

impl<R: Runtime> Admission for RateLimiter<R> {
    type Guard<'a> = ();

    fn try_admit(&self) -> Result<Option<()>, Rejected> {
        match self.decide(1) {
            Ok(()) => Ok(Some(())),
            Err(Rejected::RateLimited { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    fn admit(&self, deadline: Deadline) -> impl Future<Output = Result<(), Rejected>> + Send {
        self.until_ready_before(deadline)
    }
}

impl<R: Runtime> Admission for Bulkhead<R> {
    type Guard<'a> = crate::bulkhead::Permit<'a, R>;

    fn try_admit(&self) -> Result<Option<Self::Guard<'_>>, Rejected> {
        Ok(self.try_acquire_quiet())
    }

    fn admit(
        &self,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Self::Guard<'_>, Rejected>> + Send {
        self.acquire_before(deadline)
    }
}

/// A stage that gates each attempt: a circuit breaker, or nothing.
pub trait Gate: sealed::Sealed + Send + Sync {
    /// Records the attempt's outcome.
    type Permit<'a>
    where
        Self: 'a;

    /// Admits one attempt or rejects it.
    ///
    /// # Errors
    ///
    /// The gate's rejection (e.g. [`Rejected::CircuitOpen`]).
    fn enter(&self) -> Result<Self::Permit<'_>, Rejected>;

    /// Ends an attempt.
    fn record(permit: Self::Permit<'_>, outcome: Outcome);
}

impl Gate for () {
    type Permit<'a> = ();

    fn enter(&self) -> Result<(), Rejected> {
        Ok(())
    }

    fn record((): (), _: Outcome) {}
}

impl<R: Runtime> Gate for CircuitBreaker<R> {
    type Permit<'a> = crate::breaker::Permit<'a, R>;

    fn enter(&self) -> Result<Self::Permit<'_>, Rejected> {
        self.try_acquire()
    }

    fn record(permit: Self::Permit<'_>, outcome: Outcome) {
        permit.record(outcome);
    }
}

/// The retry stage: a backoff and an optional shared budget.
#[derive(Debug, Clone)]
pub struct RetryStage {
    pub(super) backoff: Backoff,
    pub(super) budget: Option<RetryBudget>,
    pub(super) max_retry_after: Duration,
}

/// Whether and how long to wait before the next attempt.
pub trait Retries: sealed::Sealed + Send + Sync {
    /// The next delay, or `None` when no retry is left; `seed` (or a fresh one) starts the
    /// schedule on the first call.
    fn next_delay(&self, state: &mut Option<DelayState>, seed: Option<u64>) -> Option<Duration>;

    /// The budget retries draw from, if any.
    fn budget(&self) -> Option<&RetryBudget>;

    /// The largest hint honoured.
    fn max_retry_after(&self) -> Duration;
}

impl Retries for () {
    fn next_delay(&self, _: &mut Option<DelayState>, _: Option<u64>) -> Option<Duration> {
        None
    }

    fn budget(&self) -> Option<&RetryBudget> {
        None
    }

    fn max_retry_after(&self) -> Duration {
        Duration::ZERO
    }
}

impl Retries for RetryStage {
    fn next_delay(&self, state: &mut Option<DelayState>, seed: Option<u64>) -> Option<Duration> {
        let state = state.get_or_insert_with(|| {
            self.backoff
                .start(seed.unwrap_or_else(crate::seed::fresh_seed))
        });
        self.backoff.next_delay(state)
    }

    fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }
}
