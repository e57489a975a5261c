//! One rule for turning "`count` per `period`" into a whole number of clock units.
//!
//! A limiter keeps its emission interval (`period / count`) as a whole number of its clock's
//! units: nanoseconds in process, microseconds in Redis. Rounding down makes the limit faster
//! than asked, so every limiter refuses a configuration whose rounding would make it more
//! than **0.1 %** faster (700,000,000 per second would be an interval of 1.43 ns, rounded to
//! 1 ns: 43 % too fast). The same rule splits a breaker's or a retry budget's time window
//! into buckets.

use core::time::Duration;

use crate::{ConfigError, error::nanos_of};

/// The unit a limiter's clock counts in: its emission interval is a whole number of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// Nanoseconds: the in-process limiters' clock.
    Nanos,
    /// Microseconds: Redis's `TIME`.
    Micros,
}

impl Resolution {
    /// Nanoseconds in one unit.
    pub const fn nanos(self) -> u64 {
        match self {
            Self::Nanos => 1,
            Self::Micros => 1_000,
        }
    }
}

/// What the settings are called in the builder that reports an error.
pub(crate) struct Names {
    /// The count (cells, buckets).
    pub(crate) count: &'static str,
    /// The period (or window) being split.
    pub(crate) period: &'static str,
    /// The `allowed` text of [`ConfigError::OutOfRange`] for the count.
    pub(crate) allowed: &'static str,
}

/// The emission interval of `count` cells per `period`, in whole units of `resolution`,
/// rounded down, and only if that rounding makes the rate at most 0.1 % faster than asked:
/// with `interval` the result, `count / period ≤ 1 / (interval × unit) ≤ 1.001 × count / period`.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::ConfigError;
/// use tidewall_core::gcra::{Resolution, emission_interval};
///
/// let second = Duration::from_secs(1);
/// assert_eq!(emission_interval(3, second, Resolution::Nanos), Ok(333_333_333));
/// assert_eq!(emission_interval(1_000_000, second, Resolution::Micros), Ok(1));
/// // 1.43 ns, which 1 ns would make 43 % faster: refused, in either unit.
/// assert!(matches!(
///     emission_interval(700_000_000, second, Resolution::Nanos),
///     Err(ConfigError::OutOfRange { field: "count", .. })
/// ));
/// // 1.5 µs would be 1 µs in Redis: refused; 1.0005 µs is within 0.1 % of 1 µs.
/// assert!(emission_interval(2, Duration::from_nanos(3_000), Resolution::Micros).is_err());
/// assert_eq!(emission_interval(2, Duration::from_nanos(2_001), Resolution::Micros), Ok(1));
/// ```
///
/// # Errors
///
/// [`ConfigError::Zero`] for a zero `count` or `period`; [`ConfigError::DurationOverflow`]
/// for a `period` beyond `u64::MAX` nanoseconds; [`ConfigError::OutOfRange`] (field
/// `count`) when `period / count` is under one unit, or rounding it down to whole units
/// would make the rate more than 0.1 % faster.
pub fn emission_interval(
    count: u32,
    period: Duration,
    resolution: Resolution,
) -> Result<u64, ConfigError> {
    let allowed = match resolution {
        Resolution::Nanos => {
            "such that period / count is at least 1 ns and within 0.1 % above a whole number of ns"
        }
        Resolution::Micros => {
            "such that period / count is at least 1 µs and within 0.1 % above a whole number of µs"
        }
    };
    let names = Names {
        count: "count",
        period: "period",
        allowed,
    };
    split(count, period, resolution, &names)
}

/// [`emission_interval`] with the builder's own names for the settings.
pub(crate) fn split(
    count: u32,
    period: Duration,
    resolution: Resolution,
    names: &Names,
) -> Result<u64, ConfigError> {
    if count == 0 {
        return Err(ConfigError::Zero { field: names.count });
    }
    let period = nanos_of(names.period, period)?;
    if period == 0 {
        return Err(ConfigError::Zero {
            field: names.period,
        });
    }
    // In u128 nothing here can overflow: the divisor is below 2^42.
    let divisor = u128::from(count) * u128::from(resolution.nanos());
    let (interval, rest) = (u128::from(period) / divisor, u128::from(period) % divisor);
    // The rate admitted over the rate asked is period / (interval × divisor), that is
    // period / (period − rest): at most 1.001 exactly when 1001 × rest ≤ period. An interval
    // of zero has rest = period and fails the same test.
    if interval == 0 || rest * 1001 > u128::from(period) {
        return Err(ConfigError::OutOfRange {
            field: names.count,
            value: f64::from(count),
            allowed: names.allowed,
        });
    }
    // interval ≤ period, which fits in u64.
    Ok(u64::try_from(interval).unwrap_or(u64::MAX))
}
