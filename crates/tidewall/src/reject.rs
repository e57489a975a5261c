//! Policy rejections and the error every policy wrapper returns.

use std::fmt;
use std::time::Duration;

use crate::RetryAfter;

/// A policy said no. A value, never an allocation: cheap to return on the hot path.
///
/// Every rejection exposes its hint through [`RetryAfter`], which the retry driver and the
/// [`Pipeline`](crate::pipeline::Pipeline) honour.
///
/// ```
/// use std::time::Duration;
/// use tidewall::{Rejected, RetryAfter};
///
/// let r = Rejected::RateLimited { retry_after: Duration::from_millis(20) };
/// assert_eq!(r.retry_after(), Some(Duration::from_millis(20)));
/// assert_eq!(Rejected::BulkheadFull.retry_after(), None);
/// assert_eq!(r.to_string(), "rate limited: retry after 20ms");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// The circuit breaker is open (or half-open with every probe slot taken).
    CircuitOpen {
        /// When the breaker may admit a call again.
        retry_after: Duration,
    },
    /// The rate limiter has no capacity now.
    RateLimited {
        /// When the same request would be admitted.
        retry_after: Duration,
    },
    /// The request asks for more cells than the limiter's burst: it can never pass.
    InsufficientCapacity {
        /// The limiter's burst.
        burst: u32,
    },
    /// The bulkhead is full and its queue is full, or the wait for a slot timed out.
    BulkheadFull,
    /// The shared deadline passed, or a wait would have ended past it.
    DeadlineExceeded,
    /// The retry budget is spent, or the hedge budget is.
    BudgetExhausted,
    /// A keyed breaker, bulkhead or adaptive limiter met a new key with its table full of
    /// keys it may not forget yet (permits out, a breaker open or recently used). A keyed
    /// rate limiter's full table answers [`RateLimited`](Self::RateLimited) instead, with
    /// the time until one of its keys has rested.
    KeysFull {
        /// The earliest the first of those keys may be forgotten by time, if any time is
        /// known (`None` when every one of them waits on something other than time, such as
        /// a permit); a key used in the meantime is kept longer. A keyed breaker counting in
        /// a time window may forget a key sooner, once its window has emptied.
        retry_after: Option<Duration>,
    },
    /// The shared state behind a limit (e.g. Redis) did not answer within its deadline, and
    /// the limit's failure policy is to refuse (fail closed).
    BackendUnavailable,
}

impl Rejected {
    /// A stable snake_case name for the kind of refusal, as metrics and logs label it:
    /// `circuit_open`, `rate_limited`, `insufficient_capacity`, `bulkhead_full`,
    /// `deadline_exceeded`, `budget_exhausted`, `keys_full`, `backend_unavailable`.
    ///
    /// ```
    /// use tidewall::Rejected;
    ///
    /// assert_eq!(Rejected::BulkheadFull.kind(), "bulkhead_full");
    /// assert_eq!(Rejected::KeysFull { retry_after: None }.kind(), "keys_full");
    /// ```
    pub const fn kind(&self) -> &'static str {
        KINDS[self.kind_index()]
    }

    /// The position of [`kind`](Self::kind) in [`KINDS`].
    pub(crate) const fn kind_index(&self) -> usize {
        match self {
            Self::CircuitOpen { .. } => 0,
            Self::RateLimited { .. } => 1,
            Self::InsufficientCapacity { .. } => 2,
            Self::BulkheadFull => 3,
            Self::DeadlineExceeded => 4,
            Self::BudgetExhausted => 5,
            Self::KeysFull { .. } => 6,
            Self::BackendUnavailable => 7,
        }
    }
}

/// Every [`Rejected::kind`], in [`Rejected::kind_index`] order.
pub(crate) const KINDS: [&str; 8] = [
    "circuit_open",
    "rate_limited",
    "insufficient_capacity",
    "bulkhead_full",
    "deadline_exceeded",
    "budget_exhausted",
    "keys_full",
    "backend_unavailable",
];

impl RetryAfter for Rejected {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after } | Self::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            Self::KeysFull { retry_after } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CircuitOpen { retry_after } => {
                write!(f, "circuit open: retry after {retry_after:?}")
            }
            Self::RateLimited { retry_after } => {
                write!(f, "rate limited: retry after {retry_after:?}")
            }
            Self::InsufficientCapacity { burst } => {
                write!(f, "request exceeds the rate limiter's burst of {burst}")
            }
            Self::BulkheadFull => f.write_str("bulkhead full"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded"),
            Self::BudgetExhausted => f.write_str("budget exhausted"),
            Self::KeysFull {
                retry_after: Some(retry_after),
            } => write!(f, "key table full: retry after {retry_after:?}"),
            Self::KeysFull { retry_after: None } => f.write_str("key table full"),
            Self::BackendUnavailable => {
                f.write_str("the limit's backend is unavailable (failing closed)")
            }
        }
    }
}

impl std::error::Error for Rejected {}

/// The error of a call made through a policy: the policy rejected it, it timed out, or the
/// operation itself failed (its error kept intact).
///
/// Its `Display` is the rejection's, "attempt timed out", or the operation's error's, and
/// `source()` returns the rejection, an [`Elapsed`](crate::time::Elapsed) ("operation timed
/// out") for a timeout, or the operation's error, so a downcast along the chain (such as
/// `tower::cause`) finds it; a report that prints every link shows the rejection's or the
/// error's message twice.
///
/// ```
/// use tidewall::{Error, Rejected};
///
/// let e: Error<std::io::Error> = Error::Rejected(Rejected::BulkheadFull);
/// assert!(e.inner().is_none());
/// assert_eq!(e.rejection(), Some(Rejected::BulkheadFull));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// A policy refused the call. Before the operation ran, for a single policy; through a
    /// pipeline or the HTTP stack, earlier attempts may have run: the deadline cut a later
    /// one ([`Rejected::DeadlineExceeded`]), or a policy refused the last attempt.
    Rejected(Rejected),
    /// The attempt exceeded its timeout.
    TimedOut,
    /// The operation's own error.
    Inner(E),
}

impl<E> Error<E> {
    /// The operation's error, if that is what this is.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Self::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The operation's error by value, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The rejection, if a policy refused the call.
    pub fn rejection(&self) -> Option<Rejected> {
        match self {
            Self::Rejected(r) => Some(*r),
            _ => None,
        }
    }
}

impl<E> From<Rejected> for Error<E> {
    fn from(r: Rejected) -> Self {
        Self::Rejected(r)
    }
}

impl<E: RetryAfter> RetryAfter for Error<E> {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected(r) => r.retry_after(),
            Self::TimedOut => None,
            Self::Inner(e) => e.retry_after(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => write!(f, "{r}"),
            Self::TimedOut => f.write_str("attempt timed out"),
            Self::Inner(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Rejected(r) => Some(r),
            Self::TimedOut => Some(&crate::time::Elapsed),
        }
    }
}
