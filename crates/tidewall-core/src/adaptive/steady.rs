//! The samples an algorithm would learn nothing from, so a limiter can skip its update.

use core::time::Duration;

use super::Sample;

/// The samples that would leave an algorithm exactly as it is, limit and all other state:
/// [`LimitAlgorithm::steady`](super::LimitAlgorithm::steady)'s answer, for the state it is in
/// now.
///
/// A sample is steady when it ended within `rtt_within`, found fewer than `below_inflight`
/// calls in flight (itself included) and, unless `dropped` says drops are steady too, was
/// not dropped. A limiter may skip the update for such a sample, and with it the lock that
/// serializes updates: the outcome is the same as making it. [`Steady::NONE`] (no sample) is
/// always correct, and the default.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{Aimd, LimitAlgorithm, Sample, Steady};
///
/// let aimd = Aimd::builder().initial_limit(20).timeout(Duration::from_secs(5)).build()?;
/// let steady = aimd.steady();
/// let idle = Sample { rtt: Duration::from_millis(10), inflight: 9, dropped: false, at: Duration::ZERO };
/// assert!(steady.holds(&idle), "under half of 20 in flight: AIMD does not grow");
/// assert!(!steady.holds(&Sample { inflight: 10, ..idle }), "half of it: AIMD adds one");
/// assert!(!steady.holds(&Sample { dropped: true, ..idle }), "a drop backs off");
/// assert!(!Steady::NONE.holds(&idle));
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steady {
    /// Steady only with fewer calls than this in flight (0: no sample).
    pub below_inflight: u32,
    /// Steady only for a round trip at most this long.
    pub rtt_within: Duration,
    /// Whether a dropped sample can be steady too.
    pub dropped: bool,
}

impl Steady {
    /// No sample is steady: every one is learnt from.
    pub const NONE: Self = Self {
        below_inflight: 0,
        rtt_within: Duration::ZERO,
        dropped: false,
    };

    /// Every sample with fewer than `u32::MAX` calls in flight is steady, which is every
    /// sample short of four billion calls at once: for an algorithm that never moves. (A
    /// limiter counts that many or more as `u32::MAX`, and the bound is strict.)
    pub const ALL: Self = Self {
        below_inflight: u32::MAX,
        rtt_within: Duration::MAX,
        dropped: true,
    };

    /// Whether `sample` is steady.
    #[inline]
    #[must_use]
    pub fn holds(&self, sample: &Sample) -> bool {
        sample.inflight < self.below_inflight
            && sample.rtt <= self.rtt_within
            && (self.dropped || !sample.dropped)
    }
}
