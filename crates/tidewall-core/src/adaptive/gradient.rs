//! Gradient2: a limit that follows the ratio of the long-term RTT to the sample's.

use super::{LimitAlgorithm, Sample, check_bounds, check_ratio, published, rtt_nanos};
use crate::ConfigError;

/// Delay-based adaptive limit with smoothing (Netflix's `Gradient2Limit`, its recommended one).
///
/// The no-load RTT is a long-term average of every sample's (a plain mean of the first ten,
/// then an exponential average over `long_window` samples), lowered 5 % per sample while it is
/// more than twice the sample (so it comes back down after a long overload). Each sample then
/// gives `gradient = clamp(rtt_tolerance × long / rtt, 0.5, 1)` and the new limit
///
/// ```text
/// limit × (1 − smoothing) + (limit × gradient + queue_size) × smoothing
/// ```
///
/// clamped to `[min_limit, max_limit]`: latency above the long-term average (beyond the
/// tolerance) shrinks the limit, and `queue_size` lets it grow while latency holds. A limit
/// less than half used (fewer calls in flight than half the estimate, not of the published
/// limit) does not change. Unlike Netflix's (which ignores drops), a drop counts
/// as the steepest gradient, 0.5, and does not enter the average: a dependency that sheds
/// load fast (a quick 503) must not read as a fast success.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{Gradient2, LimitAlgorithm, Sample};
///
/// let mut gradient = Gradient2::builder().build()?;
/// let at = |ms, inflight| Sample {
///     rtt: Duration::from_millis(ms),
///     inflight,
///     dropped: false,
///     at: Duration::ZERO,
/// };
/// // Latency holds: each sample adds queue_size × smoothing = 0.8.
/// for _ in 0..5 {
///     gradient.update(&at(10, 20));
/// }
/// assert_eq!(gradient.limit(), 24);
/// // Latency doubles: within the tolerance of 1.5, the limit still grows.
/// assert_eq!(gradient.update(&at(20, 24)), 24);
/// // It triples: the gradient falls to 1.5 × 14.3 / 30 ≈ 0.71 (the average is 14.3 ms now),
/// // and the limit with it.
/// assert_eq!(gradient.update(&at(30, 24)), 23);
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient2 {
    estimate: f64,
    min_limit: u32,
    max_limit: u32,
    smoothing: f64,
    queue_size: u32,
    rtt_tolerance: f64,
    long: LongAverage,
}

/// The long-term RTT: a mean of the first `WARMUP` samples, then an exponential average.
#[derive(Debug, Clone, PartialEq)]
struct LongAverage {
    /// Nanoseconds.
    value: f64,
    /// The warm-up samples' sum: each warm-up sample sets the value to their plain mean, so a
    /// lowering during the warm-up lasts until the next sample (as Netflix's does).
    sum: f64,
    count: u32,
    factor: f64,
}

impl LongAverage {
    const WARMUP: u32 = 10;

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < Self::WARMUP {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            self.value += (sample - self.value) * self.factor;
        }
        self.value
    }
}

/// Configures a [`Gradient2`] limit; the defaults are Netflix's.
#[derive(Debug, Clone)]
#[must_use]
pub struct Gradient2Builder {
    initial_limit: u32,
    min_limit: u32,
    max_limit: u32,
    smoothing: f64,
    queue_size: u32,
    long_window: u32,
    rtt_tolerance: f64,
}

impl Gradient2 {
    /// Starts a Gradient2 limit: initial 20, within 20..=200, smoothing 0.2, a queue
    /// allowance of 4, a long window of 600 samples, a tolerance of 1.5.
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            smoothing: 0.2,
            queue_size: 4,
            long_window: 600,
            rtt_tolerance: 1.5,
        }
    }

    /// The long-term RTT the gradient compares samples with (for tests and dashboards).
    pub fn long_rtt(&self) -> core::time::Duration {
        // An average of nanosecond counts that fit in u64: finite, non-negative, in range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        core::time::Duration::from_nanos(self.long.value as u64)
    }
}

impl Gradient2Builder {
    limit_setters!("20", "20", "200");

    /// The weight of each new limit against the old (default 0.2; within `(0, 1]`).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// The growth allowed while latency holds, in calls per sample before smoothing
    /// (default 4).
    pub fn queue_size(mut self, size: u32) -> Self {
        self.queue_size = size;
        self
    }

    /// The samples the long-term RTT averages over (default 600; not zero).
    pub fn long_window(mut self, samples: u32) -> Self {
        self.long_window = samples;
        self
    }

    /// How much above the long-term RTT a sample may be before the limit shrinks (default
    /// 1.5; at least 1).
    pub fn rtt_tolerance(mut self, tolerance: f64) -> Self {
        self.rtt_tolerance = tolerance;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `min_limit`, `long_window` or `smoothing`;
    /// [`ConfigError::Conflict`] unless `min_limit <= initial_limit <= max_limit`;
    /// [`ConfigError::OutOfRange`] (or `NotFinite`) for a `smoothing` above 1 or below 0, or
    /// an `rtt_tolerance` below 1.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        check_ratio("smoothing", self.smoothing, 0.0, 1.0, false, "in (0, 1]")?;
        if self.smoothing <= 0.0 {
            return Err(ConfigError::Zero { field: "smoothing" });
        }
        check_ratio(
            "rtt_tolerance",
            self.rtt_tolerance,
            1.0,
            f64::MAX,
            false,
            ">= 1",
        )?;
        if self.long_window == 0 {
            return Err(ConfigError::Zero {
                field: "long_window",
            });
        }
        // Settings that contradict each other last: each value's own error comes first.
        check_bounds(self.min_limit, self.initial_limit, self.max_limit)?;
        Ok(Gradient2 {
            estimate: f64::from(self.initial_limit),
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            smoothing: self.smoothing,
            queue_size: self.queue_size,
            rtt_tolerance: self.rtt_tolerance,
            long: LongAverage {
                value: 0.0,
                sum: 0.0,
                count: 0,
                factor: 2.0 / (f64::from(self.long_window) + 1.0),
            },
        })
    }
}

impl LimitAlgorithm for Gradient2 {
    fn limit(&self) -> u32 {
        published(self.estimate)
    }

    fn update(&mut self, sample: &Sample) -> u32 {
        let gradient = if sample.dropped {
            0.5
        } else {
            let rtt = rtt_nanos(sample.rtt);
            let long = self.long.add(rtt);
            // After a long overload the average sits far above what the dependency does now.
            if long / rtt > 2.0 {
                self.long.value *= 0.95;
            }
            (self.rtt_tolerance * long / rtt).clamp(0.5, 1.0)
        };
        if f64::from(sample.inflight) < self.estimate / 2.0 {
            return self.limit();
        }
        let target = self.estimate * gradient + f64::from(self.queue_size);
        let blended = self.estimate * (1.0 - self.smoothing) + target * self.smoothing;
        self.estimate = blended.clamp(f64::from(self.min_limit), f64::from(self.max_limit));
        self.limit()
    }

    fn bounds(&self) -> (u32, u32) {
        (self.min_limit, self.max_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::LongAverage;

    /// Netflix's warm-up: each of the first ten samples sets the average to their plain mean,
    /// so the 5 % lowering made after one sample lasts only until the next.
    #[test]
    #[allow(clippy::float_cmp)] // small whole numbers and their means: exact in f64
    fn the_warm_up_mean_is_plain_whatever_was_lowered() {
        let mut long = LongAverage {
            value: 0.0,
            sum: 0.0,
            count: 0,
            factor: 2.0 / 601.0,
        };
        assert_eq!(long.add(100.0), 100.0);
        assert_eq!(long.add(10.0), 55.0);
        long.value *= 0.95;
        assert_eq!(long.add(10.0), 40.0);
    }
}
