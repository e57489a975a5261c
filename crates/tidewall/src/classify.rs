//! Outcome classification: one answer, for every policy, to "how did this call go?".
//!
//! Retry, circuit breaker, hedging, the pipeline and the tower layers all read a result through
//! one [`Classify`] implementation, so a response the breaker counts as a failure is also the
//! one retry retries:
//!
//! | [`Verdict`] | retry / hedge | circuit breaker |
//! |---|---|---|
//! | [`Success`](Verdict::Success) | returns the result | success |
//! | [`RetryableFailure`](Verdict::RetryableFailure) | retries while the rules allow | failure |
//! | [`Failure`](Verdict::Failure) | returns the result at once | failure |
//! | [`Ignored`](Verdict::Ignored) | returns the result at once | not counted |
//!
//! A result is never thrown away: an `Ok` value judged a failure is still returned as `Ok`
//! when no retry follows it, and an `Err` judged a success is returned as `Err`.
//!
//! A classifier also reads the wait a failed result asks for ([`Classify::retry_after`]: a
//! 429's or 503's `Retry-After`, on an `Ok` response as much as on an error): retry sleeps at
//! least that long, and a breaker it opens stays open that long (each capped).
//! [`WithRetryAfter`] and [`Hinted`] add hints to any classifier; `tidewall::http`'s
//! `HttpClassifier` reads them itself.
//!
//! The default, [`DefaultClassifier`], judges `Ok` a success and every `Err` a retryable
//! failure, and reads no hint. A closure `Fn(Result<&T, &E>) -> Verdict` is a classifier:
//!
//! ```
//! use tidewall::classify::{Classify, Verdict};
//!
//! #[derive(Debug)]
//! enum ApiError { Unavailable, BadRequest, Cancelled }
//!
//! let classify = |result: Result<&u16, &ApiError>| match result {
//!     Ok(status) if *status >= 500 => Verdict::RetryableFailure,
//!     Ok(_) => Verdict::Success,
//!     Err(ApiError::Unavailable) => Verdict::RetryableFailure,
//!     Err(ApiError::BadRequest) => Verdict::Failure,
//!     // The caller gave up: that says nothing about the service's health.
//!     Err(ApiError::Cancelled) => Verdict::Ignored,
//! };
//! assert_eq!(classify.classify(Ok(&503)), Verdict::RetryableFailure);
//! assert_eq!(classify.classify(Err(&ApiError::BadRequest)), Verdict::Failure);
//! ```

use std::time::Duration;

use crate::RetryAfter;
use crate::breaker::Outcome;

/// How one attempt's result counts; see the [module docs](self) for what each policy does
/// with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The call worked.
    Success,
    /// The call failed, and another attempt may succeed.
    RetryableFailure,
    /// The call failed, and another attempt would fail the same way.
    Failure,
    /// The result says nothing about the service (e.g. the caller cancelled): not counted,
    /// not retried.
    Ignored,
}

impl Verdict {
    /// Whether another attempt is worth making.
    #[must_use]
    #[inline]
    pub fn is_retryable(self) -> bool {
        self == Self::RetryableFailure
    }

    /// How a circuit breaker counts it.
    #[must_use]
    #[inline]
    pub fn breaker_outcome(self) -> Outcome {
        match self {
            Self::Success => Outcome::Success,
            Self::RetryableFailure | Self::Failure => Outcome::Failure,
            Self::Ignored => Outcome::Ignored,
        }
    }
}

/// Judges one attempt's result, and reads the hint it carries. Implemented by
/// [`DefaultClassifier`], [`ErrorsWhere`], [`WithRetryAfter`], [`Hinted`] and every closure
/// `Fn(Result<&T, &E>) -> Verdict`.
pub trait Classify<T, E> {
    /// The verdict on `result`.
    fn classify(&self, result: Result<&T, &E>) -> Verdict;

    /// How long the result asks the caller to wait before trying again (an HTTP 429's
    /// `Retry-After`, an `Ok` 503 response's as much as an error's). Read only for a result
    /// judged a failure; uncapped (each driver caps it with its `max_retry_after`). By
    /// default none: wrap a classifier in [`WithRetryAfter`] or [`Hinted`] to read hints.
    #[inline]
    fn retry_after(&self, result: Result<&T, &E>) -> Option<Duration> {
        let _ = result;
        None
    }
}

impl<T, E, F: Fn(Result<&T, &E>) -> Verdict> Classify<T, E> for F {
    fn classify(&self, result: Result<&T, &E>) -> Verdict {
        self(result)
    }
}

/// `result`'s verdict, and for a failure the wait it asked for: read once, for the breaker
/// (which it may hold open longer) and the retry alike.
pub(crate) fn judge<T, E, C: Classify<T, E>>(
    classify: &C,
    result: Result<&T, &E>,
) -> (Verdict, Option<Duration>) {
    let verdict = classify.classify(result);
    let hint = match verdict.breaker_outcome() {
        Outcome::Failure => classify.retry_after(result),
        Outcome::Success | Outcome::Ignored => None,
    };
    (verdict, hint)
}

/// The default: `Ok` is a success, every `Err` a retryable failure.
///
/// ```
/// use tidewall::classify::{Classify, DefaultClassifier, Verdict};
///
/// assert_eq!(Classify::<u8, ()>::classify(&DefaultClassifier, Ok(&1)), Verdict::Success);
/// assert_eq!(Classify::<u8, ()>::classify(&DefaultClassifier, Err(&())), Verdict::RetryableFailure);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<T, E> Classify<T, E> for DefaultClassifier {
    fn classify(&self, result: Result<&T, &E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::RetryableFailure,
        }
    }
}

/// `Ok` is a success; an `Err` is a retryable failure when the predicate accepts it, a failure
/// not to retry otherwise. What [`Retry::when`](crate::retry::Retry::when) sets.
///
/// ```
/// use tidewall::classify::{Classify, ErrorsWhere, Verdict};
///
/// let transient = ErrorsWhere(|e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut);
/// let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
/// let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
/// assert_eq!(Classify::<(), _>::classify(&transient, Err(&timed_out)), Verdict::RetryableFailure);
/// assert_eq!(Classify::<(), _>::classify(&transient, Err(&denied)), Verdict::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsWhere<P>(pub P);

impl<T, E, P: Fn(&E) -> bool> Classify<T, E> for ErrorsWhere<P> {
    fn classify(&self, result: Result<&T, &E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) if (self.0)(e) => Verdict::RetryableFailure,
            Err(_) => Verdict::Failure,
        }
    }
}

/// `C`'s verdicts, and the hints of errors that implement [`RetryAfter`] (a refusal's
/// `retry_after`, an error carrying a server's `Retry-After`), else `C`'s own hint (so it
/// stacks with [`Hinted`]). What `honor_retry_after()` sets on the retry future, the pipeline
/// and the tower `RetryLayer`.
///
/// ```
/// use std::time::Duration;
/// use tidewall::classify::{Classify, DefaultClassifier, WithRetryAfter};
/// use tidewall::Rejected;
///
/// let busy = Rejected::RateLimited { retry_after: Duration::from_millis(20) };
/// let hinted = WithRetryAfter(DefaultClassifier);
/// assert_eq!(Classify::<(), _>::retry_after(&hinted, Err(&busy)), Some(Duration::from_millis(20)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WithRetryAfter<C>(pub C);

impl<T, E: RetryAfter, C: Classify<T, E>> Classify<T, E> for WithRetryAfter<C> {
    #[inline]
    fn classify(&self, result: Result<&T, &E>) -> Verdict {
        self.0.classify(result)
    }

    #[inline]
    fn retry_after(&self, result: Result<&T, &E>) -> Option<Duration> {
        match result {
            Err(error) => error.retry_after().or_else(|| self.0.retry_after(result)),
            Ok(_) => self.0.retry_after(result),
        }
    }
}

/// `C`'s verdicts, and hints read by a closure over the whole result (an `Ok` response can
/// carry one, a 503 with `Retry-After`, as well as an error), else `C`'s own hint (so it
/// stacks with [`WithRetryAfter`]). What `retry_after_with(f)` sets.
///
/// ```
/// use std::time::Duration;
/// use tidewall::classify::{Classify, Hinted, Verdict};
///
/// // (status, seconds to wait): a 503 is retried after the server's wait.
/// let judge = |r: Result<&(u16, u64), &()>| match r {
///     Ok((503, _)) => Verdict::RetryableFailure,
///     Ok(_) => Verdict::Success,
///     Err(()) => Verdict::RetryableFailure,
/// };
/// let hints = |r: Result<&(u16, u64), &()>| r.ok().map(|(_, s)| Duration::from_secs(*s));
/// let policy = Hinted(judge, hints);
/// assert_eq!(policy.classify(Ok(&(503, 2))), Verdict::RetryableFailure);
/// assert_eq!(policy.retry_after(Ok(&(503, 2))), Some(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Hinted<C, F>(pub C, pub F);

impl<T, E, C, F> Classify<T, E> for Hinted<C, F>
where
    C: Classify<T, E>,
    F: Fn(Result<&T, &E>) -> Option<Duration>,
{
    #[inline]
    fn classify(&self, result: Result<&T, &E>) -> Verdict {
        self.0.classify(result)
    }

    #[inline]
    fn retry_after(&self, result: Result<&T, &E>) -> Option<Duration> {
        (self.1)(result).or_else(|| self.0.retry_after(result))
    }
}
