//! The configuration error shared by every builder.

use core::fmt;

/// A builder was given a configuration that cannot work.
///
/// Every Tidewall builder validates eagerly and returns this instead of panicking or silently
/// clamping: a zero limit, a NaN ratio or a duration too large to add to a clock reading is a
/// bug in the caller's configuration, and the caller should hear about it at build time.
///
/// ```
/// use tidewall_core::{backoff::Backoff, ConfigError};
///
/// let err = Backoff::constant(core::time::Duration::from_millis(10)).max_attempts(0).build();
/// assert_eq!(err.unwrap_err(), ConfigError::Zero { field: "max_attempts" });
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The field must be greater than zero.
    Zero {
        /// The builder field, as named in the builder method.
        field: &'static str,
    },
    /// The field must be a finite number (not NaN or infinite).
    NotFinite {
        /// The builder field.
        field: &'static str,
    },
    /// The field is outside its allowed range.
    OutOfRange {
        /// The builder field.
        field: &'static str,
        /// The value that was given.
        value: f64,
        /// A human-readable statement of the allowed range, e.g. `">= 1"`.
        allowed: &'static str,
    },
    /// The duration is too large: adding it to a clock reading or summing it would overflow
    /// (the limit is `u64::MAX` nanoseconds, about 584 years).
    DurationOverflow {
        /// The builder field.
        field: &'static str,
    },
    /// Two settings contradict each other.
    Conflict {
        /// What contradicts what, e.g. `"initial delay exceeds max_delay"`.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zero { field } => write!(f, "`{field}` must be greater than zero"),
            Self::NotFinite { field } => write!(f, "`{field}` must be a finite number"),
            Self::OutOfRange {
                field,
                value,
                allowed,
            } => {
                write!(f, "`{field}` is {value}, but it must be {allowed}")
            }
            Self::DurationOverflow { field } => {
                write!(f, "`{field}` is too large (at most u64::MAX nanoseconds)")
            }
            Self::Conflict { reason } => write!(f, "conflicting configuration: {reason}"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Rejects durations whose nanosecond count does not fit in a `u64`.
pub(crate) fn nanos_of(field: &'static str, d: core::time::Duration) -> Result<u64, ConfigError> {
    u64::try_from(d.as_nanos()).map_err(|_| ConfigError::DurationOverflow { field })
}
