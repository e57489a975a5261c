//! Circuit breaker: stop calling a dependency that is failing, probe it, and come back.
//!
//! A [`CircuitBreaker`] watches the outcomes of calls in a sliding window (the last N calls,
//! or the last span of time in buckets) and *opens* when the failure rate, the slow-call rate
//! or a run of consecutive failures reaches its threshold (a rate equal to it trips, as
//! resilience4j's does). While open it rejects calls at once
//! with [`Rejected::CircuitOpen`] and a `retry_after`. After the break (fixed, or growing on
//! repeated trips with a backoff) it turns *half-open* and admits exactly
//! [`half_open_probes`](CircuitBreakerBuilder::half_open_probes) probe calls: that many
//! successes close it, one failure (or, when slow calls are tracked, one slow success)
//! reopens it.
//!
//! Guarantees:
//! * **Every outcome decides**: the thresholds are evaluated after every recorded outcome,
//!   successes included (a success can bring the window to `minimum_calls` with the failure
//!   rate already at its threshold, or arrive as older successes leave a time window). At
//!   any rate: a time window's bucket holds at most 65,535 calls, and the call that finds it
//!   full halves its counts first, so every call still counts and the bucket's rates follow
//!   its latest calls (a failure storm that starts in a full bucket shows within it).
//! * **Closed path**: admission is one atomic load; recording touches only the window
//!   (no lock, no allocation). Without a time window or a slow-call rate a success reads no
//!   clock and a failure reads it once (the time of the latest failure, by which a
//!   [keyed table](KeyedCircuitBreaker) keeps a key); a trip reads it once more, so the break
//!   always starts when the breaker opens.
//! * **Any age**: a breaker behaves the same an hour, a month or a century after it was
//!   built, and after any idle gap: a time window's stale buckets never count again, and
//!   repeated trips cost one backoff step each however many came before.
//! * **Exact probes**: a half-open slot is reserved with a compare-and-swap, so however many
//!   callers race, exactly the configured number get through.
//! * **RAII permits**: a permit dropped, cancelled or unwound by a panic records nothing and a
//!   probe gives its slot back; [`max_half_open_wait`](CircuitBreakerBuilder::max_half_open_wait)
//!   reopens a breaker whose probes hang (measured from the first probe in flight), so it can
//!   never stay stuck half-open; with no probe in flight it waits for the next caller however
//!   long it stays idle.
//! * **Generations**: every transition bumps a generation the permit carries; an outcome from
//!   an earlier state never moves the current one (a reset replaces the window rather than
//!   emptying it, so not even an outcome racing the reset reaches the fresh window).
//!
//! When not to use it: for a dependency you call rarely (the window never fills: use
//! `consecutive_failures`), or to protect *yourself* from overload (use a
//! [`bulkhead`](crate::bulkhead) or a [rate limiter](crate::rate)).
//!
//! ```
//! use std::time::Duration;
//! use tidewall::breaker::{CircuitBreaker, State};
//! use tidewall::{Error, Rejected};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let breaker = CircuitBreaker::builder()
//!     .consecutive_failures(3)
//!     .break_duration(Duration::from_secs(5))
//!     .build()?;
//! for _ in 0..3 {
//!     let _ = breaker.call(|| async { Err::<(), _>("boom") }).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let rejected = breaker.call(|| async { Ok::<_, &str>(()) }).await;
//! assert!(matches!(rejected, Err(Error::Rejected(Rejected::CircuitOpen { .. }))));
//!
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! breaker.call(|| async { Ok::<_, &str>(()) }).await.unwrap(); // the probe succeeds
//! assert_eq!(breaker.state(), State::Closed);
//! # Ok(()) }
//! ```

mod builder;
mod events;
mod keyed;
mod permit;
mod shared;
mod window;
mod word;

use std::future::Future;

pub use builder::CircuitBreakerBuilder;
pub use events::{State, StateChange, TripReason};
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerBuilder};
pub use permit::{Outcome, OwnedPermit, Permit};
pub use shared::Reconfigured;
pub use tidewall_core::breaker::{BreakerPolicy, Counts, Window};

use self::shared::Shared;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::Arc;
use crate::{Error, Rejected};

/// A circuit breaker. Cheap to clone: clones share one state.
pub struct CircuitBreaker<R = DefaultRuntime> {
    shared: Arc<Shared<R>>,
}

impl<R: Clock> Clone for CircuitBreaker<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl CircuitBreaker {
    /// Starts a breaker on the default runtime with the defaults of
    /// [`BreakerPolicy::builder`]; switch the runtime with
    /// [`runtime`](CircuitBreakerBuilder::runtime).
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new(DefaultRuntime::default())
    }
}

impl<R: Clock> CircuitBreaker<R> {
    /// Asks to make one call: a [`Permit`] to record its outcome on, or the rejection.
    ///
    /// # Errors
    ///
    /// [`Rejected::CircuitOpen`] while open, forced open, or half-open with every probe slot
    /// taken.
    pub fn try_acquire(&self) -> Result<Permit<'_, R>, Rejected> {
        let ticket = self.shared.acquire()?;
        Ok(Permit {
            shared: &self.shared,
            ticket: Some(ticket),
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle to the breaker.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit<R>, Rejected> {
        let ticket = self.shared.acquire()?;
        Ok(OwnedPermit {
            shared: Arc::clone(&self.shared),
            ticket: Some(ticket),
        })
    }

    /// [`try_acquire_owned`](Self::try_acquire_owned) with this handle moved into the permit.
    pub(crate) fn into_owned_permit(self) -> Result<OwnedPermit<R>, Rejected> {
        let ticket = self.shared.acquire()?;
        Ok(OwnedPermit {
            shared: self.shared,
            ticket: Some(ticket),
        })
    }

    /// The runtime whose clock the breaker reads.
    pub fn runtime(&self) -> &R {
        &self.shared.rt
    }

    /// [`try_acquire_owned`](Self::try_acquire_owned) without counting a refusal: for a
    /// caller that waits for the breaker and is counted once, with
    /// [`record_rejection`](Self::record_rejection), when it gives up.
    #[cfg(feature = "tower")]
    pub(crate) fn try_acquire_owned_quiet(&self) -> Result<OwnedPermit<R>, Rejected> {
        let ticket = self.shared.acquire_quiet()?;
        Ok(OwnedPermit {
            shared: Arc::clone(&self.shared),
            ticket: Some(ticket),
        })
    }

    /// Counts a refusal of a caller that waited for the breaker and gave up.
    #[cfg(feature = "tower")]
    pub(crate) fn record_rejection(&self, rejected: &Rejected) {
        self.shared.record_rejection(rejected);
    }

    /// Calls `op` if the breaker admits it; `Ok` counts as a success and `Err` as a failure.
    ///
    /// **Cancel safety:** dropping the future before `op` finishes records nothing and gives a
    /// half-open probe slot back. `op` is not even created when the call is rejected.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when the breaker refuses, [`Error::Inner`] with `op`'s error.
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(op, crate::classify::DefaultClassifier)
            .await
    }

    /// Like [`call`](Self::call), with a [classifier](crate::classify) deciding how the result
    /// counts (for example, an HTTP 404 as [`Verdict::Ignored`](crate::classify::Verdict), or
    /// an `Ok` carrying a 503 as a failure): both kinds of failure count as failures, an
    /// ignored result records nothing.
    ///
    /// ```
    /// use tidewall::breaker::{CircuitBreaker, State};
    /// use tidewall::classify::Verdict;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let breaker = CircuitBreaker::builder().consecutive_failures(2).build()?;
    /// // A 404 is the caller's mistake, not the service's: it records nothing.
    /// let not_found_is_ignored = |result: Result<&(), &u16>| match result {
    ///     Ok(()) => Verdict::Success,
    ///     Err(404) => Verdict::Ignored,
    ///     Err(_) => Verdict::Failure,
    /// };
    /// for _ in 0..5 {
    ///     let _ = breaker.call_classified(|| async { Err::<(), u16>(404) }, not_found_is_ignored).await;
    /// }
    /// assert_eq!(breaker.state(), State::Closed);
    /// # Ok(()) }
    /// ```
    ///
    /// **Cancel safety:** as [`call`](Self::call).
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when the breaker refuses, [`Error::Inner`] with `op`'s error.
    pub async fn call_classified<T, E, F, Fut, C>(&self, op: F, classify: C) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: crate::classify::Classify<T, E>,
    {
        let permit = self.try_acquire()?;
        let result = op().await;
        let (verdict, hint) = crate::classify::judge(&classify, result.as_ref());
        permit.record_hinted(verdict.breaker_outcome(), hint);
        result.map_err(Error::Inner)
    }

    /// The state the breaker last moved to. It moves on calls (and when forced, reset or
    /// reconfigured), not on its own: an `Open` breaker whose break has ended reads `Open`
    /// until a caller is admitted as its probe, and a `HalfOpen` one whose probes hang past
    /// [`max_half_open_wait`](CircuitBreakerBuilder::max_half_open_wait) reads `HalfOpen`
    /// until the next caller reopens it. A health check that must see the break's end asks
    /// for admission ([`try_acquire`](Self::try_acquire)) instead.
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// What the window holds now (calls, failures, slow calls).
    pub fn counts(&self) -> Counts {
        self.shared.counts()
    }

    /// Opens the breaker by hand; it stays open until [`reset`](Self::reset). Its refusals
    /// hint the first break as their `retry_after` (a force has no end a hint could name):
    /// a caller that honours hints asks again at that pace.
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Closes the breaker by hand and stops it from tripping until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.shared.force(State::ForcedClosed);
    }

    /// Back to closed with an empty window and the break backoff restarted.
    pub fn reset(&self) {
        self.shared.force(State::Closed);
    }

    /// The state with its generation, read in one step. The generation is one more on every
    /// transition, by hand or not (wrapping; a [`StateChange`] carries the one it made), so
    /// code that changes the breaker on its own behalf (a layer sharing decisions across
    /// replicas, say) can later undo its change only if nothing changed the breaker since,
    /// with [`force_open_if`](Self::force_open_if) and [`reset_if`](Self::reset_if).
    ///
    /// ```
    /// use tidewall::breaker::{CircuitBreaker, State};
    ///
    /// let breaker = CircuitBreaker::builder().build()?;
    /// let (state, seen) = breaker.state_and_generation();
    /// assert_eq!(state, State::Closed);
    /// let ours = breaker.force_open_if(seen).expect("nothing changed it in between");
    ///
    /// breaker.force_open(); // an operator's force, on top of ours: a transition of its own
    /// assert!(!breaker.reset_if(ours), "not ours to undo any more");
    /// assert_eq!(breaker.state(), State::ForcedOpen);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn state_and_generation(&self) -> (State, u32) {
        self.shared.state_and_generation()
    }

    /// [`force_open`](Self::force_open), only if the breaker is still in `generation` (see
    /// [`state_and_generation`](Self::state_and_generation)): the generation the force made,
    /// always `generation.wrapping_add(1)` (every transition adds one), or `None`, with
    /// nothing done, when the breaker has changed since. The listeners hear of the force
    /// before this returns: code that must not lose track of its force even if one of them
    /// panics records `generation.wrapping_add(1)` first.
    pub fn force_open_if(&self, generation: u32) -> Option<u32> {
        self.shared.force_if(State::ForcedOpen, Some(generation))
    }

    /// [`reset`](Self::reset), only if the breaker is still in `generation` (see
    /// [`state_and_generation`](Self::state_and_generation)): whether it reset; `false`, with
    /// nothing done, when the breaker has changed since.
    pub fn reset_if(&self, generation: u32) -> bool {
        self.shared
            .force_if(State::Closed, Some(generation))
            .is_some()
    }

    /// Applies the policy of `settings` (thresholds, window, break, probes, waits, hint cap)
    /// to this breaker in place, validated as [`build`](CircuitBreakerBuilder::build)
    /// validates it; on an error nothing changes. Its name, listener, seed and runtime are
    /// not changed.
    ///
    /// A window of the same shape is kept, with the state, the calls in it and the run of
    /// failures. The new thresholds judge them at once (a closed breaker whose window they
    /// trip opens now, with its state-change event) and every outcome after; a half-open
    /// breaker whose probes have all succeeded under a lowered `half_open_probes` closes; an
    /// open breaker stays open until its break ends. A new break schedule starts from its
    /// first break; the same schedule goes on from where the trips in a row had taken it, so
    /// applying unchanged settings changes nothing. Calls admitted before a slow-call rule
    /// was added are not judged slow (their start was not timed). A window
    /// of another shape (length or kind) cannot hold the old calls: the breaker is
    /// [`reset`](Self::reset), with its state-change event ([`Reconfigured::Reset`]), unless
    /// it was forced open or closed by hand: it then stays forced, on an empty window of the
    /// new shape ([`Reconfigured::KeptForced`]), so a reload does not undo an operator.
    /// Calls in flight keep their permits either way; after a reset their outcomes are
    /// ignored, as after any reset.
    ///
    /// ```
    /// use tidewall::breaker::{CircuitBreaker, Reconfigured, State, Window};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let breaker = CircuitBreaker::builder().failure_rate(0.5).minimum_calls(4).build()?;
    /// for _ in 0..3 {
    ///     breaker.try_acquire().unwrap().failure();
    /// }
    /// // Three failures are not enough under a minimum of four; they are under three, at once.
    /// let how = breaker.reconfigure(CircuitBreaker::builder().failure_rate(0.5).minimum_calls(3))?;
    /// assert_eq!((how, breaker.state()), (Reconfigured::Kept, State::Open));
    ///
    /// let how = breaker.reconfigure(CircuitBreaker::builder().window(Window::Count { calls: 10 }))?;
    /// assert_eq!((how, breaker.state()), (Reconfigured::Reset, State::Closed));
    ///
    /// breaker.force_open();
    /// let how = breaker.reconfigure(CircuitBreaker::builder().window(Window::Count { calls: 20 }))?;
    /// assert_eq!((how, breaker.state()), (Reconfigured::KeptForced, State::ForcedOpen));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`CircuitBreakerBuilder::build`].
    pub fn reconfigure<R2>(
        &self,
        settings: CircuitBreakerBuilder<R2>,
    ) -> Result<Reconfigured, crate::ConfigError> {
        let (policy, max_open_hint) = settings.checked_policy()?;
        Ok(self.shared.reconfigure(policy, max_open_hint))
    }

    /// The breaker's name (for events and metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The policy in force (a copy: [`reconfigure`](Self::reconfigure) may replace it).
    pub fn policy(&self) -> BreakerPolicy {
        self.shared.policy()
    }
}

impl<R: Clock> std::fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<R: Clock> std::fmt::Debug for CircuitBreaker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}
