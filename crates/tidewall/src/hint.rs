//! The one trait through which any error carries a "retry after" hint.

use std::time::Duration;

/// An error that knows when a retry may succeed: a rate limiter's "wait 200 ms", an HTTP 429 or
/// 503 with `Retry-After`, an open circuit breaker's remaining break.
///
/// The [retry driver](crate::retry) honours the hint when told to
/// ([`Retry::honor_retry_after`](crate::retry::Retry::honor_retry_after)): the next delay is
/// at least the hint, capped by the driver's `max_retry_after`.
///
/// ```
/// use std::time::Duration;
/// use tidewall::RetryAfter;
///
/// enum ApiError { Throttled { wait: Duration }, Broken }
///
/// impl RetryAfter for ApiError {
///     fn retry_after(&self) -> Option<Duration> {
///         match self {
///             ApiError::Throttled { wait } => Some(*wait),
///             ApiError::Broken => None,
///         }
///     }
/// }
/// assert_eq!(ApiError::Throttled { wait: Duration::from_secs(1) }.retry_after(), Some(Duration::from_secs(1)));
/// ```
pub trait RetryAfter {
    /// How long to wait before retrying, if the error says.
    fn retry_after(&self) -> Option<Duration>;
}

impl<T: RetryAfter + ?Sized> RetryAfter for &T {
    fn retry_after(&self) -> Option<Duration> {
        (**self).retry_after()
    }
}

impl<T: RetryAfter + ?Sized> RetryAfter for Box<T> {
    fn retry_after(&self) -> Option<Duration> {
        (**self).retry_after()
    }
}
