//! Walking a [`Backoff`] schedule: the progress ([`DelayState`]) and the iterator ([`Delays`]).

use core::time::Duration;

use super::{Backoff, Jitter, Schedule};
use crate::rng::SplitMix64;

/// The progress through one retry sequence, without the policy: advance it with
/// [`Backoff::next_delay`]. Drivers that already hold the [`Backoff`] keep only this (40 bytes)
/// instead of a second copy of the policy; most code wants the [`Delays`] iterator instead.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::backoff::{Backoff, Jitter};
///
/// let backoff = Backoff::constant(Duration::from_millis(5)).jitter(Jitter::None).max_attempts(3).build()?;
/// let mut state = backoff.start(0);
/// assert_eq!(backoff.next_delay(&mut state), Some(Duration::from_millis(5)));
/// assert_eq!(backoff.next_delay(&mut state), Some(Duration::from_millis(5)));
/// assert_eq!(backoff.next_delay(&mut state), None);
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct DelayState {
    rng: SplitMix64,
    /// Index of the next retry (0 for the first).
    retry: u32,
    done: bool,
    /// The last delay yielded, in nanoseconds (the initial delay before the first): what
    /// decorrelated jitter grows from, and what a held schedule repeats once spent.
    previous: u64,
    /// The exponential schedule's current raw delay, kept as f64 so a fractional factor
    /// compounds exactly; it stops growing once it reaches the cap.
    exponential: f64,
    /// Sum of the delays yielded so far, in nanoseconds.
    elapsed: u64,
}

impl DelayState {
    pub(super) fn new(policy: &Backoff, seed: u64) -> Self {
        let initial = match policy.schedule {
            Schedule::Constant { delay } => delay,
            Schedule::Linear { initial, .. }
            | Schedule::Exponential { initial, .. }
            | Schedule::DecorrelatedJitter { initial } => initial,
        };
        let initial = nanos(initial);
        Self {
            rng: SplitMix64::new(seed),
            retry: 0,
            done: false,
            previous: initial,
            exponential: to_f64(initial),
            elapsed: 0,
        }
    }

    /// How many delays have been yielded so far.
    pub fn retries_yielded(&self) -> u32 {
        self.retry
    }

    /// The raw (un-jittered) delay for the current retry, at most `cap`.
    fn raw(&mut self, policy: &Backoff, cap: u64) -> u64 {
        match policy.schedule {
            Schedule::Constant { delay } => nanos(delay).min(cap),
            Schedule::Linear { initial, step } => nanos(step)
                .saturating_mul(u64::from(self.retry))
                .saturating_add(nanos(initial))
                .min(cap),
            Schedule::Exponential { initial, factor } => {
                // A whole factor is exact in integers: f64 steps hold 53 bits, so past about
                // 104 days of nanoseconds they would round.
                if let Some(whole) = whole_factor(factor) {
                    let scale = whole.saturating_pow(self.retry);
                    return nanos(initial).saturating_mul(scale).min(cap);
                }
                let current = self.exponential.min(to_f64(cap));
                self.exponential = (current * factor).min(to_f64(cap));
                // An f64 holds 53 bits: the first delay (and every delay of a factor of 1)
                // is the initial delay exactly, not its nearest f64, and no later delay
                // falls below it.
                let initial = nanos(initial);
                if self.retry == 0 || factor <= 1.0 {
                    initial.min(cap)
                } else {
                    from_f64(current).max(initial).min(cap)
                }
            }
            Schedule::DecorrelatedJitter { initial } => {
                // `previous` is the last delay given: `advance` sets it, and only when the
                // budget lets the delay through, so a held schedule repeats a delay it gave.
                let high = self.previous.saturating_mul(3).min(cap);
                self.rng.between(nanos(initial).min(cap), high)
            }
        }
    }

    fn jittered(&mut self, jitter: Jitter, raw: u64) -> u64 {
        match jitter {
            Jitter::None => raw,
            Jitter::Full => self.rng.below_or_equal(raw),
            Jitter::Equal => raw - raw / 2 + self.rng.below_or_equal(raw / 2),
        }
    }

    /// The next delay of `policy`'s schedule; see [`Backoff::next_delay`].
    pub(super) fn advance(&mut self, policy: &Backoff) -> Option<Duration> {
        if self.done || self.retry.saturating_add(1) >= policy.max_attempts {
            self.done = true;
            return None;
        }
        let cap = nanos(policy.max_delay);
        let raw = self.raw(policy, cap);
        // The cap applies after jitter, so no jitter mode can push a delay past it.
        let delay = self.jittered(policy.jitter, raw).min(cap);
        // A sum past u64::MAX nanoseconds is past any budget: saturating it could land on
        // a budget of u64::MAX exactly and never end the schedule.
        let elapsed = self.elapsed.checked_add(delay);
        if let Some(budget) = policy.max_elapsed
            && elapsed.is_none_or(|elapsed| elapsed > nanos(budget))
        {
            self.done = true;
            return None;
        }
        self.elapsed = elapsed.unwrap_or(u64::MAX);
        self.retry += 1;
        self.previous = delay;
        Some(Duration::from_nanos(delay))
    }

    /// The next delay, or once the schedule is spent its last one (the cap if it gave none).
    pub(super) fn advance_held(&mut self, policy: &Backoff) -> Duration {
        match self.advance(policy) {
            Some(delay) => delay,
            None if self.retry > 0 => Duration::from_nanos(self.previous),
            None => policy.max_delay,
        }
    }

    fn remaining(&self, policy: &Backoff) -> usize {
        if self.done {
            return 0;
        }
        let left = policy
            .max_attempts
            .saturating_sub(self.retry.saturating_add(1));
        usize::try_from(left).unwrap_or(usize::MAX)
    }
}

/// The delays of one retry sequence; see [`Backoff::delays`].
///
/// Every yielded delay is ≤ the cap, the iterator yields at most `max_attempts − 1` items, and
/// the sum of yielded delays never exceeds `max_elapsed`. It is fused: once it returns `None`
/// it always does. Extreme settings cannot overflow: delays saturate at `u64::MAX`
/// nanoseconds, and a sum of delays that would pass it is past any `max_elapsed`.
#[derive(Debug, Clone)]
pub struct Delays {
    policy: Backoff,
    state: DelayState,
}

impl Delays {
    pub(super) fn new(policy: Backoff, seed: u64) -> Self {
        let state = DelayState::new(&policy, seed);
        Self { policy, state }
    }

    /// How many delays have been yielded so far.
    pub fn retries_yielded(&self) -> u32 {
        self.state.retries_yielded()
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.state.advance(&self.policy)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.state.remaining(&self.policy)))
    }
}

impl core::iter::FusedIterator for Delays {}

/// Durations were validated to fit in u64 nanoseconds by the builder; saturate regardless.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[allow(
    clippy::cast_precision_loss,
    reason = "delays far above 2^53 ns are capped anyway"
)]
fn to_f64(n: u64) -> f64 {
    n as f64
}

/// The nearest whole nanosecond (`round` is not in `core`): 100 ms × 1.15 is 115 ms, not the
/// 114.999999 ms its f64 product truncates to.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the value is finite, non-negative and already capped at a u64; `as` saturates"
)]
fn from_f64(x: f64) -> u64 {
    // Not `(x + 0.5) as u64`: that sum rounds again (to even, at x.5 past 2^52), one ns high.
    let whole = x as u64;
    if x - whole as f64 >= 0.5 {
        whole.saturating_add(1)
    } else {
        whole
    }
}

/// `factor` as an integer when it is a whole number that fits in `u64` (validated finite
/// and at least 1).
#[allow(
    clippy::float_cmp,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "an exact round trip is the test of a whole number; `as` truncates and saturates"
)]
fn whole_factor(factor: f64) -> Option<u64> {
    // 2^64: the first whole number past u64::MAX, exactly representable.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    let whole = factor as u64;
    (factor < LIMIT && to_f64(whole) == factor).then_some(whole)
}
