//! Adaptive concurrency limits: the limit follows what the dependency's latency and drops say
//! about its capacity, instead of a number fixed the day it was configured.
//!
//! Three algorithms with Netflix concurrency-limits' semantics and one with Envoy's, as pure
//! deterministic policy:
//! each takes one [`Sample`] per finished call (its round-trip time, the calls in flight when it
//! started, whether it was dropped) and returns the new limit. Nothing here reads a clock, keeps
//! a lock or draws randomness it was not seeded with, so the same samples give the same limits
//! on every machine; the async limiter that admits calls lives in `tidewall::adaptive`.
//!
//! * [`Aimd`]: loss based. A drop (or a call slower than `timeout`) multiplies the limit by
//!   `backoff_ratio`; a call that found the limit at least half used adds one.
//! * [`Vegas`]: delay based, per sample. It estimates the queue the limit builds at the
//!   dependency from the no-load RTT (the least RTT seen, measured afresh every so often) and
//!   the sample's RTT, and grows while the queue is short, shrinks while it is long.
//! * [`Gradient2`]: delay based, smoothed. It compares a long-term average RTT with the
//!   sample's: a gradient below one (latency rising) shrinks the limit, and a queue allowance
//!   lets it grow while latency holds.
//! * [`WindowedGradient`]: delay based, per window (Envoy's adaptive concurrency filter). It
//!   measures the no-load RTT by lowering the limit now and then, and moves the limit once per
//!   window of samples by the ratio of that RTT (plus a buffer) to the window's mean.
//!
//! Vegas, Gradient2 and the windowed gradient keep their estimate as a real number and publish
//! its integer part; AIMD's is a whole number, truncated on each backoff, as Netflix's. Every
//! limit stays within `[min_limit, max_limit]`, an RTT of zero counts as one nanosecond, and
//! one beyond `u64::MAX` nanoseconds (584 years) as that many. A limit does not grow while a
//! call found fewer than half its slots in use (an idle service says nothing about how much
//! more the dependency could take); Gradient2's does not move at all then, drops included.
//! "Half" is of the estimate, as Netflix's: for the three that keep a real number, a call
//! that found exactly half the published limit in use (10 of 20) is under half an estimate
//! of 20.8, so it does not grow it either.
//!
//! ```
//! use core::time::Duration;
//! use tidewall_core::adaptive::{Aimd, LimitAlgorithm, Sample};
//!
//! let mut aimd = Aimd::builder().initial_limit(20).min_limit(5).build()?;
//! let busy = Sample {
//!     rtt: Duration::from_millis(10),
//!     inflight: 20,
//!     dropped: false,
//!     at: Duration::ZERO,
//! };
//! assert_eq!(aimd.update(&busy), 21);
//! assert_eq!(aimd.update(&Sample { dropped: true, ..busy }), 18); // 21 × 0.9, truncated
//! # Ok::<(), tidewall_core::ConfigError>(())
//! ```

/// The `initial_limit`, `min_limit` and `max_limit` setters every builder has; the arguments
/// are its defaults, as its docs show them.
macro_rules! limit_setters {
    ($initial:literal, $min:literal, $max:literal) => {
        #[doc = concat!("The limit before any sample (default ", $initial, ").")]
        pub fn initial_limit(mut self, limit: u32) -> Self {
            self.initial_limit = limit;
            self
        }

        #[doc = concat!("The least the limit falls to (default ", $min, "; at least 1).")]
        pub fn min_limit(mut self, limit: u32) -> Self {
            self.min_limit = limit;
            self
        }

        #[doc = concat!("The most the limit grows to (default ", $max, ").")]
        pub fn max_limit(mut self, limit: u32) -> Self {
            self.max_limit = limit;
            self
        }
    };
}

mod aimd;
mod any;
mod gradient;
mod steady;
mod vegas;
mod windowed;

use core::time::Duration;

pub use aimd::{Aimd, AimdBuilder};
pub use any::AnyAlgorithm;
pub use gradient::{Gradient2, Gradient2Builder};
pub use steady::Steady;
pub use vegas::{Vegas, VegasBuilder};
pub use windowed::{WindowedGradient, WindowedGradientBuilder};

use crate::ConfigError;

/// One finished call, as an algorithm learns from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How long the call took, from admission to its end.
    pub rtt: Duration,
    /// Calls in flight when it was admitted, itself included.
    pub inflight: u32,
    /// Whether it was dropped: timed out, or refused by the dependency for load (a 503, a
    /// 429), as the caller's classifier says.
    pub dropped: bool,
    /// When it ended, as time since any fixed origin (the limiter's clock). Only differences
    /// between samples count, for algorithms that act on a schedule ([`WindowedGradient`]'s
    /// measurements of the no-load RTT); the others ignore it.
    pub at: Duration,
}

/// An adaptive limit: one update per finished call.
pub trait LimitAlgorithm {
    /// The limit in force: calls admitted at once.
    fn limit(&self) -> u32;

    /// Learns from `sample` and returns the new limit. A limiter applies at least 1 (a limit
    /// of zero would admit no call, and so no sample could ever raise it).
    fn update(&mut self, sample: &Sample) -> u32;

    /// The least and the most the limit can be.
    fn bounds(&self) -> (u32, u32);

    /// The samples that, in the state the algorithm is in now, [`update`](Self::update)
    /// would leave it exactly as it is: a limiter skips their update, and the lock it takes.
    /// The default, [`Steady::NONE`], is always correct; an algorithm that claims more must
    /// hold to it for every sample the answer covers.
    fn steady(&self) -> Steady {
        Steady::NONE
    }
}

/// An RTT in nanoseconds as a real number, zero counted as one (no ratio divides by zero).
fn rtt_nanos(rtt: Duration) -> f64 {
    let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
    nanos as f64
}

/// The integer part of an estimate, which every algorithm keeps finite and within its `u32`
/// bounds: the cast only truncates.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn published(estimate: f64) -> u32 {
    estimate as u32
}

/// Checks the bounds every algorithm has: `1 <= min <= initial <= max`.
fn check_bounds(min: u32, initial: u32, max: u32) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::Zero { field: "min_limit" });
    }
    if min > max {
        return Err(ConfigError::Conflict {
            reason: "min_limit exceeds max_limit",
        });
    }
    if initial < min || initial > max {
        return Err(ConfigError::Conflict {
            reason: "initial_limit is outside min_limit..=max_limit",
        });
    }
    Ok(())
}

/// Checks that `value` is finite and within `low..=high` (`high_open`: excluding `high`).
fn check_ratio(
    field: &'static str,
    value: f64,
    low: f64,
    high: f64,
    high_open: bool,
    allowed: &'static str,
) -> Result<(), ConfigError> {
    if !value.is_finite() {
        return Err(ConfigError::NotFinite { field });
    }
    let above = if high_open {
        value >= high
    } else {
        value > high
    };
    if value < low || above {
        return Err(ConfigError::OutOfRange {
            field,
            value,
            allowed,
        });
    }
    Ok(())
}

/// A limit that never moves: the limiter's admission, shares and queue without adaptation
/// (to compare with an adaptive one behind the same code, or to shed by priority under a
/// known capacity). A limit of zero is refused when the limiter is built.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{FixedLimit, LimitAlgorithm, Sample};
///
/// let mut fixed = FixedLimit(32);
/// let slow = Sample { rtt: Duration::from_secs(9), inflight: 32, dropped: true, at: Duration::ZERO };
/// assert_eq!(fixed.update(&slow), 32);
/// assert_eq!(fixed.bounds(), (32, 32));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedLimit(pub u32);

impl LimitAlgorithm for FixedLimit {
    fn limit(&self) -> u32 {
        self.0
    }

    fn update(&mut self, _: &Sample) -> u32 {
        self.0
    }

    fn bounds(&self) -> (u32, u32) {
        (self.0, self.0)
    }

    fn steady(&self) -> Steady {
        Steady::ALL
    }
}
