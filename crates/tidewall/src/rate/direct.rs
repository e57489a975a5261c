//! The direct (one shared limit) rate limiter.

use std::time::Duration;

use tidewall_core::gcra::{Denied, Gcra};

use super::clock::LimiterClock;
use super::until_ready::UntilReady;
use super::wait::{NO_MAX_WAIT, Waiting};
use crate::admission::Wait;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering::Relaxed, Tuning, lock};
use crate::{ConfigError, Deadline, Rejected};

/// The refusals a rate limiter (direct or keyed) gives, as its telemetry registers them.
pub(super) const REFUSALS: [Rejected; 3] = [
    Rejected::RateLimited {
        retry_after: Duration::ZERO,
    },
    Rejected::InsufficientCapacity { burst: 0 },
    Rejected::DeadlineExceeded,
];

/// A GCRA rate limiter with one shared limit: `count` per `period`, bursts of `burst`.
///
/// The state is one atomic `u64`; [`check`](Self::check) is a clock read and one
/// compare-and-swap, lock-free and allocation-free. Cheap to clone: clones share the limit.
///
/// ```
/// use std::time::Duration;
/// use tidewall::rate::RateLimiter;
/// use tidewall::Rejected;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tidewall::ConfigError> {
/// let limiter = RateLimiter::builder(10, Duration::from_secs(1)).burst(2).build()?;
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// assert_eq!(limiter.check(), Err(Rejected::RateLimited { retry_after: Duration::from_millis(100) }));
/// assert_eq!(limiter.until_ready().await, Ok(())); // sleeps ~100 ms (plus jitter)
/// # Ok(()) }
/// ```
pub struct RateLimiter<R = DefaultRuntime> {
    shared: Arc<Direct<R>>,
}

struct Direct<R> {
    /// The limit's words ([`Gcra::to_words`]), replaced whole by `reconfigure`.
    limit: Tuning<2>,
    tat: AtomicU64,
    clock: LimiterClock,
    rt: R,
    /// In nanoseconds.
    jitter: AtomicU64,
    /// In nanoseconds, [`NO_MAX_WAIT`] for none.
    max_wait: AtomicU64,
    /// Serializes `reconfigure`.
    retune: Mutex<()>,
    // Each wait draws its jitter from the next seed; the first is random, so limiters built
    // alike do not wake their waiters in lockstep.
    next_seed: AtomicU64,
    name: crate::Name,
    rejections: crate::telemetry::PolicyTelemetry,
}

impl<R: Clock> Clone for RateLimiter<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: Clock> std::fmt::Debug for RateLimiter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.shared.name)
            .field("gcra", &self.gcra())
            .finish_non_exhaustive()
    }
}

/// Configures a [`RateLimiter`] or a [`KeyedRateLimiter`](super::KeyedRateLimiter).
#[must_use]
#[derive(Debug, Clone)]
pub struct RateLimiterBuilder<R = DefaultRuntime> {
    pub(super) count: u32,
    pub(super) period: Duration,
    pub(super) burst: Option<u32>,
    pub(super) jitter: Option<Duration>,
    pub(super) max_wait: Option<Duration>,
    pub(super) seed: Option<u64>,
    pub(super) rt: R,
    pub(super) name: crate::Name,
    pub(super) events: Option<crate::telemetry::Listener>,
}

impl RateLimiter {
    /// `count` cells per `period` on the default runtime; the burst defaults to `count`.
    pub fn builder(count: u32, period: Duration) -> RateLimiterBuilder {
        RateLimiterBuilder {
            count,
            period,
            burst: None,
            jitter: None,
            max_wait: None,
            seed: None,
            rt: DefaultRuntime::default(),
            name: crate::Name::from_static("rate"),
            events: None,
        }
    }
}

impl<R> RateLimiterBuilder<R> {
    /// Cells admitted at once from rest (see the [module docs](super) for the exact sentence).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The most random delay added to each wait in `until_ready` (default: one emission
    /// interval). Zero disables it; more than `u64::MAX` nanoseconds is refused by `build`.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// The longest a caller waits for cells ([`until_ready`](RateLimiter::until_ready) and its
    /// siblings, a [pipeline](crate::pipeline)'s or a tower layer's wait, a keyed limiter's
    /// wait for its key), counted from the first refusal: a wait that would end later is
    /// refused at once with [`Rejected::RateLimited`] and its `retry_after`, as
    /// [`check`](RateLimiter::check) refuses, rather than waiting. `Duration::ZERO` never waits
    /// (to answer 429 with `Retry-After` rather than queue); `None` (the default) waits as
    /// long as the caller's deadline allows. More than `u64::MAX` nanoseconds is refused by
    /// `build`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::Rejected;
    /// use tidewall::rate::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limiter = RateLimiter::builder(1, Duration::from_secs(1))
    ///     .max_wait(Duration::from_millis(500))
    ///     .jitter(Duration::ZERO)
    ///     .build()?;
    /// limiter.until_ready().await?;
    /// // The next cell is 1 s away, past the 500 ms this limiter waits.
    /// assert_eq!(limiter.until_ready().await, Err(Rejected::RateLimited { retry_after: Duration::from_secs(1) }));
    /// tokio::time::advance(Duration::from_millis(600)).await;
    /// limiter.until_ready().await?; // 400 ms away: waited out
    /// # Ok(()) }
    /// ```
    pub fn max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.max_wait = wait.into();
        self
    }

    /// Calls `listener` with everything the limiter does: each refusal, with its reason and
    /// `retry_after`; a keyed limiter built from this builder calls it too (a full key table
    /// as `keyed_rate`). On the caller's thread, in the call (keep it short). See
    /// [`Event`](crate::telemetry::Event).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tidewall::rate::RateLimiter;
    ///
    /// let refused = Arc::new(AtomicU32::new(0));
    /// let counted = Arc::clone(&refused);
    /// let limiter = RateLimiter::builder(1, Duration::from_secs(60))
    ///     .on_event(move |_| {
    ///         counted.fetch_add(1, Ordering::Relaxed);
    ///     })
    ///     .build()?;
    /// assert!(limiter.check().is_ok());
    /// assert!(limiter.check().is_err());
    /// assert_eq!(refused.load(Ordering::Relaxed), 1);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// A name for metric labels.
    pub fn name(mut self, name: impl Into<crate::Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Fixes the jitter seed, making the waits reproducible (by default each limiter draws a
    /// fresh one, so limiters built alike do not wake their waiters in lockstep).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Reads time from another runtime or [`Clock`] (see the [module docs](super) on time).
    pub fn runtime<R2>(self, rt: R2) -> RateLimiterBuilder<R2> {
        RateLimiterBuilder {
            count: self.count,
            period: self.period,
            burst: self.burst,
            jitter: self.jitter,
            max_wait: self.max_wait,
            seed: self.seed,
            rt,
            name: self.name,
            events: self.events,
        }
    }

    /// The validated limit and waits: the limit, the jitter and `max_wait` in nanoseconds
    /// ([`NO_MAX_WAIT`] for none).
    pub(super) fn checked(&self) -> Result<(Gcra, u64, u64), ConfigError> {
        let gcra = Gcra::new(self.count, self.period, self.burst.unwrap_or(self.count))?;
        let in_nanos = |d: Duration, field| {
            u64::try_from(d.as_nanos()).map_err(|_| ConfigError::DurationOverflow { field })
        };
        let jitter = match self.jitter {
            Some(jitter) => in_nanos(jitter, "jitter")?,
            None => gcra.interval_nanos(),
        };
        let max_wait = match self.max_wait {
            Some(wait) => in_nanos(wait, "max_wait")?.min(NO_MAX_WAIT - 1),
            None => NO_MAX_WAIT,
        };
        Ok((gcra, jitter, max_wait))
    }

    /// Builds a limit per key instead, each with these settings: see
    /// [`KeyedRateLimiter`](super::KeyedRateLimiter) (the same as
    /// [`KeyedRateLimiter::builder`](super::KeyedRateLimiter::builder), from a builder at
    /// hand).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rate::RateLimiter;
    ///
    /// let per_user = RateLimiter::builder(5, Duration::from_secs(1)).keyed().max_keys(1_000).build::<u64>()?;
    /// assert!(per_user.check_key_n(&7, 5).is_ok());
    /// assert!(per_user.check_key(&7).is_err());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn keyed(self) -> super::KeyedRateLimiterBuilder<R> {
        super::KeyedRateLimiterBuilder::new(self)
    }

    /// Validates and builds a direct limiter.
    ///
    /// The emission interval `period / count` is kept in whole nanoseconds, and a rate that
    /// rounding would make more than 0.1 % faster than asked is refused
    /// ([`emission_interval`](tidewall_core::gcra::emission_interval)):
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::ConfigError;
    /// use tidewall::rate::RateLimiter;
    ///
    /// // 1.43 ns per cell: 1 ns would admit 1,000,000,001 a second, 43 % too many.
    /// let too_fine = RateLimiter::builder(700_000_000, Duration::from_secs(1)).build();
    /// assert!(matches!(too_fine, Err(ConfigError::OutOfRange { field: "count", .. })));
    /// let limiter = RateLimiter::builder(500_000_000, Duration::from_secs(1)).build()?;
    /// assert_eq!(limiter.gcra().interval_nanos(), 2);
    /// # Ok::<(), ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Zero count, period or burst; a `period / count` under one nanosecond or more than
    /// 0.1 % above a whole number of them ([`ConfigError::OutOfRange`]); a period, two
    /// intervals, a `(burst + 1) × interval`, a jitter or a `max_wait` beyond `u64::MAX`
    /// nanoseconds ([`ConfigError::DurationOverflow`]).
    pub fn build(self) -> Result<RateLimiter<R>, ConfigError>
    where
        R: Clock,
    {
        let (gcra, jitter, max_wait) = self.checked()?;
        Ok(RateLimiter {
            shared: Arc::new(Direct {
                limit: Tuning::new(gcra.to_words()),
                tat: AtomicU64::new(0),
                clock: LimiterClock::new(&self.rt),
                rt: self.rt,
                jitter: AtomicU64::new(jitter),
                max_wait: AtomicU64::new(max_wait),
                retune: Mutex::new(()),
                next_seed: AtomicU64::new(self.seed.unwrap_or_else(crate::seed::fresh_seed)),
                rejections: crate::telemetry::PolicyTelemetry::new("rate", &self.name, &REFUSALS)
                    .with_listener(self.events),
                name: self.name,
            }),
        })
    }
}

pub(super) fn rejection(denied: Denied) -> Rejected {
    match denied {
        Denied::Wait { nanos } => Rejected::RateLimited {
            retry_after: Duration::from_nanos(nanos),
        },
        Denied::InsufficientCapacity { burst } => Rejected::InsufficientCapacity { burst },
        _ => Rejected::InsufficientCapacity { burst: 0 },
    }
}

impl<R: Clock> RateLimiter<R> {
    /// Admits one cell now, or says how long until it would be admitted.
    ///
    /// # Errors
    ///
    /// [`Rejected::RateLimited`] with the exact `retry_after`.
    #[inline]
    pub fn check(&self) -> Result<(), Rejected> {
        self.check_n(1)
    }

    /// Admits `cells` at once (all or nothing).
    ///
    /// # Errors
    ///
    /// [`Rejected::RateLimited`], or [`Rejected::InsufficientCapacity`] when `cells` exceeds
    /// the burst (it could never pass).
    #[inline]
    pub fn check_n(&self, cells: u32) -> Result<(), Rejected> {
        self.decide(cells)
            .inspect_err(|rejected| self.shared.rejections.refused(rejected, None))
    }

    /// The decision without telemetry: waits and the pipeline's fast path count a rejection
    /// only when the caller is finally refused.
    #[inline]
    pub(crate) fn decide(&self, cells: u32) -> Result<(), Rejected> {
        let shared = &*self.shared;
        let now = shared.clock.nanos(&shared.rt);
        // The limit and the state it was written for are read as one: a `reconfigure`
        // rescales the state while its new limit is being written, so a decision that saw
        // either change in the middle of reading starts over with the new pair.
        let (mut words, mut sequence) = shared.limit.read_versioned();
        let mut tat = shared.tat.load(Relaxed);
        loop {
            if !shared.limit.unchanged_since(sequence) {
                (words, sequence) = shared.limit.read_versioned();
                tat = shared.tat.load(Relaxed);
                continue;
            }
            let next = Gcra::from_words(words)
                .decide(tat, now, cells)
                .map_err(rejection)?;
            match shared
                .tat
                .compare_exchange_weak(tat, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Waits until one cell is admitted.
    ///
    /// **Cancel safety:** GCRA reserves nothing while waiting; dropping the future loses
    /// nothing and takes no capacity.
    ///
    /// # Errors
    ///
    /// [`Rejected::RateLimited`] (at once) when a [`max_wait`](RateLimiterBuilder::max_wait)
    /// is set and the cell is further away than it; none otherwise (the burst is at least 1).
    /// The `Result` matches [`until_n_ready_before`](Self::until_n_ready_before).
    pub fn until_ready(&self) -> UntilReady<R> {
        self.until_n_ready_before(1, Deadline::none())
    }

    /// Waits until `cells` are admitted at once, but not past `deadline`.
    ///
    /// **Cancel safety:** as [`until_ready`](Self::until_ready).
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] as soon as the wait is known to end past the deadline;
    /// [`Rejected::RateLimited`] when it would be longer than a set
    /// [`max_wait`](RateLimiterBuilder::max_wait) (checked first: a wait past both is
    /// `RateLimited`, with the hint); [`Rejected::InsufficientCapacity`] when
    /// `cells` exceeds the burst.
    pub fn until_n_ready_before(&self, cells: u32, deadline: Deadline) -> UntilReady<R> {
        self.until_ready_within(cells, Wait::Until(deadline))
    }

    /// Like [`until_n_ready_before`](Self::until_n_ready_before) with one cell.
    ///
    /// **Cancel safety:** as [`until_ready`](Self::until_ready).
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] as soon as the wait is known to end past the deadline;
    /// [`Rejected::RateLimited`] when it would be longer than a set
    /// [`max_wait`](RateLimiterBuilder::max_wait) (checked first: a wait past both is
    /// `RateLimited`, with the hint).
    pub fn until_ready_before(&self, deadline: Deadline) -> UntilReady<R> {
        self.until_n_ready_before(1, deadline)
    }

    /// The waiting future behind every `until_*` method and the limiter's
    /// [`Admission`](crate::admission::Admission).
    pub(crate) fn until_ready_within(&self, cells: u32, wait: Wait) -> UntilReady<R> {
        let seed = self.shared.next_seed.fetch_add(1, Relaxed);
        let shared = &*self.shared;
        let (jitter, max_wait) = (shared.jitter.load(Relaxed), shared.max_wait.load(Relaxed));
        let waiting = Waiting::new(shared.rt.clone(), wait, jitter, max_wait, seed);
        UntilReady::new(self.clone(), cells, waiting)
    }

    /// Counts a caller finally refused (waits count only then, not per denial).
    pub(super) fn record_rejection(&self, rejected: &Rejected) {
        self.shared.rejections.record(rejected, None);
    }

    /// The runtime whose clock the limiter reads.
    pub fn runtime(&self) -> &R {
        &self.shared.rt
    }

    /// How many cells one request could take now: the burst when the limiter is rested,
    /// fewer while admitted cells are paid off. A reading, for gauges and health pages: a
    /// caller racing it may take the capacity first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rate::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let limiter = RateLimiter::builder(10, Duration::from_secs(1)).burst(5).build()?;
    /// assert_eq!(limiter.available(), 5);
    /// limiter.check_n(3).unwrap();
    /// assert_eq!(limiter.available(), 2);
    /// tokio::time::sleep(Duration::from_millis(100)).await;
    /// assert_eq!(limiter.available(), 3, "one cell paid off in 100 ms");
    /// # Ok(()) }
    /// ```
    pub fn available(&self) -> u32 {
        let shared = &*self.shared;
        let now = shared.clock.nanos(&shared.rt);
        loop {
            let (words, sequence) = shared.limit.read_versioned();
            let tat = shared.tat.load(Relaxed);
            if shared.limit.unchanged_since(sequence) {
                return Gcra::from_words(words).available(tat, now);
            }
        }
    }

    /// The GCRA parameters.
    #[inline]
    pub fn gcra(&self) -> Gcra {
        Gcra::from_words(self.shared.limit.read())
    }

    /// Applies `settings` (count, period, burst, jitter, `max_wait`) to this limiter in place,
    /// validated as [`build`](RateLimiterBuilder::build) validates them; on an error nothing
    /// changes. Its name, seed and runtime are not changed.
    ///
    /// The cells already admitted stay admitted, as that many cells under the new limit: the
    /// time they take to pay off (GCRA's TAT, less now) is rescaled to the new rate, so a
    /// change never readmits a burst that was just spent, and a faster rate pays it off
    /// sooner (the time owed is rounded up, so changes back and forth never round cells
    /// away). One bound: a debt that would pass `u64::MAX` nanoseconds (584 years) under the
    /// new limit is capped there, and a later change rescales the capped debt: 4 billion cells
    /// taken at 1 ns each, then a limit of one an hour, then 1 ns again, owe 5 million cells,
    /// not 4 billion. Callers waiting in `until_ready` decide again with the new limit when
    /// they wake, at the time their wait was set for (a faster rate does not wake them
    /// sooner), under the jitter and `max_wait` they started with. A decision racing the
    /// change uses the old limit or the new one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rate::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let limiter = RateLimiter::builder(1, Duration::from_secs(1)).build()?;
    /// assert!(limiter.check().is_ok());
    /// assert!(limiter.check().is_err(), "1 a second");
    /// limiter.reconfigure(RateLimiter::builder(10, Duration::from_secs(1)).burst(10))?;
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// assert!((0..10).all(|_| limiter.check().is_ok()), "10 at once after a rest");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RateLimiterBuilder::build`].
    pub fn reconfigure<R2>(&self, settings: RateLimiterBuilder<R2>) -> Result<(), ConfigError> {
        let (gcra, jitter, max_wait) = settings.checked()?;
        let shared = &*self.shared;
        let _one_at_a_time = lock(&shared.retune);
        let old = self.gcra();
        shared.jitter.store(jitter, Relaxed);
        shared.max_wait.store(max_wait, Relaxed);
        // The cells admitted and not yet paid off stay that many cells: the time they take
        // to pay off is rescaled from the old interval to the new one, while the new limit
        // is written, so that no decision pairs one limit with the other's state.
        let now = shared.clock.nanos(&shared.rt);
        let rescale = |tat: u64| {
            if tat <= now {
                // Nothing owed. Still move the value (any value up to `now` means the same),
                // so that a decision about to store a state computed from the old one fails
                // its compare-and-swap and starts over with the new limit. At the limiter's
                // very first nanosecond (both zero) nothing was ever admitted to rescale.
                return Some(if tat == now {
                    now.saturating_sub(1)
                } else {
                    now
                });
            }
            Some(rescaled(tat, now, &old, &gcra))
        };
        shared.limit.write_with(gcra.to_words(), || {
            // Never fails: the closure always gives a value.
            let _ = shared.tat.fetch_update(Relaxed, Relaxed, rescale);
        });
        Ok(())
    }

    /// The name its events and metrics carry (default `rate`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rate::RateLimiter;
    ///
    /// let limiter = RateLimiter::builder(10, Duration::from_secs(1)).name("search").build()?;
    /// assert_eq!(limiter.name(), "search");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// A TAT past `now` under `old`, as many cells owed under `new`: the time left to pay them
/// off scaled by the ratio of the intervals, rounded up, so that changes back and forth
/// between intervals that do not divide each other never round a debt away. A debt past
/// `u64::MAX` nanoseconds is capped there (584 years).
pub(super) fn rescaled(tat: u64, now: u64, old: &Gcra, new: &Gcra) -> u64 {
    let old_interval = u128::from(old.interval_nanos());
    let owed = (u128::from(tat.saturating_sub(now)) * u128::from(new.interval_nanos()))
        .div_ceil(old_interval);
    now.saturating_add(u64::try_from(owed).unwrap_or(u64::MAX))
}
