//! Circuit-breaker policy: when to trip, how long to stay open, how to probe.
//!
//! This module holds the decisions, not the state: [`BreakerPolicy::evaluate`] looks at
//! window [`Counts`] and says whether to trip, [`BreakerPolicy::break_duration`] says how long
//! the k-th consecutive trip stays open, and [`window`] has the packed-counter arithmetic the
//! lock-free windows in `tidewall::breaker` are built on.
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::breaker::{BreakerPolicy, Counts, TripReason, Window};
//!
//! let policy = BreakerPolicy::builder()
//!     .failure_rate(0.5)
//!     .minimum_calls(4)
//!     .window(Window::Count { calls: 10 })
//!     .build()?;
//! assert_eq!(policy.evaluate(Counts { calls: 3, failures: 3, slow: 0 }, 3), None, "too few calls");
//! assert_eq!(
//!     policy.evaluate(Counts { calls: 4, failures: 2, slow: 0 }, 1),
//!     Some(TripReason::FailureRate),
//! );
//! # Ok::<(), tidewall_core::ConfigError>(())
//! ```

mod builder;
#[cfg(test)]
mod tests;
pub mod window;

use core::time::Duration;

pub use builder::{
    BreakerPolicyBuilder, DEFAULT_BREAK_DURATION, MAX_BUCKETS, MAX_COUNT_WINDOW,
    MAX_HALF_OPEN_PROBES,
};

use crate::backoff::Backoff;

/// Parts per million: ratios are compared in exact integer arithmetic.
pub const PPM: u32 = 1_000_000;

/// How the breaker remembers recent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `calls` recorded calls.
    Count {
        /// Window length in calls (1 ..= 1,048,575).
        calls: u32,
    },
    /// The calls of the last `span`, kept in `buckets` equal buckets (the oldest bucket drops
    /// out as a whole, so the window slides in steps of `span / buckets`). A bucket holds at
    /// most 65,535 calls: the call that finds it full first halves its counts (each rounded
    /// down), so it counts every call at any rate, and within a bucket that filled, later
    /// calls weigh more (each halving halves the weight of the calls before it). Past 32,767
    /// calls, then, a bucket holds between 32,768 and 65,535 of them.
    Time {
        /// Window length.
        span: Duration,
        /// Number of buckets (1 ..= 1024).
        buckets: u32,
    },
}

/// What the window saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Calls recorded (failures and successes; ignored outcomes are not recorded).
    pub calls: u32,
    /// Calls classified as failures.
    pub failures: u32,
    /// Calls that took the slow-call threshold or longer, failed or not.
    pub slow: u32,
}

/// The break durations of consecutive trips: see [`BreakerPolicy::break_durations`].
#[derive(Debug, Clone)]
pub struct BreakDurations {
    backoff: Backoff,
    state: crate::backoff::DelayState,
}

impl BreakDurations {
    /// How long the next trip stays open. Past the end of the backoff schedule (its
    /// `max_attempts` or `max_elapsed`) the duration stays at the schedule's last delay, so
    /// this never runs out, however many trips a long-lived breaker sees
    /// ([`Backoff::next_delay_held`]).
    pub fn next_break(&mut self) -> Duration {
        self.backoff.next_delay_held(&mut self.state)
    }
}

/// Why a closed breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TripReason {
    /// The failure rate reached its threshold.
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowCallRate,
    /// The configured number of failures in a row.
    ConsecutiveFailures,
    /// A half-open probe failed.
    ProbeFailed,
    /// No probe finished within the half-open maximum wait.
    HalfOpenTimeout,
}

/// A validated circuit-breaker policy. Build it with [`BreakerPolicy::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub(crate) thresholds: Thresholds,
    pub(crate) window: Window,
    pub(crate) break_backoff: Backoff,
    pub(crate) half_open_probes: u32,
    pub(crate) max_half_open_wait: Option<Duration>,
}

/// When a closed breaker trips: the part of a [`BreakerPolicy`] read on every call, small
/// enough to keep in a few words that can be replaced while calls read them
/// ([`to_words`](Self::to_words)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub(crate) failure_rate_ppm: Option<u32>,
    pub(crate) slow_rate_ppm: Option<u32>,
    pub(crate) slow_call: Duration,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) minimum_calls: u32,
}

impl Thresholds {
    /// Whether a closed breaker that saw `counts` (and `consecutive` failures in a row) trips.
    ///
    /// Rates count only once `counts.calls >= minimum_calls`; a rate trips when it is *at
    /// or above* its threshold. Consecutive failures trip regardless of the minimum.
    #[inline]
    pub fn evaluate(&self, counts: Counts, consecutive: u32) -> Option<TripReason> {
        if self.consecutive_failures.is_some_and(|n| consecutive >= n) {
            return Some(TripReason::ConsecutiveFailures);
        }
        if counts.calls == 0 || counts.calls < self.minimum_calls {
            return None;
        }
        let reaches = |part: u32, threshold_ppm: u32| {
            u64::from(part) * u64::from(PPM) >= u64::from(threshold_ppm) * u64::from(counts.calls)
        };
        if self
            .failure_rate_ppm
            .is_some_and(|t| reaches(counts.failures, t))
        {
            return Some(TripReason::FailureRate);
        }
        if self.slow_rate_ppm.is_some_and(|t| reaches(counts.slow, t)) {
            return Some(TripReason::SlowCallRate);
        }
        None
    }

    /// Whether a call that took `elapsed` counts as slow.
    #[inline]
    pub fn is_slow(&self, elapsed: Duration) -> bool {
        self.slow_rate_ppm.is_some() && elapsed >= self.slow_call
    }

    /// Whether slow calls are tracked at all (a slow-call rate is configured).
    pub fn tracks_slow_calls(&self) -> bool {
        self.slow_rate_ppm.is_some()
    }

    /// Whether consecutive failures are tracked.
    pub fn tracks_consecutive_failures(&self) -> bool {
        self.consecutive_failures.is_some()
    }

    /// The thresholds as three words, read back by [`from_words`](Self::from_words).
    ///
    /// ```
    /// use tidewall_core::breaker::{BreakerPolicy, Thresholds};
    ///
    /// let policy = BreakerPolicy::builder().failure_rate(0.25).consecutive_failures(3).build()?;
    /// let thresholds = policy.thresholds();
    /// assert_eq!(Thresholds::from_words(thresholds.to_words()), thresholds);
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub fn to_words(&self) -> [u64; 3] {
        // A validated rate is at least one part per million and a validated run of failures
        // at least one, so zero stands for "not set".
        let ppm = |rate: Option<u32>| u64::from(rate.unwrap_or(0));
        [
            ppm(self.failure_rate_ppm) | ppm(self.slow_rate_ppm) << 32,
            u64::try_from(self.slow_call.as_nanos()).unwrap_or(u64::MAX),
            u64::from(self.consecutive_failures.unwrap_or(0)) | u64::from(self.minimum_calls) << 32,
        ]
    }

    /// The thresholds [`to_words`](Self::to_words) gave. Total: any words read as some
    /// thresholds (zero rates and runs as "not set").
    #[inline]
    pub fn from_words(words: [u64; 3]) -> Self {
        let low = |word: u64| u32::try_from(word & 0xffff_ffff).unwrap_or(u32::MAX);
        let high = |word: u64| u32::try_from(word >> 32).unwrap_or(u32::MAX);
        let set = |n: u32| (n != 0).then_some(n);
        Self {
            failure_rate_ppm: set(low(words[0])),
            slow_rate_ppm: set(high(words[0])),
            slow_call: Duration::from_nanos(words[1]),
            consecutive_failures: set(low(words[2])),
            minimum_calls: high(words[2]),
        }
    }
}

impl BreakerPolicy {
    /// Starts a policy with the defaults: trip at a 50 % failure rate over the last 100 calls
    /// once 10 calls were seen; stay open 5 s; admit 1 probe; reopen if no probe finishes
    /// within 60 s.
    pub fn builder() -> BreakerPolicyBuilder {
        BreakerPolicyBuilder::default()
    }

    /// When it trips: see [`Thresholds::evaluate`].
    pub fn evaluate(&self, counts: Counts, consecutive: u32) -> Option<TripReason> {
        self.thresholds.evaluate(counts, consecutive)
    }

    /// Whether a call that took `elapsed` counts as slow.
    pub fn is_slow(&self, elapsed: Duration) -> bool {
        self.thresholds.is_slow(elapsed)
    }

    /// Whether slow calls are tracked at all (a slow-call rate is configured).
    pub fn tracks_slow_calls(&self) -> bool {
        self.thresholds.tracks_slow_calls()
    }

    /// The part of the policy that decides when a closed breaker trips.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// The schedule of break durations (see [`break_durations`](Self::break_durations)).
    pub fn break_backoff(&self) -> Backoff {
        self.break_backoff
    }

    /// How long the breaker stays open after its `trip`-th consecutive trip (0-based: the
    /// first trip after a close is 0). Past the end of the backoff schedule the duration stays
    /// at the schedule's last delay.
    ///
    /// This replays the schedule from the start, so it costs `trip` steps; a breaker that
    /// trips again and again keeps a [`BreakDurations`] instead and pays one step per trip.
    pub fn break_duration(&self, trip: u32, seed: u64) -> Duration {
        let mut durations = self.break_durations(seed);
        let mut last = durations.next_break();
        for _ in 0..trip {
            last = durations.next_break();
        }
        last
    }

    /// The break durations of consecutive trips, one step each, randomized from `seed`:
    /// the `k`-th call of [`BreakDurations::next_break`] returns
    /// [`break_duration(k, seed)`](Self::break_duration).
    ///
    /// ```
    /// use core::time::Duration;
    /// use tidewall_core::backoff::{Backoff, Jitter};
    /// use tidewall_core::breaker::BreakerPolicy;
    ///
    /// let backoff = Backoff::exponential(Duration::from_secs(1))
    ///     .factor(2.0)
    ///     .jitter(Jitter::None)
    ///     .max_delay(Duration::from_secs(3))
    ///     .build()?;
    /// let policy = BreakerPolicy::builder().break_backoff(backoff).build()?;
    /// let mut breaks = policy.break_durations(7);
    /// let secs: Vec<u64> = (0..4).map(|_| breaks.next_break().as_secs()).collect();
    /// assert_eq!(secs, [1, 2, 3, 3]);
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub fn break_durations(&self, seed: u64) -> BreakDurations {
        BreakDurations {
            backoff: self.break_backoff,
            state: self.break_backoff.start(seed),
        }
    }

    /// Probes admitted in the half-open state; that many successes close the breaker.
    pub fn half_open_probes(&self) -> u32 {
        self.half_open_probes
    }

    /// How long probes may run, from the first in flight, before the breaker reopens.
    pub fn max_half_open_wait(&self) -> Option<Duration> {
        self.max_half_open_wait
    }

    /// The window shape.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Whether consecutive failures are tracked.
    pub fn tracks_consecutive_failures(&self) -> bool {
        self.thresholds.tracks_consecutive_failures()
    }
}
