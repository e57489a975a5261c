//! AIMD: additive increase, multiplicative decrease, on drops.

use core::time::Duration;

use super::{LimitAlgorithm, Sample, Steady, check_bounds, check_ratio, published};
use crate::ConfigError;

/// Loss-based adaptive limit (Netflix's `AIMDLimit`): a dropped call, or one slower than
/// `timeout`, multiplies the limit by `backoff_ratio` (truncated); a call that found at least
/// half the limit in use adds one. The limit stays within `[min_limit, max_limit]`.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{Aimd, LimitAlgorithm, Sample};
///
/// let mut aimd = Aimd::builder().initial_limit(30).min_limit(10).max_limit(100).build()?;
/// let ok = Sample {
///     rtt: Duration::from_millis(5),
///     inflight: 30,
///     dropped: false,
///     at: Duration::ZERO,
/// };
/// assert_eq!(aimd.update(&ok), 31);
/// // Half the limit unused: the service is idle, which says nothing about capacity.
/// assert_eq!(aimd.update(&Sample { inflight: 10, ..ok }), 31);
/// // Slower than the 5 s timeout counts as a drop.
/// assert_eq!(aimd.update(&Sample { rtt: Duration::from_secs(6), ..ok }), 27);
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Aimd {
    limit: u32,
    min_limit: u32,
    max_limit: u32,
    backoff_ratio: f64,
    timeout: Duration,
}

/// Configures an [`Aimd`] limit; the defaults are Netflix's.
#[derive(Debug, Clone)]
#[must_use]
pub struct AimdBuilder {
    initial_limit: u32,
    min_limit: u32,
    max_limit: u32,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Aimd {
    /// Starts an AIMD limit: initial 20, within 20..=200, backoff 0.9, timeout 5 s.
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdBuilder {
    limit_setters!("20", "20", "200");

    /// What a drop multiplies the limit by (default 0.9; within `0.5..1`).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// A call slower than this counts as a drop (default 5 s; not zero).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `min_limit` or `timeout`;
    /// [`ConfigError::Conflict`] unless `min_limit <= initial_limit <= max_limit`;
    /// [`ConfigError::OutOfRange`] (or `NotFinite`) for a `backoff_ratio` outside `0.5..1`.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        check_ratio(
            "backoff_ratio",
            self.backoff_ratio,
            0.5,
            1.0,
            true,
            "in [0.5, 1)",
        )?;
        if self.timeout.is_zero() {
            return Err(ConfigError::Zero { field: "timeout" });
        }
        // Settings that contradict each other last: each value's own error comes first.
        check_bounds(self.min_limit, self.initial_limit, self.max_limit)?;
        Ok(Aimd {
            limit: self.initial_limit,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        })
    }
}

impl LimitAlgorithm for Aimd {
    fn limit(&self) -> u32 {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> u32 {
        let limit = if sample.dropped || sample.rtt > self.timeout {
            published(f64::from(self.limit) * self.backoff_ratio)
        } else if u64::from(sample.inflight) * 2 >= u64::from(self.limit) {
            self.limit.saturating_add(1)
        } else {
            self.limit
        };
        self.limit = limit.clamp(self.min_limit, self.max_limit);
        self.limit
    }

    fn bounds(&self) -> (u32, u32) {
        (self.min_limit, self.max_limit)
    }

    /// Successes within `timeout` that found under half the limit in use, or any number once
    /// the limit is at its most: neither grows it.
    fn steady(&self) -> Steady {
        let below_inflight = if self.limit >= self.max_limit {
            u32::MAX
        } else {
            self.limit.div_ceil(2)
        };
        Steady {
            below_inflight,
            rtt_within: self.timeout,
            dropped: false,
        }
    }
}
