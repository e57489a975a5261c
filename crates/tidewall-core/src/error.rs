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

impl ConfigError {
    /// The builder field the error is about, if it is about one (a [`Conflict`](Self::Conflict)
    /// is about two or more, and says which in its reason).
    ///
    /// ```
    /// use tidewall_core::ConfigError;
    ///
    /// assert_eq!(ConfigError::Zero { field: "max_keys" }.field(), Some("max_keys"));
    /// assert_eq!(ConfigError::Conflict { reason: "a and b" }.field(), None);
    /// ```
    pub const fn field(&self) -> Option<&'static str> {
        match self {
            Self::Zero { field }
            | Self::NotFinite { field }
            | Self::OutOfRange { field, .. }
            | Self::DurationOverflow { field } => Some(field),
            Self::Conflict { .. } => None,
        }
    }

    /// The rule that was broken, without the field's name, for messages that name the field
    /// their own way (a configuration file's key path, say).
    ///
    /// ```
    /// use tidewall_core::ConfigError;
    ///
    /// let e = ConfigError::OutOfRange { field: "failure_rate", value: 1.5, allowed: "within [0.000001, 1]" };
    /// assert_eq!(
    ///     format!("payments.breaker.{}: {}", e.field().unwrap(), e.rule()),
    ///     "payments.breaker.failure_rate: must be within [0.000001, 1], got 1.5"
    /// );
    /// assert_eq!(ConfigError::Zero { field: "burst" }.rule().to_string(), "must be greater than zero");
    /// ```
    pub const fn rule(&self) -> ConfigRule<'_> {
        ConfigRule(self)
    }
}

/// The rule a [`ConfigError`] says was broken, printed without the field's name (see
/// [`ConfigError::rule`]).
#[derive(Debug, Clone, Copy)]
pub struct ConfigRule<'a>(&'a ConfigError);

impl fmt::Display for ConfigRule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ConfigError::Zero { .. } => f.write_str("must be greater than zero"),
            ConfigError::NotFinite { .. } => f.write_str("must be a finite number"),
            ConfigError::OutOfRange { value, allowed, .. } => {
                write!(f, "must be {allowed}, got {value}")
            }
            ConfigError::DurationOverflow { .. } => {
                f.write_str("must be at most u64::MAX nanoseconds (about 584 years)")
            }
            ConfigError::Conflict { reason } => f.write_str(reason),
        }
    }
}

/// Rejects durations whose nanosecond count does not fit in a `u64`.
pub(crate) fn nanos_of(field: &'static str, d: core::time::Duration) -> Result<u64, ConfigError> {
    u64::try_from(d.as_nanos()).map_err(|_| ConfigError::DurationOverflow { field })
}
