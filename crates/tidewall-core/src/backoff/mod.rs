//! Retry delay schedules as pure iterators.
//!
//! A [`Backoff`] is validated configuration; [`Backoff::delays`] turns it into a [`Delays`]
//! iterator that yields the pause before each *retry* (so a policy with `max_attempts(4)` yields
//! at most three delays). Nothing here sleeps or reads a clock: the async retry driver in the
//! `tidewall` crate consumes the iterator and adds deadlines and server hints on top.
//!
//! # The schedules
//!
//! | schedule | delay before retry `n` (n = 0, 1, ...) |
//! |---|---|
//! | [`Backoff::constant`] | `delay` |
//! | [`Backoff::linear`] | `initial + n × step` |
//! | [`Backoff::exponential`] | `initial × factor^n` (not `initial^n`, the tokio-retry mistake) |
//! | [`Backoff::decorrelated_jitter`] | `random(initial ..= 3 × previous)` (the AWS formula) |
//!
//! # Jitter, cap and budgets, in that order
//!
//! 1. The schedule's raw delay is computed with saturating arithmetic (never overflows), in
//!    integer nanoseconds, so it is exact; only an exponential schedule with a factor that
//!    is not a whole number steps in `f64`, which rounds the initial delay (past 2^53 ns) and
//!    each step to 53 bits: delay `n` is within a relative `(n + 1) × 2^-53` (about
//!    `n × 10^-16`) of `initial × factor^n`, then rounded to a whole nanosecond. So it is
//!    within 1 ns of the exact value while that error stays under half a nanosecond (any
//!    delay under about `2^52 / (n + 1)` ns: days, for the first steps; not always the
//!    nearest nanosecond, when the exact value is within the error of a half), and
//!    microseconds off at most near `u64::MAX` nanoseconds.
//! 2. [`Jitter`] randomizes it, capped at `max_delay` first (AWS's "full jitter": a delay
//!    past the cap is jittered below the cap, so late delays still spread). Jitter is **on by
//!    default** ([`Jitter::Full`]): synchronized retries from many clients are the failure
//!    mode backoff exists to prevent.
//! 3. `max_delay` caps the *jittered* value too, so no delay ever exceeds the cap (backon's
//!    jitter can push a delay past its maximum; ours cannot).
//! 4. `max_attempts` bounds the number of delays (attempts − 1), and `max_elapsed` ends the
//!    schedule before the sum of delays would exceed it. Both count the schedule's own
//!    delays: a retry that waits longer because a server's `Retry-After` hint asked for it
//!    counts the schedule's delay, not the hint (bound hinted waits with the retry's
//!    `max_retry_after` and a deadline).
//!
//! Randomness comes from a seeded [`SplitMix64`](crate::rng::SplitMix64): the same seed gives
//! the same delays, which is what makes retry tests deterministic.
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::backoff::Backoff;
//!
//! // Default jitter (full): every delay is in [0, raw], and never above the cap.
//! let backoff = Backoff::exponential(Duration::from_millis(50))
//!     .max_delay(Duration::from_millis(300))
//!     .max_attempts(6)
//!     .build()?;
//! let delays: Vec<_> = backoff.delays(42).collect();
//! assert_eq!(delays.len(), 5);
//! assert!(delays.iter().all(|d| *d <= Duration::from_millis(300)));
//! assert_eq!(delays, backoff.delays(42).collect::<Vec<_>>()); // same seed, same delays
//! # Ok::<(), tidewall_core::ConfigError>(())
//! ```

mod delays;

use core::time::Duration;

pub use delays::{DelayState, Delays};

use crate::ConfigError;
use crate::error::nanos_of;

/// The default number of attempts, the first call included (so three retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// The default cap on a single delay.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

/// How the raw delay grows from one retry to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// The same delay every time.
    Constant {
        /// The delay.
        delay: Duration,
    },
    /// `initial + n × step`.
    Linear {
        /// The first delay.
        initial: Duration,
        /// Added for each further retry.
        step: Duration,
    },
    /// `initial × factor^n`.
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The growth factor, at least 1.
        factor: f64,
    },
    /// `random(initial ..= 3 × previous)`, capped: its own jitter, so [`Jitter`] does not apply.
    DecorrelatedJitter {
        /// The smallest delay, and the first "previous".
        initial: Duration,
    },
}

/// How a delay `d` (the schedule's raw delay, capped at `max_delay`) is randomized; the
/// jittered value is capped again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: the raw delay. Use only when a single client retries.
    None,
    /// Uniform in `[0, d]`: the best spread, so the default.
    #[default]
    Full,
    /// Uniform in `[d/2, d]`: keeps at least half the delay.
    Equal,
}

/// A validated backoff policy. Build one with [`Backoff::constant`], [`Backoff::linear`],
/// [`Backoff::exponential`] or [`Backoff::decorrelated_jitter`], then [`BackoffBuilder::build`].
///
/// `Backoff` is `Copy`; every call to [`Backoff::delays`] starts a fresh, independent schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    schedule: Schedule,
    jitter: Jitter,
    max_delay: Duration,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
}

impl Backoff {
    /// The same `delay` before every retry.
    pub fn constant(delay: Duration) -> BackoffBuilder {
        BackoffBuilder::new(Schedule::Constant { delay })
    }

    /// `initial`, then `initial + step`, `initial + 2 × step`, ...
    pub fn linear(initial: Duration, step: Duration) -> BackoffBuilder {
        BackoffBuilder::new(Schedule::Linear { initial, step })
    }

    /// `initial × factor^n` with `factor` 2 unless [`BackoffBuilder::factor`] says otherwise.
    pub fn exponential(initial: Duration) -> BackoffBuilder {
        BackoffBuilder::new(Schedule::Exponential {
            initial,
            factor: 2.0,
        })
    }

    /// AWS "decorrelated jitter": each delay is random in `initial ..= 3 × previous`, capped.
    pub fn decorrelated_jitter(initial: Duration) -> BackoffBuilder {
        let mut builder = BackoffBuilder::new(Schedule::DecorrelatedJitter { initial });
        builder.policy.jitter = Jitter::None;
        builder
    }

    /// The first delay before jitter and the cap, zero only for a schedule that starts at zero.
    pub(crate) fn first_raw_delay(&self) -> Duration {
        match self.schedule {
            Schedule::Constant { delay } => delay,
            Schedule::Linear { initial, .. }
            | Schedule::Exponential { initial, .. }
            | Schedule::DecorrelatedJitter { initial } => initial,
        }
    }

    /// The schedule's delays, randomized from `seed`: the same seed yields the same delays.
    pub fn delays(&self, seed: u64) -> Delays {
        Delays::new(*self, seed)
    }

    /// A fresh [`DelayState`] for this schedule, randomized from `seed`.
    pub fn start(&self, seed: u64) -> DelayState {
        DelayState::new(self, seed)
    }

    /// Advances `state` and returns the next delay, exactly as [`Delays`] would (`None` once
    /// the schedule is exhausted). `state` must come from this policy's [`Backoff::start`].
    pub fn next_delay(&self, state: &mut DelayState) -> Option<Duration> {
        state.advance(self)
    }

    /// As [`next_delay`](Self::next_delay), but a schedule that never runs out: once its
    /// `max_attempts` or `max_elapsed` are spent, every later call returns the last delay it
    /// gave (the cap, `max_delay`, if it gave none). For waits bounded elsewhere, such as a
    /// breaker's consecutive breaks or a supervisor's restarts, where starting the schedule
    /// over would make a failing thing fast again.
    ///
    /// ```
    /// use core::time::Duration;
    /// use tidewall_core::backoff::{Backoff, Jitter};
    ///
    /// let ms = Duration::from_millis;
    /// let backoff = Backoff::exponential(ms(10)).jitter(Jitter::None).max_attempts(3).build()?;
    /// let mut state = backoff.start(0);
    /// let held: Vec<_> = (0..4).map(|_| backoff.next_delay_held(&mut state)).collect();
    /// assert_eq!(held, [ms(10), ms(20), ms(20), ms(20)]);
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    pub fn next_delay_held(&self, state: &mut DelayState) -> Duration {
        state.advance_held(self)
    }

    /// The schedule.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The jitter mode: [`Jitter::None`] for a decorrelated schedule too, whose randomness is
    /// its own (not a jitter mode applied to a delay).
    pub fn jitter_mode(&self) -> Jitter {
        self.jitter
    }

    /// The cap on each single delay, applied after jitter.
    pub fn max_delay_cap(&self) -> Duration {
        self.max_delay
    }

    /// Total attempts allowed, the first one included.
    pub fn max_attempts_total(&self) -> u32 {
        self.max_attempts
    }

    /// This policy with at most `attempts` attempts, the first included: it lowers the
    /// count, never raises it (a per-request cap on a shared policy).
    ///
    /// ```
    /// use core::num::NonZeroU32;
    /// use core::time::Duration;
    /// use tidewall_core::backoff::Backoff;
    ///
    /// let backoff = Backoff::constant(Duration::from_millis(10)).max_attempts(4).build()?;
    /// assert_eq!(backoff.cap_attempts(NonZeroU32::MIN).max_attempts_total(), 1);
    /// assert_eq!(backoff.cap_attempts(NonZeroU32::MAX).max_attempts_total(), 4);
    /// # Ok::<(), tidewall_core::ConfigError>(())
    /// ```
    #[must_use]
    pub const fn cap_attempts(mut self, attempts: core::num::NonZeroU32) -> Self {
        if attempts.get() < self.max_attempts {
            self.max_attempts = attempts.get();
        }
        self
    }

    /// The budget for the sum of all delays, if any.
    pub fn max_elapsed_budget(&self) -> Option<Duration> {
        self.max_elapsed
    }
}

/// Builds a [`Backoff`]; every setting is validated by [`BackoffBuilder::build`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BackoffBuilder {
    policy: Backoff,
    jitter_set: bool,
}

impl BackoffBuilder {
    fn new(schedule: Schedule) -> Self {
        Self {
            policy: Backoff {
                schedule,
                jitter: Jitter::default(),
                max_delay: DEFAULT_MAX_DELAY,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                max_elapsed: None,
            },
            jitter_set: false,
        }
    }

    /// The growth factor of an exponential schedule (default 2; must be finite and ≥ 1).
    /// Ignored by the other schedules.
    pub fn factor(mut self, factor: f64) -> Self {
        if let Schedule::Exponential { factor: f, .. } = &mut self.policy.schedule {
            *f = factor;
        }
        self
    }

    /// The jitter mode (default [`Jitter::Full`]). Decorrelated jitter is random by
    /// construction; setting a jitter mode on it is rejected as a conflict.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy.jitter = jitter;
        self.jitter_set = true;
        self
    }

    /// The cap on each delay, applied after jitter (default 30 s).
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.policy.max_delay = cap;
        self
    }

    /// Total attempts, the first call included (default 4: one call and three retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Ends the schedule before the sum of delays would exceed `budget` (default: no budget).
    pub fn max_elapsed(mut self, budget: Duration) -> Self {
        self.policy.max_elapsed = Some(budget);
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero attempts, a zero cap, a factor below 1 or not finite, a
    /// duration above `u64::MAX` nanoseconds, an initial delay above the cap, or, for
    /// decorrelated jitter, a zero initial delay (every delay would be zero) or a jitter mode
    /// set on it.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        let p = self.policy;
        if p.max_attempts == 0 {
            return Err(ConfigError::Zero {
                field: "max_attempts",
            });
        }
        let cap = nanos_of("max_delay", p.max_delay)?;
        if cap == 0 {
            return Err(ConfigError::Zero { field: "max_delay" });
        }
        if let Some(budget) = p.max_elapsed {
            nanos_of("max_elapsed", budget)?;
        }
        let first = match p.schedule {
            Schedule::Constant { delay } => nanos_of("delay", delay)?,
            Schedule::Linear { initial, step } => {
                nanos_of("step", step)?;
                nanos_of("initial", initial)?
            }
            Schedule::Exponential { initial, factor } => {
                if !factor.is_finite() {
                    return Err(ConfigError::NotFinite { field: "factor" });
                }
                if factor < 1.0 {
                    let allowed = ">= 1";
                    return Err(ConfigError::OutOfRange {
                        field: "factor",
                        value: factor,
                        allowed,
                    });
                }
                nanos_of("initial", initial)?
            }
            Schedule::DecorrelatedJitter { initial } => {
                if self.jitter_set {
                    let reason = "decorrelated jitter is already random; do not set `jitter`";
                    return Err(ConfigError::Conflict { reason });
                }
                let initial = nanos_of("initial", initial)?;
                if initial == 0 {
                    return Err(ConfigError::Zero { field: "initial" });
                }
                initial
            }
        };
        if first > cap {
            return Err(ConfigError::Conflict {
                reason: "the first delay exceeds max_delay",
            });
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests;
