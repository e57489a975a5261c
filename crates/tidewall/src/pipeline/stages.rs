//! The stages a pipeline nests, each a type parameter; `()` is the empty stage and costs
//! nothing, so a pipeline pays only for the policies it has.

use std::time::Duration;

use crate::Rejected;
use crate::breaker::{CircuitBreaker, Outcome};
use crate::retry::engine::RetryRules;
use crate::rt::Clock;

pub(super) mod sealed {
    use crate::breaker::CircuitBreaker;
    use crate::rt::Clock;

    pub trait Sealed {}
    impl Sealed for () {}
    impl<R: Clock> Sealed for CircuitBreaker<R> {}
    impl Sealed for super::RetryStage {}
    impl<S: Sealed> Sealed for Option<S> {}

    /// A breaker on the pipeline's clock `R` (possibly absent): the one a pipeline accepts.
    pub trait OnClock<R> {}
    impl<R: Clock> OnClock<R> for CircuitBreaker<R> {}
    impl<R: Clock> OnClock<R> for Option<CircuitBreaker<R>> {}
}

/// A stage that gates each attempt: a circuit breaker, or nothing (`()`, or `None` of an
/// `Option` chosen at run time).
pub trait Gate: sealed::Sealed + Send + Sync {
    /// Records the attempt's outcome.
    type Permit<'a>: Send
    where
        Self: 'a;

    /// Admits one attempt or rejects it.
    ///
    /// # Errors
    ///
    /// The gate's rejection (e.g. [`Rejected::CircuitOpen`]).
    fn enter(&self) -> Result<Self::Permit<'_>, Rejected>;

    /// Ends an attempt, with the wait its result asked for (a failure's hint).
    fn record(permit: Self::Permit<'_>, outcome: Outcome, hint: Option<Duration>);
}

impl Gate for () {
    type Permit<'a> = ();

    fn enter(&self) -> Result<(), Rejected> {
        Ok(())
    }

    fn record((): (), _: Outcome, _: Option<Duration>) {}
}

impl<R: Clock> Gate for CircuitBreaker<R> {
    type Permit<'a> = crate::breaker::Permit<'a, R>;

    fn enter(&self) -> Result<Self::Permit<'_>, Rejected> {
        self.try_acquire()
    }

    fn record(permit: Self::Permit<'_>, outcome: Outcome, hint: Option<Duration>) {
        permit.record_hinted(outcome, hint);
    }
}

impl<G: Gate> Gate for Option<G> {
    type Permit<'a>
        = Option<G::Permit<'a>>
    where
        Self: 'a;

    #[inline]
    fn enter(&self) -> Result<Self::Permit<'_>, Rejected> {
        self.as_ref().map(G::enter).transpose()
    }

    #[inline]
    fn record(permit: Self::Permit<'_>, outcome: Outcome, hint: Option<Duration>) {
        if let Some(permit) = permit {
            G::record(permit, outcome, hint);
        }
    }
}

/// The retry stage: the [retry engine](crate::retry)'s rules (backoff, optional shared
/// budget, hint cap), which the pipeline drives exactly as the retry future does.
#[derive(Debug, Clone)]
pub struct RetryStage {
    pub(super) rules: RetryRules,
}

impl RetryStage {
    /// `backoff`'s schedule, drawing retries from `budget` if there is one, honouring hints up
    /// to `max_retry_after`.
    #[cfg(feature = "serde")]
    pub(crate) fn new(
        backoff: crate::Backoff,
        budget: Option<crate::budget::RetryBudget>,
        max_retry_after: Duration,
    ) -> Self {
        let mut rules = RetryRules::new(backoff);
        rules.budget = budget;
        rules.max_retry_after = max_retry_after;
        Self { rules }
    }
}

/// Whether a pipeline retries: [`RetryStage`], or `()` (or `None`) for never.
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

impl<S: Retries> Retries for Option<S> {
    fn rules(&self) -> Option<&RetryRules> {
        self.as_ref().and_then(S::rules)
    }

    fn set_call_rules(&mut self, min_attempt_time: Duration, seed: Option<u64>) {
        if let Some(stage) = self {
            stage.set_call_rules(min_attempt_time, seed);
        }
    }
}
