//! The pluggable decisions of the retry driver. Closures implement each trait; the unit types
//! are the defaults, so an unconfigured `Retry` carries no closure at all.

use std::time::Duration;

use crate::RetryAfter;

/// Decides whether an error is worth retrying.
pub trait ErrorPredicate<E> {
    /// `true` to retry.
    fn is_retryable(&mut self, error: &E) -> bool;
}

impl<E, F: FnMut(&E) -> bool> ErrorPredicate<E> for F {
    fn is_retryable(&mut self, error: &E) -> bool {
        self(error)
    }
}

/// The default: every error is retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyError;

impl<E> ErrorPredicate<E> for AnyError {
    fn is_retryable(&mut self, _: &E) -> bool {
        true
    }
}

/// Decides whether an `Ok` value should be retried anyway (e.g. "job still pending").
pub trait OkPredicate<T> {
    /// `true` to retry.
    fn is_retryable(&mut self, value: &T) -> bool;
}

impl<T, F: FnMut(&T) -> bool> OkPredicate<T> for F {
    fn is_retryable(&mut self, value: &T) -> bool {
        self(value)
    }
}

/// The default: `Ok` values are final.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoValue;

impl<T> OkPredicate<T> for NoValue {
    fn is_retryable(&mut self, _: &T) -> bool {
        false
    }
}

/// Extracts a "retry after" hint from an error.
pub trait HintSource<E> {
    /// The hint, if the error carries one.
    fn hint(&mut self, error: &E) -> Option<Duration>;
}

impl<E, F: FnMut(&E) -> Option<Duration>> HintSource<E> for F {
    fn hint(&mut self, error: &E) -> Option<Duration> {
        self(error)
    }
}

/// The default: hints are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHints;

impl<E> HintSource<E> for NoHints {
    fn hint(&mut self, _: &E) -> Option<Duration> {
        None
    }
}

/// Reads hints through the [`RetryAfter`] trait; set by
/// [`Retry::honor_retry_after`](super::Retry::honor_retry_after).
#[derive(Debug, Clone, Copy, Default)]
pub struct FromRetryAfter;

impl<E: RetryAfter> HintSource<E> for FromRetryAfter {
    fn hint(&mut self, error: &E) -> Option<Duration> {
        error.retry_after()
    }
}

/// What a failed attempt produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<'a, T, E> {
    /// A retryable error.
    Error(&'a E),
    /// An `Ok` value marked retryable.
    Value(&'a T),
    /// The attempt hit the per-attempt timeout.
    TimedOut,
}

/// Passed to the [`Notify`] hook before each backoff sleep.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a, T, E> {
    /// The attempt that just failed (1 for the first call).
    pub attempt: u32,
    /// What it produced.
    pub outcome: Outcome<'a, T, E>,
    /// The sleep before the next attempt (after jitter, cap and hints).
    pub delay: Duration,
    /// The hint the error carried, if any (before capping).
    pub hint: Option<Duration>,
}

/// Observes retries (logging, metrics).
pub trait Notify<T, E> {
    /// Called once per retry, before the backoff sleep.
    fn notify(&mut self, event: &RetryEvent<'_, T, E>);
}

impl<T, E, F: FnMut(&RetryEvent<'_, T, E>)> Notify<T, E> for F {
    fn notify(&mut self, event: &RetryEvent<'_, T, E>) {
        self(event);
    }
}

/// The default: no notification.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNotify;

impl<T, E> Notify<T, E> for NoNotify {
    fn notify(&mut self, _: &RetryEvent<'_, T, E>) {}
}
