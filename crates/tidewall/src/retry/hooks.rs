//! The retry driver's pluggable hooks (hints and notification; classification lives in
//! [`crate::classify`]). Closures implement each trait; the unit types are the defaults, so an
//! unconfigured `Retry` carries no closure at all.

use std::time::Duration;

use crate::RetryAfter;

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
    /// An error judged a retryable failure.
    Error(&'a E),
    /// An `Ok` value judged a retryable failure.
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
