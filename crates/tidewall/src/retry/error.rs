//! The retry driver's error.

use std::fmt;
use std::time::Duration;

use crate::RetryAfter;

/// Why a retried operation did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The operation's own error: it was not retryable, or no retry was left.
    Inner(E),
    /// The last attempt exceeded the per-attempt timeout and no retry was left.
    AttemptTimedOut,
    /// The deadline passed, or no next attempt fits before it: the backoff sleep (or a
    /// hint's whole wait), plus [`min_attempt_time`](crate::retry::Retry::min_attempt_time),
    /// would end at it or past it.
    DeadlineExceeded {
        /// The last error seen before the deadline (`None` if no attempt had failed with an
        /// error: none had finished, or the last one timed out).
        last_error: Option<E>,
        /// Attempts started.
        attempts: u32,
    },
}

impl<E> RetryError<E> {
    /// The operation's own error, if this carries one.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e)
            | Self::DeadlineExceeded {
                last_error: Some(e),
                ..
            } => Some(e),
            _ => None,
        }
    }

    /// A reference to the operation's own error, if this carries one.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Self::Inner(e)
            | Self::DeadlineExceeded {
                last_error: Some(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inner(e) => write!(f, "{e}"),
            Self::AttemptTimedOut => f.write_str("the last attempt timed out"),
            Self::DeadlineExceeded {
                last_error: Some(e),
                attempts,
            } => {
                write!(
                    f,
                    "deadline exceeded after {attempts} attempts; last error: {e}"
                )
            }
            Self::DeadlineExceeded {
                last_error: None,
                attempts,
            } => {
                write!(f, "deadline exceeded after {attempts} attempts")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner().map(|e| e as _)
    }
}

impl<E: RetryAfter> RetryAfter for RetryError<E> {
    fn retry_after(&self) -> Option<Duration> {
        self.inner().and_then(RetryAfter::retry_after)
    }
}
