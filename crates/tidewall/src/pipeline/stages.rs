//! The stages a pipeline nests, each a type parameter; `()` is the empty stage and costs
//! nothing, so a pipeline pays only for the policies it has.

use std::future::Future;
use std::time::Duration;

use crate::breaker::{CircuitBreaker, Outcome};
use crate::bulkhead::Bulkhead;
use crate::rate::RateLimiter;
use crate::retry::engine::RetryRules;
use crate::rt::Clock;
use crate::{Deadline, Rejected};

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<R: crate::rt::Clock> Sealed for crate::rate::RateLimiter<R> {}
    impl<R: crate::rt::Clock> Sealed for crate::bulkhead::Bulkhead<R> {}
    impl<R: crate::rt::Clock> Sealed for crate::breaker::CircuitBreaker<R> {}
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

impl<R: Clock> Admission for RateLimiter<R> {
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

impl<R: Clock> Admission for Bulkhead<R> {
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

impl<R: Clock> Gate for CircuitBreaker<R> {
    type Permit<'a> = crate::breaker::Permit<'a, R>;

    fn enter(&self) -> Result<Self::Permit<'_>, Rejected> {
        self.try_acquire()
    }

    fn record(permit: Self::Permit<'_>, outcome: Outcome) {
        permit.record(outcome);
    }
}

/// The retry stage: the [retry engine](crate::retry)'s rules (backoff, optional shared
/// budget, hint cap), which the pipeline drives exactly as the retry future does.
#[derive(Debug, Clone)]
pub struct RetryStage {
    pub(super) rules: RetryRules,
}

/// Whether a pipeline retries: [`RetryStage`], or `()` for never.
pub trait Retries: sealed::Sealed + Send + Sync {
    /// The engine's rules, if this stage retries at all.
    #[doc(hidden)]
    fn rules(&self) -> Option<&RetryRules>;

    /// Hands the pipeline-wide settings the engine also needs to the stage.
    #[doc(hidden)]
    fn set_call_rules(&mut self, min_attempt_time: Duration, seed: Option<u64>);
}

impl Retries for () {
    fn rules(&self) -> Option<&RetryRules> {
        None
    }

    fn set_call_rules(&mut self, _: Duration, _: Option<u64>) {}
}

impl Retries for RetryStage {
    fn rules(&self) -> Option<&RetryRules> {
        Some(&self.rules)
    }

    fn set_call_rules(&mut self, min_attempt_time: Duration, seed: Option<u64>) {
        self.rules.min_attempt_time = min_attempt_time;
        self.rules.seed = seed;
    }
}
