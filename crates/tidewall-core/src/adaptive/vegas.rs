//! Vegas: a limit from the queue the dependency's latency says it builds.

use super::{LimitAlgorithm, Sample, check_bounds, check_ratio, published, rtt_nanos};
use crate::ConfigError;
use crate::rng::SplitMix64;

/// Delay-based adaptive limit, per sample (Netflix's `VegasLimit`).
///
/// The no-load RTT is the least RTT seen, replaced by a fresh measurement every
/// `probe_multiplier × limit` samples or so (jittered by a seeded draw in `[0.5, 1)`), so it
/// follows a dependency that got slower for good. From it and each sample's RTT, the queue the
/// limit builds is `ceil(estimate × (1 − no_load / rtt))` (the estimate: the limit before its
/// integer part is published, a whole number unless `smoothing` is below 1), and with
/// `log10(limit)` as the unit
/// (`max(1, ⌊log10 limit⌋)`: 1 below 100, 2 below 1,000, ...):
///
/// * a queue of at most `threshold` (1 unit) grows the limit by `beta`;
/// * one below `alpha` (3 units) grows it by one unit;
/// * one above `beta` (6 units) shrinks it by one unit;
/// * a drop shrinks it by one unit; anything else holds it.
///
/// The new limit is clamped to `[min_limit, max_limit]`, then blended with the old one by
/// `smoothing` (1: no blending), and the blend clamped again (f64 rounding must not take it
/// one past a bound). Blending only approaches the new limit: with a `smoothing` below 1 a
/// limit moving toward a bound may stay one short of it. A sample that sets or probes the
/// no-load RTT changes nothing else, a drop included (as Netflix's: a drop faster than every
/// call before it becomes the no-load RTT), and a limit less than half used (fewer calls in
/// flight than half the estimate) does not move
/// but for a drop (as Netflix's: its queue says nothing then).
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{LimitAlgorithm, Sample, Vegas};
///
/// let mut vegas = Vegas::builder().initial_limit(10).max_limit(20).build()?;
/// let at = |ms, inflight| Sample {
///     rtt: Duration::from_millis(ms),
///     inflight,
///     dropped: false,
///     at: Duration::ZERO,
/// };
/// assert_eq!(vegas.update(&at(10, 1)), 10); // the first sample is the no-load RTT
/// assert_eq!(vegas.update(&at(10, 11)), 16); // no queue: + beta (6)
/// assert_eq!(vegas.update(&at(50, 16)), 15); // a queue of 13 > 6: - 1
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Vegas {
    estimate: f64,
    min_limit: u32,
    max_limit: u32,
    smoothing: f64,
    probe_multiplier: u32,
    alpha: Option<u32>,
    beta: Option<u32>,
    /// The no-load RTT in nanoseconds, once a sample set it.
    no_load: Option<f64>,
    probe_count: u64,
    probe_jitter: f64,
    rng: SplitMix64,
}

/// Configures a [`Vegas`] limit; the defaults are Netflix's.
#[derive(Debug, Clone)]
#[must_use]
pub struct VegasBuilder {
    initial_limit: u32,
    min_limit: u32,
    max_limit: u32,
    smoothing: f64,
    probe_multiplier: u32,
    alpha: Option<u32>,
    beta: Option<u32>,
    seed: u64,
}

impl Vegas {
    /// Starts a Vegas limit: initial 20, within 1..=1,000, no smoothing, a probe every
    /// 15–30 × limit samples, alpha and beta 3 and 6 units of `log10(limit)`.
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            smoothing: 1.0,
            probe_multiplier: 30,
            alpha: None,
            beta: None,
            seed: 0x7E6A_5EED,
        }
    }
}

impl VegasBuilder {
    limit_setters!("20", "1", "1,000");

    /// The weight of each new limit against the old (default 1: none kept; within `(0, 1]`).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// How often the no-load RTT is measured afresh, in samples per unit of limit (default
    /// 30: every 15–30 × limit samples; not zero).
    pub fn probe_multiplier(mut self, multiplier: u32) -> Self {
        self.probe_multiplier = multiplier;
        self
    }

    /// A fixed `alpha` instead of 3 units of `log10(limit)`: a queue below it grows the limit.
    pub fn alpha(mut self, alpha: u32) -> Self {
        self.alpha = Some(alpha);
        self
    }

    /// A fixed `beta` instead of 6 units of `log10(limit)`: a queue above it shrinks the
    /// limit, and no queue at all grows it by `beta`.
    pub fn beta(mut self, beta: u32) -> Self {
        self.beta = Some(beta);
        self
    }

    /// Seeds the probe jitter (by default a fixed seed: the same samples give the same limits).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `min_limit`, `probe_multiplier` or `smoothing`;
    /// [`ConfigError::Conflict`] unless `min_limit <= initial_limit <= max_limit`, or for an
    /// `alpha` above `beta` when both are set (each left unset follows the limit: 3 and 6
    /// units, so an `alpha` set alone above 6 units makes the queues between them grow the
    /// limit); [`ConfigError::OutOfRange`] (or `NotFinite`) for a `smoothing`
    /// above 1 or below 0.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        check_ratio("smoothing", self.smoothing, 0.0, 1.0, false, "in (0, 1]")?;
        if self.smoothing <= 0.0 {
            return Err(ConfigError::Zero { field: "smoothing" });
        }
        if self.probe_multiplier == 0 {
            return Err(ConfigError::Zero {
                field: "probe_multiplier",
            });
        }
        // Settings that contradict each other last: each value's own error comes first.
        check_bounds(self.min_limit, self.initial_limit, self.max_limit)?;
        if let (Some(alpha), Some(beta)) = (self.alpha, self.beta)
            && alpha > beta
        {
            return Err(ConfigError::Conflict {
                reason: "alpha exceeds beta",
            });
        }
        let mut rng = SplitMix64::new(self.seed);
        Ok(Vegas {
            estimate: f64::from(self.initial_limit),
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            smoothing: self.smoothing,
            probe_multiplier: self.probe_multiplier,
            alpha: self.alpha,
            beta: self.beta,
            no_load: None,
            probe_count: 0,
            probe_jitter: jitter(&mut rng),
            rng,
        })
    }
}

/// A draw in `[0.5, 1)`.
fn jitter(rng: &mut SplitMix64) -> f64 {
    // 53 random bits as a fraction of one.
    let fraction = (rng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
    0.5 + fraction / 2.0
}

/// `max(1, ⌊log10 n⌋)`.
fn log10_units(n: u32) -> u32 {
    let mut units = 0;
    let mut rest = n;
    while rest >= 10 {
        rest /= 10;
        units += 1;
    }
    units.max(1)
}

/// The least whole number at or above `x` (for `x >= 0`, within `u32`).
fn ceil(x: f64) -> f64 {
    let whole = f64::from(published(x));
    if whole < x { whole + 1.0 } else { whole }
}

impl Vegas {
    /// The no-load RTT, once a sample has set it (for tests and dashboards). It is kept as
    /// an f64 of nanoseconds: exact up to 2^53 ns (about 104 days), rounded to 53 bits past.
    pub fn no_load_rtt(&self) -> Option<core::time::Duration> {
        // Set from a nanosecond count that fit in u64, so the f64 is within u64's range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.no_load
            .map(|nanos| core::time::Duration::from_nanos(nanos as u64))
    }
}

impl LimitAlgorithm for Vegas {
    fn limit(&self) -> u32 {
        published(self.estimate)
    }

    fn update(&mut self, sample: &Sample) -> u32 {
        let rtt = rtt_nanos(sample.rtt);
        self.probe_count = self.probe_count.saturating_add(1);
        let probe_every = self.probe_jitter * f64::from(self.probe_multiplier) * self.estimate;
        if probe_every <= self.probe_count as f64 {
            self.probe_jitter = jitter(&mut self.rng);
            self.probe_count = 0;
            self.no_load = Some(rtt);
            return self.limit();
        }
        let no_load = match self.no_load {
            Some(no_load) if rtt >= no_load => no_load,
            _ => {
                self.no_load = Some(rtt);
                return self.limit();
            }
        };
        let limit = self.limit();
        let unit = f64::from(log10_units(limit));
        let candidate = if sample.dropped {
            self.estimate - unit
        } else if f64::from(sample.inflight) * 2.0 < self.estimate {
            return limit;
        } else {
            let queue = ceil(self.estimate * (1.0 - no_load / rtt));
            let alpha = f64::from(self.alpha.unwrap_or(3 * log10_units(limit)));
            let beta = f64::from(self.beta.unwrap_or(6 * log10_units(limit)));
            if queue <= unit {
                self.estimate + beta
            } else if queue < alpha {
                self.estimate + unit
            } else if queue > beta {
                self.estimate - unit
            } else {
                return limit;
            }
        };
        let (min, max) = (f64::from(self.min_limit), f64::from(self.max_limit));
        let candidate = candidate.clamp(min, max);
        self.estimate =
            ((1.0 - self.smoothing) * self.estimate + self.smoothing * candidate).clamp(min, max);
        self.limit()
    }

    fn bounds(&self) -> (u32, u32) {
        (self.min_limit, self.max_limit)
    }
}
