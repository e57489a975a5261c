//! The async front: a bulkhead whose capacity an adaptive algorithm sets after each call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tidewall_core::adaptive::{LimitAlgorithm, Sample};

use super::steady::SteadyWord;
use crate::admission::{Admission, Priority, QueueDiscipline, Wait};
use crate::breaker::Outcome;
use crate::bulkhead::{AcquireOwned, Bulkhead};
use crate::rate::clock::LimiterClock;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, Mutex, lock};
use crate::{ConfigError, Name, Rejected};

/// A limit on calls in flight that an adaptive algorithm sets; see the [module docs](super).
/// Cheap to clone: clones share the limit.
pub struct AdaptiveLimiter<A, R = DefaultRuntime> {
    shared: Arc<Shared<A, R>>,
    /// The priority of the calls this handle admits.
    priority: Priority,
}

struct Shared<A, R> {
    /// Holds the permits, the queue and the wait; its capacity is the algorithm's limit.
    bulkhead: Bulkhead<R>,
    algorithm: Mutex<A>,
    /// The samples `algorithm` would learn nothing from, as it is now: their calls end
    /// without its lock.
    steady: SteadyWord,
    /// Times calls: the CPU's counter when the clock is real time, as the rate limiter does.
    clock: LimiterClock,
}

/// Configures an [`AdaptiveLimiter`].
#[must_use]
#[derive(Clone)]
pub struct AdaptiveLimiterBuilder<A, R = DefaultRuntime> {
    algorithm: A,
    max_queue: usize,
    max_wait: Option<Duration>,
    name: Name,
    rt: R,
    events: Option<crate::telemetry::Listener>,
    discipline: QueueDiscipline,
    shares: [f64; Priority::ALL.len()],
}

impl<A: LimitAlgorithm> AdaptiveLimiter<A> {
    /// Starts a limiter of `algorithm` on the default runtime: its initial limit, refusing at
    /// once when full (choose a queue with [`max_queue`](AdaptiveLimiterBuilder::max_queue)).
    pub fn builder(algorithm: A) -> AdaptiveLimiterBuilder<A> {
        AdaptiveLimiterBuilder {
            algorithm,
            max_queue: 0,
            max_wait: Some(Duration::from_secs(1)),
            name: Name::from_static("adaptive"),
            rt: DefaultRuntime::default(),
            events: None,
            discipline: QueueDiscipline::Fifo,
            shares: [1.0, 1.0, 0.8],
        }
    }
}

impl<R> AdaptiveLimiterBuilder<(), R> {
    /// Checks the settings around an algorithm whose limit is `limit`: the shares, and the
    /// queue's as a bulkhead's of that capacity, which it returns.
    pub(crate) fn check(
        &self,
        limit: u32,
    ) -> Result<crate::bulkhead::BulkheadBuilder, ConfigError> {
        check_shares(&self.shares)?;
        let bulkhead = self.queue_of(limit);
        bulkhead.validate()?;
        Ok(bulkhead)
    }
}

impl<A, R> AdaptiveLimiterBuilder<A, R> {
    /// Callers that may wait for a slot when the limit is reached (default 0: refused at once
    /// with [`Rejected::BulkheadFull`], as load shedding wants).
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// The longest a queued caller waits (default 1 s; `None`: as long as its deadline allows).
    pub fn max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.max_wait = wait.into();
        self
    }

    /// The order its queue admits waiters in, and how long they may wait once it stands
    /// (default [`QueueDiscipline::Fifo`]; it matters only with a queue).
    pub fn discipline(mut self, discipline: QueueDiscipline) -> Self {
        self.discipline = discipline;
        self
    }

    /// The share of the limit calls of `priority` may fill: they are admitted while fewer
    /// than `limit × share` are in flight (always when none are). Defaults: 1 for
    /// [`Critical`](Priority::Critical) and [`Default`](Priority::Default), 0.8 for
    /// [`Sheddable`](Priority::Sheddable), so sheddable calls are refused once the limit is
    /// four-fifths used. Within `(0, 1]`; critical calls always have the whole limit, and a
    /// less important priority never more than a more important one.
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Priority, WindowedGradient};
    ///
    /// let limiter = AdaptiveLimiter::builder(WindowedGradient::builder().build()?)
    ///     .share(Priority::Default, 0.9) // the last tenth for critical calls
    ///     .share(Priority::Sheddable, 0.5)
    ///     .build()?;
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn share(mut self, priority: Priority, share: f64) -> Self {
        self.shares[priority.index()] = share;
        self
    }

    /// The name its events and metrics carry (default `adaptive`), under `policy`
    /// `adaptive`.
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Tells `listener` of its refusals and waits, as a bulkhead's `on_event` does.
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// Runs on `rt`: its clock bounds the waits and times the calls (the CPU's counter times
    /// them instead when `rt`'s clock is real time at build: see the [module docs](super)).
    pub fn runtime<R2>(self, rt: R2) -> AdaptiveLimiterBuilder<A, R2> {
        AdaptiveLimiterBuilder {
            algorithm: self.algorithm,
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            name: self.name,
            rt,
            events: self.events,
            discipline: self.discipline,
            shares: self.shares,
        }
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// As [`BulkheadBuilder::build`](crate::bulkhead::BulkheadBuilder::build) for the queue,
    /// the wait and the discipline; [`ConfigError::OutOfRange`] (or `NotFinite`) for a share
    /// outside `(0, 1]` (the field is `critical_share`, `default_share` or
    /// `sheddable_share`), and [`ConfigError::Conflict`] for a critical share below 1 or a
    /// less important priority's share above a more important one's;
    /// [`ConfigError::Zero`] for `max_concurrent` when the algorithm's limit is 0 (as
    /// [`FixedLimit(0)`](tidewall_core::adaptive::FixedLimit)'s: a limit it learns later is
    /// applied as at least 1, but it must start with a slot).
    pub fn build(self) -> Result<AdaptiveLimiter<A, R>, ConfigError>
    where
        A: LimitAlgorithm,
        R: Clock,
    {
        self.build_counted(None)
    }

    /// Takes `settings`' queue, wait, discipline and shares (not its name, listener or
    /// runtime), and `algorithm` if given.
    pub(crate) fn retune_from<R2>(
        &mut self,
        settings: &AdaptiveLimiterBuilder<(), R2>,
        algorithm: Option<A>,
    ) {
        self.max_queue = settings.max_queue;
        self.max_wait = settings.max_wait;
        self.discipline = settings.discipline;
        self.shares = settings.shares;
        if let Some(algorithm) = algorithm {
            self.algorithm = algorithm;
        }
    }

    /// The algorithm as given (before any sample).
    pub(crate) fn algorithm(&self) -> &A {
        &self.algorithm
    }

    /// A bulkhead of `limit` slots with this limiter's queue, wait and discipline.
    fn queue_of(&self, limit: u32) -> crate::bulkhead::BulkheadBuilder {
        Bulkhead::builder(usize::try_from(limit).unwrap_or(usize::MAX))
            .max_queue(self.max_queue)
            .max_wait(self.max_wait)
            .discipline(self.discipline)
    }

    /// The algorithm, and the settings around it.
    pub(crate) fn split(self) -> (A, AdaptiveLimiterBuilder<(), R>) {
        let settings = AdaptiveLimiterBuilder {
            algorithm: (),
            max_queue: self.max_queue,
            max_wait: self.max_wait,
            name: self.name,
            rt: self.rt,
            events: self.events,
            discipline: self.discipline,
            shares: self.shares,
        };
        (self.algorithm, settings)
    }

    /// The bulkhead settings under the limiter: its limit, queue, wait, discipline, shares,
    /// name and listener.
    fn bulkhead(&self) -> crate::bulkhead::BulkheadBuilder<R>
    where
        A: LimitAlgorithm,
        R: Clone,
    {
        let bulkhead = self
            .queue_of(self.algorithm.limit())
            .with_shares(self.shares)
            .reported_as("adaptive")
            .name(self.name.clone())
            .runtime(self.rt.clone());
        match &self.events {
            Some(events) => bulkhead.with_listener(events.clone()),
            None => bulkhead,
        }
    }

    /// What every limiter of these settings may count in together (a keyed table's keys).
    pub(crate) fn telemetry(&self) -> std::sync::Arc<crate::telemetry::PolicyTelemetry>
    where
        A: LimitAlgorithm,
        R: Clone,
    {
        self.bulkhead().telemetry()
    }

    /// Builds, counting in `telemetry` if given (else its own).
    pub(crate) fn build_counted(
        self,
        telemetry: Option<std::sync::Arc<crate::telemetry::PolicyTelemetry>>,
    ) -> Result<AdaptiveLimiter<A, R>, ConfigError>
    where
        A: LimitAlgorithm,
        R: Clock,
    {
        check_shares(&self.shares)?;
        let settings = self.bulkhead();
        let bulkhead = match telemetry {
            Some(telemetry) => settings.build_counted(telemetry)?,
            None => settings.build()?,
        };
        Ok(AdaptiveLimiter {
            shared: Arc::new(Shared {
                clock: LimiterClock::new(bulkhead.runtime()),
                bulkhead,
                steady: SteadyWord::new(self.algorithm.steady()),
                algorithm: Mutex::new(self.algorithm),
            }),
            priority: Priority::Default,
        })
    }
}

/// Checks the priorities' shares: each within `(0, 1]`, critical's whole, none above a more
/// important one's.
fn check_shares(shares: &[f64; Priority::ALL.len()]) -> Result<(), ConfigError> {
    for (priority, &share) in Priority::ALL.iter().zip(shares) {
        let field = match priority {
            Priority::Critical => "critical_share",
            Priority::Default => "default_share",
            Priority::Sheddable => "sheddable_share",
        };
        if !share.is_finite() {
            return Err(ConfigError::NotFinite { field });
        }
        if share <= 0.0 || share > 1.0 {
            return Err(ConfigError::OutOfRange {
                field,
                value: share,
                allowed: "in (0, 1]",
            });
        }
    }
    if shares[0] < 1.0 {
        return Err(ConfigError::Conflict {
            reason: "critical calls always have the whole limit: critical_share must be 1",
        });
    }
    if shares.windows(2).any(|pair| pair[1] > pair[0]) {
        return Err(ConfigError::Conflict {
            reason: "a less important priority's share exceeds a more important one's",
        });
    }
    Ok(())
}

impl<A: LimitAlgorithm, R: Clock> AdaptiveLimiter<A, R> {
    /// Admits a call of this handle's [priority](Self::priority) now if fewer than its share
    /// of the limit are in flight and nobody as important or more is queued (queued callers
    /// of lower priority, or waiting for their own share, are passed); record how it ended on
    /// the permit.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when its share of the limit is reached.
    #[inline(always)]
    pub fn try_acquire(&self) -> Result<AdaptivePermit<A, R>, Rejected> {
        self.take().ok_or_else(|| self.refused())
    }

    /// Reports a refusal of a full limit: the refusal to return.
    pub(super) fn refused(&self) -> Rejected {
        self.shared.bulkhead.refused()
    }

    /// A handle to the same limiter whose calls have `priority` (this one's are
    /// [`Priority::Default`] unless it was made here too): in a pipeline or a tower layer,
    /// one handle per class of calls.
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Aimd, Priority};
    ///
    /// let aimd = Aimd::builder().min_limit(1).initial_limit(5).build()?;
    /// let limiter = AdaptiveLimiter::builder(aimd).build()?;
    /// let prefetch = limiter.with_priority(Priority::Sheddable);
    /// let held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    /// // Four of five in flight: the sheddable share (0.8 × 5 = 4) is used up.
    /// assert!(prefetch.try_acquire().is_err());
    /// assert!(limiter.try_acquire().is_ok(), "default calls have the whole limit");
    /// # drop(held);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    #[must_use]
    pub fn with_priority(&self, priority: Priority) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            priority,
        }
    }

    /// The priority of the calls this handle admits.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The limit in force: calls admitted at once.
    pub fn limit(&self) -> u32 {
        applied_limit(lock(&self.shared.algorithm).limit())
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.bulkhead.in_flight()
    }

    /// Callers waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.shared.bulkhead.queued()
    }

    /// The name its events and metrics carry.
    pub fn name(&self) -> &str {
        self.shared.bulkhead.name()
    }

    /// Applies `settings` in place, to every handle and clone: its algorithm replaces the
    /// one in force, so learning starts again from the new algorithm's initial limit, and
    /// its queue, wait, discipline and shares take effect at once. Its name, listener and
    /// runtime are not read: those stay. Calls in flight keep their slots, and their samples
    /// go to the new algorithm when they end; a limit below what is held admits nobody new,
    /// queued callers included, until enough slots come back (as a bulkhead's
    /// [`reconfigure`](crate::bulkhead::Bulkhead::reconfigure)). A larger share or limit
    /// admits queued callers at once; callers already queued keep the wait they started
    /// with, and stay queued when the queue shrinks (until it is back within its bound, a
    /// caller that would queue is refused, whatever its priority, and sheds nobody).
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Aimd, Priority};
    ///
    /// let aimd = |limit| Aimd::builder().min_limit(1).initial_limit(limit).build();
    /// let limiter = AdaptiveLimiter::builder(aimd(4)?).build()?;
    /// let held: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
    /// limiter.reconfigure(AdaptiveLimiter::builder(aimd(2)?).share(Priority::Sheddable, 0.5))?;
    /// assert_eq!((limiter.limit(), limiter.in_flight()), (2, 3), "nothing revoked");
    /// assert!(limiter.try_acquire().is_err());
    /// # drop(held);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`AdaptiveLimiterBuilder::build`]; nothing changes then.
    pub fn reconfigure<R2>(
        &self,
        settings: AdaptiveLimiterBuilder<A, R2>,
    ) -> Result<(), ConfigError> {
        let (algorithm, settings) = settings.split();
        self.retune(&settings, Some(algorithm))
    }

    /// Applies `settings`' queue, wait, discipline and shares, and `algorithm` if given (else
    /// the one in force stays, with what it learned).
    pub(crate) fn retune<R2>(
        &self,
        settings: &AdaptiveLimiterBuilder<(), R2>,
        algorithm: Option<A>,
    ) -> Result<(), ConfigError> {
        let shared = &*self.shared;
        let mut in_force = lock(&shared.algorithm);
        let limit = algorithm
            .as_ref()
            .map_or_else(|| applied_limit(in_force.limit()), A::limit);
        let bulkhead = settings.check(limit)?;
        if let Some(algorithm) = algorithm {
            shared.steady.publish(algorithm.steady());
            *in_force = algorithm;
        }
        // Under the algorithm's lock, as `learn` applies limits: in the order they were made.
        shared
            .bulkhead
            .reconfigure_shared(bulkhead, settings.shares);
        Ok(())
    }

    /// A slot for a call of this handle's priority, if one is free to it now.
    // Always: out of line, the permit comes back through memory, and the caller reading it
    // back whole stalls on store forwarding (measured: about 9 ns of a 30 ns round trip).
    #[inline(always)]
    pub(super) fn take(&self) -> Option<AdaptivePermit<A, R>> {
        let held = self.shared.bulkhead.try_take_slot_as(self.priority)?;
        Some(self.permit(held))
    }

    /// The guard of a slot taken just now with `held` slots in use (its own included),
    /// timed from now.
    #[inline(always)]
    fn permit(&self, held: usize) -> AdaptivePermit<A, R> {
        let shared = &*self.shared;
        AdaptivePermit {
            held,
            started: shared.clock.nanos(shared.bulkhead.runtime()),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<A: LimitAlgorithm, R: Clock> Shared<A, R> {
    /// Teaches the algorithm one call and applies the limit it gives. Out of line: `finish`
    /// is inlined into every caller, and the calls that end without learning (steady,
    /// ignored) should carry only the steady check there, not the update.
    #[inline(never)]
    fn learn(&self, sample: &Sample) {
        let mut algorithm = lock(&self.algorithm);
        let before = applied_limit(algorithm.limit());
        let limit = applied_limit(algorithm.update(sample));
        self.steady.publish(algorithm.steady());
        if limit != before {
            // Under the algorithm's lock: limits are applied in the order they were made.
            let capacity = usize::try_from(limit).unwrap_or(usize::MAX);
            self.bulkhead.set_capacity(capacity);
        }
    }
}

/// A call admitted by an [`AdaptiveLimiter`], holding its slot. Record how it ended with
/// [`success`](Self::success), [`failure`](Self::failure) or [`ignore`](Self::ignore); dropped
/// without one (a cancelled call), it frees the slot and teaches the algorithm nothing.
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct AdaptivePermit<A, R: Clock> {
    // Three whole words and no padding, and keep it so: a tower service or a pipeline
    // moves the permit through memory, and a move copies padding with the fields in pieces
    // whose reads stall on store forwarding (docs/BENCHMARKS.md, adaptive limiter: 7–13 ns a
    // call under the tower layer). So the limiter's state, not a handle with its priority
    // byte (a permit needs no priority), and the count as a `usize`.
    /// Holds the slot: [`Drop`] gives it back to the limiter's bulkhead.
    shared: Arc<Shared<A, R>>,
    started: u64,
    /// The slots in use when it was admitted, its own included: the sample's `inflight`.
    held: usize,
}

impl<A: LimitAlgorithm, R: Clock> AdaptivePermit<A, R> {
    /// The call succeeded: its time since admission is a sample.
    #[inline]
    pub fn success(self) {
        self.finish(Outcome::Success);
    }

    /// The call failed (timed out, or refused by the dependency for load): a dropped sample.
    #[inline]
    pub fn failure(self) {
        self.finish(Outcome::Failure);
    }

    /// The call says nothing about the dependency's capacity: no sample.
    #[inline]
    pub fn ignore(self) {
        self.finish(Outcome::Ignored);
    }

    /// Times the call from now rather than from its admission: for a caller that holds the
    /// slot through waits of its own before the call starts (the HTTP stack's rate limit),
    /// which are not the dependency's latency.
    #[cfg(feature = "http")]
    pub(crate) fn start_now(&mut self) {
        let shared = &*self.shared;
        self.started = shared.clock.nanos(shared.bulkhead.runtime());
    }

    /// Ends the call with `outcome` ([`Outcome::Ignored`] teaches nothing).
    // Always, as `take`: out of line, the permit is passed through memory, and its reads
    // there stall on store forwarding.
    #[inline(always)]
    pub fn finish(self, outcome: Outcome) {
        let dropped = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return,
        };
        let shared = &*self.shared;
        let now = shared.clock.nanos(shared.bulkhead.runtime());
        let rtt = now.saturating_sub(self.started);
        let inflight = u32::try_from(self.held).unwrap_or(u32::MAX);
        if shared.steady.holds(rtt, inflight, dropped) {
            // Nothing to learn: the update would leave the algorithm as it is.
            return;
        }
        shared.learn(&Sample {
            rtt: Duration::from_nanos(rtt),
            inflight,
            dropped,
            at: Duration::from_nanos(now),
        });
        // The slot goes back (on drop) only once the new limit is in force: given back first,
        // it would go to a queued caller that the smaller limit no longer admits.
    }
}

impl<A, R: Clock> Drop for AdaptivePermit<A, R> {
    #[inline]
    fn drop(&mut self) {
        self.shared.bulkhead.release_slot();
    }
}

impl<A, R: Clock> fmt::Debug for AdaptivePermit<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePermit")
            .field("inflight", &self.held)
            .finish_non_exhaustive()
    }
}

impl<A: LimitAlgorithm + Send + 'static, R: Clock> Admission for AdaptiveLimiter<A, R> {
    type Guard = AdaptivePermit<A, R>;
    type Admit = AdaptiveAdmit<A, R>;

    // Always, as `take`: a tower service or a pipeline calls this, and out of line the
    // permit comes back through memory, where its reader stalls on store forwarding.
    #[inline(always)]
    fn try_admit(&self) -> Option<Self::Guard> {
        self.take()
    }

    fn admit(&self, wait: Wait) -> Self::Admit {
        AdaptiveAdmit {
            acquire: self.shared.bulkhead.acquire_owned_as(wait, self.priority),
            limiter: Some(self.clone()),
        }
    }

    #[inline(always)]
    fn finish(guard: Self::Guard, outcome: Outcome) {
        guard.finish(outcome);
    }
}

pin_project! {
    /// The [`Admission::admit`] future of an [`AdaptiveLimiter`]: a bulkhead's wait, timed
    /// from the moment it admits.
    ///
    /// **Cancel safety:** as the bulkhead's: dropping it leaves the queue and holds nothing.
    #[must_use = "futures do nothing unless polled"]
    pub struct AdaptiveAdmit<A, R: Clock> {
        #[pin]
        acquire: AcquireOwned<R>,
        limiter: Option<AdaptiveLimiter<A, R>>,
    }
}

impl<A: LimitAlgorithm, R: Clock> Future for AdaptiveAdmit<A, R> {
    type Output = Result<AdaptivePermit<A, R>, Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        ready!(this.acquire.as_mut().poll_slot(cx))?;
        let Some(limiter) = this.limiter.take() else {
            unreachable!("an admission completes once");
        };
        Poll::Ready(Ok(limiter.permit(this.acquire.held())))
    }
}

impl<A, R: Clock> fmt::Debug for AdaptiveAdmit<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveAdmit").finish_non_exhaustive()
    }
}

impl<A, R> Clone for AdaptiveLimiter<A, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            priority: self.priority,
        }
    }
}

impl<A, R: Clock> fmt::Debug for AdaptiveLimiter<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("name", &self.shared.bulkhead.name())
            .field("capacity", &self.shared.bulkhead.capacity())
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

// For the keyed table (`keyed.rs`): its own refusals' telemetry, and eviction.
impl<A, R> AdaptiveLimiterBuilder<A, R> {
    /// The name and the listener the limiters it builds report with.
    pub(crate) fn reports_as(&self) -> (&Name, Option<crate::telemetry::Listener>) {
        (&self.name, self.events.clone())
    }
}

impl<A, R> AdaptiveLimiter<A, R> {
    /// Handles to this limiter's state: this one, its clones, its permits and its waiters.
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }
}

/// The limit applied for an algorithm's: at least 1. A limit of zero would admit no call, so
/// no sample could ever raise it again (the algorithms here never give one; an algorithm of
/// the user's may).
#[inline]
fn applied_limit(limit: u32) -> u32 {
    limit.max(1)
}
